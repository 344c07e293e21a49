package events_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sendq/sendq/events"
	"github.com/sendq/sendq/queue"
)

func sentEvent(emailID, rcpt string) *events.Event {
	e := &queue.Email{ID: emailID, Metadata: map[string]string{"order_id": "1234"}}
	return events.New(events.TypeSent, time.Now(), events.About(e, rcpt, queue.RecipientSent, 1,
		queue.Reply{Code: 250, EnhancedCode: "2.0.0", Message: "OK queued"}))
}

// Every event reaches every endpoint, signed with every secret of a
// rotation, with the body the API shows and the same id.
func TestDeliverSignsEveryEventForEveryEndpoint(t *testing.T) {
	t.Parallel()
	s1, s2 := newSecret(t), newSecret(t)
	r1, r2 := newReceiver(t, s1, s2), newReceiver(t, s1, s2)
	b := setup(t, setupOpts{endpoints: endpoints(t, r1.srv.URL+"/hooks?token=t1", r2.srv.URL), secret: s1 + " " + s2})
	ctx := context.Background()
	evs := []*events.Event{sentEvent("email-1", "a@example.com"), sentEvent("email-1", "b@example.com")}
	if err := b.log.Emit(ctx, "email-1", evs...); err != nil {
		t.Fatal(err)
	}
	if err := b.log.Emit(ctx, "email-2", sentEvent("email-2", "c@example.com")); err != nil {
		t.Fatal(err)
	}
	for _, r := range []*receiver{r1, r2} {
		waitFor(t, 5*time.Second, "3 deliveries", func() bool { return len(r.got()) == 3 })
	}
	stored, err := b.log.Email(ctx, "email-1")
	if err != nil || len(stored) != 2 {
		t.Fatalf("Email(email-1) = %d events, %v; want 2", len(stored), err)
	}
	byID := map[string]*events.Event{}
	for i, ev := range stored {
		if ev.Data.Sequence != int64(i+1) {
			t.Errorf("event %d has sequence %d; want %d", i, ev.Data.Sequence, i+1)
		}
		byID[ev.ID] = ev
	}
	for _, r := range []*receiver{r1, r2} {
		for _, h := range r.got() {
			var body map[string]json.RawMessage
			if err := json.Unmarshal(h.Body, &body); err != nil {
				t.Fatalf("body %s: %v", h.Body, err)
			}
			if len(body) != 3 || body["type"] == nil || body["timestamp"] == nil || body["data"] == nil {
				t.Errorf("body %s; want exactly type, timestamp and data", h.Body)
			}
			ev, ok := byID[h.ID]
			if !ok {
				continue // email-2's
			}
			want, _ := ev.Body()
			if string(h.Body) != string(want) {
				t.Errorf("webhook %s body\n%s\nwant (from the API)\n%s", h.ID, h.Body, want)
			}
			var data struct {
				Sequence int64             `json:"sequence"`
				Metadata map[string]string `json:"metadata"`
				Code     int               `json:"code"`
			}
			_ = json.Unmarshal(body["data"], &data)
			if data.Sequence != ev.Data.Sequence || data.Metadata["order_id"] != "1234" || data.Code != 250 {
				t.Errorf("webhook data %s; want sequence %d, metadata and code 250", body["data"], ev.Data.Sequence)
			}
		}
	}
	if got := testutil.ToFloat64(b.m.Deliveries.WithLabelValues(events.OutcomeDelivered)); got != 6 {
		t.Errorf("deliveries{delivered} = %v; want 6", got)
	}
	if got := testutil.ToFloat64(b.m.Events.WithLabelValues(events.TypeSent)); got != 3 {
		t.Errorf("events_total{email.sent} = %v; want 3", got)
	}
}

// A failing endpoint is retried on the ladder, scaled by the base: the
// same id and body each time, later each time, until it answers 2xx.
func TestDeliverRetriesOnTheScaledLadder(t *testing.T) {
	t.Parallel()
	s := newSecret(t)
	r := newReceiver(t, s)
	answers := []int{http.StatusInternalServerError, http.StatusTooManyRequests, http.StatusBadRequest, http.StatusOK}
	r.setAnswer(func(n int, _ *http.Request) int { return answers[min(n, len(answers)-1)] })
	const base = 20 * time.Millisecond // ladder: 20ms, 1.2s, 7.2s, ...
	b := setup(t, setupOpts{endpoints: endpoints(t, r.srv.URL), secret: s,
		cfg: func(c *events.DelivererConfig) { c.RetryBase = base }})
	if err := b.log.Emit(context.Background(), "email-r", sentEvent("email-r", "a@example.com")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "a 2xx after three failures", func() bool { return len(r.delivered()) == 1 })
	hits := r.got()
	if len(hits) != 4 {
		t.Fatalf("%d attempts; want 4", len(hits))
	}
	for i := 1; i < len(hits); i++ {
		if hits[i].ID != hits[0].ID || string(hits[i].Body) != string(hits[0].Body) {
			t.Errorf("attempt %d: id %s body %s; want the first attempt's %s %s", i+1, hits[i].ID, hits[i].Body, hits[0].ID, hits[0].Body)
		}
		// Never earlier than the ladder says, less its 10% jitter and
		// asynq's whole seconds (it schedules a retry at a Unix second).
		step := time.Duration(float64(events.Ladder[i-1]) * float64(base) / float64(5*time.Second))
		if gap := hits[i].At.Sub(hits[i-1].At); gap < step*9/10-time.Second {
			t.Errorf("retry %d came %s after the attempt before; the scaled ladder says %s", i, gap, step)
		}
	}
	if got := testutil.ToFloat64(b.m.Deliveries.WithLabelValues(events.OutcomeRetry)); got != 3 {
		t.Errorf("deliveries{retry} = %v; want 3", got)
	}
}

