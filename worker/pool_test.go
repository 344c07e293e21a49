package worker

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/textproto"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sendq/sendq/internal/smtptest"
	"github.com/sendq/sendq/metrics"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newTestPool(t *testing.T, url string, cfg PoolConfig) (*Pool, *metrics.Metrics, *fakeClock) {
	t.Helper()
	relay, err := ParseRelay(url)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	m := metrics.New(reg, reg)
	p, err := NewPool(relay, cfg, m)
	if err != nil {
		t.Fatal(err)
	}
	clock := &fakeClock{t: time.Now()}
	p.now = clock.Now
	t.Cleanup(p.Close)
	return p, m, clock
}

func TestPoolReusesAndRetiresConnections(t *testing.T) {
	srv := smtptest.Start(t)
	p, m, clock := newTestPool(t, "smtp://"+srv.Addr+"?tls=none", PoolConfig{Size: 2, IdleTimeout: 30 * time.Second, MaxConnAge: 5 * time.Minute})
	ctx := context.Background()
	get := func() *Conn {
		t.Helper()
		c, err := p.Get(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	c := get()
	p.Put(c, false)
	if c2 := get(); c2 != c {
		t.Errorf("a fresh idle connection was not reused")
	} else {
		p.Put(c2, false)
	}
	clock.Advance(31 * time.Second) // idle too long
	c3 := get()
	if c3 == c {
		t.Errorf("a connection idle past IdleTimeout was reused")
	}
	for i := 0; i < 9; i++ { // keep it busy, but let it age
		p.Put(c3, false)
		clock.Advance(29 * time.Second)
		c3 = get()
	}
	clock.Advance(40 * time.Second) // now 5m41s old
	p.Put(c3, false)
	c4 := get()
	if c4 == c3 {
		t.Errorf("a connection older than MaxConnAge was reused")
	}
	p.Put(c4, true) // broken: closed, never reused
	c5 := get()
	if c5 == c4 {
		t.Errorf("a broken connection was reused")
	}
	p.Put(c5, false)
	if got := testutil.ToFloat64(m.PoolDials); got != 4 {
		t.Errorf("dials = %v; want 4", got)
	}
	if open, idle := testutil.ToFloat64(m.PoolOpen), testutil.ToFloat64(m.PoolIdle); open != 1 || idle != 1 {
		t.Errorf("open %v idle %v; want 1 and 1", open, idle)
	}
	p.Close()
	deadline := time.Now().Add(5 * time.Second)
	for srv.OpenConns() != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := srv.OpenConns(); n != 0 {
		t.Errorf("%d connections still open after Close", n)
	}
}

func TestPoolWaitHonoursContext(t *testing.T) {
	srv := smtptest.Start(t)
	p, _, _ := newTestPool(t, "smtp://"+srv.Addr+"?tls=none", PoolConfig{Size: 1})
	c, err := p.Get(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := p.Get(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Get on a full pool = %v; want context.DeadlineExceeded", err)
	}
	done := make(chan *Conn)
	go func() {
		c2, err := p.Get(context.Background())
		if err != nil {
			t.Error(err)
		}
		done <- c2
	}()
	time.Sleep(20 * time.Millisecond)
	p.Put(c, false)
	if c2 := <-done; c2 != c {
		t.Errorf("the waiter did not get the returned connection")
	} else {
		p.Put(c2, false)
	}
}

func TestTLSModes(t *testing.T) {
	serverTLS, roots := smtptest.SelfSignedTLS(t)
	starttls := smtptest.Start(t, smtptest.WithTLS(serverTLS))
	implicit := smtptest.Start(t, smtptest.WithImplicitTLS(serverTLS))
	plain := smtptest.Start(t)
	tests := []struct {
		name    string
		url     string
		trust   bool
		wantErr string
	}{
		{"starttls verified", "smtp://127.0.0.1:" + port(starttls.Addr), true, ""},
		{"starttls untrusted cert", "smtp://127.0.0.1:" + port(starttls.Addr), false, "certificate"},
		{"starttls skip verify", "smtp://127.0.0.1:" + port(starttls.Addr) + "?tls_skip_verify=true", false, ""},
		{"starttls never falls back to plain", "smtp://127.0.0.1:" + port(plain.Addr), true, "STARTTLS"},
		{"implicit", "smtps://127.0.0.1:" + port(implicit.Addr), true, ""},
		{"implicit untrusted", "smtps://127.0.0.1:" + port(implicit.Addr), false, "certificate"},
		{"plain only when asked", "smtp://127.0.0.1:" + port(plain.Addr) + "?tls=none", true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			relay, err := ParseRelay(tt.url)
			if err != nil {
				t.Fatal(err)
			}
			if tt.trust {
				relay.RootCAs = roots
			} else {
				relay.RootCAs = x509EmptyPool()
			}
			reg := prometheus.NewRegistry()
			p, err := NewPool(relay, PoolConfig{Size: 1, CommandTimeout: 3 * time.Second}, metrics.New(reg, reg))
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			c, err := p.Get(context.Background())
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Get = %v; want a connection", err)
				}
				res := c.Send(context.Background(), time.Second, Envelope{From: "a@example.com", To: []string{"b@example.com"}}, strings.NewReader("Subject: x\r\n\r\nhi\r\n"))
				p.Put(c, res.Broken)
				if res.Rcpt["b@example.com"] != nil || !res.Delivered {
					t.Errorf("Send = %+v; want delivered", res)
				}
				return
			}
			if err == nil {
				p.Put(c, true)
				t.Fatalf("Get succeeded; want an error containing %q", tt.wantErr)
			}
			var de *DialError
			if !errors.As(err, &de) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Get = %v; want a DialError containing %q", err, tt.wantErr)
			}
		})
	}
}

