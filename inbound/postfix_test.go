package inbound_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sendq/sendq/inbound"
	"github.com/sendq/sendq/internal/noticetest"
	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/metrics"
	"github.com/sendq/sendq/queue"
	"github.com/sendq/sendq/suppression"
	"github.com/sendq/sendq/token"
	"github.com/sendq/sendq/worker"
)

// postfix is a private Postfix instance: its own config, queue and data
// directories under a test directory, listening on a loopback port of its
// own. No system Postfix service is involved.
type postfix struct {
	conf, log string
	port      int
}

const postfixBin = "/usr/sbin/postfix"

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startPostfix runs Postfix as a relay on 127.0.0.1: mail for dead.test
// fails at once as an unknown user (Postfix then writes its own DSN), mail
// for ok.test is accepted and discarded, and mail for the bounce domain
// goes to inboundAddr. It skips the test without Postfix or root (which
// Postfix's master needs), unless SENDQ_TEST_REQUIRE_POSTFIX is set.
func startPostfix(t *testing.T, inboundAddr string) *postfix {
	t.Helper()
	skip := func(why string) {
		if os.Getenv("SENDQ_TEST_REQUIRE_POSTFIX") != "" {
			t.Fatalf("%s and SENDQ_TEST_REQUIRE_POSTFIX is set (scripts/ensure-test-deps.sh installs Postfix)", why)
		}
		t.Skip(why)
	}
	if _, err := os.Stat(postfixBin); err != nil {
		skip("postfix is not installed")
	}
	if os.Geteuid() != 0 {
		skip("a private Postfix instance needs root (its master process)")
	}
	pu, err := user.Lookup("postfix")
	if err != nil {
		skip("no postfix user")
	}
	uid, _ := strconv.Atoi(pu.Uid)
	dir := t.TempDir()
	// Postfix's daemons drop to the postfix user: they must reach the
	// directory (t.TempDir makes it 0700, its parent too).
	for d := dir; d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	p := &postfix{conf: filepath.Join(dir, "conf"), log: filepath.Join(dir, "postfix.log"), port: freePort(t)}
	queueDir, dataDir := filepath.Join(dir, "queue"), filepath.Join(dir, "data")
	for _, d := range []string{p.conf, queueDir, dataDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chown(dataDir, uid, -1); err != nil {
		t.Fatal(err)
	}
	write := func(name, body string) {
		if err := os.WriteFile(filepath.Join(p.conf, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("transport", "dead.test error:5.1.1 User unknown in virtual mailbox table\n"+
		"ok.test discard:accepted and dropped\n"+
		domain+" smtp:["+strings.Replace(inboundAddr, ":", "]:", 1)+"\n")
	write("main.cf", fmt.Sprintf(`compatibility_level = 3.6
queue_directory = %[1]s
data_directory = %[2]s
mail_owner = postfix
setgid_group = postdrop
myhostname = relay.sendq.test
mydomain = sendq.test
myorigin = $myhostname
mydestination =
relay_domains =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_reject_unlisted_recipient = no
transport_maps = texthash:%[3]s/transport
smtp_dns_support_level = disabled
alias_maps =
alias_database =
local_recipient_maps =
biff = no
maillog_file = %[4]s
maillog_file_prefixes = %[5]s
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
`, queueDir, dataDir, p.conf, p.log, dir))
	write("master.cf", fmt.Sprintf(`127.0.0.1:%d inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n -  0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n -  - trivial-rewrite
bounce    unix  - - n -  0 bounce
defer     unix  - - n -  0 bounce
trace     unix  - - n -  0 bounce
verify    unix  - - n -  1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -  - proxymap
smtp      unix  - - n -  - smtp
relay     unix  - - n -  - smtp
showq     unix  n - n -  - showq
error     unix  - - n -  - error
retry     unix  - - n -  - error
discard   unix  - - n -  - discard
anvil     unix  - - n -  1 anvil
scache    unix  - - n -  1 scache
postlog   unix-dgram n - n - 1 postlogd
`, p.port))
	if out, err := exec.Command(postfixBin, "-c", p.conf, "start").CombinedOutput(); err != nil {
		t.Fatalf("postfix start: %v\n%s\n%s", err, out, p.logText())
	}
	t.Cleanup(func() {
		if out, err := exec.Command(postfixBin, "-c", p.conf, "stop").CombinedOutput(); err != nil {
			t.Errorf("postfix stop: %v\n%s", err, out)
		}
		if t.Failed() {
			t.Logf("postfix log:\n%s", p.logText())
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", p.port))
		if err == nil {
			_ = c.Close()
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("postfix does not listen on %d: %v\n%s", p.port, err, p.logText())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (p *postfix) logText() string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

// deliveries counts Postfix's log lines of delivery attempts to addr.
func (p *postfix) deliveries(addr string) int {
	return strings.Count(p.logText(), "to=<"+addr+">")
}

// TestPostfixBounceEndToEnd sends through a real Postfix as sendq's relay.
// Postfix accepts the email (sendq records it sent), fails it as an
// unknown user, writes its own DSN to the envelope sender b+TOKEN@bounce
// domain and delivers that to sendq's inbound listener: the recipient turns
// bounced with Postfix's diagnostic, the address is suppressed, the notice
// is emitted, and the next email to that address never reaches Postfix.
func TestPostfixBounceEndToEnd(t *testing.T) {
	t.Parallel()
	rdb := redistest.Start(t).Client(t)
	signer, err := token.NewSigner("postfix-test-signing-key-0123456789")
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	m := metrics.New(reg, reg)
	store, list, notes := queue.NewStore(rdb, time.Hour), suppression.New(rdb), &noticetest.Recorder{}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))

	in, err := inbound.New(inbound.Config{Domain: domain, Signer: signer, Store: store, Suppression: list,
		Notifier: notes, Timeout: 10 * time.Second, Metrics: m, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- in.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = in.Shutdown(ctx)
		<-served
	})
	pf := startPostfix(t, ln.Addr().String())

	relay, err := worker.ParseRelay(fmt.Sprintf("smtp://127.0.0.1:%d?tls=none", pf.port))
	if err != nil {
		t.Fatal(err)
	}
	w, err := worker.New(rdb, worker.Config{Relay: relay, Pool: worker.PoolConfig{Size: 2, CommandTimeout: 5 * time.Second},
		PollInterval: 50 * time.Millisecond, Store: store, Logger: quiet, Metrics: m,
		Suppression: list, Notifier: notes, Signer: signer, BounceDomain: domain})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Shutdown)
	client := asynq.NewClientFromRedisClient(rdb)
	t.Cleanup(func() { _ = client.Close() })
	look := &queue.Lookup{Inspector: asynq.NewInspectorFromRedisClient(rdb), Store: store}
	send := func(to ...string) string {
		t.Helper()
		e := &queue.Email{ID: uuid.Must(uuid.NewV7()).String(), CreatedAt: time.Now().UTC(),
			From: queue.Address{Address: "app@sender.test"}, Subject: "hello", Body: "hi", IsHTML: false}
		for _, a := range to {
			e.To = append(e.To, queue.Address{Address: a})
		}
		task, err := queue.NewTask(e)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := client.Enqueue(task, asynq.MaxRetry(2), asynq.Retention(time.Hour)); err != nil {
			t.Fatal(err)
		}
		return e.ID
	}
	waitRcpt := func(id, addr string, ok func(queue.RecipientStatus) bool) *queue.EmailStatus {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			st, err := look.Status(context.Background(), id)
			if err == nil {
				for _, r := range st.Recipients {
					if r.Address == addr && ok(r) {
						return st
					}
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("email %s: %s not there in 30s: %+v (%v)", id, addr, st, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	id := send("nobody@dead.test")
	st := waitRcpt(id, "nobody@dead.test", func(r queue.RecipientStatus) bool { return r.Status == queue.RecipientBounced })
	r := st.Recipients[0]
	if st.Status != queue.StatusSent || r.EnhancedCode != "5.1.1" || r.Message != "User unknown in virtual mailbox table" {
		t.Errorf("status %s, recipient %+v; want the email sent (Postfix took it) and the recipient bounced, 5.1.1, with Postfix's diagnostic", st.Status, r)
	}
	if !strings.Contains(pf.logText(), "sender non-delivery notification") {
		t.Errorf("Postfix's log has no DSN of its own")
	}
	en, err := list.Get(context.Background(), "nobody@dead.test")
	if err != nil || en.Reason != suppression.ReasonHardBounce || en.EmailID != id || en.EnhancedCode != "5.1.1" {
		t.Errorf("suppression entry %+v, %v; want hard_bounce from %s, 5.1.1", en, err, id)
	}
	if ns := notes.Wait(t, suppression.NoticeBounced, 1, 5*time.Second); len(ns) != 1 || ns[0].EmailID != id ||
		ns[0].Recipient != "nobody@dead.test" || ns[0].Message != "User unknown in virtual mailbox table" {
		t.Errorf("notices %+v; want one email.bounced with Postfix's diagnostic", notes.All())
	}

	// The next email to that address never reaches Postfix; the other
	// recipient of it does.
	before := pf.deliveries("nobody@dead.test")
	id2 := send("nobody@dead.test", "fine@ok.test")
	st = waitRcpt(id2, "nobody@dead.test", func(r queue.RecipientStatus) bool { return r.Status == queue.RecipientSuppressed })
	if st.Status != queue.StatusSent || st.Recipients[1].Status != queue.RecipientSent {
		t.Errorf("second email %s, recipients %+v; want sent to fine@ok.test, nobody suppressed", st.Status, st.Recipients)
	}
	deadline := time.Now().Add(10 * time.Second)
	for pf.deliveries("fine@ok.test") == 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if pf.deliveries("fine@ok.test") == 0 {
		t.Errorf("Postfix never logged the delivery to fine@ok.test")
	}
	if after := pf.deliveries("nobody@dead.test"); after != before {
		t.Errorf("Postfix logged %d more deliveries to nobody@dead.test; want none", after-before)
	}
}