// 410 disables the endpoint, in Redis, for good: no more deliveries to it,
// while the other endpoint gets everything.
func TestDeliverGoneDisablesTheEndpoint(t *testing.T) {
	t.Parallel()
	s := newSecret(t)
	gone, ok := newReceiver(t, s), newReceiver(t, s)
	gone.setAnswer(func(int, *http.Request) int { return http.StatusGone })
	eps := endpoints(t, gone.srv.URL, ok.srv.URL)
	b := setup(t, setupOpts{endpoints: eps, secret: s})
	ctx := context.Background()
	if err := b.log.Emit(ctx, "email-g", sentEvent("email-g", "a@example.com")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the endpoint disabled", func() bool {
		return b.rdb.HExists(ctx, events.DisabledKey, eps[0].Key).Val()
	})
	for i := range 3 {
		if err := b.log.Emit(ctx, "email-g", sentEvent("email-g", fmt.Sprintf("r%d@example.com", i))); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 5*time.Second, "4 deliveries to the other endpoint", func() bool { return len(ok.delivered()) == 4 })
	waitFor(t, 5*time.Second, "3 skipped deliveries", func() bool {
		return testutil.ToFloat64(b.m.Deliveries.WithLabelValues(events.OutcomeSkipped)) == 3
	})
	if n := len(gone.got()); n != 1 {
		t.Errorf("the endpoint that answered 410 got %d requests; want 1", n)
	}
	if got := testutil.ToFloat64(b.m.Disabled); got != 1 {
		t.Errorf("webhook_endpoints_disabled_total = %v; want 1", got)
	}
	if got := testutil.ToFloat64(b.m.Deliveries.WithLabelValues(events.OutcomeGone)); got != 1 {
		t.Errorf("deliveries{gone} = %v; want 1", got)
	}
	if n, err := testutil.GatherAndCount(b.reg); err != nil || n == 0 {
		t.Errorf("gather: %d, %v", n, err)
	}
	col := events.NewCollector(b.rdb, b.insp)
	if got := testutil.ToFloat64(only(t, col, "sendq_webhook_endpoints_disabled")); got != 1 {
		t.Errorf("sendq_webhook_endpoints_disabled = %v; want 1", got)
	}
}

// A redirect is a failed attempt: the target is never asked.
func TestDeliverDoesNotFollowRedirects(t *testing.T) {
	t.Parallel()
	s := newSecret(t)
	target := newReceiver(t, s)
	redirect := newReceiver(t, s)
	redirect.setAnswer(func(n int, _ *http.Request) int {
		if n < 2 {
			return http.StatusTemporaryRedirect
		}
		return http.StatusNoContent
	})
	redirectSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := httptest.NewRecorder()
		redirect.serve(rec, r)
		if rec.Code == http.StatusTemporaryRedirect {
			http.Redirect(w, r, target.srv.URL, http.StatusTemporaryRedirect)
			return
		}
		w.WriteHeader(rec.Code)
	}))
	t.Cleanup(redirectSrv.Close)
	b := setup(t, setupOpts{endpoints: endpoints(t, redirectSrv.URL), secret: s,
		cfg: func(c *events.DelivererConfig) { c.RetryBase = 5 * time.Millisecond }})
	if err := b.log.Emit(context.Background(), "email-3", sentEvent("email-3", "a@example.com")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "a 204 on the third attempt", func() bool { return len(redirect.delivered()) == 1 })
	if n := len(target.got()); n != 0 {
		t.Errorf("the redirect target got %d requests; want 0", n)
	}
	if n := len(redirect.got()); n != 3 {
		t.Errorf("the endpoint got %d requests; want 3 (two redirects retried)", n)
	}
}

// An endpoint that does not answer within 10 s fails the attempt, which is
// retried.
func TestDeliverTimesOutAfterTenSeconds(t *testing.T) {
	t.Parallel()
	s := newSecret(t)
	r := newReceiver(t, s)
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		rec := httptest.NewRecorder()
		r.serve(rec, req)
		if len(r.got()) == 1 {
			select { // hang; ends when sendq gives up on the request
			case <-req.Context().Done():
				return
			case <-time.After(3 * events.AttemptTimeout):
			}
		}
		w.WriteHeader(rec.Code)
	}))
	t.Cleanup(slow.Close)
	b := setup(t, setupOpts{endpoints: endpoints(t, slow.URL), secret: s,
		cfg: func(c *events.DelivererConfig) { c.RetryBase = 5 * time.Millisecond }})
	start := time.Now()
	if err := b.log.Emit(context.Background(), "email-slow", sentEvent("email-slow", "a@example.com")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the retry after the timeout", func() bool { return len(r.got()) == 2 })
	hits := r.got()
	if gap := hits[1].At.Sub(hits[0].At); gap < events.AttemptTimeout {
		t.Errorf("the retry came %s after the hanging attempt; want at least the %s timeout", gap, events.AttemptTimeout)
	}
	if got := testutil.ToFloat64(b.m.Deliveries.WithLabelValues(events.OutcomeRetry)); got != 1 {
		t.Errorf("deliveries{retry} = %v; want 1 (the timed-out attempt)", got)
	}
	t.Logf("timed out and retried within %s", time.Since(start).Round(time.Millisecond))
}