// scriptedSMTP is a raw SMTP server for one session: it greets, answers
// EHLO with ehlo's keywords, then for each step reads lines up to and
// including one that starts with step.until and writes step.reply. It
// records every line it read.
type scriptStep struct{ until, reply string }

func scriptedSMTP(t *testing.T, ehlo []string, steps []scriptStep) (addr string, lines func() []string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var got []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		_ = ln.Close()
		if err != nil {
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		r := bufio.NewReader(c)
		read := func() (string, bool) {
			l, err := r.ReadString('\n')
			if err != nil {
				return "", false
			}
			l = strings.TrimRight(l, "\r\n")
			mu.Lock()
			got = append(got, l)
			mu.Unlock()
			return l, true
		}
		fmt.Fprint(c, "220 scripted ESMTP\r\n")
		if _, ok := read(); !ok { // EHLO
			return
		}
		reply := "250-scripted\r\n"
		for _, k := range ehlo {
			reply += "250-" + k + "\r\n"
		}
		fmt.Fprint(c, reply+"250 HELP\r\n")
		for _, s := range steps {
			for {
				l, ok := read()
				if !ok {
					return
				}
				if strings.HasPrefix(l, s.until) {
					break
				}
			}
			fmt.Fprint(c, s.reply)
		}
	}()
	t.Cleanup(func() { _ = ln.Close(); <-done })
	return ln.Addr().String(), func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), got...)
	}
}

// sendOnce runs one transaction on a fresh pool to the server at addr,
// then closes the pool (QUIT).
func sendOnce(t *testing.T, addr string, env Envelope, msg string) *TxResult {
	t.Helper()
	p, _, _ := newTestPool(t, "smtp://"+addr+"?tls=none", PoolConfig{Size: 1, CommandTimeout: 2 * time.Second})
	c, err := p.Get(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	res := c.Send(context.Background(), 2*time.Second, env, strings.NewReader(msg))
	p.Put(c, res.Broken)
	p.Close()
	return res
}

// The server below answers nothing between MAIL and DATA until it has read
// the DATA line: a client that waited for each reply would time out.
func TestSendPipelinesWhenOffered(t *testing.T) {
	addr, lines := scriptedSMTP(t, []string{"PIPELINING", "8BITMIME", "DSN"}, []scriptStep{
		{"DATA", "250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no such user\r\n354 go ahead\r\n"},
		{".", "250 2.0.0 queued\r\n"},
		{"QUIT", "221 bye\r\n"},
	})
	res := sendOnce(t, addr, Envelope{From: "a@example.com", To: []string{"b@example.com", "nobody@example.com"}, DSN: true},
		"Subject: x\r\n\r\nhi\r\n")
	if !res.Delivered || res.Broken || res.Rcpt["b@example.com"] != nil {
		t.Fatalf("Send = %+v; want delivered to b@ on a reusable connection", res)
	}
	var tp *textproto.Error
	if err := res.Rcpt["nobody@example.com"]; !errors.As(err, &tp) || tp.Code != 550 {
		t.Errorf("nobody@ = %v; want the 550", err)
	}
	want := []string{
		"MAIL FROM:<a@example.com> BODY=8BITMIME RET=HDRS",
		"RCPT TO:<b@example.com> NOTIFY=SUCCESS,FAILURE,DELAY",
		"RCPT TO:<nobody@example.com> NOTIFY=SUCCESS,FAILURE,DELAY",
		"DATA",
	}
	if got := lines(); len(got) < 5 || strings.Join(got[1:5], "\n") != strings.Join(want, "\n") {
		t.Errorf("commands = %q; want after EHLO %q", got, want)
	}
}

// RFC 2920 3.1: when every RCPT was refused and the server still answers
// DATA with 354, the client ends the empty message with a lone dot.
func TestPipelinedDataWithNoRecipientSendsLoneDot(t *testing.T) {
	addr, lines := scriptedSMTP(t, []string{"PIPELINING"}, []scriptStep{
		{"DATA", "250 ok\r\n550 5.1.1 no such user\r\n354 go ahead\r\n"},
		{".", "554 5.5.1 no valid recipients\r\n"},
		{"RSET", "250 ok\r\n"},
		{"QUIT", "221 bye\r\n"},
	})
	res := sendOnce(t, addr, Envelope{From: "a@example.com", To: []string{"nobody@example.com"}},
		"Subject: x\r\n\r\nmust not be sent\r\n")
	if res.Delivered || res.Broken || res.Rcpt["nobody@example.com"] == nil {
		t.Errorf("Send = %+v; want nobody@ refused, the connection reusable", res)
	}
	got := lines()
	if len(got) < 5 || got[4] != "." {
		t.Errorf("after DATA the client sent %q; want a lone dot", got)
	}
	for _, l := range got {
		if strings.Contains(l, "must not be sent") {
			t.Errorf("the message went out with no recipient accepted")
		}
	}
}
