package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/sendq/sendq/internal/proctest"
	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/internal/smtptest"
)

// Two relays in SENDQ_SMTP_URL, the first one dead, and a route: the
// binary fails over to the second, names it in the status body (valid per
// the OpenAPI document) and exports the per-relay metrics.
func TestEndToEndTwoRelaysFailoverAndRoute(t *testing.T) {
	rs := redistest.Start(t)
	dead := smtptest.Start(t)
	_ = dead.Close() // nothing listens there now
	second := smtptest.Start(t)
	routed := smtptest.Start(t)
	p := proctest.Start(t, binary, "serve", "REDIS_URL="+rs.URL(),
		"SENDQ_SMTP_URL=smtp://"+dead.Addr+"?tls=none&name=mx1,smtp://"+second.Addr+"?tls=none&name=mx2,smtp://"+routed.Addr+"?tls=none&name=eu",
		"SENDQ_SMTP_ROUTES=@eu.contoso.example=eu", "SENDQ_API_KEYS=e2e-key-0002")
	base := "http://" + p.Addr
	auth := map[string]string{"Authorization": "Bearer e2e-key-0002"}
	var seen []httpResult
	post := func(from string) string {
		r := call(t, "POST", base+"/v1/emails", []byte(`{"From":"`+from+`","To":"a@contoso.example","Subject":"s","Body":"b"}`), auth)
		seen = append(seen, r)
		var acc struct{ ID string }
		if err := json.Unmarshal(r.Body, &acc); err != nil || r.Resp.StatusCode != 202 {
			t.Fatalf("POST = %d %s", r.Resp.StatusCode, r.Body)
		}
		return acc.ID
	}
	for _, c := range []struct{ from, relay string }{{"x@contoso.example", "mx2"}, {"x@eu.contoso.example", "eu"}} {
		id := post(c.from)
		st := waitStatus(t, base, id, auth, "sent", "failed")
		seen = append(seen, call(t, "GET", base+"/v1/emails/"+id, nil, auth))
		rcpts, _ := st["recipients"].([]any)
		if st["status"] != "sent" || st["attempts"] != float64(1) || len(rcpts) != 1 {
			t.Fatalf("From %s: status %v; want sent in 1 attempt", c.from, st)
		}
		if got := rcpts[0].(map[string]any)["relay"]; got != c.relay {
			t.Errorf("From %s: recipient relay %v; want %s", c.from, got, c.relay)
		}
	}
	if len(second.Messages()) != 1 || len(routed.Messages()) != 1 {
		t.Errorf("messages on mx2 %d, on eu %d; want 1 each", len(second.Messages()), len(routed.Messages()))
	}
	checkOpenAPI(t, base, seen)
	m := call(t, "GET", base+"/metrics", nil, nil)
	for _, want := range []string{`sendq_relay_up{relay="mx1"} 0`, `sendq_relay_up{relay="mx2"} 1`,
		`sendq_relay_sends_total{outcome="failed",relay="mx1"} 1`, `sendq_relay_sends_total{outcome="delivered",relay="mx2"} 1`,
		`sendq_relay_sends_total{outcome="delivered",relay="eu"} 1`, `sendq_relay_circuit_state{relay="mx1"} 0`,
		`sendq_relay_sends_total{outcome="skipped",relay="eu"} 0`} {
		if !bytes.Contains(m.Body, []byte(want)) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	p.Stop(t, 30*time.Second)
}

// A bad SENDQ_SMTP_URL or SENDQ_SMTP_ROUTES stops the worker at start with
// an error naming the variable, never the password.
func TestBadRelayConfigurationNamesTheVariable(t *testing.T) {
	rs := redistest.Start(t)
	for _, tt := range []struct{ env, want string }{
		{"SENDQ_SMTP_ROUTES=@a.example=nope", `SENDQ_SMTP_ROUTES: route for @a.example: no relay is named "nope" (relays: primary, secondary)`},
		{"SENDQ_SMTP_ROUTES=a.example=primary", "SENDQ_SMTP_ROUTES: route"},
		{"SENDQ_SMTP_URL=smtp://u:hunter5@h1?name=x,smtp://h2?name=x", `SENDQ_SMTP_URL: two relays are named "x"`},
	} {
		cmd := exec.Command(binary, "worker")
		cmd.Dir = t.TempDir()
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "REDIS_URL=" + rs.URL(), "SENDQ_HTTP_ADDR=127.0.0.1:0",
			"SENDQ_SMTP_URL=smtp://127.0.0.1:1?tls=none,smtp://127.0.0.1:2?tls=none", tt.env}
		raw, err := cmd.CombinedOutput()
		out := strings.ReplaceAll(string(raw), `\"`, `"`) // the log line quotes the error
		if err == nil || !strings.Contains(out, tt.want) || strings.Contains(out, "hunter5") {
			t.Errorf("sendq worker with %s: %v\n%s\nwant a failure saying %q", tt.env, err, out, tt.want)
		}
	}
}
