package worker_test

import (
	"bytes"
	"context"
	"net/mail"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/sendq/sendq/internal/noticetest"
	"github.com/sendq/sendq/internal/smtptest"
	"github.com/sendq/sendq/metrics"
	"github.com/sendq/sendq/queue"
	"github.com/sendq/sendq/suppression"
	"github.com/sendq/sendq/token"
	"github.com/sendq/sendq/worker"
)

const signingKey = "worker-test-signing-key-0123456789abcdef"

// withList gives the worker a suppression list on its Redis and a notice
// recorder; the list is returned through *l once setup has made it.
func withList(l **suppression.List, rec *noticetest.Recorder) func(*worker.Config, *redis.Client) {
	return func(c *worker.Config, rdb *redis.Client) {
		*l = suppression.New(rdb)
		c.Suppression, c.Notifier = *l, rec
	}
}

func TestSuppressedRecipientNeverReachesSMTP(t *testing.T) {
	t.Parallel()
	bothModes(t, func(t *testing.T, noPipelining bool) {
		var list *suppression.List
		rec := &noticetest.Recorder{}
		b := setup(t, setupOpts{noPipelining: noPipelining, cfgRedis: withList(&list, rec)})
		ctx := context.Background()
		if _, err := list.Add(ctx, suppression.Entry{Address: "gone@example.com", Reason: suppression.ReasonHardBounce}); err != nil {
			t.Fatal(err)
		}
		e := newEmail("ok@example.com", "Gone@Example.COM")
		b.enqueue(t, e, 3)
		st := b.waitFinal(t, e.ID)
		if st.Status != queue.StatusSent {
			t.Fatalf("status %s; want sent (the other recipient was)", st.Status)
		}
		if got := b.smtp.Copies(); got["ok@example.com"] != 1 || got["Gone@Example.COM"] != 0 || len(got) != 1 {
			t.Errorf("copies = %v; want only ok@example.com", got)
		}
		r := rcpt(st, "Gone@Example.COM")
		if r.Status != queue.RecipientSuppressed || r.Reason != suppression.ReasonHardBounce {
			t.Errorf("suppressed recipient = %+v; want status suppressed, reason hard_bounce", r)
		}
		ns := rec.Of(suppression.NoticeSuppressed)
		if len(ns) != 1 || ns[0].EmailID != e.ID || ns[0].Recipient != "Gone@Example.COM" {
			t.Errorf("notices = %+v; want one email.suppressed for Gone@Example.COM", rec.All())
		}
		if got := testutil.ToFloat64(b.m.RecipientsSuppressed.WithLabelValues(metrics.StageDelivery)); got != 1 {
			t.Errorf("recipients_suppressed_total{stage=delivery} = %v; want 1", got)
		}
	})
}

func TestEveryRecipientSuppressedFailsWithoutSMTP(t *testing.T) {
	t.Parallel()
	var list *suppression.List
	rec := &noticetest.Recorder{}
	b := setup(t, setupOpts{cfgRedis: withList(&list, rec)})
	ctx := context.Background()
	for _, a := range []string{"a@example.com", "b@example.com"} {
		if _, err := list.Add(ctx, suppression.Entry{Address: a, Reason: suppression.ReasonUnsubscribe}); err != nil {
			t.Fatal(err)
		}
	}
	e := newEmail("a@example.com")
	e.Cc = []queue.Address{{Address: "c@example.com"}}
	// c was found suppressed by the intake; it has left the list since,
	// but the intake's word stands.
	e.Suppressed = []queue.Suppressed{{Address: "c@example.com", Reason: suppression.ReasonComplaint}}
	e.Bcc = []queue.Address{{Address: "B@example.com"}}
	b.enqueue(t, e, 5)
	st := b.waitFinal(t, e.ID)
	if st.Status != queue.StatusFailed || st.FailureReason != queue.ReasonSuppressed || st.Attempts != 1 {
		t.Fatalf("status %s reason %q attempts %d; want failed, suppressed, 1", st.Status, st.FailureReason, st.Attempts)
	}
	if r := rcpt(st, "c@example.com"); r.Status != queue.RecipientSuppressed || r.Reason != suppression.ReasonComplaint {
		t.Errorf("c = %+v; want suppressed (complaint), as the intake found", r)
	}
	if sessions, _, _ := b.smtp.Stats(); sessions != 0 {
		t.Errorf("%d SMTP sessions; want none", sessions)
	}
	if got := testutil.ToFloat64(b.m.EmailsFailed.WithLabelValues(queue.ReasonSuppressed)); got != 1 {
		t.Errorf("emails_failed_total{reason=suppressed} = %v; want 1", got)
	}
	if n := len(rec.Of(suppression.NoticeSuppressed)); n != 3 {
		t.Errorf("%d email.suppressed notices; want 3", n)
	}
}

