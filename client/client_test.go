package client_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"go/parser"
	"go/token"
	"io"
	"io/fs"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"net/mail"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sendq/sendq/client"
	"github.com/sendq/sendq/producer"
)

// newClient returns a client of url with apiKey, closed with the test.
func newClient(t *testing.T, url string, opts ...client.Option) *client.Client {
	t.Helper()
	c, err := client.New(url, apiKey, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestNewRefusesBadSettings(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		url  string
		key  string
		opts []client.Option
	}{
		{"127.0.0.1:8080", apiKey, nil}, // no scheme
		{"ftp://sendq.example.com", apiKey, nil},
		{"https://", apiKey, nil},
		{"https://sendq.example.com/?x=1", apiKey, nil},
		{"https://sendq.example.com", "key\r\nX-Evil: 1", nil},
		{"https://sendq.example.com", apiKey, []client.Option{client.WithBackoff(0, time.Second)}},
		{"https://sendq.example.com", apiKey, []client.Option{client.WithBackoff(time.Second, time.Millisecond)}},
		{"https://sendq.example.com", apiKey, []client.Option{client.WithPollInterval(0, 0)}},
	} {
		if c, err := client.New(tc.url, tc.key, tc.opts...); err == nil {
			c.Close()
			t.Errorf("New(%q, %q) = nil error; want one", tc.url, tc.key)
		}
	}
}

func TestSendWaitAndTheMessage(t *testing.T) {
	t.Parallel()
	s := newServer(t, nil)
	c := newClient(t, s.URL+"/", client.WithPollInterval(20*time.Millisecond, 200*time.Millisecond))
	ctx := ctxFor(t, 30*time.Second)

	pdf := []byte("%PDF-1.4 not really\x00\xff")
	acc, err := c.Send(ctx, client.Email{
		From: "Reports <reports@example.com>", To: "alice@example.org;bob@example.org", Bcc: "audit@example.org",
		Subject: "Monthly report", Body: "<p>Attached.</p>", Importance: client.ImportanceHigh,
		Attachments: []client.Attachment{{ContentData: pdf, ContentType: "application/pdf", FileName: "report.pdf"}},
	})
	if err != nil {
		t.Fatalf("Send = %v", err)
	}
	if acc.ID == "" || acc.Status != client.StateQueued {
		t.Errorf("Send = %+v; want an id, queued", acc)
	}
	st, err := c.Wait(ctx, acc.ID)
	if err != nil {
		t.Fatalf("Wait = %v", err)
	}
	if st.ID != acc.ID || st.Status != client.StateSent || st.Attempts != 1 || st.SentAt == nil || st.Subject != "Monthly report" || len(st.Recipients) != 3 {
		t.Fatalf("Wait = %+v; want sent in 1 attempt to 3 recipients", st)
	}
	for _, r := range st.Recipients {
		if r.Status != "sent" || r.Code != 250 {
			t.Errorf("recipient %+v; want sent with 250", r)
		}
	}
	if again, err := c.Status(ctx, acc.ID); err != nil || again.Status != client.StateSent {
		t.Errorf("Status = %+v, %v; want sent", again, err)
	}

	// Plain text when asked; HTML (sendq's default) above.
	plain, err := c.Send(ctx, client.Email{From: "reports@example.com", To: "carol@example.org", Subject: "plain", Body: "no <b>tags</b>", IsHtml: client.Bool(false)})
	if err != nil {
		t.Fatal(err)
	}
	if st, err := c.Wait(ctx, plain.ID); err != nil || st.Status != client.StateSent {
		t.Fatalf("Wait = %+v, %v", st, err)
	}
	msgs := s.Sink.Messages()
	if len(msgs) != 2 {
		t.Fatalf("the SMTP server got %d messages; want 2", len(msgs))
	}
	parts := func(data []byte) map[string][]byte {
		m, err := mail.ReadMessage(bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		out := map[string][]byte{}
		var walk func(ctype string, body io.Reader)
		walk = func(ctype string, body io.Reader) {
			mt, params, _ := mime.ParseMediaType(ctype)
			if !strings.HasPrefix(mt, "multipart/") {
				b, _ := io.ReadAll(body)
				out[mt] = b
				return
			}
			mr := multipart.NewReader(body, params["boundary"])
			for {
				p, err := mr.NextPart() // decodes quoted-printable, not base64
				if err != nil {
					return
				}
				b, _ := io.ReadAll(p)
				if strings.EqualFold(p.Header.Get("Content-Transfer-Encoding"), "base64") {
					b, _ = decodeBase64(b)
				}
				pt, _, _ := mime.ParseMediaType(p.Header.Get("Content-Type"))
				if strings.HasPrefix(pt, "multipart/") {
					walk(p.Header.Get("Content-Type"), bytes.NewReader(b))
					continue
				}
				out[pt] = b
			}
		}
		walk(m.Header.Get("Content-Type"), m.Body)
		return out
	}
	first := parts(msgs[0].Data)
	if !bytes.Equal(first["application/pdf"], pdf) || !strings.Contains(string(first["text/html"]), "<p>Attached.</p>") {
		t.Errorf("first message parts %q; want the HTML body and the PDF byte for byte", first)
	}
	if got := parts(msgs[1].Data); strings.TrimSpace(string(got["text/plain"])) != "no <b>tags</b>" {
		t.Errorf("second message parts %q; want the text/plain body", got)
	}
}

func TestRefusalsAreAPIErrorsAndNotRetried(t *testing.T) {
	t.Parallel()
	s := newServer(t, nil)
	c := newClient(t, s.URL, client.WithBackoff(time.Millisecond, time.Millisecond))
	ctx := ctxFor(t, 10*time.Second)

	_, err := c.Send(ctx, client.Email{From: "s@example.com", To: "bob@"})
	var ae *client.APIError
	if !errors.As(err, &ae) || ae.Status != 400 || ae.Code != "invalid_field" || ae.Field != "To" || ae.Message == "" || ae.Temporary() {
		t.Errorf("Send(To: bob@) = %v; want *APIError 400 invalid_field To", err)
	}
	if got := testutil.ToFloat64(s.M.HTTPRequests.WithLabelValues("POST /v1/emails", "400")); got != 1 {
		t.Errorf("the 400 was asked %v times; want once (no retry)", got)
	}

	bad, err := client.New(s.URL, "wrong-key-1234")
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	_, err = bad.Status(ctx, "01936f5e-6b7a-7c3d-9e2f-1a2b3c4d5e6f")
	if !errors.As(err, &ae) || ae.Status != 401 || ae.Code != "unauthorized" || ae.Field != "Authorization" {
		t.Errorf("Status with a wrong key = %v; want *APIError 401 unauthorized", err)
	}
	if strings.Contains(err.Error(), "wrong-key-1234") {
		t.Errorf("the error %q shows the API key", err)
	}
	_, err = c.Status(ctx, "01936f5e-0000-7000-8000-000000000000")
	if !errors.As(err, &ae) || ae.Status != 404 || ae.Code != "not_found" {
		t.Errorf("Status(unknown) = %v; want *APIError 404", err)
	}
}

func TestIdempotencyKeyGivenOrGenerated(t *testing.T) {
	t.Parallel()
	s := newServer(t, nil)
	c := newClient(t, s.URL)
	ctx := ctxFor(t, 10*time.Second)
	e := client.Email{From: "s@example.com", To: "a@example.com", Subject: "once"}

	a, err := c.Send(ctx, e, client.IdempotencyKey("order-42-confirmation"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.Send(ctx, e, client.IdempotencyKey("order-42-confirmation"))
	if err != nil || b.ID != a.ID {
		t.Fatalf("the same key again = %+v, %v; want the first id %s", b, err, a.ID)
	}
	other := e
	other.Subject = "twice?"
	_, err = c.Send(ctx, other, client.IdempotencyKey("order-42-confirmation"))
	var ae *client.APIError
	if !errors.As(err, &ae) || ae.Status != 409 || ae.Code != "idempotency_key_reused" {
		t.Errorf("the key with another email = %v; want *APIError 409", err)
	}

	// Without a key, each Send has its own: two emails. sendq derives the
	// id of a keyed email from the key (a version 5 UUID), so the ids show
	// a key was sent.
	x, err := c.Send(ctx, e)
	if err != nil {
		t.Fatal(err)
	}
	y, err := c.Send(ctx, e)
	if err != nil {
		t.Fatal(err)
	}
	if x.ID == y.ID || x.ID[14] != '5' || y.ID[14] != '5' {
		t.Errorf("two Sends without a key gave ids %s and %s; want two name-based (v5) ids", x.ID, y.ID)
	}
	if got := testutil.ToFloat64(s.M.EmailsAccepted); got != 3 {
		t.Errorf("emails_accepted_total = %v; want 3", got)
	}
}

// proxy forwards every request to sendq. For the first drop requests of
// method dropMethod it throws sendq's answer away and closes the
// client's connection: the request was served, the client never hears.
type proxy struct {
	target     string
	transport  *http.Transport
	dropMethod string
	mu         sync.Mutex
	drop       int
	keys       []string // the Idempotency-Key of each request, in order
}

func newProxy(t *testing.T, target, dropMethod string, drop int) (*proxy, string) {
	p := &proxy{target: target, transport: &http.Transport{}, dropMethod: dropMethod, drop: drop}
	srv := httptest.NewServer(p)
	t.Cleanup(func() { srv.Close(); p.transport.CloseIdleConnections() })
	return p, srv.URL
}

func (p *proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	out, err := http.NewRequestWithContext(r.Context(), r.Method, p.target+r.URL.RequestURI(), bytes.NewReader(body))
	if err != nil {
		panic(err)
	}
	out.Header = r.Header.Clone()
	resp, err := p.transport.RoundTrip(out)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(resp.Body)
	p.mu.Lock()
	p.keys = append(p.keys, r.Header.Get("Idempotency-Key"))
	drop := r.Method == p.dropMethod && p.drop > 0
	if drop {
		p.drop--
	}
	p.mu.Unlock()
	if drop {
		conn, _, err := w.(http.Hijacker).Hijack()
		if err != nil {
			panic(err)
		}
		_ = conn.Close()
		return
	}
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	_, _ = w.Write(answer)
}

func (p *proxy) seen() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.keys...)
}

func TestSendRetriedAfterALostAnswerQueuesOnce(t *testing.T) {
	t.Parallel()
	s := newServer(t, nil)
	p, url := newProxy(t, s.URL, "POST", 2)
	c := newClient(t, url, client.WithBackoff(time.Millisecond, 5*time.Millisecond),
		client.WithPollInterval(20*time.Millisecond, 200*time.Millisecond))
	ctx := ctxFor(t, 30*time.Second)

	acc, err := c.Send(ctx, client.Email{From: "s@example.com", To: "a@example.com", Subject: "exactly once"})
	if err != nil {
		t.Fatalf("Send through two lost answers = %v; want the third try's 202", err)
	}
	keys := p.seen()
	if len(keys) != 3 || keys[0] == "" || keys[1] != keys[0] || keys[2] != keys[0] {
		t.Errorf("the proxy saw Idempotency-Keys %q; want three tries with one key", keys)
	}
	if st, err := c.Wait(ctx, acc.ID); err != nil || st.Status != client.StateSent {
		t.Fatalf("Wait = %+v, %v; want sent", st, err)
	}
	if got := testutil.ToFloat64(s.M.EmailsAccepted); got != 1 {
		t.Errorf("emails_accepted_total = %v; want 1", got)
	}
	if got := testutil.ToFloat64(s.M.IdemReplays); got != 2 {
		t.Errorf("idempotent_replays_total = %v; want 2 (the retries)", got)
	}
	if n := len(s.Sink.Messages()); n != 1 {
		t.Errorf("the SMTP server got %d messages; want 1", n)
	}
}

func TestSendHonoursRetryAfterOn429(t *testing.T) {
	t.Parallel()
	s := newServer(t, func(c *producer.Config) { c.RatePerKey = redis_rate.PerSecond(1) })
	// Backing off a millisecond, a retry that ignored Retry-After would
	// meet the limit again and again.
	c := newClient(t, s.URL, client.WithBackoff(time.Millisecond, time.Millisecond))
	ctx := ctxFor(t, 10*time.Second)
	e := client.Email{From: "s@example.com", To: "a@example.com"}
	first, err := c.Send(ctx, e)
	if err != nil {
		t.Fatal(err)
	}
	second, err := c.Send(ctx, e)
	if err != nil {
		t.Fatalf("Send over the rate = %v; want it to wait and succeed", err)
	}
	if first.ID == second.ID {
		t.Errorf("two emails with one id %s", first.ID)
	}
	if got := testutil.ToFloat64(s.M.RateLimited.WithLabelValues("intake")); got != 1 {
		t.Errorf("rate_limited_total{scope=intake} = %v; want 1: the retry waited the Retry-After", got)
	}
	if got := testutil.ToFloat64(s.M.EmailsAccepted); got != 2 {
		t.Errorf("emails_accepted_total = %v; want 2", got)
	}
}

func TestSendRetries503UntilRedisIsBack(t *testing.T) {
	t.Parallel()
	s := newServer(t, nil)
	c := newClient(t, s.URL, client.WithPollInterval(20*time.Millisecond, 200*time.Millisecond))
	ctx := ctxFor(t, 60*time.Second)

	s.Redis.Stop()
	type result struct {
		acc *client.Accepted
		err error
	}
	done := make(chan result, 1)
	go func() { // ends with Send, within ctx
		acc, err := c.Send(ctx, client.Email{From: "s@example.com", To: "a@example.com", Subject: "after the outage"})
		done <- result{acc, err}
	}()
	for testutil.ToFloat64(s.M.HTTPRequests.WithLabelValues("POST /v1/emails", "503")) == 0 {
		select {
		case r := <-done:
			t.Fatalf("Send ended before any 503: %+v", r)
		case <-time.After(20 * time.Millisecond):
		}
	}
	s.Redis.Restart(t) // the client waits out sendq's Retry-After (5 s), then retries
	r := <-done
	if r.err != nil {
		t.Fatalf("Send across a Redis outage = %v; want the retry's 202", r.err)
	}
	if st, err := c.Wait(ctx, r.acc.ID); err != nil || st.Status != client.StateSent {
		t.Fatalf("Wait = %+v, %v; want sent", st, err)
	}
	if got := testutil.ToFloat64(s.M.EmailsAccepted); got != 1 {
		t.Errorf("emails_accepted_total = %v; want 1", got)
	}
}

// deadEndpoint accepts connections and closes them at once, counting them.
func deadEndpoint(t *testing.T) (url string, accepts *atomic.Int64) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepts = new(atomic.Int64)
	done := make(chan struct{})
	go func() { // ends when ln is closed, at cleanup
		defer close(done)
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			accepts.Add(1)
			_ = conn.Close()
		}
	}()
	t.Cleanup(func() { _ = ln.Close(); <-done })
	return "http://" + ln.Addr().String(), accepts
}

