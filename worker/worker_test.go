package worker_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/mail"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/google/uuid"
	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/internal/smtptest"
	"github.com/sendq/sendq/metrics"
	"github.com/sendq/sendq/queue"
	"github.com/sendq/sendq/worker"
)

// syncBuffer is a log sink that tests read while the worker writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type testBundle struct {
	rdb    *redis.Client
	smtp   *smtptest.Server
	w      *worker.Worker
	client *asynq.Client
	look   *queue.Lookup
	store  *queue.Store
	logs   *syncBuffer
	m      *metrics.Metrics
}

type setupOpts struct {
	// noPipelining makes the relay URL say pipelining=false.
	noPipelining bool
	smtpOpts     []smtptest.Option
	relayURL     func(addr string) string
	cfg          func(*worker.Config)
	// cfgRedis, like cfg, also gets the test's Redis.
	cfgRedis func(*worker.Config, *redis.Client)
}

func setup(t *testing.T, o setupOpts) *testBundle {
	t.Helper()
	rs := redistest.Start(t)
	rdb := rs.Client(t)
	b := &testBundle{rdb: rdb, logs: &syncBuffer{}}
	b.smtp = smtptest.Start(t, o.smtpOpts...)
	// Every message the server took must read cleanly with a strict parser.
	t.Cleanup(func() {
		for _, m := range b.smtp.Messages() {
			checkStrict(t, m.Data)
		}
	})
	url := "smtp://" + b.smtp.Addr + "?tls=none"
	if o.relayURL != nil {
		url = o.relayURL(b.smtp.Addr)
	}
	if o.noPipelining {
		url += "&pipelining=false"
	}
	relay, err := worker.ParseRelay(url)
	if err != nil {
		t.Fatalf("ParseRelay: %v", err)
	}
	reg := prometheus.NewRegistry()
	b.m = metrics.New(reg, reg)
	b.store = queue.NewStore(rdb, time.Hour)
	log := slog.New(slog.NewTextHandler(b.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg := worker.Config{
		Relay:          relay,
		Pool:           worker.PoolConfig{Size: 4, CommandTimeout: 2 * time.Second},
		RetryBaseDelay: 50 * time.Millisecond,
		RetryMaxDelay:  200 * time.Millisecond,
		PollInterval:   50 * time.Millisecond,
		Store:          b.store,
		Logger:         log,
		Metrics:        b.m,
	}
	if o.cfg != nil {
		o.cfg(&cfg)
	}
	if o.cfgRedis != nil {
		o.cfgRedis(&cfg, rdb)
	}
	b.w, err = worker.New(rdb, cfg)
	if err != nil {
		t.Fatalf("worker.New: %v", err)
	}
	if err := b.w.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(b.w.Shutdown)
	b.client = asynq.NewClientFromRedisClient(rdb)
	insp := asynq.NewInspectorFromRedisClient(rdb)
	b.look = &queue.Lookup{Inspector: insp, Store: b.store}
	return b
}

// bothModes runs f twice, in parallel: with the commands of a transaction
// pipelined (the test server offers PIPELINING) and sent one by one.
// Outcomes must not depend on it.
func bothModes(t *testing.T, f func(t *testing.T, noPipelining bool)) {
	for _, mode := range []struct {
		name string
		off  bool
	}{{"pipelined", false}, {"one-by-one", true}} {
		t.Run(mode.name, func(t *testing.T) {
			t.Parallel()
			f(t, mode.off)
		})
	}
}

func newEmail(to ...string) *queue.Email {
	e := &queue.Email{
		ID:        uuid.NewString(),
		CreatedAt: time.Now().UTC(),
		From:      queue.Address{Address: "sender@example.com"},
		Subject:   "hello",
		Body:      "<p>hi</p>",
		IsHTML:    true,
	}
	for _, a := range to {
		e.To = append(e.To, queue.Address{Address: a})
	}
	return e
}

func (b *testBundle) enqueue(t *testing.T, e *queue.Email, maxAttempts int) {
	t.Helper()
	task, err := queue.NewTask(e)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.client.Enqueue(task, asynq.MaxRetry(maxAttempts-1), asynq.Retention(time.Hour)); err != nil {
		t.Fatalf("Enqueue: %v", err)
	}
}

// sentOnceAfter enqueues an email to a@example.com (5 attempts allowed)
// and checks that it ends sent after attempts attempts, delivered once.
func (b *testBundle) sentOnceAfter(t *testing.T, attempts int) *queue.EmailStatus {
	t.Helper()
	e := newEmail("a@example.com")
	b.enqueue(t, e, 5)
	st := b.waitFinal(t, e.ID)
	if st.Status != queue.StatusSent || st.Attempts != attempts {
		t.Fatalf("status %s attempts %d; want sent after %d", st.Status, st.Attempts, attempts)
	}
	if got := b.smtp.Copies()["a@example.com"]; got != 1 {
		t.Errorf("copies = %d; want 1", got)
	}
	return st
}

// waitFinal polls the status API's view until the email is sent or failed.
func (b *testBundle) waitFinal(t *testing.T, id string) *queue.EmailStatus {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		st, err := b.look.Status(context.Background(), id)
		if err == nil && (st.Status == queue.StatusSent || st.Status == queue.StatusFailed) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("email %s not finished in 20s: %+v (err %v)", id, st, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func rcpt(st *queue.EmailStatus, addr string) queue.RecipientStatus {
	for _, r := range st.Recipients {
		if r.Address == addr {
			return r
		}
	}
	return queue.RecipientStatus{}
}

func smtpErr(code int, enh smtp.EnhancedCode, msg string) error {
	return &smtp.SMTPError{Code: code, EnhancedCode: enh, Message: msg}
}

func TestDeliversOnceWithSameMessageID(t *testing.T) {
	t.Parallel()
	bothModes(t, func(t *testing.T, noPipelining bool) {
		b := setup(t, setupOpts{noPipelining: noPipelining})
		e := newEmail("a@example.com", "b@example.com")
		e.Bcc = []queue.Address{{Address: "hidden@example.com"}}
		b.enqueue(t, e, 3)
		st := b.waitFinal(t, e.ID)
		if st.Status != queue.StatusSent || st.Attempts != 1 || st.SentAt == nil {
			t.Fatalf("status = %s attempts %d sent_at %v; want sent, 1, set", st.Status, st.Attempts, st.SentAt)
		}
		msgs := b.smtp.Messages()
		if len(msgs) != 1 {
			t.Fatalf("server got %d messages; want 1", len(msgs))
		}
		if got := strings.Join(msgs[0].To, ","); got != "a@example.com,b@example.com,hidden@example.com" {
			t.Errorf("RCPT TO = %s; want a, b, hidden", got)
		}
		m, err := mail.ReadMessage(bytes.NewReader(msgs[0].Data))
		if err != nil {
			t.Fatal(err)
		}
		if got, want := m.Header.Get("Message-Id"), "<"+e.ID+"@example.com>"; got != want {
			t.Errorf("Message-ID = %q; want %q", got, want)
		}
		if m.Header.Get("Bcc") != "" || bytes.Contains(msgs[0].Data, []byte("hidden@")) {
			t.Errorf("the Bcc recipient shows in the message")
		}
	})
}

func TestTransientThenAccept(t *testing.T) {
	t.Parallel()
	bothModes(t, func(t *testing.T, noPipelining bool) {
		var n atomic.Int32
		b := setup(t, setupOpts{noPipelining: noPipelining, smtpOpts: []smtptest.Option{smtptest.WithHooks(smtptest.Hooks{
			Rcpt: func(_ *smtptest.Session, to string) error {
				if n.Add(1) == 1 {
					return smtpErr(451, smtp.EnhancedCode{4, 3, 0}, "try again later")
				}
				return nil
			},
		})}})
		b.sentOnceAfter(t, 2)
		if got := testutil.ToFloat64(b.m.Attempts.WithLabelValues(metrics.OutcomeRetry)); got != 1 {
			t.Errorf("retry attempts metric = %v; want 1", got)
		}
	})
}

func TestPermanentFailureIsNotRetried(t *testing.T) {
	t.Parallel()
	bothModes(t, func(t *testing.T, noPipelining bool) {
		b := setup(t, setupOpts{noPipelining: noPipelining, smtpOpts: []smtptest.Option{smtptest.WithHooks(smtptest.Hooks{
			Rcpt: func(_ *smtptest.Session, to string) error {
				return smtpErr(550, smtp.EnhancedCode{5, 1, 1}, "no such user")
			},
		})}})
		e := newEmail("nobody@example.com")
		b.enqueue(t, e, 5)
		st := b.waitFinal(t, e.ID)
		r := rcpt(st, "nobody@example.com")
		if st.Status != queue.StatusFailed || st.Attempts != 1 || st.FailureReason != queue.ReasonPermanent {
			t.Fatalf("status %s attempts %d reason %q; want failed, 1, permanent", st.Status, st.Attempts, st.FailureReason)
		}
		if r.Status != queue.RecipientFailed || r.Code != 550 || r.EnhancedCode != "5.1.1" || r.Message != "no such user" {
			t.Errorf("recipient = %+v; want failed 550 5.1.1 no such user", r)
		}
		if !strings.Contains(st.LastError, "550 5.1.1") {
			t.Errorf("last_error = %q; want the 550 reply", st.LastError)
		}
		if got := testutil.ToFloat64(b.m.EmailsFailed.WithLabelValues(queue.ReasonPermanent)); got != 1 {
			t.Errorf("emails_failed_total{reason=permanent} = %v; want 1", got)
		}
	})
}

func TestMixedRecipientsAreJudgedOneByOne(t *testing.T) {
	t.Parallel()
	bothModes(t, func(t *testing.T, noPipelining bool) {
		var deferredOnce atomic.Bool
		b := setup(t, setupOpts{noPipelining: noPipelining, smtpOpts: []smtptest.Option{smtptest.WithHooks(smtptest.Hooks{
			Rcpt: func(_ *smtptest.Session, to string) error {
				switch to {
				case "later@example.com":
					if deferredOnce.CompareAndSwap(false, true) {
						return smtpErr(451, smtp.EnhancedCode{4, 2, 1}, "mailbox busy")
					}
				case "bad@example.com":
					return smtpErr(550, smtp.EnhancedCode{5, 1, 1}, "no such user")
				}
				return nil
			},
		})}})
		e := newEmail("ok@example.com", "later@example.com", "bad@example.com")
		b.enqueue(t, e, 5)
		st := b.waitFinal(t, e.ID)
		copies := b.smtp.Copies()
		for addr, want := range map[string]int{"ok@example.com": 1, "later@example.com": 1, "bad@example.com": 0} {
			if copies[addr] != want {
				t.Errorf("copies[%s] = %d; want %d", addr, copies[addr], want)
			}
		}
		if st.Status != queue.StatusFailed || st.Attempts != 2 {
			t.Errorf("status %s attempts %d; want failed after 2 (bad@ failed, none pending)", st.Status, st.Attempts)
		}
		for addr, want := range map[string]string{"ok@example.com": "sent", "later@example.com": "sent", "bad@example.com": "failed"} {
			if got := rcpt(st, addr).Status; got != want {
				t.Errorf("recipient %s = %s; want %s", addr, got, want)
			}
		}
		// The retry carried only the deferred recipient.
		msgs := b.smtp.Messages()
		if len(msgs) != 2 || strings.Join(msgs[1].To, ",") != "later@example.com" {
			t.Errorf("second transaction RCPT = %v; want only later@example.com", msgs)
		}
	})
}

func TestConnectionDroppedDuringDataIsRetried(t *testing.T) {
	t.Parallel()
	bothModes(t, func(t *testing.T, noPipelining bool) {
		var dropped atomic.Bool
		b := setup(t, setupOpts{noPipelining: noPipelining, smtpOpts: []smtptest.Option{smtptest.WithHooks(smtptest.Hooks{
			Data: func(s *smtptest.Session, _ []byte) error {
				if dropped.CompareAndSwap(false, true) {
					_ = s.Conn.Conn().Close() // gone before the server took the message
					return errors.New("dropped")
				}
				return nil
			},
		})}})
		b.sentOnceAfter(t, 2)
	})
}

// A connection lost after the final dot, before the reply, leaves the
// outcome unknown: sendq retries (transient) and the second copy carries
// the same Message-ID. This is the one duplicate SMTP cannot prevent.
func TestNoReplyAfterFinalDotRetriesWithSameMessageID(t *testing.T) {
	t.Parallel()
	bothModes(t, func(t *testing.T, noPipelining bool) {
		var dropped atomic.Bool
		b := setup(t, setupOpts{noPipelining: noPipelining, smtpOpts: []smtptest.Option{smtptest.WithHooks(smtptest.Hooks{
			Data: func(*smtptest.Session, []byte) error {
				if dropped.CompareAndSwap(false, true) {
					return smtptest.DropConnection
				}
				return nil
			},
		})}})
		e := newEmail("a@example.com")
		b.enqueue(t, e, 5)
		st := b.waitFinal(t, e.ID)
		if st.Status != queue.StatusSent || st.Attempts != 2 {
			t.Fatalf("status %s attempts %d; want sent after 2", st.Status, st.Attempts)
		}
		msgs := b.smtp.Messages()
		if len(msgs) != 2 {
			t.Fatalf("server holds %d copies; want 2 (the known duplicate)", len(msgs))
		}
		id := func(m smtptest.Message) string {
			mm, err := mail.ReadMessage(bytes.NewReader(m.Data))
			if err != nil {
				t.Fatal(err)
			}
			return mm.Header.Get("Message-Id")
		}
		if id(msgs[0]) != id(msgs[1]) {
			t.Errorf("Message-IDs differ: %s vs %s", id(msgs[0]), id(msgs[1]))
		}
	})
}

func TestResetFailureAfter250MeansDelivered(t *testing.T) {
	t.Parallel()
	bothModes(t, func(t *testing.T, noPipelining bool) {
		var armed atomic.Bool
		b := setup(t, setupOpts{noPipelining: noPipelining, smtpOpts: []smtptest.Option{smtptest.WithHooks(smtptest.Hooks{
			Data: func(*smtptest.Session, []byte) error { armed.Store(true); return nil },
			Reset: func(s *smtptest.Session) {
				if armed.CompareAndSwap(true, false) {
					_ = s.Conn.Conn().Close() // the 250 went out; RSET will fail
				}
			},
		})}})
		b.sentOnceAfter(t, 1)
	})
}

func Test421ClosesConnectionAndRetries(t *testing.T) {
	t.Parallel()
	bothModes(t, func(t *testing.T, noPipelining bool) {
		var once atomic.Bool
		b := setup(t, setupOpts{noPipelining: noPipelining, smtpOpts: []smtptest.Option{smtptest.WithHooks(smtptest.Hooks{
			Mail: func(s *smtptest.Session, _ string) error {
				if once.CompareAndSwap(false, true) {
					return smtpErr(421, smtp.EnhancedCode{4, 7, 0}, "too many connections, closing")
				}
				return nil
			},
		})}})
		e := newEmail("a@example.com")
		b.enqueue(t, e, 5)
		st := b.waitFinal(t, e.ID)
		if st.Status != queue.StatusSent || st.Attempts != 2 {
			t.Fatalf("status %s attempts %d; want sent after 2", st.Status, st.Attempts)
		}
		if sessions, _, _ := b.smtp.Stats(); sessions != 2 {
			t.Errorf("sessions = %d; want 2 (the connection that got 421 is not reused)", sessions)
		}
	})
}

func TestSlowServerTimesOutAndRetries(t *testing.T) {
	t.Parallel()
	bothModes(t, func(t *testing.T, noPipelining bool) {
		var once atomic.Bool
		// The slow answer ends with the test at the latest, so that no server
		// goroutine outlives it (goleak checks).
		testDone := make(chan struct{})
		b := setup(t, setupOpts{
			noPipelining: noPipelining,
			smtpOpts: []smtptest.Option{smtptest.WithHooks(smtptest.Hooks{
				Mail: func(*smtptest.Session, string) error {
					if once.CompareAndSwap(false, true) {
						select {
						case <-time.After(1500 * time.Millisecond):
						case <-testDone:
						}
					}
					return nil
				},
			})},
			cfg: func(c *worker.Config) { c.Pool.CommandTimeout = 300 * time.Millisecond },
		})
		t.Cleanup(func() { close(testDone) }) // runs before the server's Close (cleanups run last-in first-out)
		e := newEmail("a@example.com")
		b.enqueue(t, e, 5)
		st := b.waitFinal(t, e.ID)
		if st.Status != queue.StatusSent || st.Attempts < 2 {
			t.Fatalf("status %s attempts %d; want sent after a timed-out attempt", st.Status, st.Attempts)
		}
		if got := b.smtp.Copies()["a@example.com"]; got != 1 {
			t.Errorf("copies = %d; want 1", got)
		}
	})
}

func TestIdleConnectionClosedByServerIsRedialed(t *testing.T) {
	t.Parallel()
	bothModes(t, func(t *testing.T, noPipelining bool) {
		b := setup(t, setupOpts{noPipelining: noPipelining, smtpOpts: []smtptest.Option{smtptest.WithReadTimeout(150 * time.Millisecond)}})
		first := newEmail("a@example.com")
		b.enqueue(t, first, 5)
		b.waitFinal(t, first.ID)
		time.Sleep(400 * time.Millisecond) // the server drops the idle connection
		second := newEmail("b@example.com")
		b.enqueue(t, second, 5)
		st := b.waitFinal(t, second.ID)
		if st.Status != queue.StatusSent || st.Attempts != 1 {
			t.Errorf("status %s attempts %d; want sent in 1 attempt (stale connection redialed at once)", st.Status, st.Attempts)
		}
	})
}

func TestAuthPlainWithEscapedCredentialsNeverLogsPassword(t *testing.T) {
	t.Parallel()
	const pass = "s3cr:t/p@ss%word"
	b := setup(t, setupOpts{
		smtpOpts: []smtptest.Option{smtptest.WithAuth("mailer", pass)},
		relayURL: func(addr string) string {
			return "smtp://mailer:" + "s3cr%3At%2Fp%40ss%25word" + "@" + addr + "?tls=none&auth=plain"
		},
	})
	e := newEmail("a@example.com")
	b.enqueue(t, e, 3)
	st := b.waitFinal(t, e.ID)
	if st.Status != queue.StatusSent {
		t.Fatalf("status %s (%s); want sent", st.Status, st.LastError)
	}
	if _, _, auths := b.smtp.Stats(); auths != 1 {
		t.Errorf("auths = %d; want 1", auths)
	}
	if strings.Contains(b.logs.String(), pass) || strings.Contains(b.logs.String(), "s3cr") {
		t.Errorf("the SMTP password appears in the logs")
	}
}

func TestBadCredentialsAreTransientNotPermanent(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{
		smtpOpts: []smtptest.Option{smtptest.WithAuth("mailer", "right")},
		relayURL: func(addr string) string { return "smtp://mailer:wrong@" + addr + "?tls=none&auth=plain" },
	})
	e := newEmail("a@example.com")
	b.enqueue(t, e, 2)
	st := b.waitFinal(t, e.ID)
	// A relay refusing our login says nothing about the message: it is
	// retried (and here fails once attempts run out), never judged 5xx.
	if st.Status != queue.StatusFailed || st.Attempts != 2 || st.FailureReason != queue.ReasonTransient {
		t.Errorf("status %s attempts %d reason %s; want failed after 2, transient", st.Status, st.Attempts, st.FailureReason)
	}
	if strings.Contains(b.logs.String(), "wrong") {
		t.Errorf("the SMTP password appears in the logs")
	}
}

func TestRedeliveredTaskSkipsRecipientsAlreadySent(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	e := newEmail("done@example.com", "todo@example.com")
	// A worker crashed after recording done@ as sent and before the ack:
	// the task comes back with that record in place.
	if err := b.store.Save(context.Background(), e.ID, queue.Update{Recipients: map[string]queue.RecipientResult{
		"done@example.com": {Status: queue.RecipientSent, Reply: queue.Reply{Code: 250}, UpdatedAt: time.Now()},
	}}); err != nil {
		t.Fatal(err)
	}
	b.enqueue(t, e, 3)
	st := b.waitFinal(t, e.ID)
	if st.Status != queue.StatusSent {
		t.Fatalf("status %s; want sent", st.Status)
	}
	copies := b.smtp.Copies()
	if copies["done@example.com"] != 0 || copies["todo@example.com"] != 1 {
		t.Errorf("copies = %v; want done@ 0 (already sent), todo@ 1", copies)
	}
}

func TestAttemptsRunOut(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{smtpOpts: []smtptest.Option{smtptest.WithHooks(smtptest.Hooks{
		Rcpt: func(*smtptest.Session, string) error {
			return smtpErr(451, smtp.EnhancedCode{4, 4, 1}, "not now")
		},
	})}})
	e := newEmail("a@example.com")
	b.enqueue(t, e, 3)
	st := b.waitFinal(t, e.ID)
	if st.Status != queue.StatusFailed || st.Attempts != 3 || st.FailureReason != queue.ReasonTransient {
		t.Errorf("status %s attempts %d reason %s; want failed after 3, transient", st.Status, st.Attempts, st.FailureReason)
	}
	if r := rcpt(st, "a@example.com"); r.Status != queue.RecipientFailed || r.Code != 451 {
		t.Errorf("recipient = %+v; want failed with the last 451", r)
	}
}

func TestExpiredEmailIsFailedNotSent(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{cfg: func(c *worker.Config) { c.MaxAge = time.Minute }})
	e := newEmail("a@example.com")
	e.CreatedAt = time.Now().Add(-2 * time.Minute)
	b.enqueue(t, e, 3)
	st := b.waitFinal(t, e.ID)
	if st.Status != queue.StatusFailed || st.FailureReason != queue.ReasonExpired {
		t.Errorf("status %s reason %s; want failed, expired", st.Status, st.FailureReason)
	}
	if n := len(b.smtp.Messages()); n != 0 {
		t.Errorf("server got %d messages; want 0", n)
	}
}

func TestDeliveryReceiptAsksForDSN(t *testing.T) {
	t.Parallel()
	bothModes(t, func(t *testing.T, noPipelining bool) {
		b := setup(t, setupOpts{noPipelining: noPipelining, smtpOpts: []smtptest.Option{smtptest.WithDSN()}})
		e := newEmail("a@example.com")
		e.DeliveryReceipt = true
		e.ReturnPath = "bounces@example.com"
		b.enqueue(t, e, 3)
		b.waitFinal(t, e.ID)
		msgs := b.smtp.Messages()
		if len(msgs) != 1 {
			t.Fatalf("got %d messages", len(msgs))
		}
		if msgs[0].From != "bounces@example.com" {
			t.Errorf("MAIL FROM = %s; want the DeliveryReceipt address", msgs[0].From)
		}
		if got := fmt.Sprint(msgs[0].Notify["a@example.com"]); got != "[SUCCESS FAILURE DELAY]" {
			t.Errorf("NOTIFY = %s; want SUCCESS,FAILURE,DELAY", got)
		}
		if msgs[0].Opts == nil || msgs[0].Opts.Return != smtp.DSNReturnHeaders {
			t.Errorf("RET = %+v; want HDRS", msgs[0].Opts)
		}
	})
}

func TestPoolCapsConnectionsAndReusesThem(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{cfg: func(c *worker.Config) { c.Concurrency = 16 }})
	const n = 400
	ids := make([]string, n)
	for i := range ids {
		e := newEmail(fmt.Sprintf("r%d@example.com", i))
		ids[i] = e.ID
		b.enqueue(t, e, 3)
	}
	for _, id := range ids {
		if st := b.waitFinal(t, id); st.Status != queue.StatusSent {
			t.Fatalf("email %s: %s (%s)", id, st.Status, st.LastError)
		}
	}
	sessions, maxOpen, _ := b.smtp.Stats()
	t.Logf("%d emails: %d SMTP sessions, at most %d open at once", n, sessions, maxOpen)
	if maxOpen > 4 {
		t.Errorf("server saw %d connections at once; pool size is 4", maxOpen)
	}
	if sessions > 20 {
		t.Errorf("server saw %d sessions for %d emails; want connections reused", sessions, n)
	}
	if got := len(b.smtp.Messages()); got != n {
		t.Errorf("server got %d messages; want %d", got, n)
	}
}

