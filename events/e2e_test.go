package events_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sendq/sendq/events"
	"github.com/sendq/sendq/internal/apitest"
	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/internal/smtptest"
	"github.com/sendq/sendq/metrics"
	"github.com/sendq/sendq/producer"
	"github.com/sendq/sendq/queue"
	"github.com/sendq/sendq/worker"
)

// system is sendq whole: the intake, a worker delivering to a real SMTP
// server, and webhook delivery to a real receiver, on one private Redis.
type system struct {
	api   *httptest.Server
	smtp  *smtptest.Server
	rcv   *receiver
	log   *events.Log
	store *queue.Store
	v     *apitest.Validator
	t     *testing.T
}

type systemOpts struct {
	smtpHooks smtptest.Hooks
	// wrap, if set, stands between the worker and the event log.
	wrap      func(worker.Events) worker.Events
	retryBase time.Duration // the webhook ladder's base; default 20ms
}

func startSystem(t *testing.T, o systemOpts) *system {
	t.Helper()
	rdb := redistest.Start(t).Client(t)
	secret := newSecret(t)
	s := &system{rcv: newReceiver(t, secret), v: apitest.NewValidator(t), t: t}
	s.smtp = smtptest.Start(t, smtptest.WithHooks(o.smtpHooks))
	reg := prometheus.NewRegistry()
	m := metrics.New(reg, reg)
	em := events.NewMetrics(reg)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	client := asynq.NewClientFromRedisClient(rdb)
	t.Cleanup(func() { _ = client.Close() })
	eps := endpoints(t, s.rcv.srv.URL+"/sendq-events")
	var err error
	s.log, err = events.NewLog(rdb, client, events.LogConfig{Endpoints: eps, Metrics: em, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	s.store = queue.NewStore(rdb, time.Hour)
	secrets, _ := events.ParseSecrets(secret)
	if o.retryBase == 0 {
		o.retryBase = 20 * time.Millisecond
	}
	d, err := events.NewDeliverer(rdb, events.DelivererConfig{Endpoints: eps, Secrets: secrets, Log: s.log, Metrics: em,
		Logger: logger, RetryBase: o.retryBase, PollInterval: 20 * time.Millisecond,
		SweepAfter: 500 * time.Millisecond, SweepInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Shutdown)
	relay, err := worker.ParseRelay("smtp://" + s.smtp.Addr + "?tls=none")
	if err != nil {
		t.Fatal(err)
	}
	var wev worker.Events = s.log
	if o.wrap != nil {
		wev = o.wrap(s.log)
	}
	w, err := worker.New(rdb, worker.Config{Relay: relay, Pool: worker.PoolConfig{Size: 4, CommandTimeout: 2 * time.Second},
		RetryBaseDelay: 50 * time.Millisecond, RetryMaxDelay: 200 * time.Millisecond, PollInterval: 50 * time.Millisecond,
		Store: s.store, Events: wev, Logger: logger, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Shutdown)
	api, err := producer.New(rdb, client, asynq.NewInspectorFromRedisClient(rdb), s.store,
		producer.Config{Metrics: m, Events: s.log, Logger: logger, MaxAttempts: 3})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	api.Register(mux)
	s.api = httptest.NewServer(mux)
	t.Cleanup(s.api.Close)
	return s
}

// do makes an API call, checks it against the OpenAPI document and
// decodes the answer into out.
func (s *system) do(method, path, body string, want int, out any) {
	s.t.Helper()
	req, err := http.NewRequest(method, s.api.URL+path, strings.NewReader(body))
	if err != nil {
		s.t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := s.api.Client().Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	rb, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		s.t.Fatalf("%s %s = %d %s; want %d", method, path, resp.StatusCode, rb, want)
	}
	s.v.Check(s.t, req, []byte(body), resp, rb)
	if out != nil {
		if err := json.Unmarshal(rb, out); err != nil {
			s.t.Fatalf("%s %s: %v", method, path, err)
		}
	}
}

func (s *system) send(body string) string {
	s.t.Helper()
	var acc producer.Accepted
	s.do("POST", "/v1/emails", body, http.StatusAccepted, &acc)
	return acc.ID
}

// webhook is a received body, decoded.
type webhook struct {
	Type      string      `json:"type"`
	Timestamp time.Time   `json:"timestamp"`
	Data      events.Data `json:"data"`
	id        string
}

func (s *system) webhooks() []webhook {
	var out []webhook
	for _, h := range s.rcv.delivered() {
		var w webhook
		if err := json.Unmarshal(h.Body, &w); err != nil {
			s.t.Fatalf("webhook body %s: %v", h.Body, err)
		}
		w.id = h.ID
		out = append(out, w)
	}
	return out
}

// An email through the intake and a worker to SMTP: the receiver gets an
// email.sent per recipient, signed, with the send's Metadata; the API shows
// the same events and the status echoes the Metadata.
func TestEndToEndSentEvents(t *testing.T) {
	t.Parallel()
	s := startSystem(t, systemOpts{})
	id := s.send(`{"From":"shop@example.com","To":"a@example.com;b@example.com","Subject":"Your order","Body":"hi",
		"Metadata":{"order_id":"1234","tenant":"contoso"}}`)
	waitFor(t, 10*time.Second, "two email.sent webhooks", func() bool { return len(s.rcv.delivered()) == 2 })
	if len(s.smtp.Messages()) != 1 {
		t.Errorf("%d messages reached SMTP; want 1", len(s.smtp.Messages()))
	}
	got := map[string]webhook{}
	for _, w := range s.webhooks() {
		got[w.Data.Recipient] = w
		if w.Type != events.TypeSent || w.Data.EmailID != id || w.Data.Status != "sent" || w.Data.Attempt != 1 ||
			w.Data.Code != 250 || w.Data.Metadata["order_id"] != "1234" || w.Data.Metadata["tenant"] != "contoso" || w.Data.BatchID != "" {
			t.Errorf("webhook %+v; want email.sent of %s, attempt 1, code 250, the Metadata", w, id)
		}
	}
	if got["a@example.com"].Data.Sequence != 1 || got["b@example.com"].Data.Sequence != 2 {
		t.Errorf("sequences a %d, b %d; want 1 and 2", got["a@example.com"].Data.Sequence, got["b@example.com"].Data.Sequence)
	}

	var st queue.EmailStatus
	s.do("GET", "/v1/emails/"+id, "", http.StatusOK, &st)
	if st.Metadata["order_id"] != "1234" {
		t.Errorf("status metadata = %v; want the send's", st.Metadata)
	}
	var mine producer.EmailEvents
	s.do("GET", "/v1/emails/"+id+"/events", "", http.StatusOK, &mine)
	if len(mine.Events) != 2 || mine.Events[0].ID != got["a@example.com"].id || mine.Events[1].ID != got["b@example.com"].id {
		t.Errorf("GET events = %+v; want the two webhooks' ids in sequence", mine.Events)
	}
	var all producer.EventLog
	s.do("GET", "/v1/events", "", http.StatusOK, &all)
	if len(all.Events) != 2 || all.NextCursor == "" {
		t.Fatalf("GET /v1/events = %+v; want both events and a cursor", all)
	}
	var more producer.EventLog
	s.do("GET", "/v1/events?after="+all.NextCursor+"&limit=10", "", http.StatusOK, &more)
	if len(more.Events) != 0 || more.NextCursor != all.NextCursor {
		t.Errorf("GET /v1/events?after=last = %+v; want nothing new, the same cursor", more)
	}
	s.do("GET", "/v1/events?after=nope", "", http.StatusBadRequest, nil)
	s.do("GET", "/v1/events?limit=0", "", http.StatusBadRequest, nil)
	s.do("GET", "/v1/emails/01936f5e-0000-7000-8000-000000000000/events", "", http.StatusNotFound, nil)
	s.do("POST", "/v1/emails", `{"From":"s@example.com","To":"a@example.com","Metadata":{"n":1}}`, http.StatusBadRequest, nil)
}

// One event per recipient change, across attempts: deferred then sent,
// failed at once; sequences grow per email.
func TestEndToEndDeferredFailedSent(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	deferred := 0
	s := startSystem(t, systemOpts{smtpHooks: smtptest.Hooks{Rcpt: func(_ *smtptest.Session, to string) error {
		switch to {
		case "later@example.com":
			mu.Lock()
			defer mu.Unlock()
			if deferred++; deferred == 1 {
				return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try again"}
			}
		case "nobody@example.com":
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
		}
		return nil
	}}})
	id := s.send(`{"From":"s@example.com","To":"ok@example.com;later@example.com;nobody@example.com","Body":"x"}`)
	waitFor(t, 15*time.Second, "four webhooks", func() bool { return len(s.rcv.delivered()) == 4 })
	var evs producer.EmailEvents
	s.do("GET", "/v1/emails/"+id+"/events", "", http.StatusOK, &evs)
	var seen []string
	for i, ev := range evs.Events {
		if ev.Data.Sequence != int64(i+1) {
			t.Errorf("event %d has sequence %d", i, ev.Data.Sequence)
		}
		seen = append(seen, fmt.Sprintf("%s %s %d %d", ev.Type, ev.Data.Recipient, ev.Data.Attempt, ev.Data.Code))
	}
	want := []string{
		"email.sent ok@example.com 1 250", "email.deferred later@example.com 1 451", "email.failed nobody@example.com 1 550",
		"email.sent later@example.com 2 250",
	}
	if fmt.Sprint(seen) != fmt.Sprint(want) {
		t.Errorf("events\n%s\nwant\n%s", strings.Join(seen, "\n"), strings.Join(want, "\n"))
	}
	if f := evs.Events[2]; f.Data.EnhancedCode != "5.1.1" || f.Data.Status != "failed" || f.Data.Message == "" {
		t.Errorf("email.failed data = %+v; want the 550 5.1.1 reply", f.Data)
	}
}

// DELETE of a scheduled email: an email.canceled per recipient.
func TestEndToEndCanceled(t *testing.T) {
	t.Parallel()
	s := startSystem(t, systemOpts{})
	sendAt := time.Now().Add(24 * time.Hour).UTC().Format(time.RFC3339)
	id := s.send(`{"From":"s@example.com","To":"a@example.com","Bcc":"b@example.com","SendAt":"` + sendAt + `","Metadata":{"k":"v"}}`)
	s.do("DELETE", "/v1/emails/"+id, "", http.StatusOK, nil)
	waitFor(t, 10*time.Second, "two email.canceled", func() bool { return len(s.rcv.delivered()) == 2 })
	for _, w := range s.webhooks() {
		if w.Type != events.TypeCanceled || w.Data.Status != "canceled" || w.Data.EmailID != id || w.Data.Metadata["k"] != "v" {
			t.Errorf("webhook %+v; want email.canceled of %s", w, id)
		}
	}
	if n := len(s.smtp.Messages()); n != 0 {
		t.Errorf("%d messages sent; want 0", n)
	}
}

// abortAfterStore is the worker's process dying between the record's
// write (with the events in it) and the hand-off: the hand-off never runs.
type abortAfterStore struct {
	next    worker.Events
	aborted chan struct{}
	once    sync.Once
}

func (a *abortAfterStore) Attempt(e *queue.Email, attempt int, results map[string]queue.RecipientResult) (queue.Extra, func(context.Context) error, error) {
	extra, _, err := a.next.Attempt(e, attempt, results)
	return extra, func(context.Context) error {
		a.once.Do(func() { close(a.aborted) })
		return nil // the process is gone: nothing is handed off
	}, err
}

func TestEndToEndEventsSurviveADeathBetweenRecordAndHandOff(t *testing.T) {
	t.Parallel()
	ab := &abortAfterStore{aborted: make(chan struct{})}
	s := startSystem(t, systemOpts{wrap: func(next worker.Events) worker.Events { ab.next = next; return ab }})
	id := s.send(`{"From":"s@example.com","To":"a@example.com;b@example.com","Body":"x"}`)
	select {
	case <-ab.aborted:
	case <-time.After(10 * time.Second):
		t.Fatal("the worker never recorded the outcome")
	}
	waitFor(t, 10*time.Second, "both email.sent, through the sweeper", func() bool { return len(s.rcv.delivered()) == 2 })
	for _, w := range s.webhooks() {
		if w.Type != events.TypeSent || w.Data.EmailID != id {
			t.Errorf("webhook %+v", w)
		}
	}
	var all producer.EventLog
	s.do("GET", "/v1/events", "", http.StatusOK, &all)
	if len(all.Events) != 2 {
		t.Errorf("the log has %d events; want the 2 swept", len(all.Events))
	}
}

// The receiver is down for "10 minutes" of the schedule scaled by the
// base (5s -> 10ms: 1.2 s) while emails are sent, then back: every event
// arrives, duplicates carry the same webhook-id and body, none is lost.
func TestReceiverDownUnderLoadLosesNothing(t *testing.T) {
	t.Parallel()
	const base = 10 * time.Millisecond
	down := time.Duration(float64(10*time.Minute) * float64(base) / float64(events.DefaultRetryBase))
	s := startSystem(t, systemOpts{retryBase: base})
	upAt := time.Now().Add(down)
	s.rcv.setAnswer(func(int, *http.Request) int {
		if time.Now().Before(upAt) {
			return http.StatusServiceUnavailable
		}
		return http.StatusOK
	})
	const emails, perEmail = 60, 2
	ids := map[string]bool{}
	for i := range emails {
		ids[s.send(fmt.Sprintf(`{"From":"s@example.com","To":"a%d@example.com;b%d@example.com","Body":"x"}`, i, i))] = true
	}
	// Every event the API knows of, from the log.
	want := map[string]bool{}
	waitFor(t, 30*time.Second, "every event in the log", func() bool {
		var page producer.EventLog
		s.do("GET", "/v1/events?limit=1000", "", http.StatusOK, &page)
		for _, ev := range page.Events {
			if !ids[ev.Data.EmailID] || ev.Type != events.TypeSent {
				t.Fatalf("unexpected event %+v", ev)
			}
			want[ev.ID] = true
		}
		return len(want) == emails*perEmail
	})
	waitFor(t, 60*time.Second, "every event delivered", func() bool {
		got := map[string]bool{}
		for _, h := range s.rcv.delivered() {
			got[h.ID] = true
		}
		return len(got) == len(want)
	})
	bodies := map[string][]byte{}
	failed, dups := 0, 0
	for _, h := range s.rcv.got() {
		if b, ok := bodies[h.ID]; ok && !bytes.Equal(b, h.Body) {
			t.Errorf("webhook %s came with two bodies:\n%s\n%s", h.ID, b, h.Body)
		}
		bodies[h.ID] = h.Body
		if h.Code/100 != 2 {
			failed++
		}
	}
	delivered := map[string]int{}
	for _, h := range s.rcv.delivered() {
		delivered[h.ID]++
		if delivered[h.ID] == 2 {
			dups++
		}
	}
	lost := 0
	for id := range want {
		if delivered[id] == 0 {
			lost++
		}
	}
	if lost != 0 {
		t.Errorf("%d events lost", lost)
	}
	t.Logf("receiver down %s: %d events, %d delivered, %d refused attempts while down, %d delivered twice, %d lost",
		down, len(want), len(delivered), failed, dups, lost)
}
