package worker

import (
	"context"
	"fmt"
	"io"
	"net/textproto"
	"reflect"
	"strings"
	"syscall"
	"testing"

	"github.com/sendq/sendq/internal/circuit"
)

func TestParseRelays(t *testing.T) {
	tests := []struct {
		raw     string
		want    []string // each relay's String(): name=, then the rest
		wantErr string   // part of the error
	}{
		// One URL is what it always was, named primary.
		{raw: "smtp://user:p%40ss@mail.example.com", want: []string{"smtp://user@mail.example.com:587?auth=plain&name=primary&tls=starttls"}},
		{raw: "smtps://mail.example.com", want: []string{"smtps://mail.example.com:465?name=primary"}},
		// An unescaped comma in a password is not a separator.
		{raw: "smtp://u:a,b@h:25?tls=none", want: []string{"smtp://u@h:25?auth=plain&name=primary&tls=none"}},
		{raw: "smtp://a:25?tls=none,smtps://b", want: []string{"smtp://a:25?name=primary&tls=none", "smtps://b:465?name=secondary"}},
		{raw: " smtp://a:25?tls=none&name=mx1 , SMTPS://b?name=mx2,smtp://c?pool_size=3&rate=14/s", want: []string{
			"smtp://a:25?name=mx1&tls=none", "smtps://b:465?name=mx2", "smtp://c:587?name=relay3&pool_size=3&rate=14%2Fs&tls=starttls"}},
		{raw: "smtp://a?name=x,smtp://b?name=x", wantErr: `two relays are named "x"`},
		{raw: "smtp://a?name=secondary,smtp://b", wantErr: `two relays are named "secondary"`},
		{raw: "smtp://a?name=bad%20name", wantErr: "name="},
		{raw: "smtp://a?name=" + strings.Repeat("x", 33), wantErr: "name="},
		{raw: "smtp://a?pool_size=0", wantErr: "pool_size"},
		{raw: "smtp://a?rate=fast", wantErr: "rate"},
		{raw: "smtp://a,smtp://:25", wantErr: "relay 2: SMTP URL has no host"},
		{raw: strings.Repeat("smtp://a,", 16) + "smtp://a", wantErr: "17 relays; at most 16"},
	}
	for _, tt := range tests {
		rs, err := ParseRelays(tt.raw)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseRelays(%q) error = %v; want one containing %q", tt.raw, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseRelays(%q) error = %v", tt.raw, err)
			continue
		}
		var got []string
		for _, r := range rs {
			got = append(got, r.String())
		}
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("ParseRelays(%q) = %q; want %q", tt.raw, got, tt.want)
		}
	}
	rs, err := ParseRelays("smtp://u:a,b@h:25?tls=none")
	if err != nil || rs[0].Password != "a,b" {
		t.Errorf("password with a comma = %v, %v; want a,b", rs, err)
	}
	if _, err := ParseRelays("smtp://a,smtp://u:se%ZZcret@h"); err == nil || strings.Contains(err.Error(), "se%ZZcret") {
		t.Errorf("a malformed URL error must not echo the password: %v", err)
	}
}

func TestParseRoutes(t *testing.T) {
	tests := []struct {
		raw     string
		want    map[string][]string
		wantErr string
	}{
		{raw: "", want: map[string][]string{}},
		{raw: "@a.com=primary", want: map[string][]string{"@a.com": {"primary"}}},
		{raw: " @A.com = primary , ops@B.com=eu|us ,", want: map[string][]string{"@a.com": {"primary"}, "ops@b.com": {"eu", "us"}}},
		{raw: "a.com=primary", wantErr: "is not @domain=relay"},
		{raw: "@a.com", wantErr: "is not @domain=relay"},
		{raw: "@=primary", wantErr: "is not @domain=relay"},
		{raw: "@a.com=", wantErr: `relay name ""`},
		{raw: "@a.com=x|x", wantErr: "twice"},
		{raw: "@a.com=x,@A.COM=y", wantErr: "two routes for @a.com"},
		{raw: "@a.com=bad name", wantErr: "relay name"},
	}
	for _, tt := range tests {
		got, err := ParseRoutes(tt.raw)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseRoutes(%q) error = %v; want one containing %q", tt.raw, err, tt.wantErr)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("ParseRoutes(%q) = %v, %v; want %v", tt.raw, got, err, tt.want)
		}
	}
	relays, _ := ParseRelays("smtp://a,smtp://b?name=eu")
	if err := CheckRoutes(map[string][]string{"@a.com": {"eu", "primary"}}, relays); err != nil {
		t.Errorf("CheckRoutes with known names = %v", err)
	}
	if err := CheckRoutes(map[string][]string{"@a.com": {"us"}}, relays); err == nil || !strings.Contains(err.Error(), `no relay is named "us" (relays: primary, eu)`) {
		t.Errorf("CheckRoutes with an unknown name = %v", err)
	}
}