// Two worker processes share one relay limit through Redis: in any one
// second the relay never sees more than the limit allows (burst included).
func TestRelayRateIsSharedAcrossWorkers(t *testing.T) {
	t.Parallel()
	limit, _ := queue.ParseRate("10/s")
	var mu sync.Mutex
	var arrivals []time.Time
	b := setup(t, setupOpts{
		smtpOpts: []smtptest.Option{smtptest.WithHooks(smtptest.Hooks{Data: func(*smtptest.Session, []byte) error {
			mu.Lock()
			arrivals = append(arrivals, time.Now())
			mu.Unlock()
			return nil
		}})},
		cfg: func(c *worker.Config) { c.SMTPRate = limit },
	})
	// A second worker on the same Redis and relay.
	relay, _ := worker.ParseRelay("smtp://" + b.smtp.Addr + "?tls=none")
	reg := prometheus.NewRegistry()
	w2, err := worker.New(b.rdb, worker.Config{Relay: relay, Store: b.store, Metrics: metrics.New(reg, reg),
		SMTPRate: limit, PollInterval: 50 * time.Millisecond, Pool: worker.PoolConfig{Size: 4, CommandTimeout: 2 * time.Second},
		Logger: slog.New(slog.NewTextHandler(b.logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if err := w2.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w2.Shutdown)
	var ids []string
	for i := 0; i < 25; i++ {
		e := newEmail(fmt.Sprintf("r%d@example.com", i))
		ids = append(ids, e.ID)
		b.enqueue(t, e, 3)
	}
	for _, id := range ids {
		b.waitFinal(t, id)
	}
	mu.Lock()
	defer mu.Unlock()
	// GCRA with rate 10/s and burst 10: any window of one second holds at
	// most 10 (burst) + 10 (refill) sends.
	for i := range arrivals {
		n := 0
		for _, a := range arrivals[i:] {
			if a.Sub(arrivals[i]) < time.Second {
				n++
			}
		}
		if n > 20 {
			t.Fatalf("%d sends within one second; the shared limit allows 20", n)
		}
	}
	limited := testutil.ToFloat64(b.m.RateLimited.WithLabelValues("relay"))
	if limited == 0 {
		t.Errorf("rate_limited_total{scope=relay} = 0; 25 emails at 10/s must have waited")
	}
}

func TestThrottlingReplyPausesSends(t *testing.T) {
	t.Parallel()
	var once atomic.Bool
	b := setup(t, setupOpts{smtpOpts: []smtptest.Option{smtptest.WithHooks(smtptest.Hooks{
		Rcpt: func(*smtptest.Session, string) error {
			if once.CompareAndSwap(false, true) {
				return smtpErr(451, smtp.EnhancedCode{4, 7, 1}, "slow down")
			}
			return nil
		},
	})}})
	e := newEmail("a@example.com")
	b.enqueue(t, e, 5)
	st := b.waitFinal(t, e.ID)
	if st.Status != queue.StatusSent || st.Attempts != 2 {
		t.Errorf("status %s attempts %d; want sent after 2", st.Status, st.Attempts)
	}
	if got := testutil.ToFloat64(b.m.RelayThrottles); got != 1 {
		t.Errorf("smtp_throttle_replies_total = %v; want 1", got)
	}
	if !strings.Contains(b.logs.String(), "relay is throttling") {
		t.Errorf("no log line about the throttling relay")
	}
}

// An Idempotency-Key reused after the first email was forgotten gives the
// same id: the old email's record must not make sendq skip the new one's
// recipients.
func TestRecordOfAnEarlierEmailWithTheSameIDIsIgnored(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	e := newEmail("a@example.com")
	old := *e
	old.CreatedAt = e.CreatedAt.Add(-48 * time.Hour)
	if err := b.store.Save(context.Background(), e.ID, queue.Update{State: queue.StatusSent, CreatedAt: old.CreatedAt, Attempts: 3, Recipients: map[string]queue.RecipientResult{
		"a@example.com": {Status: queue.RecipientSent, Reply: queue.Reply{Code: 250}},
	}}); err != nil {
		t.Fatal(err)
	}
	b.enqueue(t, e, 3)
	st := b.waitFinal(t, e.ID)
	if st.Status != queue.StatusSent || st.Attempts != 1 {
		t.Errorf("status %s attempts %d; want sent in 1 attempt", st.Status, st.Attempts)
	}
	if got := b.smtp.Copies()["a@example.com"]; got != 1 {
		t.Errorf("copies = %d; want 1 (the earlier email's record does not count)", got)
	}
}

// A worker runs Fetchers asynq servers over one pool, splitting its
// concurrency, and they deliver together.
func TestFetchersSplitConcurrency(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{cfg: func(c *worker.Config) { c.Concurrency, c.Fetchers = 10, 4 }})
	insp := asynq.NewInspectorFromRedisClient(b.rdb)
	var got []int
	deadline := time.Now().Add(10 * time.Second)
	for {
		servers, err := insp.Servers()
		if err != nil {
			t.Fatal(err)
		}
		got = got[:0]
		for _, s := range servers {
			got = append(got, s.Concurrency)
		}
		if len(got) == 4 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	sort.Ints(got)
	if fmt.Sprint(got) != "[2 2 3 3]" {
		t.Errorf("servers' concurrency = %v; want [2 2 3 3] (10 over 4 fetchers)", got)
	}
	var ids []string
	for i := range 20 {
		e := newEmail(fmt.Sprintf("r%d@example.com", i))
		b.enqueue(t, e, 3)
		ids = append(ids, e.ID)
	}
	for _, id := range ids {
		if st := b.waitFinal(t, id); st.Status != queue.StatusSent {
			t.Errorf("email %s: %s; want sent", id, st.Status)
		}
	}
	if n := len(b.smtp.Messages()); n != 20 {
		t.Errorf("server got %d messages; want 20, each once", n)
	}
}
