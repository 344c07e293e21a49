package producer_test

import (
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sendq/sendq/producer"
	"github.com/sendq/sendq/queue"
)

func TestPriority(t *testing.T) {
	t.Parallel()
	b := setupAPI(t, nil)
	for _, tc := range []struct {
		prio, queue, shown string
	}{
		{`"high"`, "emails-high", "high"},
		{`"bulk"`, "emails-bulk", "bulk"},
		{`"normal"`, "emails", "normal"},
		{`null`, "emails", "normal"},
		{``, "emails", "normal"},
	} {
		body := `{"From":"s@example.com","To":"a@example.com"}`
		if tc.prio != "" {
			body = `{"From":"s@example.com","To":"a@example.com","priority":` + tc.prio + `}`
		}
		r := b.do(t, "POST", "/v1/emails", body, nil)
		if r.code != 202 {
			t.Fatalf("Priority %s: %d %s", tc.prio, r.code, r.raw)
		}
		id := r.body["id"].(string)
		if _, err := b.insp.GetTaskInfo(tc.queue, id); err != nil {
			t.Errorf("Priority %s: not in queue %s: %v", tc.prio, tc.queue, err)
		}
		st := b.do(t, "GET", "/v1/emails/"+id, "", nil)
		if st.body["priority"] != tc.shown {
			t.Errorf("Priority %s: status shows priority %v; want %s", tc.prio, st.body["priority"], tc.shown)
		}
		// Cancel finds it in its queue.
		if c := b.do(t, "DELETE", "/v1/emails/"+id, "", nil); c.code != 200 || c.body["status"] != "canceled" {
			t.Errorf("Priority %s: cancel = %d %s", tc.prio, c.code, c.raw)
		}
	}
	for _, bad := range []string{`"urgent"`, `"High"`, `1`, `true`} {
		r := b.do(t, "POST", "/v1/emails", `{"From":"s@example.com","To":"a@example.com","Priority":`+bad+`}`, nil)
		if code, field := errField(r); r.code != 400 || field != "Priority" || code != "invalid_field" {
			t.Errorf("Priority %s: %d %s; want 400 invalid_field naming Priority", bad, r.code, r.raw)
		}
	}
}

// An Idempotency-Key names one email whatever the priority of the repeat:
// asynq refuses a second task id only within one queue, the claim across
// them.
func TestIdempotencyKeyAcrossPriorities(t *testing.T) {
	t.Parallel()
	b := setupAPI(t, nil)
	h := map[string]string{"Idempotency-Key": "order-1"}
	body := `{"From":"s@example.com","To":"a@example.com","Priority":"bulk"}`
	first := b.do(t, "POST", "/v1/emails", body, h)
	if first.code != 202 {
		t.Fatalf("first: %d %s", first.code, first.raw)
	}
	again := b.do(t, "POST", "/v1/emails", body, h)
	if again.code != 202 || again.body["id"] != first.body["id"] {
		t.Fatalf("replay: %d %s; want 202 with id %v", again.code, again.raw, first.body["id"])
	}
	other := b.do(t, "POST", "/v1/emails", `{"From":"s@example.com","To":"a@example.com","Priority":"high"}`, h)
	if other.code != 409 {
		t.Fatalf("same key, other priority and body: %d %s; want 409", other.code, other.raw)
	}
	qi, err := queue.QueueInfo(b.insp)
	if err != nil {
		t.Fatal(err)
	}
	if qi.Pending != 1 {
		t.Errorf("%d emails queued across the queues; want 1", qi.Pending)
	}
}

// SendAt is handed to asynq rounded up to the next whole second: asynq
// forwards a scheduled task once its (whole) second has begun.
func TestSendAtNeverEarly(t *testing.T) {
	t.Parallel()
	b := setupAPI(t, nil)
	at := time.Now().Add(time.Hour).Truncate(time.Second).Add(900 * time.Millisecond)
	r := b.do(t, "POST", "/v1/emails", `{"From":"s@example.com","To":"a@example.com","SendAt":"`+at.Format(time.RFC3339Nano)+`"}`, nil)
	if r.code != 202 {
		t.Fatalf("%d %s", r.code, r.raw)
	}
	info, err := b.insp.GetTaskInfo(queue.Name, r.body["id"].(string))
	if err != nil {
		t.Fatal(err)
	}
	if want := at.Truncate(time.Second).Add(time.Second); !info.NextProcessAt.Equal(want) {
		t.Errorf("asynq holds it until %s; want %s (SendAt %s rounded up)", info.NextProcessAt, want, at)
	}
}

// The claim runs through Config.Scripts; `sendq serve` passes the client
// whose scripts share the automatic pipeliner. Through it, a key still
// names one email across priorities, under concurrency, and from a batch
// item to a single send, and a dead Redis is still a quick 503.
func TestIdempotencyKeyThroughPipelinedScripts(t *testing.T) {
	t.Parallel()
	b := setupAPIRedis(t, func(rdb redis.UniversalClient, c *producer.Config) {
		ap, err := queue.NewPipeliner(rdb)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = ap.Close() })
		c.Scripts = queue.ScriptsPipelined(rdb, ap)
	})
	h := map[string]string{"Idempotency-Key": "order-1"}
	body := `{"From":"s@example.com","To":"a@example.com","Priority":"bulk"}`
	const n = 20
	ids := make(chan string, n)
	for range n {
		go func() {
			r := b.do(t, "POST", "/v1/emails", body, h)
			if r.code != 202 {
				t.Errorf("POST = %d %s; want 202", r.code, r.raw)
			}
			id, _ := r.body["id"].(string)
			ids <- id
		}()
	}
	first := <-ids
	for range n - 1 {
		if id := <-ids; id != first {
			t.Errorf("ids differ: %s vs %s", id, first)
		}
	}
	if other := b.do(t, "POST", "/v1/emails", `{"From":"s@example.com","To":"a@example.com","Priority":"high"}`, h); other.code != 409 {
		t.Errorf("same key, other priority and body: %d %s; want 409", other.code, other.raw)
	}
	// A batch item's key (bulk) and a single send's (normal) name one email.
	bt := b.do(t, "POST", "/v1/emails/batch", `{"Messages":[{"From":"s@example.com","To":"b@example.com","IdempotencyKey":"order-2"}]}`, nil)
	if bt.code != 202 {
		t.Fatalf("batch: %d %s", bt.code, bt.raw)
	}
	item := bt.body["results"].([]any)[0].(map[string]any)["id"]
	single := b.do(t, "POST", "/v1/emails", `{"From":"s@example.com","To":"b@example.com"}`, map[string]string{"Idempotency-Key": "order-2"})
	if single.code != 202 || single.body["id"] != item {
		t.Errorf("single send after the batch item: %d %s; want 202 with id %v", single.code, single.raw, item)
	}
	qi, err := queue.QueueInfo(b.insp)
	if err != nil {
		t.Fatal(err)
	}
	if qi.Pending != 2 {
		t.Errorf("%d emails queued across the queues; want 2", qi.Pending)
	}

	b.redis.Stop()
	start := time.Now()
	r := b.do(t, "POST", "/v1/emails", body, map[string]string{"Idempotency-Key": "order-3"})
	if code, _ := errField(r); r.code != 503 || code != "queue_unavailable" {
		t.Errorf("keyed POST with Redis down = %d %s; want 503 queue_unavailable", r.code, r.raw)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("503 took %s; want a few seconds at most", took)
	}
}
