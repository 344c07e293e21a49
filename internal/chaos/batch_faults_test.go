//go:build chaos

package chaos

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The batch scenarios use the HTTP contract and the SMTP server's count
// only (POST /v1/emails/batch, GET /v1/emails/{id}, GET /v1/batches/{id}),
// never how a batch is stored or delivered inside, which may change.

// batchTry is one POST /v1/emails/batch of a batch and what came back.
type batchTry struct {
	Start, End time.Time
	Code       int  // 0: no HTTP answer
	Timeout    bool // the client gave up waiting
}

// batchRun is one batch, posted (and retried with its Idempotency-Key)
// until a 202.
type batchRun struct {
	N     int
	Key   string
	Rcpts []string // by index
	Tries []batchTry
	ID    string   // batch_id of the 202
	IDs   []string // email id by index, from the 202
	Err   error    // no 202 within the bound, or an answer that is neither 202 nor 503
}

// retried reports whether the batch needed more than one POST.
func (b *batchRun) retried() bool { return len(b.Tries) > 1 }

// batchBody is batch b of n messages, one recipient each.
func batchBody(b, n int) ([]byte, []string) {
	rcpts := make([]string, n)
	msgs := make([]map[string]any, n)
	for i := range n {
		rcpts[i] = fmt.Sprintf("b%d-%d@chaos.example", b, i)
		msgs[i] = map[string]any{"To": rcpts[i], "Body": fmt.Sprintf("chaos batch %d email %d", b, i)}
	}
	body, _ := json.Marshal(map[string]any{
		"Defaults": map[string]any{"From": "Chaos <chaos@chaos.example>", "Subject": fmt.Sprintf("chaos batch %d", b), "IsHtml": false},
		"Messages": msgs,
	})
	return body, rcpts
}

// postBatch posts batch b of n messages with an Idempotency-Key, retrying
// the same body with the same key after a 503 or no answer, until a 202 or
// for at most within. With patience set, the client gives up on a try
// after patience, doubled at each retry (up to 15 s): a try may time out
// after the API stored part of the batch. The 202's ids go into the ledger.
func (c *cluster) postBatch(b, n int, patience, within time.Duration) *batchRun {
	body, rcpts := batchBody(b, n)
	run := &batchRun{N: n, Key: fmt.Sprintf("chaos-batch-%d", b), Rcpts: rcpts}
	deadline := time.Now().Add(within)
	for {
		wait := 15 * time.Second
		if patience > 0 {
			wait = min(wait, patience<<len(run.Tries))
		}
		try, ans, err := c.postBatchOnce(wait, body, run.Key)
		run.Tries = append(run.Tries, try)
		switch {
		case err != nil:
			run.Err = err
			return run
		case try.Code == http.StatusAccepted:
			if len(ans.Results) != n || ans.Accepted != n {
				run.Err = fmt.Errorf("202 with %d results, %d accepted; want %d", len(ans.Results), ans.Accepted, n)
				return run
			}
			run.ID = ans.BatchID
			for _, r := range ans.Results {
				if r.ID == "" {
					run.Err = fmt.Errorf("202: result %d has no id", r.Index)
					return run
				}
				run.IDs = append(run.IDs, r.ID)
				c.ledger.accept(r.ID)
			}
			return run
		case try.Code == http.StatusServiceUnavailable:
			c.ledger.reject()
		}
		if time.Now().After(deadline) {
			run.Err = fmt.Errorf("no 202 within %s (%d tries)", within, len(run.Tries))
			return run
		}
		time.Sleep(300 * time.Millisecond)
	}
}

var batchClient = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 8,
	DialContext: (&net.Dialer{Timeout: 3 * time.Second}).DialContext}}

// batchAnswer is the part of the batch answer the suite reads.
type batchAnswer struct {
	BatchID  string `json:"batch_id"`
	Accepted int    `json:"accepted"`
	Results  []struct {
		Index int    `json:"index"`
		ID    string `json:"id"`
	} `json:"results"`
}

// postBatchOnce is one POST. err is set for an answer that is neither 202
// nor 503; no answer at all is a try with Code 0.
func (c *cluster) postBatchOnce(wait time.Duration, body []byte, key string) (batchTry, batchAnswer, error) {
	var ans batchAnswer
	try := batchTry{Start: time.Now()}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", c.base()+"/v1/emails/batch", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", key)
	resp, err := batchClient.Do(req)
	var b []byte
	if err == nil {
		b, err = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	if err != nil {
		try.End = time.Now()
		var ne net.Error
		try.Timeout = errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
		return try, ans, nil
	}
	try.End, try.Code = time.Now(), resp.StatusCode
	switch resp.StatusCode {
	case http.StatusAccepted:
		if err := json.Unmarshal(b, &ans); err != nil {
			return try, ans, fmt.Errorf("202 body %.200q: %w", b, err)
		}
	case http.StatusServiceUnavailable:
	default:
		return try, ans, fmt.Errorf("answer %d %.300s", resp.StatusCode, b)
	}
	return try, ans, nil
}

