package worker_test

import (
	"bytes"
	"context"
	"net/mail"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/hibiken/asynq"

	"github.com/sendq/sendq/internal/smtptest"
	"github.com/sendq/sendq/queue"
)

// The end-to-end checks of what goes on MAIL FROM and RCPT TO, and of what
// the status keeps of the relay's answers (issue 11: items 3, 4, 5, 8, 12),
// each against the real worker, Redis and SMTP server, in both transaction
// modes.

// messageTo returns the one message the server took for rcpt.
func messageTo(t *testing.T, srv *smtptest.Server, rcpt string) smtptest.Message {
	t.Helper()
	var found []smtptest.Message
	for _, m := range srv.Messages() {
		for _, to := range m.To {
			if to == rcpt {
				found = append(found, m)
			}
		}
	}
	if len(found) != 1 {
		t.Fatalf("server took %d messages for %s; want 1", len(found), rcpt)
	}
	return found[0]
}

// SMTPUTF8 goes on MAIL FROM only when the envelope or the header needs
// UTF-8: a relay asked for it may write its bounces as
// message/global-delivery-status, which most bounce parsers cannot read.
func TestSMTPUTF8OnlyWhenNeeded(t *testing.T) {
	t.Parallel()
	bothModes(t, func(t *testing.T, noPipelining bool) {
		b := setup(t, setupOpts{noPipelining: noPipelining})
		ascii := newEmail("a@example.com")
		ascii.Subject, ascii.From.Name = "새 잠재 고객", "김민지" // encoded words: still ASCII
		intl := newEmail("김민준@contoso.example")
		for _, e := range []*queue.Email{ascii, intl} {
			b.enqueue(t, e, 3)
			if st := b.waitFinal(t, e.ID); st.Status != queue.StatusSent {
				t.Fatalf("status %s (%s); want sent", st.Status, st.LastError)
			}
		}
		if m := messageTo(t, b.smtp, "a@example.com"); m.Opts == nil || m.Opts.UTF8 {
			t.Errorf("ASCII mail: MAIL FROM options %+v; want no SMTPUTF8", m.Opts)
		}
		if m := messageTo(t, b.smtp, "김민준@contoso.example"); m.Opts == nil || !m.Opts.UTF8 {
			t.Errorf("mail to a non-ASCII address: MAIL FROM options %+v; want SMTPUTF8", m.Opts)
		}
	})
}

// An internationalised domain travels as IDNA A-labels, in the envelope and
// in the header, so the mail needs no SMTPUTF8 (the relay here offers
// none); the status keeps the addresses as given.
func TestInternationalDomainIsSentAsIDNA(t *testing.T) {
	t.Parallel()
	bothModes(t, func(t *testing.T, noPipelining bool) {
		b := setup(t, setupOpts{noPipelining: noPipelining, smtpOpts: []smtptest.Option{smtptest.WithoutSMTPUTF8()}})
		e := newEmail("user@bücher.example")
		e.From = queue.Address{Name: "Sales", Address: "crm@exämple.com"}
		e.Cc = []queue.Address{{Address: "Boss@Mail.Bücher.Example"}}
		b.enqueue(t, e, 3)
		st := b.waitFinal(t, e.ID)
		if st.Status != queue.StatusSent {
			t.Fatalf("status %s (%s); want sent", st.Status, st.LastError)
		}
		for _, addr := range []string{"user@bücher.example", "Boss@Mail.Bücher.Example"} {
			if r := rcpt(st, addr); r.Status != queue.RecipientSent {
				t.Errorf("status of %s = %+v; want sent, under the address as given", addr, r)
			}
		}
		m := messageTo(t, b.smtp, "user@xn--bcher-kva.example")
		if m.From != "crm@xn--exmple-cua.com" || strings.Join(m.To, ",") != "user@xn--bcher-kva.example,Boss@mail.xn--bcher-kva.example" {
			t.Errorf("envelope %s -> %v; want crm@xn--exmple-cua.com -> user@xn--bcher-kva.example, Boss@mail.xn--bcher-kva.example", m.From, m.To)
		}
		if m.Opts.UTF8 {
			t.Errorf("MAIL FROM asked for SMTPUTF8")
		}
		head, _, _ := bytes.Cut(m.Data, []byte("\r\n\r\n"))
		if !isASCIIBytes(head) {
			t.Errorf("header holds raw UTF-8:\n%s", head)
		}
		msg, err := mail.ReadMessage(bytes.NewReader(m.Data))
		if err != nil {
			t.Fatal(err)
		}
		for field, want := range map[string]string{"From": "crm@xn--exmple-cua.com", "To": "user@xn--bcher-kva.example", "Cc": "Boss@mail.xn--bcher-kva.example"} {
			if got := addrList(t, msg.Header, field); len(got) != 1 || got[0].Address != want {
				t.Errorf("%s = %+v; want %s", field, got, want)
			}
		}
	})
}

