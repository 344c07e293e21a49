package events_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/sendq/sendq/events"
	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/queue"
)

func TestLogEmailEventsAndTheLog(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{noStart: true})
	ctx := context.Background()
	var ids []string
	for i := range 5 {
		email := fmt.Sprintf("email-%d", i%2)
		ev := sentEvent(email, fmt.Sprintf("r%d@example.com", i))
		ids = append(ids, ev.ID)
		if err := b.log.Emit(ctx, email, ev); err != nil {
			t.Fatal(err)
		}
	}
	got, err := b.log.Email(ctx, "email-0")
	if err != nil || len(got) != 3 {
		t.Fatalf("Email(email-0) = %d, %v; want 3 events", len(got), err)
	}
	for i, ev := range got {
		if ev.Data.Sequence != int64(i+1) || ev.ID != ids[2*i] || ev.Data.EmailID != "email-0" {
			t.Errorf("event %d = %s seq %d; want %s seq %d", i, ev.ID, ev.Data.Sequence, ids[2*i], i+1)
		}
	}
	if got, _ := b.log.Email(ctx, "nope"); len(got) != 0 {
		t.Errorf("Email(nope) = %d events; want none", len(got))
	}

	all, next, err := b.log.After(ctx, "", 100)
	if err != nil || len(all) != 5 {
		t.Fatalf("After(\"\") = %d, %v; want 5", len(all), err)
	}
	for i, ev := range all {
		if ev.ID != ids[i] {
			t.Errorf("log[%d] = %s; want %s (oldest first)", i, ev.ID, ids[i])
		}
	}
	// Pages of two, following next_cursor, give the same five.
	var paged []string
	cursor := ""
	for range 5 {
		page, c, err := b.log.After(ctx, cursor, 2)
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range page {
			paged = append(paged, ev.ID)
		}
		cursor = c
	}
	if fmt.Sprint(paged) != fmt.Sprint(ids) {
		t.Errorf("paged log = %v; want %v", paged, ids)
	}
	if page, c, _ := b.log.After(ctx, next, 10); len(page) != 0 || c != next {
		t.Errorf("After(last cursor) = %d events, cursor %q; want none and the same cursor", len(page), c)
	}
	for _, bad := range []string{"x", "1-", "-1", "1-2-3", "99999999999999999999999-0", "1-a"} {
		if _, _, err := b.log.After(ctx, bad, 10); !errors.Is(err, events.ErrBadCursor) {
			t.Errorf("After(%q) error = %v; want ErrBadCursor", bad, err)
		}
	}
	if n := b.rdb.ZCard(ctx, events.OutboxKey).Val(); n != 0 {
		t.Errorf("outbox holds %d emails after every hand-off; want 0", n)
	}
}

// The log keeps what is younger than the retention, and no more.
func TestLogTrimsToTheRetention(t *testing.T) {
	t.Parallel()
	rdb := redistest.Start(t).Client(t)
	l, err := events.NewLog(rdb, nil, events.LogConfig{Retention: 300 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	old := sentEvent("email-old", "a@example.com")
	if err := l.Emit(ctx, "email-old", old); err != nil {
		t.Fatal(err)
	}
	time.Sleep(400 * time.Millisecond)
	if err := l.Emit(ctx, "email-new", sentEvent("email-new", "a@example.com")); err != nil {
		t.Fatal(err)
	}
	got, _, err := l.After(ctx, "", 10)
	if err != nil || len(got) != 1 || got[0].Data.EmailID != "email-new" {
		t.Fatalf("After = %v, %v; want only the new event", got, err)
	}
	// The email's own events outlive the log's retention (they go with
	// the record).
	if evs, _ := l.Email(ctx, "email-old"); len(evs) != 1 || evs[0].ID != old.ID {
		t.Errorf("Email(email-old) = %v; want its event", evs)
	}
}

// Storing the same events twice (the worker repeats a record write after a
// Redis error) stores them once, with the same sequences.
func TestStoreIsSafeToRepeat(t *testing.T) {
	t.Parallel()
	rdb := redistest.Start(t).Client(t)
	ctx := context.Background()
	for _, mode := range []string{"pipeline", "autopipeliner"} {
		t.Run(mode, func(t *testing.T) {
			var c redis.UniversalClient = rdb
			if mode == "autopipeliner" {
				ap, err := queue.NewPipeliner(rdb)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = ap.Close() })
				c = ap
			}
			l, err := events.NewLog(c, nil, events.LogConfig{})
			if err != nil {
				t.Fatal(err)
			}
			store := queue.NewStore(c, time.Hour)
			id := "email-" + mode
			e := &queue.Email{ID: id, To: []queue.Address{{Address: "a@example.com"}, {Address: "b@example.com"}}}
			results := map[string]queue.RecipientResult{
				"a@example.com": {Status: queue.RecipientSent, UpdatedAt: time.Now(), Reply: queue.Reply{Code: 250}},
				"b@example.com": {Status: queue.RecipientDeferred, UpdatedAt: time.Now(), Reply: queue.Reply{Code: 451, EnhancedCode: "4.7.1"}},
			}
			extra, handOff, err := l.Attempt(e, 1, results)
			if err != nil {
				t.Fatal(err)
			}
			u := queue.Update{State: queue.StatusRetrying, Attempts: 1, Recipients: results, Extra: extra}
			for range 3 {
				if err := store.Save(ctx, id, u); err != nil {
					t.Fatal(err)
				}
			}
			if err := handOff(ctx); err != nil {
				t.Fatal(err)
			}
			evs, err := l.Email(ctx, id)
			if err != nil || len(evs) != 2 {
				t.Fatalf("Email = %d events, %v; want 2 after three writes", len(evs), err)
			}
			if evs[0].Type != events.TypeSent || evs[0].Data.Recipient != "a@example.com" || evs[0].Data.Sequence != 1 ||
				evs[1].Type != events.TypeDeferred || evs[1].Data.Code != 451 || evs[1].Data.Sequence != 2 {
				t.Errorf("events = %+v, %+v", evs[0], evs[1])
			}
			rec, err := store.Get(ctx, id)
			if err != nil || rec.Recipients["a@example.com"].Status != queue.RecipientSent {
				t.Errorf("record = %+v, %v; want a@ sent", rec, err)
			}
		})
	}
}

