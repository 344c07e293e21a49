package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sendq/sendq/internal/proctest"
	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/internal/smtptest"
)

// With SENDQ_QUEUE_SHARDS=6 on a real three-master Redis Cluster, the
// tasks of 3,000 emails sent singly spread over every master (each holds
// at least 15% of them while they are queued), and the path still works:
// 202s, idempotency, status, delivery of every email once, and batches:
// delivered once per email, a scheduled one canceled whole.
func TestQueueShardsSpreadOverTheCluster(t *testing.T) {
	cl := redistest.StartCluster(t, 3)
	sink := smtptest.Start(t)
	env := []string{"REDIS_URL=" + cl.URL(), "SENDQ_QUEUE_SHARDS=6", "SENDQ_SMTP_URL=smtp://" + sink.Addr + "?tls=none"}
	api := proctest.Start(t, binary, "api", env...)
	base := "http://" + api.Addr

	const n = 3000
	var failed atomic.Int32
	var wg sync.WaitGroup
	next := atomic.Int32{}
	for range 16 {
		wg.Go(func() {
			c := &http.Client{Timeout: 10 * time.Second}
			for next.Add(1) <= n {
				resp, err := c.Post(base+"/v1/emails", "application/json", bytes.NewReader(seedJSON))
				if err != nil {
					failed.Add(1)
					continue
				}
				if resp.StatusCode != 202 {
					failed.Add(1)
				}
				_ = resp.Body.Close()
			}
		})
	}
	wg.Wait()
	if f := failed.Load(); f > 0 {
		t.Fatalf("%d of %d POSTs were not 202", f, n)
	}
	idem := map[string]string{"Idempotency-Key": "shards-1"}
	first := call(t, "POST", base+"/v1/emails", seedJSON, idem)
	again := call(t, "POST", base+"/v1/emails", seedJSON, idem)
	var a1, a2 struct{ ID string }
	_ = json.Unmarshal(first.Body, &a1)
	_ = json.Unmarshal(again.Body, &a2)
	if first.Resp.StatusCode != 202 || again.Resp.StatusCode != 202 || a1.ID == "" || a1.ID != a2.ID {
		t.Fatalf("idempotent replay: %d %s, then %d %s", first.Resp.StatusCode, first.Body, again.Resp.StatusCode, again.Body)
	}

	// Every task hash (asynq:{queue}:t:id) of the queued emails, per master.
	total, per := 0, map[string]int{}
	for _, addr := range cl.Addrs {
		c := redis.NewClient(&redis.Options{Addr: addr})
		iter := c.Scan(t.Context(), 0, "asynq:{emails*}:t:*", 1000).Iterator()
		for iter.Next(t.Context()) {
			per[addr]++
		}
		if err := iter.Err(); err != nil {
			t.Fatal(err)
		}
		_ = c.Close()
		total += per[addr]
	}
	if total != n+1 {
		t.Fatalf("%d task hashes in the cluster; want %d", total, n+1)
	}
	for _, addr := range cl.Addrs {
		if share := float64(per[addr]) / float64(total); share < 0.15 {
			t.Errorf("master %s holds %d of %d tasks (%.0f%%); want at least 15%%", addr, per[addr], total, 100*share)
		}
	}
	t.Logf("tasks per master: %v", per)

	// Batches: their chunks spread over the shards too. A scheduled batch
	// is canceled whole; another is delivered.
	const nb = 300
	seeds := bytes.Repeat(append(bytes.TrimSpace(seedJSON), ','), nb)
	seeds = seeds[:len(seeds)-1]
	sched := call(t, "POST", base+"/v1/emails/batch", fmt.Appendf(nil, `{"Defaults": {"SendAt": %q}, "Messages": [%s]}`,
		time.Now().Add(time.Hour).UTC().Format(time.RFC3339), seeds), nil)
	var sb struct {
		BatchID  string `json:"batch_id"`
		Accepted int
	}
	if err := json.Unmarshal(sched.Body, &sb); err != nil || sched.Resp.StatusCode != 202 || sb.Accepted != nb {
		t.Fatalf("scheduled batch: %d %s", sched.Resp.StatusCode, sched.Body)
	}
	if c := call(t, "DELETE", base+"/v1/batches/"+sb.BatchID, nil, nil); c.Resp.StatusCode != 200 || !bytes.Contains(c.Body, fmt.Appendf(nil, `"canceled":%d`, nb)) {
		t.Fatalf("DELETE batch: %d %s; want %d canceled", c.Resp.StatusCode, c.Body, nb)
	}
	now := call(t, "POST", base+"/v1/emails/batch", fmt.Appendf(nil, `{"Messages": [%s]}`, seeds), nil)
	var nbody struct {
		BatchID string `json:"batch_id"`
		Results []struct{ ID string }
	}
	if err := json.Unmarshal(now.Body, &nbody); err != nil || now.Resp.StatusCode != 202 || len(nbody.Results) != nb {
		t.Fatalf("batch: %d %s", now.Resp.StatusCode, now.Body)
	}

	// A worker with the same shards serves them all, once each.
	w := proctest.Start(t, binary, "worker", env...)
	deadline := time.Now().Add(3 * time.Minute)
	for len(sink.Messages()) < n+1+nb && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
	}
	if got := len(sink.Messages()); got != n+1+nb {
		t.Fatalf("SMTP server got %d messages; want %d", got, n+1+nb)
	}
	if st := waitStatus(t, base, nbody.Results[nb-1].ID, nil, "sent", "failed"); st["status"] != "sent" || st["batch_id"] != nbody.BatchID {
		t.Errorf("batch email: %v", st)
	}
	if c := call(t, "GET", base+"/v1/batches/"+sb.BatchID, nil, nil); !bytes.Contains(c.Body, fmt.Appendf(nil, `"canceled":%d`, nb)) {
		t.Errorf("canceled batch: %s", c.Body)
	}
	if st := waitStatus(t, base, a1.ID, nil, "sent", "failed"); st["status"] != "sent" {
		t.Errorf("idempotent email: %v", st)
	}
	m := call(t, "GET", base+"/metrics", nil, nil)
	if !containsLine(string(m.Body), fmt.Sprintf(`sendq_queue_tasks{queue="emails",state="completed"} %d`, n+1)) {
		t.Errorf("the queue metric does not sum the shards to %d completed", n+1)
	}

	shardedBatches(t, base, sink, n+1+nb)
	w.Stop(t, 30*time.Second)
	api.Stop(t, 30*time.Second)
}

