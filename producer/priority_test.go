package producer_test

import (
	"testing"
	"time"

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