// The worker's crash between storing and handing off: the events were
// written with the record, Dispatch never ran. The sweeper delivers them,
// and logs them.
func TestSweeperDeliversWhatWasStoredButNotHandedOff(t *testing.T) {
	t.Parallel()
	s := newSecret(t)
	r := newReceiver(t, s)
	b := setup(t, setupOpts{endpoints: endpoints(t, r.srv.URL), secret: s})
	ctx := context.Background()
	ev := sentEvent("email-crash", "a@example.com")
	p, err := b.log.Prepare("email-crash", []*events.Event{ev})
	if err != nil {
		t.Fatal(err)
	}
	store := queue.NewStore(b.rdb, time.Hour)
	if err := store.Save(ctx, "email-crash", queue.Update{State: queue.StatusSent, Extra: p.Extra()}); err != nil {
		t.Fatal(err)
	}
	// The process dies here: no p.Dispatch.
	waitFor(t, 10*time.Second, "the sweeper's delivery", func() bool { return len(r.delivered()) == 1 })
	if h := r.delivered()[0]; h.ID != ev.ID {
		t.Errorf("delivered %s; want %s", h.ID, ev.ID)
	}
	waitFor(t, 5*time.Second, "an empty outbox", func() bool { return b.rdb.ZCard(ctx, events.OutboxKey).Val() == 0 })
	logged, _, err := b.log.After(ctx, "", 10)
	if err != nil || len(logged) != 1 || logged[0].ID != ev.ID {
		t.Errorf("log = %v, %v; want the swept event", logged, err)
	}
	if got := testutil.ToFloat64(b.m.Swept); got != 1 {
		t.Errorf("events_swept_total = %v; want 1", got)
	}
	time.Sleep(500 * time.Millisecond) // more sweeps: nothing more to do
	if n := len(r.got()); n != 1 {
		t.Errorf("%d deliveries; want 1", n)
	}
}

// failingEnqueuer queues for real until fail says no: a Redis error in
// the middle of a hand-off.
type failingEnqueuer struct {
	next  events.Enqueuer
	calls atomic.Int32
	fail  func(call int32) bool
}

func (f *failingEnqueuer) EnqueueContext(ctx context.Context, task *asynq.Task, opts ...asynq.Option) (*asynq.TaskInfo, error) {
	if f.fail(f.calls.Add(1)) {
		return nil, errors.New("injected: connection reset")
	}
	return f.next.EnqueueContext(ctx, task, opts...)
}

// A hand-off that failed half way (one endpoint's task queued, the other
// not): the sweeper finishes it, and the endpoint that already has its task
// gets no second one.
func TestSweeperFinishesAHalfDoneHandOffWithoutDuplicates(t *testing.T) {
	t.Parallel()
	s := newSecret(t)
	r1, r2 := newReceiver(t, s), newReceiver(t, s)
	rdb := redistest.Start(t).Client(t)
	eps := endpoints(t, r1.srv.URL, r2.srv.URL)
	fe := &failingEnqueuer{next: asynq.NewClientFromRedisClient(rdb), fail: func(n int32) bool { return n == 2 }}
	reg := prometheus.NewRegistry()
	m := events.NewMetrics(reg)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	l, err := events.NewLog(rdb, fe, events.LogConfig{Endpoints: eps, Metrics: m, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	secrets, _ := events.ParseSecrets(s)
	d, err := events.NewDeliverer(rdb, events.DelivererConfig{Endpoints: eps, Secrets: secrets, Log: l, Metrics: m, Logger: logger,
		PollInterval: 20 * time.Millisecond, SweepAfter: 300 * time.Millisecond, SweepInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Shutdown)
	ev := sentEvent("email-half", "a@example.com")
	if err := l.Emit(context.Background(), "email-half", ev); err != nil {
		t.Fatalf("Emit = %v; want nil (stored: the hand-off is the sweeper's)", err)
	}
	waitFor(t, 10*time.Second, "both endpoints", func() bool { return len(r1.delivered()) == 1 && len(r2.delivered()) == 1 })
	time.Sleep(700 * time.Millisecond)
	for i, r := range []*receiver{r1, r2} {
		if hits := r.got(); len(hits) != 1 || hits[0].ID != ev.ID {
			t.Errorf("endpoint %d got %d requests; want exactly one, of %s", i+1, len(hits), ev.ID)
		}
	}
}
