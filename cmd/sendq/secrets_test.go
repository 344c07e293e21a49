package main

import (
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/sendq/sendq/internal/proctest"
	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/internal/smtptest"
)

// A full run with every secret set: the Redis password, the SMTP password
// and the API keys appear in no log line, no metric, no status body and no
// error body.
func TestSecretsNeverLeak(t *testing.T) {
	const (
		redisPass = "redis-Pa55-leakcheck"
		smtpPass  = "smtp-Pa55-leakcheck"
		apiKey    = "api-key-leakcheck-1"
		otherKey  = "api-key-leakcheck-2"
	)
	rs := redistest.Start(t, redistest.Args("--requirepass", redisPass))
	sink := smtptest.Start(t, smtptest.WithAuth("mailer", smtpPass), smtptest.WithHooks(smtptest.Hooks{
		Rcpt: func(_ *smtptest.Session, to string) error {
			if strings.HasPrefix(to, "bounce") {
				return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
			}
			return nil
		},
	}))
	redisURL := "redis://:" + redisPass + "@" + rs.Addr + "/0"
	smtpURL := "smtp://mailer:" + smtpPass + "@" + sink.Addr + "?tls=none&auth=plain"
	p := proctest.Start(t, binary, "serve", "REDIS_URL="+redisURL, "SENDQ_SMTP_URL="+smtpURL,
		"SENDQ_API_KEYS="+apiKey+","+otherKey+":@other.example", "SENDQ_LOG_LEVEL=debug", "SENDQ_RATE_PER_KEY=1000/s")
	base := "http://" + p.Addr
	auth := map[string]string{"Authorization": "Bearer " + apiKey}
	var bodies []string
	for _, body := range []string{
		`{"From":"a@example.com","To":"ok@example.com;bounce@example.com","Subject":"s"}`,
		`{"From":"a@example.com","To":"ok2@example.com"}`,
		`{"From":"a@example.com","To":"x","Subject":"s"}`,
		`{"From":"a@example.com","Importance":"x"}`,
	} {
		r := call(t, "POST", base+"/v1/emails", []byte(body), auth)
		bodies = append(bodies, string(r.Body))
		if r.Resp.StatusCode == 202 {
			id := strings.Split(strings.Split(string(r.Body), `"id":"`)[1], `"`)[0]
			waitStatus(t, base, id, auth, "sent", "failed")
			bodies = append(bodies, string(call(t, "GET", base+"/v1/emails/"+id, nil, auth).Body))
		}
	}
	bodies = append(bodies,
		string(call(t, "POST", base+"/v1/emails", []byte(`{"From":"a@example.com","To":"b@example.com"}`), map[string]string{"Authorization": "Bearer " + otherKey}).Body),
		string(call(t, "POST", base+"/v1/emails", []byte(`{}`), map[string]string{"Authorization": "Bearer wrong-" + apiKey}).Body),
		string(call(t, "GET", base+"/v1/emails?status=failed", nil, auth).Body),
		string(call(t, "GET", base+"/metrics", nil, nil).Body),
		string(call(t, "GET", base+"/ui/", nil, nil).Body),
	)
	// A second process that cannot reach its relay logs dial errors too.
	bad := proctest.Start(t, binary, "worker", "REDIS_URL="+redisURL, "SENDQ_SMTP_URL=smtp://mailer:"+smtpPass+"@"+deadAddr(t)+"?tls=none&auth=plain",
		"SENDQ_LOG_LEVEL=debug")
	r := call(t, "POST", base+"/v1/emails", []byte(`{"From":"a@example.com","To":"c@example.com"}`), auth)
	_ = r
	time.Sleep(500 * time.Millisecond)
	usage, _ := exec.Command(binary, "serve", "-h").CombinedOutput()
	badURL, _ := exec.Command(binary, "status", "x", "-redis-url", "redis://:"+redisPass+"@127.0.0.1:1/0").CombinedOutput()
	p.Stop(t, 30*time.Second)
	bad.Stop(t, 30*time.Second)

	everything := map[string]string{
		"serve logs":  p.Logs(),
		"worker logs": bad.Logs(),
		"responses":   strings.Join(bodies, "\n"),
		"usage":       string(usage),
		"CLI error":   string(badURL),
	}
	for where, text := range everything {
		for _, secret := range []string{redisPass, smtpPass, apiKey, otherKey} {
			if strings.Contains(text, secret) {
				t.Errorf("%s contain the secret %q", where, secret)
			}
		}
	}
	if !strings.Contains(p.Logs(), "delivery attempt") {
		t.Errorf("the serve logs have no delivery lines: the check above read nothing")
	}
}

// deadAddr is a loopback address nobody listens on.
func deadAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// A client that never finishes its headers is cut off by the server's
// read-header timeout instead of holding a connection forever.
func TestSlowClientIsCutOff(t *testing.T) {
	p := proctest.Start(t, binary, "api")
	c, err := net.Dial("tcp", p.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("POST /v1/emails HTTP/1.1\r\nHost: x\r\nContent-")); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
	buf := make([]byte, 512)
	start := time.Now()
	_, err = c.Read(buf)
	for err == nil {
		_, err = c.Read(buf)
	}
	if time.Since(start) >= 20*time.Second {
		t.Errorf("the server kept a half-sent request open for 20s")
	}
}