// shardedBatches is the batch part of the sharded path, through the HTTP
// contract only: a batch is delivered once per email (its replay with the
// same Idempotency-Key queues nothing), and a scheduled batch is canceled
// whole, none of it sent. The sink already holds before messages.
func shardedBatches(t *testing.T, base string, sink *smtptest.Server, before int) {
	t.Helper()
	const nb = 200
	batch := func(sendAt string) []byte {
		msgs := make([]map[string]any, nb)
		for i := range msgs {
			msgs[i] = map[string]any{"To": fmt.Sprintf("shard-%d@contoso.example", i), "Body": fmt.Sprintf("<p>%d</p>", i)}
		}
		def := map[string]any{"From": "Shards <shards@contoso.example>", "Subject": "sharded batch"}
		if sendAt != "" {
			def["SendAt"] = sendAt
		}
		b, _ := json.Marshal(map[string]any{"Defaults": def, "Messages": msgs})
		return b
	}
	type answer struct {
		BatchID  string `json:"batch_id"`
		Accepted int
		Results  []struct{ ID string }
	}
	post := func(body []byte, key string) answer {
		t.Helper()
		r := call(t, "POST", base+"/v1/emails/batch", body, map[string]string{"Idempotency-Key": key})
		var a answer
		if err := json.Unmarshal(r.Body, &a); err != nil || r.Resp.StatusCode != 202 || a.Accepted != nb {
			t.Fatalf("POST /v1/emails/batch: %d %.300s", r.Resp.StatusCode, r.Body)
		}
		return a
	}
	counts := func(id string) map[string]int {
		t.Helper()
		r := call(t, "GET", base+"/v1/batches/"+id, nil, nil)
		var st struct {
			Total  int
			Counts map[string]int
		}
		if err := json.Unmarshal(r.Body, &st); err != nil || r.Resp.StatusCode != 200 || st.Total != nb {
			t.Fatalf("GET /v1/batches/%s: %d %.300s", id, r.Resp.StatusCode, r.Body)
		}
		return st.Counts
	}

	body := batch("")
	a := post(body, "shards-batch-1")
	if again := post(body, "shards-batch-1"); again.BatchID != a.BatchID || again.Results[0].ID != a.Results[0].ID {
		t.Fatalf("batch replay: batch %s, first id %s; want %s, %s", again.BatchID, again.Results[0].ID, a.BatchID, a.Results[0].ID)
	}
	deadline := time.Now().Add(time.Minute)
	for counts(a.BatchID)["sent"] < nb && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
	}
	if c := counts(a.BatchID); c["sent"] != nb {
		t.Fatalf("batch %s after a minute: %v; want %d sent", a.BatchID, c, nb)
	}
	got := map[string]int{}
	for _, m := range sink.Messages() {
		for _, rcpt := range m.To {
			got[rcpt]++
		}
	}
	for i := range nb {
		if k := got[fmt.Sprintf("shard-%d@contoso.example", i)]; k != 1 {
			t.Errorf("batch recipient %d got %d copies; want 1", i, k)
		}
	}

	later := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	s := post(batch(later), "shards-batch-2")
	if c := counts(s.BatchID); c["scheduled"] != nb {
		t.Fatalf("scheduled batch: %v; want %d scheduled", c, nb)
	}
	r := call(t, "DELETE", base+"/v1/batches/"+s.BatchID, nil, nil)
	var cn struct {
		Canceled    int `json:"canceled"`
		NotCanceled int `json:"not_canceled"`
	}
	if err := json.Unmarshal(r.Body, &cn); err != nil || r.Resp.StatusCode != 200 || cn.Canceled != nb || cn.NotCanceled != 0 {
		t.Fatalf("DELETE /v1/batches/%s: %d %s; want %d canceled", s.BatchID, r.Resp.StatusCode, r.Body, nb)
	}
	if c := counts(s.BatchID); c["canceled"] != nb {
		t.Errorf("canceled batch: %v; want %d canceled", c, nb)
	}
	if got := len(sink.Messages()); got != before+nb {
		t.Errorf("SMTP server got %d messages; want %d (the canceled batch sends nothing)", got, before+nb)
	}
	t.Logf("sharded batches: %d delivered once each, %d scheduled and canceled", nb, nb)
}
