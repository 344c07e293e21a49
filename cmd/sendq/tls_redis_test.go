package main

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/sendq/sendq/internal/proctest"
	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/internal/smtptest"
)

// TestRedisTLS: REDIS_URL=rediss://… against a real TLS-only redis-server
// whose certificate a CA made in the test signed, trusted the way an
// operator trusts a private CA (SSL_CERT_FILE): the whole path works, and
// the operator commands too. The server's certificate is verified: without
// the CA, or under a name the certificate does not hold, sendq refuses the
// server, and it cannot talk to it in plain text.
func TestRedisTLS(t *testing.T) {
	t.Parallel()
	rs := redistest.StartTLS(t)
	sink := smtptest.Start(t)
	trust := "SSL_CERT_FILE=" + rs.CAFile
	p := proctest.Start(t, binary, "serve", "REDIS_URL="+rs.URL(), trust, "SENDQ_SMTP_URL=smtp://"+sink.Addr+"?tls=none")
	base := "http://" + p.Addr
	if r := call(t, "GET", base+"/readyz", nil, nil); r.Resp.StatusCode != 200 {
		t.Fatalf("/readyz = %d %s; want 200 over TLS", r.Resp.StatusCode, r.Body)
	}
	r := call(t, "POST", base+"/v1/emails", seedJSON, map[string]string{"Idempotency-Key": "tls-1"})
	var acc struct{ ID string }
	if r.Resp.StatusCode != 202 || json.Unmarshal(r.Body, &acc) != nil {
		t.Fatalf("POST = %d %s", r.Resp.StatusCode, r.Body)
	}
	if st := waitStatus(t, base, acc.ID, nil, "sent", "failed"); st["status"] != "sent" {
		t.Fatalf("status = %v; want sent", st)
	}
	if got := len(sink.Messages()); got != 1 {
		t.Errorf("SMTP server got %d messages; want 1", got)
	}

	sendq := func(env ...string) (string, error) {
		cmd := exec.Command(binary, "status", acc.ID)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := sendq("REDIS_URL="+rs.URL(), trust); err != nil || !strings.Contains(out, "sent") {
		t.Errorf("sendq status over TLS: %v\n%s", err, out)
	}
	for _, tc := range []struct{ name, url, trust, want string }{
		{"CA not trusted", rs.URL(), "", "certificate signed by unknown authority"},
		{"name not in the certificate", strings.Replace(rs.URL(), "127.0.0.1", "localhost", 1), trust, "wanted to match localhost"},
		{"plain text to the TLS port", "redis://" + rs.Addr + "/0", trust, ""},
	} {
		start := time.Now()
		out, err := sendq("REDIS_URL="+tc.url, tc.trust)
		if err == nil || !strings.Contains(out, tc.want) {
			t.Errorf("%s: sendq status = %v after %s\n%s\nwant a failure saying %q", tc.name, err, time.Since(start).Round(time.Millisecond), out, tc.want)
		}
	}
	p.Stop(t, 30*time.Second)
}