func TestRetriesAreBounded(t *testing.T) {
	t.Parallel()
	url, accepts := deadEndpoint(t)
	c := newClient(t, url, client.WithRetries(3), client.WithBackoff(time.Millisecond, 2*time.Millisecond))
	_, err := c.Send(ctxFor(t, 10*time.Second), client.Email{To: "a@example.com"})
	var ae *client.APIError
	if err == nil || errors.As(err, &ae) {
		t.Fatalf("Send to a dead endpoint = %v; want a connection error", err)
	}
	if n := accepts.Load(); n != 4 {
		t.Errorf("%d tries; want 4 (the first and 3 retries)", n)
	}

	once := newClient(t, url, client.WithRetries(0))
	before := accepts.Load()
	if _, err := once.Status(ctxFor(t, 10*time.Second), "x"); err == nil {
		t.Fatal("Status from a dead endpoint = nil error")
	}
	if n := accepts.Load() - before; n != 1 {
		t.Errorf("WithRetries(0): %d tries; want 1", n)
	}
}

func TestContextEndsRetriesAndWaits(t *testing.T) {
	t.Parallel()
	url, accepts := deadEndpoint(t)
	c := newClient(t, url, client.WithBackoff(time.Hour, time.Hour))

	// A deadline before the next retry could start: no waiting for it.
	_, err := c.Send(ctxFor(t, 200*time.Millisecond), client.Email{To: "a@example.com"})
	if !errors.Is(err, context.DeadlineExceeded) || accepts.Load() != 1 {
		t.Errorf("Send = %v after %d tries; want context.DeadlineExceeded after 1", err, accepts.Load())
	}
	// Canceled while backing off.
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	_, err = c.Send(ctx, client.Email{To: "a@example.com"})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Send = %v; want context.Canceled", err)
	}

	// Wait on an email that stays scheduled returns its last status.
	s := newServer(t, nil)
	live := newClient(t, s.URL, client.WithPollInterval(10*time.Millisecond, 50*time.Millisecond))
	acc, err := live.Send(ctxFor(t, 10*time.Second), client.Email{From: "s@example.com", To: "a@example.com", SendAt: time.Now().Add(time.Hour)})
	if err != nil || acc.Status != client.StateScheduled {
		t.Fatalf("Send with SendAt = %+v, %v; want scheduled", acc, err)
	}
	st, err := live.Wait(ctxFor(t, time.Second), acc.ID)
	if !errors.Is(err, context.DeadlineExceeded) || st == nil || st.Status != client.StateScheduled || st.NextAttemptAt == nil {
		t.Errorf("Wait = %+v, %v; want the scheduled status and context.DeadlineExceeded", st, err)
	}
}