func TestRelayOrder(t *testing.T) {
	a, b, c := &upstream{name: "a"}, &upstream{name: "b"}, &upstream{name: "c"}
	rs := &relaySet{all: []*upstream{a, b, c}, routes: map[string][]*upstream{
		"@x.com": {b}, "ops@x.com": {c, a},
	}}
	for _, tt := range []struct{ from, want string }{
		{"someone@y.com", "a,b,c"},
		{"someone@x.com", "b"},
		{"Someone@X.COM", "b"},
		{"ops@x.com", "c,a"},
		{"ops@sub.x.com", "a,b,c"},
	} {
		var names []string
		for _, u := range rs.order(tt.from) {
			names = append(names, u.name)
		}
		if got := strings.Join(names, ","); got != tt.want {
			t.Errorf("order(%q) = %s; want %s", tt.from, got, tt.want)
		}
	}
}

func TestJudgeHealth(t *testing.T) {
	reply := func(code int) error { return fmt.Errorf("send RCPT TO: %w", &textproto.Error{Code: code, Msg: "x"}) }
	refused := &DialError{Err: fmt.Errorf("dial: %w", syscall.ECONNREFUSED)}
	authFail := &DialError{Err: &textproto.Error{Code: 535, Msg: "bad credentials"}}
	greeting421 := &DialError{Err: &textproto.Error{Code: 421, Msg: "too busy"}}
	lost := fmt.Errorf("send MAIL FROM: %w", io.EOF)
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name      string
		ctx       context.Context
		res       *TxResult
		reused    bool
		want      circuit.Outcome
		failsOver []string // recipients that go on to the next relay
	}{
		{"delivered", nil, &TxResult{Rcpt: map[string]error{"a": nil}, Delivered: true}, false, circuit.Success, nil},
		{"recipients refused: the relay answered", nil, &TxResult{Rcpt: map[string]error{"a": reply(550), "b": reply(451)}}, false, circuit.Success, nil},
		{"one refused, one delivered", nil, &TxResult{Rcpt: map[string]error{"a": reply(550), "b": nil}, Delivered: true}, true, circuit.Success, nil},
		{"connection refused", nil, &TxResult{Rcpt: map[string]error{"a": refused, "b": refused}, Broken: true}, false, circuit.Failure, []string{"a", "b"}},
		{"AUTH refused", nil, &TxResult{Rcpt: map[string]error{"a": authFail}, Broken: true}, false, circuit.Failure, []string{"a"}},
		{"421 at the greeting", nil, &TxResult{Rcpt: map[string]error{"a": greeting421}, Broken: true}, false, circuit.Trip, []string{"a"}},
		{"421 to RCPT after a 550", nil, &TxResult{Rcpt: map[string]error{"a": reply(550), "b": reply(421)}, Broken: true}, false, circuit.Trip, []string{"b"}},
		{"connection lost on a fresh connection", nil, &TxResult{Rcpt: map[string]error{"a": lost}, Broken: true, BeforeRcpt: true}, false, circuit.Failure, []string{"a"}},
		{"stale pooled connection", nil, &TxResult{Rcpt: map[string]error{"a": lost}, Broken: true, BeforeRcpt: true}, true, circuit.Neutral, nil},
		{"lost after RCPT on a reused connection", nil, &TxResult{Rcpt: map[string]error{"a": lost}, Broken: true}, true, circuit.Failure, []string{"a"}},
		{"pool closed (shutdown)", nil, &TxResult{Rcpt: map[string]error{"a": errPoolClosed}, Broken: true}, false, circuit.Neutral, nil},
		{"canceled", canceled, &TxResult{Rcpt: map[string]error{"a": refused}, Broken: true}, false, circuit.Neutral, nil},
		{"rate limit unavailable", nil, &TxResult{Rcpt: map[string]error{"a": fmt.Errorf("relay rate limit: %w", context.DeadlineExceeded)}}, false, circuit.Neutral, nil},
	}
	for _, tt := range tests {
		ctx := tt.ctx
		if ctx == nil {
			ctx = context.Background()
		}
		got := judgeHealth(ctx, tt.res, tt.reused)
		if got != tt.want {
			t.Errorf("%s: judgeHealth = %v; want %v", tt.name, got, tt.want)
		}
		var moved []string
		for _, r := range []string{"a", "b"} {
			if err, ok := tt.res.Rcpt[r]; ok && (got == circuit.Failure || got == circuit.Trip) && relayLevel(err) {
				moved = append(moved, r)
			}
		}
		if !reflect.DeepEqual(moved, tt.failsOver) {
			t.Errorf("%s: recipients failing over = %v; want %v", tt.name, moved, tt.failsOver)
		}
	}
	out := &RelaysOutError{Relays: []string{"a", "b"}}
	if v, _ := Classify(fmt.Errorf("x: %w", out)); v != Transient {
		t.Errorf("Classify(RelaysOutError) = %v; want transient", v)
	}
	if want := "every relay is out of service (circuit open): a, b"; out.Error() != want {
		t.Errorf("RelaysOutError = %q; want %q", out.Error(), want)
	}
}