func isASCIIBytes(b []byte) bool {
	return !bytes.ContainsFunc(b, func(r rune) bool { return r >= 0x80 })
}

// To a relay without SMTPUTF8, a recipient whose local part is not ASCII
// fails permanently, alone, with a reason that says so, and is never
// offered; when the header itself holds such an address, nobody can get the
// message as built and every recipient fails so.
func TestNonASCIILocalPartWithoutSMTPUTF8(t *testing.T) {
	t.Parallel()
	bothModes(t, func(t *testing.T, noPipelining bool) {
		b := setup(t, setupOpts{noPipelining: noPipelining, smtpOpts: []smtptest.Option{smtptest.WithoutSMTPUTF8()}})

		bcc := newEmail("a@example.com")
		bcc.Bcc = []queue.Address{{Address: "김민준@contoso.example"}}
		b.enqueue(t, bcc, 5)
		st := b.waitFinal(t, bcc.ID)
		if st.Status != queue.StatusFailed || st.FailureReason != queue.ReasonUnsupported || st.Attempts != 1 {
			t.Errorf("status %s reason %q attempts %d; want failed, unsupported, 1", st.Status, st.FailureReason, st.Attempts)
		}
		if r := rcpt(st, "a@example.com"); r.Status != queue.RecipientSent {
			t.Errorf("a@ = %+v; want sent", r)
		}
		r := rcpt(st, "김민준@contoso.example")
		if r.Status != queue.RecipientFailed || r.Code != 0 || r.EnhancedCode != "5.6.7" || !strings.Contains(r.Message, "SMTPUTF8") {
			t.Errorf("김민준@ = %+v; want failed, no reply code, 5.6.7, a message naming SMTPUTF8", r)
		}
		if m := messageTo(t, b.smtp, "a@example.com"); len(m.To) != 1 {
			t.Errorf("RCPT TO %v; want only a@example.com", m.To)
		}

		inHeader := newEmail("김민준@contoso.example", "b@example.com")
		b.enqueue(t, inHeader, 5)
		st = b.waitFinal(t, inHeader.ID)
		if st.Status != queue.StatusFailed || st.FailureReason != queue.ReasonUnsupported {
			t.Errorf("status %s reason %q; want failed, unsupported", st.Status, st.FailureReason)
		}
		for _, addr := range []string{"김민준@contoso.example", "b@example.com"} {
			if r := rcpt(st, addr); r.Status != queue.RecipientFailed || r.EnhancedCode != "5.6.9" || !strings.Contains(r.Message, "SMTPUTF8") {
				t.Errorf("%s = %+v; want failed 5.6.9 naming SMTPUTF8", addr, r)
			}
		}
		if n := b.smtp.Copies()["b@example.com"]; n != 0 {
			t.Errorf("b@ got %d copies; want none", n)
		}
	})
}