func TestCancel(t *testing.T) {
	t.Parallel()
	s := newServer(t, nil)
	c := newClient(t, s.URL)
	ctx := ctxFor(t, 10*time.Second)
	later := client.Email{From: "s@example.com", To: "a@example.com", SendAt: time.Now().Add(time.Hour)}

	acc, err := c.Send(ctx, later)
	if err != nil {
		t.Fatal(err)
	}
	st, err := c.Cancel(ctx, acc.ID)
	if err != nil || st.Status != client.StateCanceled || st.FailureReason != "canceled" {
		t.Fatalf("Cancel = %+v, %v; want canceled", st, err)
	}
	_, err = c.Cancel(ctx, acc.ID)
	var ae *client.APIError
	if !errors.As(err, &ae) || ae.Status != 409 || ae.Code != "not_cancelable" {
		t.Errorf("Cancel again = %v; want *APIError 409 not_cancelable", err)
	}

	// A cancel whose answer was lost: the retry's 409 finds it canceled.
	p, url := newProxy(t, s.URL, "DELETE", 1)
	lossy := newClient(t, url, client.WithBackoff(time.Millisecond, time.Millisecond))
	acc, err = lossy.Send(ctx, later)
	if err != nil {
		t.Fatal(err)
	}
	st, err = lossy.Cancel(ctx, acc.ID)
	if err != nil || st.Status != client.StateCanceled {
		t.Errorf("Cancel through a lost answer = %+v, %v; want canceled", st, err)
	}
	if n := len(p.seen()); n != 4 { // the send, two DELETEs, the status
		t.Errorf("the proxy saw %d requests; want 4", n)
	}
}

func decodeBase64(b []byte) ([]byte, error) {
	return base64.StdEncoding.DecodeString(strings.Join(strings.Fields(string(b)), ""))
}

// TestImportsOnlyTheStandardLibrary keeps the package's promise: a Go
// service can take the client without taking the server along.
func TestImportsOnlyTheStandardLibrary(t *testing.T) {
	t.Parallel()
	pkgs, err := parser.ParseDir(token.NewFileSet(), ".", func(fi fs.FileInfo) bool {
		return !strings.HasSuffix(fi.Name(), "_test.go")
	}, parser.ImportsOnly)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, pkg := range pkgs {
		for name, f := range pkg.Files {
			for _, imp := range f.Imports {
				n++
				path := strings.Trim(imp.Path.Value, `"`)
				if first, _, _ := strings.Cut(path, "/"); strings.Contains(first, ".") {
					t.Errorf("%s imports %s; the client imports the standard library only", name, path)
				}
			}
		}
	}
	if n == 0 {
		t.Fatal("found no import at all")
	}
}