func TestOnlyAddressesThatDoNotExistAreSuppressed(t *testing.T) {
	t.Parallel()
	replies := map[string]error{
		"nouser@example.com":   smtpErr(550, smtp.EnhancedCode{5, 1, 1}, "no such user"),
		"nodomain@example.com": smtpErr(550, smtp.EnhancedCode{5, 1, 2}, "bad destination domain"),
		"disabled@example.com": smtpErr(550, smtp.EnhancedCode{5, 2, 1}, "mailbox disabled"),
		"policy@example.com":   smtpErr(550, smtp.EnhancedCode{5, 7, 1}, "message refused by policy"),
		"dmarc@example.com":    smtpErr(550, smtp.EnhancedCode{5, 7, 26}, "DMARC"),
		"full@example.com":     smtpErr(552, smtp.EnhancedCode{5, 2, 2}, "mailbox full"),
		"later@example.com":    smtpErr(450, smtp.EnhancedCode{4, 1, 1}, "try later"),
		"slow@example.com":     smtpErr(451, smtp.EnhancedCode{4, 7, 1}, "slow down"),
	}
	var list *suppression.List
	rec := &noticetest.Recorder{}
	b := setup(t, setupOpts{cfgRedis: withList(&list, rec), smtpOpts: []smtptest.Option{smtptest.WithHooks(smtptest.Hooks{
		Rcpt: func(_ *smtptest.Session, to string) error { return replies[to] },
	})}})
	var to []string
	for a := range replies {
		to = append(to, a)
	}
	e := newEmail(to...)
	b.enqueue(t, e, 1) // one attempt: the 4xx ones fail as transient
	st := b.waitFinal(t, e.ID)
	if st.Status != queue.StatusFailed {
		t.Fatalf("status %s; want failed", st.Status)
	}
	ctx := context.Background()
	want := map[string]string{"nouser@example.com": "5.1.1", "nodomain@example.com": "5.1.2", "disabled@example.com": "5.2.1"}
	for a := range replies {
		en, err := list.Get(ctx, a)
		if code, ok := want[a]; ok {
			if err != nil || en.Reason != suppression.ReasonHardBounce || en.EmailID != e.ID || en.Code != 550 || en.EnhancedCode != code {
				t.Errorf("%s: entry %+v, %v; want hard_bounce from %s with 550 %s", a, en, err, e.ID, code)
			}
		} else if err == nil {
			t.Errorf("%s was suppressed (%+v); a %v must not suppress", a, en, replies[a])
		}
	}
	if got := testutil.ToFloat64(b.m.SuppressionsAdded.WithLabelValues(suppression.ReasonHardBounce)); got != 3 {
		t.Errorf("suppressions_added_total{reason=hard_bounce} = %v; want 3", got)
	}

	// The next email to one of them never reaches the server.
	before := len(b.smtp.Messages())
	e2 := newEmail("nouser@example.com")
	b.enqueue(t, e2, 3)
	st = b.waitFinal(t, e2.ID)
	if st.FailureReason != queue.ReasonSuppressed || len(b.smtp.Messages()) != before {
		t.Errorf("second email: %s/%s, %d new messages; want failed/suppressed and none", st.Status, st.FailureReason, len(b.smtp.Messages())-before)
	}
}