// Date is SendAt for a scheduled email, not the time it was accepted, and
// the same on the retry.
func TestDateIsSendAtOnEveryAttempt(t *testing.T) {
	t.Parallel()
	var first atomic.Bool
	b := setup(t, setupOpts{smtpOpts: []smtptest.Option{smtptest.WithHooks(smtptest.Hooks{
		Rcpt: func(_ *smtptest.Session, to string) error {
			if to == "later@example.com" && first.CompareAndSwap(false, true) {
				return smtpErr(451, smtp.EnhancedCode{4, 2, 1}, "mailbox busy")
			}
			return nil
		},
	})}})
	e := newEmail("now@example.com", "later@example.com")
	e.CreatedAt = time.Now().Add(-2 * time.Hour).UTC()
	e.SendAt = time.Now().Add(time.Second).UTC().Truncate(time.Second)
	task, err := queue.NewTask(e)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.client.Enqueue(task, asynq.MaxRetry(4), asynq.ProcessAt(e.SendAt), asynq.Retention(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if st := b.waitFinal(t, e.ID); st.Status != queue.StatusSent || st.Attempts != 2 {
		t.Fatalf("status %s attempts %d; want sent after 2", st.Status, st.Attempts)
	}
	for _, to := range []string{"now@example.com", "later@example.com"} {
		m, err := mail.ReadMessage(bytes.NewReader(messageTo(t, b.smtp, to).Data))
		if err != nil {
			t.Fatal(err)
		}
		if got, err := m.Header.Date(); err != nil || !got.Equal(e.SendAt) {
			t.Errorf("message to %s: Date %v, %v; want SendAt %v", to, got, err, e.SendAt)
		}
	}
}

// SIZE= goes on MAIL FROM (RFC 1870) and a message over the relay's
// advertised limit fails permanently, reason too_large, without being
// uploaded: here without even a MAIL FROM.
func TestMessageOverTheRelaySizeFailsWithoutUpload(t *testing.T) {
	t.Parallel()
	bothModes(t, func(t *testing.T, noPipelining bool) {
		var mails atomic.Int32
		b := setup(t, setupOpts{noPipelining: noPipelining, smtpOpts: []smtptest.Option{
			smtptest.WithMaxMessageBytes(64 << 10),
			smtptest.WithHooks(smtptest.Hooks{Mail: func(*smtptest.Session, string) error { mails.Add(1); return nil }}),
		}})
		small := newEmail("small@example.com")
		b.enqueue(t, small, 3)
		if st := b.waitFinal(t, small.ID); st.Status != queue.StatusSent {
			t.Fatalf("small email: %s (%s); want sent", st.Status, st.LastError)
		}
		m := messageTo(t, b.smtp, "small@example.com")
		if m.Opts == nil || m.Opts.Size != int64(len(m.Data)) {
			t.Errorf("SIZE= %+v; want the message's %d bytes", m.Opts, len(m.Data))
		}

		mails.Store(0)
		big := newEmail("big@example.com")
		big.Attachments = []queue.Attachment{{FileName: "big.bin", Data: bytes.Repeat([]byte{0xA5}, 80<<10)}}
		b.enqueue(t, big, 5)
		st := b.waitFinal(t, big.ID)
		if st.Status != queue.StatusFailed || st.FailureReason != queue.ReasonTooLarge || st.Attempts != 1 {
			t.Errorf("status %s reason %q attempts %d; want failed, too_large, 1", st.Status, st.FailureReason, st.Attempts)
		}
		r := rcpt(st, "big@example.com")
		if r.Status != queue.RecipientFailed || r.EnhancedCode != "5.3.4" || !strings.Contains(r.Message, "65536") {
			t.Errorf("recipient %+v; want failed 5.3.4 naming the 65536-byte limit", r)
		}
		if !strings.Contains(st.LastError, "SIZE") {
			t.Errorf("last_error %q; want it to name the relay's SIZE", st.LastError)
		}
		if n := mails.Load(); n != 0 || b.smtp.Copies()["big@example.com"] != 0 {
			t.Errorf("the relay saw %d MAIL FROM and %d copies; want none", n, b.smtp.Copies()["big@example.com"])
		}
	})
}

// The relay's reply to the end of DATA is kept for each recipient, in the
// record and the status body: Postfix names its queue id there, the link
// between sendq's id and the relay's log.
func TestRelayReplyTextIsKept(t *testing.T) {
	t.Parallel()
	bothModes(t, func(t *testing.T, noPipelining bool) {
		b := setup(t, setupOpts{noPipelining: noPipelining, smtpOpts: []smtptest.Option{smtptest.WithHooks(smtptest.Hooks{
			Data: func(*smtptest.Session, []byte) error {
				return smtpErr(250, smtp.EnhancedCode{2, 0, 0}, "Ok: queued as 034D2DE4CF")
			},
		})}})
		e := newEmail("a@example.com", "b@example.com")
		b.enqueue(t, e, 3)
		st := b.waitFinal(t, e.ID)
		if st.Status != queue.StatusSent || st.LastError != "" {
			t.Fatalf("status %s last_error %q; want sent, no error", st.Status, st.LastError)
		}
		rec, err := b.store.Get(context.Background(), e.ID)
		if err != nil {
			t.Fatal(err)
		}
		for _, addr := range []string{"a@example.com", "b@example.com"} {
			if r := rcpt(st, addr); r.Code != 250 || r.EnhancedCode != "2.0.0" || r.Message != "Ok: queued as 034D2DE4CF" {
				t.Errorf("status of %s = %+v; want 250 2.0.0 Ok: queued as 034D2DE4CF", addr, r)
			}
			if got := rec.Recipients[addr].Reply; got != (queue.Reply{Code: 250, EnhancedCode: "2.0.0", Message: "Ok: queued as 034D2DE4CF"}) {
				t.Errorf("record of %s = %+v; want the relay's reply", addr, got)
			}
		}
	})
}

// A request for DSNs carries ENVID= with the email id (RFC 3461), so a DSN
// names the email it is about; without the request there is none.
func TestDeliveryReceiptSendsEnvelopeID(t *testing.T) {
	t.Parallel()
	bothModes(t, func(t *testing.T, noPipelining bool) {
		b := setup(t, setupOpts{noPipelining: noPipelining, smtpOpts: []smtptest.Option{smtptest.WithDSN()}})
		dsn := newEmail("dsn@example.com")
		dsn.DeliveryReceipt = true
		plain := newEmail("plain@example.com")
		for _, e := range []*queue.Email{dsn, plain} {
			b.enqueue(t, e, 3)
			b.waitFinal(t, e.ID)
		}
		if m := messageTo(t, b.smtp, "dsn@example.com"); m.Opts == nil || m.Opts.EnvelopeID != dsn.ID {
			t.Errorf("ENVID = %+v; want %s", m.Opts, dsn.ID)
		}
		if m := messageTo(t, b.smtp, "plain@example.com"); m.Opts == nil || m.Opts.EnvelopeID != "" || m.Opts.Return != "" {
			t.Errorf("without DeliveryReceipt: %+v; want no ENVID, no RET", m.Opts)
		}
	})
}
