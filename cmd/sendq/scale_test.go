package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/mail"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sendq/sendq/internal/proctest"
	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/internal/smtptest"
)

// One API and three workers on one Redis: every email is delivered exactly
// once, and stopping a worker in the middle of the run loses nothing.
func TestScaleOutOneAPIThreeWorkers(t *testing.T) {
	rs := redistest.Start(t)
	sink := smtptest.Start(t, smtptest.WithHooks(smtptest.Hooks{
		Data: func(*smtptest.Session, []byte) error { time.Sleep(20 * time.Millisecond); return nil },
	}))
	env := []string{"REDIS_URL=" + rs.URL(), "SENDQ_SMTP_URL=smtp://" + sink.Addr + "?tls=none",
		"SENDQ_SMTP_POOL_SIZE=3", "SENDQ_RETRY_BASE_DELAY=1s", "SENDQ_RETRY_MAX_DELAY=2s", "SENDQ_SHUTDOWN_TIMEOUT=10s", "SENDQ_SMTP_TIMEOUT=5s"}
	api := proctest.Start(t, binary, "api", env...)
	workers := []*proctest.Proc{
		proctest.Start(t, binary, "worker", env...),
		proctest.Start(t, binary, "worker", env...),
		proctest.Start(t, binary, "worker", env...),
	}

	const n = 300
	ids := make([]string, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i := 0; i < n; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			body := fmt.Sprintf(`{"From":"app@example.com","To":"user%d@example.com","Subject":"n%d","Body":"hi"}`, i, i)
			r := call(t, "POST", "http://"+api.Addr+"/v1/emails", []byte(body), nil)
			var acc struct{ ID string }
			if r.Resp.StatusCode != 202 || json.Unmarshal(r.Body, &acc) != nil {
				t.Errorf("POST %d = %d %s", i, r.Resp.StatusCode, r.Body)
				return
			}
			ids[i] = acc.ID
		}(i)
	}
	// Stop one worker while it is busy: once a fifth of the mail is out.
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		for len(sink.Messages()) < n/5 {
			time.Sleep(5 * time.Millisecond)
		}
		workers[0].Stop(t, 20*time.Second)
	}()
	wg.Wait()
	<-stopped

	deadline := time.Now().Add(60 * time.Second)
	for len(sink.Messages()) < n && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // a late duplicate would show up here
	got := map[string]int{}
	for _, m := range sink.Messages() {
		mm, err := mail.ReadMessage(bytes.NewReader(m.Data))
		if err != nil {
			t.Fatal(err)
		}
		id := strings.TrimPrefix(strings.SplitN(mm.Header.Get("Message-Id"), "@", 2)[0], "<")
		got[id]++
	}
	lost, dups := 0, 0
	for _, id := range ids {
		switch c := got[id]; {
		case c == 0:
			lost++
		case c > 1:
			dups += c - 1
		}
	}
	t.Logf("accepted %d, delivered %d distinct, lost %d, duplicates %d", n, len(got), lost, dups)
	if lost != 0 || dups != 0 {
		t.Errorf("lost %d, duplicates %d; want 0 and 0", lost, dups)
	}
	perWorker := []int{}
	for _, w := range workers {
		perWorker = append(perWorker, strings.Count(w.Logs(), "outcome=sent"))
	}
	t.Logf("deliveries per worker: %v", perWorker)
	if perWorker[0] == 0 || perWorker[1] == 0 || perWorker[2] == 0 {
		t.Errorf("a running worker delivered nothing: %v", perWorker)
	}

	// The operator commands read the same Redis.
	out, err := exec.Command(binary, "queues", "-redis-url", rs.URL()).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "emails") {
		t.Errorf("sendq queues = %v\n%s", err, out)
	}
	out, err = exec.Command(binary, "status", ids[0], "-redis-url", rs.URL()).CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"status": "sent"`) {
		t.Errorf("sendq status = %v\n%s", err, out)
	}
	out, err = exec.Command(binary, "retry", ids[0], "-redis-url", rs.URL()).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "only a failed or canceled email can be retried") {
		t.Errorf("sendq retry of a sent email = %v\n%s; want a refusal", err, out)
	}
	for _, w := range workers[1:] {
		w.Stop(t, 20*time.Second)
	}
	api.Stop(t, 20*time.Second)
}