// batchCounts is GET /v1/batches/{id}'s counts.
func batchCounts(base, id string) (map[string]int, error) {
	resp, err := statusClient.Get(base + "/v1/batches/" + id + "?page_size=1")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var st struct {
		Total  int            `json:"total"`
		Counts map[string]int `json:"counts"`
	}
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("GET /v1/batches/%s: %s", id, resp.Status)
	}
	err = json.NewDecoder(resp.Body).Decode(&st)
	return st.Counts, err
}

// arrivals is, for every email id, the positions of its copies in the
// order the SMTP server took them.
func arrivals(s *sink) map[string][]int {
	out := map[string][]int{}
	for i, m := range s.messages() {
		id := messageID(m.Data)
		out[id] = append(out[id], i)
	}
	return out
}

// Scenario 1b: a worker is killed with SIGKILL in the middle of one
// 2,000-email batch; a new worker is started. Nothing may be lost. A
// duplicate is allowed only in the window between the server's 250 and
// the sent record: its first copy reached the server before the kill (the
// killed worker sent it) and every other copy after (a survivor sent it
// again). Two copies before the kill, or two after, would be a bug. So
// that the kill falls in that window (a few milliseconds wide otherwise,
// and the check would see nothing), Redis is frozen (SIGSTOP) 300 ms
// before the kill and resumed after it: the sends that got their 250 in
// between wait for their record when the worker dies.
func TestWorkerKilledMidBatch(t *testing.T) {
	t.Parallel()
	s := newScenario(t, "1b", "worker kill -9 in the middle of a 2,000-email batch, new worker started")
	const n = 2000
	c := newCluster(t, clusterConfig{redisArgs: aof, env: []string{"SENDQ_MAX_BATCH=2000"},
		hooks: slowServer(20*time.Millisecond, 10*time.Millisecond)})
	run := c.postBatch(0, n, 0, 30*time.Second)
	if run.Err != nil {
		t.Fatalf("POST /v1/emails/batch of %d: %v", n, run.Err)
	}
	accepted := run.Tries[len(run.Tries)-1]
	if !c.waitDelivered(n/4, time.Minute) {
		t.Fatalf("only %d of %d delivered after a minute", len(c.sink.messages()), n/4)
	}
	victim := c.workers[0]
	sending := c.waitSending(4, 10*time.Second)
	pid := c.redisPID()
	frozenAt := len(c.sink.messages())
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatalf("SIGSTOP redis: %v", err)
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGCONT) }) // never leave it frozen
	time.Sleep(300 * time.Millisecond)
	victim.Kill()
	killedAt := time.Now()
	atKill := len(c.sink.messages()) // every copy from here on came from a live worker
	if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
		t.Fatalf("SIGCONT redis: %v", err)
	}
	c.startWorker()
	t.Logf("batch of %d accepted in %s; killed %s after %d deliveries (%d sending)", n,
		accepted.End.Sub(accepted.Start).Round(time.Millisecond), victim.Name, atKill, sending)
	if atKill >= n {
		t.Fatalf("the whole batch was delivered before the kill: the kill fell after the batch, not in its middle")
	}
	if sending == 0 {
		t.Errorf("no email was sending at the kill: the kill caught nothing in flight")
	}

	ty, _ := s.settle(c, recoveryDrain)
	s.note("killed %s after %d of %d deliveries (%d sending at the kill; %d 250s while Redis was frozen before it); drained %s after the kill",
		victim.Name, atKill, n, sending, atKill-frozenAt, (time.Since(killedAt) - 2*time.Second).Round(time.Second))
	at := arrivals(c.sink)
	var dupIDs []string
	for id := range ty.dupIDs {
		dupIDs = append(dupIDs, id)
	}
	sort.Strings(dupIDs)
	for _, id := range dupIDs {
		pos := at[id]
		before := 0
		for _, p := range pos {
			if p < atKill {
				before++
			}
		}
		if before != 1 || len(pos) < 2 {
			t.Errorf("email %s: %d copies at positions %v (the kill at %d); a duplicate is allowed only as one copy before the kill and the rest after",
				id, len(pos), pos, atKill)
		}
	}
	if ty.dups > 0 {
		s.note("%d duplicate(s), each first sent before the kill and again after it: the kill fell between the server's 250 and the sent record (expected, counted)", ty.dups)
		t.Logf("duplicates: %v", dupIDs)
	} else {
		s.note("0 duplicates: the kill fell on no 250 waiting for its record")
	}
	counts, err := batchCounts(c.base(), run.ID)
	if err != nil {
		t.Errorf("batch status: %v", err)
	} else if counts["sent"]+counts["failed"] != n {
		t.Errorf("GET /v1/batches/%s after the drain: %v; want %d sent or failed", run.ID, counts, n)
	}
}