func FuzzParseRelays(f *testing.F) {
	f.Add("smtp://u:p@h:587?tls=starttls")
	f.Add("smtp://a:25?tls=none&name=mx1, smtps://b?name=mx2&pool_size=3&rate=14/s")
	f.Add("smtp://u:a,b@h,smtp://c")
	f.Fuzz(func(t *testing.T, raw string) {
		rs, err := ParseRelays(raw)
		if err != nil {
			return
		}
		if len(rs) == 0 || len(rs) > MaxRelays {
			t.Fatalf("ParseRelays(%q) gave %d relays", raw, len(rs))
		}
		seen := map[string]bool{}
		for _, r := range rs {
			if !relayName.MatchString(r.Name) || seen[r.Name] {
				t.Fatalf("ParseRelays(%q): relay name %q invalid or repeated", raw, r.Name)
			}
			seen[r.Name] = true
			if r.PoolSize < 0 || (r.Rate != nil && r.Rate.Rate <= 0) {
				t.Fatalf("ParseRelays(%q): pool_size %d rate %v", raw, r.PoolSize, r.Rate)
			}
		}
		if !strings.Contains(raw, ",") && len(rs) != 1 {
			t.Fatalf("ParseRelays(%q) without a comma gave %d relays", raw, len(rs))
		}
	})
}

func FuzzParseRoutes(f *testing.F) {
	f.Add("@a.com=primary,ops@b.com=eu|us")
	f.Add(" @A.com = x ,")
	f.Fuzz(func(t *testing.T, raw string) {
		routes, err := ParseRoutes(raw)
		if err != nil {
			return
		}
		for from, names := range routes {
			if from != strings.ToLower(from) || !strings.Contains(from, "@") || strings.HasSuffix(from, "@") || len(names) == 0 {
				t.Fatalf("ParseRoutes(%q): route %q -> %v", raw, from, names)
			}
			for _, n := range names {
				if !relayName.MatchString(n) {
					t.Fatalf("ParseRoutes(%q): relay name %q", raw, n)
				}
			}
		}
	})
}