func TestBounceDomainCarriesTheReference(t *testing.T) {
	t.Parallel()
	signer, err := token.NewSigner(signingKey)
	if err != nil {
		t.Fatal(err)
	}
	b := setup(t, setupOpts{cfg: func(c *worker.Config) { c.Signer, c.BounceDomain = signer, "bounces.example.com" }})
	e := newEmail("a@example.com")
	e.ID = uuid.Must(uuid.NewV7()).String()
	b.enqueue(t, e, 3)
	receipt := newEmail("b@example.com")
	receipt.DeliveryReceipt, receipt.ReturnPath = true, "reports@example.com"
	b.enqueue(t, receipt, 3)
	b.waitFinal(t, e.ID)
	b.waitFinal(t, receipt.ID)
	for _, m := range b.smtp.Messages() {
		msg, err := mail.ReadMessage(bytes.NewReader(m.Data))
		if err != nil {
			t.Fatal(err)
		}
		switch m.To[0] {
		case "a@example.com":
			tok, ok := token.ParseBounceAddress(m.From, "bounces.example.com")
			id, valid := signer.VerifyBounce(tok)
			if !ok || !valid || id != e.ID {
				t.Errorf("MAIL FROM %q: want b+TOKEN@bounces.example.com naming %s", m.From, e.ID)
			}
			if got := msg.Header.Get(worker.RefHeader); got != tok {
				t.Errorf("%s = %q; want the envelope's token %q", worker.RefHeader, got, tok)
			}
		case "b@example.com":
			if m.From != "reports@example.com" || msg.Header.Get(worker.RefHeader) != "" {
				t.Errorf("MAIL FROM %q, ref %q; want the DeliveryReceipt address as asked, no reference", m.From, msg.Header.Get(worker.RefHeader))
			}
		}
	}
}

func TestListUnsubscribeHeaders(t *testing.T) {
	t.Parallel()
	signer, err := token.NewSigner(signingKey)
	if err != nil {
		t.Fatal(err)
	}
	b := setup(t, setupOpts{cfg: func(c *worker.Config) { c.Signer, c.PublicURL = signer, "https://mail.example.com/" }})
	e := newEmail("Reader@example.com")
	e.ListUnsubscribe = true
	b.enqueue(t, e, 3)
	if st := b.waitFinal(t, e.ID); st.Status != queue.StatusSent {
		t.Fatalf("status %s; want sent", st.Status)
	}
	msg, err := mail.ReadMessage(bytes.NewReader(b.smtp.Messages()[0].Data))
	if err != nil {
		t.Fatal(err)
	}
	lu := msg.Header.Get("List-Unsubscribe")
	const prefix = "<https://mail.example.com/v1/unsubscribe/"
	if !strings.HasPrefix(lu, prefix) || !strings.HasSuffix(lu, ">") {
		t.Fatalf("List-Unsubscribe = %q; want %s...>", lu, prefix)
	}
	id, r, ok := signer.VerifyUnsubscribe(strings.TrimSuffix(strings.TrimPrefix(lu, prefix), ">"))
	if !ok || id != e.ID || r != "Reader@example.com" {
		t.Errorf("the link names %q, %q (%v); want %s and Reader@example.com", id, r, ok, e.ID)
	}
	if got := msg.Header.Get("List-Unsubscribe-Post"); got != "List-Unsubscribe=One-Click" {
		t.Errorf("List-Unsubscribe-Post = %q", got)
	}
}

func TestListUnsubscribeWithoutSettingsFailsAsInvalid(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	e := newEmail("reader@example.com")
	e.ListUnsubscribe = true
	b.enqueue(t, e, 3)
	st := b.waitFinal(t, e.ID)
	if st.Status != queue.StatusFailed || st.FailureReason != queue.ReasonInvalid || len(b.smtp.Messages()) != 0 {
		t.Errorf("status %s/%s, %d messages; want failed/invalid and nothing sent", st.Status, st.FailureReason, len(b.smtp.Messages()))
	}
}
