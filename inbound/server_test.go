package inbound_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sendq/sendq/inbound"
	"github.com/sendq/sendq/internal/noticetest"
	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/metrics"
	"github.com/sendq/sendq/queue"
	"github.com/sendq/sendq/suppression"
	"github.com/sendq/sendq/token"
)

const domain = "bounces.example.com"

type bundle struct {
	addr   string
	signer *token.Signer
	store  *queue.Store
	list   *suppression.List
	notes  *noticetest.Recorder
	m      *metrics.Metrics
}

func setup(t *testing.T, maxBytes int64) *bundle {
	t.Helper()
	rdb := redistest.Start(t).Client(t)
	signer, err := token.NewSigner("inbound-test-signing-key-0123456789")
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	b := &bundle{signer: signer, store: queue.NewStore(rdb, time.Hour), list: suppression.New(rdb),
		notes: &noticetest.Recorder{}, m: metrics.New(reg, reg)}
	srv, err := inbound.New(inbound.Config{Domain: domain, Signer: signer, Store: b.store, Suppression: b.list,
		Notifier: b.notes, MaxMessageBytes: maxBytes, Timeout: 5 * time.Second, Metrics: b.m,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b.addr = ln.Addr().String()
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return b
}

// email records an email whose recipients were all sent, and returns its
// id and bounce address.
func (b *bundle) email(t *testing.T, rcpts ...string) (id, tok string) {
	t.Helper()
	id = uuid.Must(uuid.NewV7()).String()
	u := queue.Update{State: queue.StatusSent, CreatedAt: time.Now(), Attempts: 1, Recipients: map[string]queue.RecipientResult{}}
	for _, r := range rcpts {
		u.Recipients[r] = queue.RecipientResult{Status: queue.RecipientSent, Reply: queue.Reply{Code: 250}, UpdatedAt: time.Now()}
	}
	if err := b.store.Save(context.Background(), id, u); err != nil {
		t.Fatal(err)
	}
	tok, err := b.signer.Bounce(id)
	if err != nil {
		t.Fatal(err)
	}
	return id, tok
}

// send delivers msg to rcpt over SMTP, from the null sender.
func (b *bundle) send(rcpt, msg string) error {
	c, err := smtp.Dial(b.addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Mail("", nil); err != nil {
		return err
	}
	if err := c.Rcpt(rcpt, nil); err != nil {
		return err
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := io.WriteString(w, msg); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	return c.Quit()
}

func dsn(blocks, ref string) string {
	returned := "From: s@example.com\r\nSubject: hi\r\n"
	if ref != "" {
		returned += "X-Sendq-Ref: " + ref + "\r\n"
	}
	return report(blocks, returned)
}

func failed(addr, status, diag string) string {
	return "Final-Recipient: rfc822; " + addr + "\r\nAction: failed\r\nStatus: " + status + "\r\nDiagnostic-Code: smtp; " + diag + "\r\n"
}

func (b *bundle) status(t *testing.T, id, addr string) queue.RecipientResult {
	t.Helper()
	rec, err := b.store.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return rec.Recipients[addr]
}

func TestBounceReportBouncesSuppressesAndNotifies(t *testing.T) {
	t.Parallel()
	b := setup(t, 0)
	id, tok := b.email(t, "Dead@example.com", "alive@example.com")
	msg := dsn(failed("dead@example.com", "5.1.1", "550 5.1.1 <dead@example.com>: User unknown")+"\r\n"+
		"Final-Recipient: rfc822; alive@example.com\r\nAction: delayed\r\nStatus: 4.4.7\r\n", tok)
	// The bounce address in the case an MTA may fold it to.
	if err := b.send(strings.ToUpper(token.BounceAddress(tok, domain)), msg); err != nil {
		t.Fatalf("send: %v", err)
	}
	r := b.status(t, id, "Dead@example.com")
	if r.Status != queue.RecipientBounced || r.Reply.Code != 550 || r.Reply.EnhancedCode != "5.1.1" ||
		r.Reply.Message != "550 5.1.1 <dead@example.com>: User unknown" {
		t.Errorf("bounced recipient = %+v", r)
	}
	if r := b.status(t, id, "alive@example.com"); r.Status != queue.RecipientSent {
		t.Errorf("delayed recipient = %+v; want still sent", r)
	}
	en, err := b.list.Get(context.Background(), "dead@example.com")
	if err != nil || en.Reason != suppression.ReasonHardBounce || en.EmailID != id || en.EnhancedCode != "5.1.1" {
		t.Errorf("suppression = %+v, %v", en, err)
	}
	bounced, deferred := b.notes.Of(suppression.NoticeBounced), b.notes.Of(suppression.NoticeDeferred)
	if len(bounced) != 1 || bounced[0].Recipient != "Dead@example.com" || bounced[0].EmailID != id || bounced[0].Code != 550 ||
		len(deferred) != 1 || deferred[0].Recipient != "alive@example.com" {
		t.Errorf("notices = %+v; want email.bounced for Dead@, email.deferred for alive@", b.notes.All())
	}
	// The same report again changes nothing and says nothing new.
	if err := b.send(token.BounceAddress(tok, domain), msg); err != nil {
		t.Fatal(err)
	}
	if n := len(b.notes.Of(suppression.NoticeBounced)); n != 1 {
		t.Errorf("%d email.bounced after a repeat; want 1", n)
	}
	if got := testutil.ToFloat64(b.m.InboundReports.WithLabelValues(metrics.ReportBounce, metrics.ReportUnchanged)); got != 1 {
		t.Errorf("inbound_reports_total{bounce,unchanged} = %v; want 1", got)
	}
}

func TestPolicyBounceIsRecordedButNotSuppressed(t *testing.T) {
	t.Parallel()
	b := setup(t, 0)
	id, tok := b.email(t, "a@example.com", "b@example.com")
	msg := dsn(failed("a@example.com", "5.7.1", "550 5.7.1 message content rejected")+"\r\n"+
		"Final-Recipient: rfc822; b@example.com\r\nAction: delivered\r\nStatus: 2.0.0\r\n", "")
	if err := b.send(token.BounceAddress(tok, domain), msg); err != nil {
		t.Fatal(err)
	}
	if r := b.status(t, id, "a@example.com"); r.Status != queue.RecipientBounced {
		t.Errorf("a = %+v; want bounced", r)
	}
	if _, err := b.list.Get(context.Background(), "a@example.com"); !errors.Is(err, suppression.ErrNotFound) {
		t.Errorf("a 5.7.1 bounce suppressed the address")
	}
	if d := b.notes.Of(suppression.NoticeDelivered); len(d) != 1 || d[0].Recipient != "b@example.com" {
		t.Errorf("notices %+v; want email.delivered for b", b.notes.All())
	}
}

func TestComplaintSuppresses(t *testing.T) {
	t.Parallel()
	b := setup(t, 0)
	id, tok := b.email(t, "Reader@example.net")
	msg := strings.ReplaceAll(string(readFile(t, "arf.eml")), "abcdef", tok)
	if err := b.send(token.BounceAddress(tok, domain), msg); err != nil {
		t.Fatal(err)
	}
	en, err := b.list.Get(context.Background(), "reader@example.net")
	if err != nil || en.Reason != suppression.ReasonComplaint || en.EmailID != id {
		t.Errorf("suppression = %+v, %v; want complaint from %s", en, err, id)
	}
	if c := b.notes.Of(suppression.NoticeComplained); len(c) != 1 || c[0].Recipient != "Reader@example.net" {
		t.Errorf("notices = %+v", b.notes.All())
	}
}

func TestRcptOnlyForValidTokens(t *testing.T) {
	t.Parallel()
	b := setup(t, 0)
	_, tok := b.email(t, "a@example.com")
	other, _ := token.NewSigner("not-the-servers-signing-key-0123456789")
	forged, _ := other.Bounce(uuid.NewString())
	for _, rcpt := range []string{
		"postmaster@" + domain, "b+" + forged + "@" + domain, "b+" + tok[:len(tok)-1] + "@" + domain,
		token.BounceAddress(tok, "other.example.com"), "b+@" + domain, "b+" + tok + "x@" + domain,
	} {
		err := b.send(rcpt, dsn(failed("a@example.com", "5.1.1", "550 no"), ""))
		var se *smtp.SMTPError
		if !errors.As(err, &se) || se.Code != 550 || se.EnhancedCode != (smtp.EnhancedCode{5, 1, 1}) {
			t.Errorf("RCPT %s: %v; want 550 5.1.1", rcpt, err)
		}
	}
	if got := testutil.ToFloat64(b.m.InboundRejected.WithLabelValues(metrics.InboundForgedToken)); got != 6 {
		t.Errorf("inbound_rejected_total{forged_token} = %v; want 6", got)
	}
}

func TestSizeCap(t *testing.T) {
	t.Parallel()
	b := setup(t, 8<<10)
	id, tok := b.email(t, "a@example.com")
	big := dsn(failed("a@example.com", "5.1.1", "550 no"), tok) + strings.Repeat("padding line of a huge report\r\n", 1000)
	err := b.send(token.BounceAddress(tok, domain), big)
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 552 {
		t.Errorf("a 30 KB message to a listener capped at 8 KiB: %v; want 552", err)
	}
	if r := b.status(t, id, "a@example.com"); r.Status != queue.RecipientSent {
		t.Errorf("recipient = %+v; want still sent", r)
	}
	if got := testutil.ToFloat64(b.m.InboundRejected.WithLabelValues(metrics.InboundTooLarge)); got != 1 {
		t.Errorf("inbound_rejected_total{too_large} = %v; want 1", got)
	}
}

// TestHostileReports sends 300 malformed and hostile reports: truncated
// MIME, huge headers, forged tokens, a report naming another email's
// recipient, a reference of another email, random bytes. Not one may
// change a record, the list, or make a notice, and the listener must
// still work afterwards.
func TestHostileReports(t *testing.T) {
	t.Parallel()
	b := setup(t, 64<<10)
	idA, tokA := b.email(t, "alice@example.com")
	idB, tokB := b.email(t, "bob@example.com", "carol@example.com")
	valid := dsn(failed("alice@example.com", "5.1.1", "550 5.1.1 unknown"), tokA)
	other, _ := token.NewSigner("an-attackers-own-signing-key-0123456789")
	rng := rand.New(rand.NewPCG(14, 300))
	kinds := []func(i int) (rcpt, msg string){
		func(i int) (string, string) { // truncated MIME
			return token.BounceAddress(tokA, domain), valid[:rng.IntN(len(valid)-40)]
		},
		func(i int) (string, string) { // huge headers: a line over any limit, or thousands of fields
			if i%2 == 0 {
				return token.BounceAddress(tokA, domain), "X-Junk: " + strings.Repeat("a", 5000) + "\r\n" + valid
			}
			return token.BounceAddress(tokA, domain), strings.Repeat("X-More: b\r\n", 3000) +
				dsn(failed("carol@example.com", "5.1.1", "550 unknown"), tokA)
		},
		func(i int) (string, string) { // forged token
			f, _ := other.Bounce(idA)
			return token.BounceAddress(f, domain), valid
		},
		func(i int) (string, string) { // another email's recipient
			return token.BounceAddress(tokA, domain), dsn(failed("bob@example.com", "5.1.1", "550 unknown"), tokA)
		},
		func(i int) (string, string) { // the reference of another email
			return token.BounceAddress(tokA, domain), dsn(failed("alice@example.com", "5.1.1", "550 unknown"), tokB)
		},
		func(i int) (string, string) { // a forged reference
			f, _ := other.Bounce(idA)
			return token.BounceAddress(tokA, domain), dsn(failed("alice@example.com", "5.1.1", "550 unknown"), f)
		},
		func(i int) (string, string) { // random bytes
			p := make([]byte, 200+rng.IntN(2000))
			for j := range p {
				p[j] = byte(rng.IntN(256))
			}
			return token.BounceAddress(tokA, domain), strings.ReplaceAll(string(p), "\r\n.", "\r\n..")
		},
		func(i int) (string, string) { // a complaint for a recipient the email did not have
			return token.BounceAddress(tokB, domain), strings.ReplaceAll(strings.ReplaceAll(string(readFile(t, "arf.eml")), "abcdef", tokB), "Reader@example.net", "alice@example.com")
		},
		func(i int) (string, string) { // mangled fields
			blocks := []string{"Final-Recipient: alice@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\n",
				"Final-Recipient: rfc822; alice@example.com\r\nAction: failed\r\nStatus: 5.1.1.1\r\n",
				"Final-Recipient: rfc822; <alice@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\n",
				"Final-Recipient: rfc822; alice@example.com\r\nAction: failed; really\r\nStatus: 5.1.1\r\n"}
			return token.BounceAddress(tokA, domain), dsn(blocks[i%len(blocks)], tokA)
		},
		func(i int) (string, string) { // over the size cap
			return token.BounceAddress(tokA, domain), valid + strings.Repeat("zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz\r\n", 2000)
		},
	}
	for i := range 300 {
		rcpt, msg := kinds[i%len(kinds)](i)
		if !strings.HasSuffix(msg, "\r\n") {
			msg += "\r\n"
		}
		_ = b.send(rcpt, msg) // refused or taken: either way nothing may change
	}
	for id, rcpts := range map[string][]string{idA: {"alice@example.com"}, idB: {"bob@example.com", "carol@example.com"}} {
		rec, err := b.store.Get(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rcpts {
			if rec.Recipients[r].Status != queue.RecipientSent {
				t.Errorf("%s of %s = %+v after hostile reports; want still sent", r, id, rec.Recipients[r])
			}
		}
	}
	if p, _ := b.list.List(context.Background(), "", 1, 10); p.Total != 0 {
		t.Errorf("%d suppressions after hostile reports; want 0: %+v", p.Total, p.Entries)
	}
	if n := len(b.notes.All()); n != 0 {
		t.Errorf("%d notices after hostile reports; want 0: %+v", n, b.notes.All())
	}
	var counted float64
	for _, r := range metrics.InboundRejectReasons {
		counted += testutil.ToFloat64(b.m.InboundRejected.WithLabelValues(r))
	}
	for _, ty := range metrics.ReportTypes {
		counted += testutil.ToFloat64(b.m.InboundReports.WithLabelValues(ty, metrics.ReportUnknownRecipient))
	}
	for _, r := range metrics.InboundRejectReasons {
		t.Logf("rejected %s: %v", r, testutil.ToFloat64(b.m.InboundRejected.WithLabelValues(r)))
	}
	t.Logf("300 hostile reports: %v counted as rejected or about an unknown recipient", counted)
	if counted < 300 {
		t.Errorf("only %v of 300 hostile reports were counted", counted)
	}
	// Still alive, and still right.
	if err := b.send(token.BounceAddress(tokA, domain), valid); err != nil {
		t.Fatalf("a valid report after the hostile ones: %v", err)
	}
	if r := b.status(t, idA, "alice@example.com"); r.Status != queue.RecipientBounced {
		t.Errorf("alice = %+v; want bounced by the valid report", r)
	}
}