// Scenario 3b: Redis (AOF, appendfsync always) is killed with SIGKILL while
// batches are posted, and restarted. Every batch is posted with an
// Idempotency-Key and retried with the same key and body after a 503 or no
// answer (half the batches through a client that gives up after 300 ms,
// then 600 ms, …: some tries time out, some of them after the API stored
// part of the batch). No 202 while Redis is down; every email a 202
// listed as accepted is delivered or failed; and every message of every
// batch is queued exactly once: the SMTP server sees one email id per
// recipient, the id of the 202, however many tries the batch took.
func TestRedisKilledUnderBatches(t *testing.T) {
	t.Parallel()
	s := newScenario(t, "3b", "Redis kill -9 + restart while batches are posted, retried with their Idempotency-Key")
	c := newCluster(t, clusterConfig{redisArgs: aof, hooks: slowServer(50*time.Millisecond, 10*time.Millisecond)})
	size := pick(50, 100)
	outage := pick(5*time.Second, 10*time.Second)
	lead, every := 2500*time.Millisecond, 400*time.Millisecond
	nb := int((lead + outage + 4*time.Second) / every)
	patience := []time.Duration{300 * time.Millisecond, 0}

	runs := make([]*batchRun, nb)
	var wg sync.WaitGroup
	start := time.Now()
	posted := make(chan struct{})
	go func() { // ends once every batch has its 202 or its error (each bounded)
		defer close(posted)
		sem := make(chan struct{}, 4)
		for b := range nb {
			time.Sleep(time.Until(start.Add(time.Duration(b) * every)))
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				runs[b] = c.postBatch(b, size, patience[b%2], time.Minute)
			})
		}
		wg.Wait()
	}()
	time.Sleep(lead)
	inflight := c.waitSending(2, 5*time.Second) // the kill must find sends in flight
	c.redis.Stop()
	killedAt := time.Now()
	time.Sleep(outage)
	restartAt := time.Now()
	c.redis.Restart(t)
	<-posted

	retried, tries503, triesNone, timedOutUp, slowest := 0, 0, 0, 0, time.Duration(0)
	for _, run := range runs {
		if run.Err != nil {
			t.Errorf("batch %s: %v", run.Key, run.Err)
		}
		if run.retried() {
			retried++
		}
		for _, try := range run.Tries {
			switch try.Code {
			case 0:
				triesNone++
				if try.Timeout && (try.End.Before(killedAt) || try.Start.After(restartAt)) {
					timedOutUp++ // Redis was up: the API may have stored part of it
				}
			case http.StatusServiceUnavailable:
				tries503++
			case http.StatusAccepted:
				if try.Start.After(killedAt) && try.End.Before(restartAt) {
					t.Errorf("batch %s got 202 during the Redis outage (%s after the kill); nothing can have been stored", run.Key, try.End.Sub(killedAt))
				}
			}
			if !try.Start.Before(killedAt) && !try.Start.After(restartAt) && try.Code != 0 {
				slowest = max(slowest, try.End.Sub(try.Start))
			}
		}
	}
	if retried == 0 {
		t.Errorf("no batch was answered 503 or timed out: the fault was not exercised")
	}

	ty, _ := s.settle(c, recoveryDrain)
	// Queued exactly once: per recipient, one email id, the 202's.
	ids := map[string]map[string]bool{}
	for _, m := range c.sink.messages() {
		id := messageID(m.Data)
		for _, rcpt := range m.To {
			if ids[rcpt] == nil {
				ids[rcpt] = map[string]bool{}
			}
			ids[rcpt][id] = true
		}
	}
	twice, retriedItems := 0, 0
	for _, run := range runs {
		if run.Err != nil {
			continue
		}
		if run.retried() {
			retriedItems += run.N
		}
		for i, rcpt := range run.Rcpts {
			got := ids[rcpt]
			if len(got) > 1 || (len(got) == 1 && !got[run.IDs[i]]) {
				twice++
				if twice <= 10 {
					t.Errorf("batch %s message %d (%d tries): the SMTP server saw ids %v; want only %s, the 202's",
						run.Key, i, len(run.Tries), keys(got), run.IDs[i])
				}
			}
		}
	}
	if twice > 0 {
		t.Errorf("%d batch messages were queued more than once", twice)
	}
	s.note("%d batches of %d; %d sending at the kill; outage %s: %d × 503 and %d tries without an answer (%d timed out with Redis up; slowest answer %s); %d batches retried with their Idempotency-Key, their %d messages each queued once (%d queued twice)",
		nb, size, inflight, outage, tries503, triesNone, timedOutUp, slowest.Round(time.Millisecond), retried, retriedItems, twice)
	if ty.dups > 0 {
		s.note("%d duplicate(s) of one id: the server took them while Redis was down, so the sent record could not be written", ty.dups)
	}
}

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
