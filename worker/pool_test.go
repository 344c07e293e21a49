package worker

import (
	"context"
	"errors"
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
