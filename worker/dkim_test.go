package worker_test

import (
	"bytes"
	"crypto"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sendq/sendq/dkim"
	"github.com/sendq/sendq/internal/dkimtest"
	"github.com/sendq/sendq/internal/smtptest"
	"github.com/sendq/sendq/queue"
	"github.com/sendq/sendq/worker"
)

// dkimSetup starts a worker that signs for contoso.example with an RSA
// and an Ed25519 key. records are the TXT records its DNS would serve.
func dkimSetup(t *testing.T, o setupOpts) (b *testBundle, records map[string]string, reg *prometheus.Registry) {
	t.Helper()
	records = map[string]string{}
	var keys []*dkim.Key
	for sel, priv := range map[string]crypto.Signer{"rsa2026": dkimtest.RSAKey(t), "ed2026": dkimtest.Ed25519Key(t)} {
		k, err := dkim.NewKey("contoso.example", sel, priv)
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
		records[k.DNSName()] = k.TXTRecord()
	}
	reg = prometheus.NewRegistry()
	signer := dkim.NewSigner(keys, reg)
	inner := o.cfg
	o.cfg = func(c *worker.Config) {
		c.DKIM = signer
		if inner != nil {
			inner(c)
		}
	}
	return setup(t, o), records, reg
}

// signedEmail is an email from the signing domain whose body has lines
// that start with a dot (dot-stuffed on the wire, unstuffed by the server).
func signedEmail(to ...string) *queue.Email {
	e := newEmail(to...)
	e.From = queue.Address{Name: "Contoso CRM", Address: "crm@contoso.example"}
	e.Subject = "새 잠재 고객 생성됨: Contoso"
	e.Body = "<p>A new lead</p>\r\n.starts with a dot\r\n..and two\r\n<p><a href=\"https://contoso.example/lead/1\">Open it</a></p>"
	e.Attachments = []queue.Attachment{{FileName: "lead.csv", ContentType: "text/csv", Data: []byte("lead,score\nFabrikam,99\n")}}
	return e
}

// allPass reports whether both verifiers found two signatures in msg, each
// valid.
func allPass(msgauth []error, dkimpy []string) bool {
	if len(msgauth) != 2 || len(dkimpy) != 2 {
		return false
	}
	for i := range msgauth {
		if msgauth[i] != nil || dkimpy[i] != "pass" {
			return false
		}
	}
	return true
}

// TestDKIMSignedOnTheWire: what the relay received (dot-stuffing undone)
// carries an RSA and an Ed25519 signature that go-msgauth and dkimpy both
// accept; a changed Subject or an added List-Unsubscribe fails both; a
// From domain without a key goes unsigned.
func TestDKIMSignedOnTheWire(t *testing.T) {
	t.Parallel()
	b, records, reg := dkimSetup(t, setupOpts{})
	e := signedEmail("a@fabrikam.example")
	b.enqueue(t, e, 3)
	if st := b.waitFinal(t, e.ID); st.Status != queue.StatusSent {
		t.Fatalf("status %s (%s); want sent", st.Status, st.LastError)
	}
	unsigned := newEmail("b@fabrikam.example")
	b.enqueue(t, unsigned, 3)
	if st := b.waitFinal(t, unsigned.ID); st.Status != queue.StatusSent {
		t.Fatalf("unsigned email: status %s; want sent", st.Status)
	}
	msgs := b.smtp.Messages()
	if len(msgs) != 2 {
		t.Fatalf("server got %d messages; want 2", len(msgs))
	}
	got := msgs[0].Data
	if !bytes.Contains(got, []byte("\r\n.starts with a dot")) {
		t.Fatalf("the dotted line did not arrive as written:\n%s", got)
	}
	if !bytes.HasPrefix(got, []byte("DKIM-Signature:")) || bytes.Count(got, []byte("DKIM-Signature:")) != 2 {
		t.Fatalf("want two DKIM-Signature fields on top:\n%s", got)
	}
	if bytes.Contains(msgs[1].Data, []byte("DKIM-Signature")) {
		t.Errorf("the email from example.com (no key) is signed")
	}

	// 새 becomes 색 (U+C0C8 to U+C0C9), in whichever encoding the Subject
	// was written.
	subject := bytes.Replace(got, []byte("=?UTF-8?B?7IOI"), []byte("=?UTF-8?B?7IOJ"), 1)
	if bytes.Equal(subject, got) {
		subject = bytes.Replace(got, []byte("=?UTF-8?q?=EC=83=88_"), []byte("=?UTF-8?q?=EC=83=89_"), 1)
	}
	if bytes.Equal(subject, got) {
		t.Fatalf("no encoded Subject to tamper with:\n%s", got)
	}
	hdrEnd := bytes.Index(got, []byte("\r\n\r\n")) + 2
	unsub := append(append(append([]byte{}, got[:hdrEnd]...), "List-Unsubscribe: <https://evil.example/u>\r\n"...), got[hdrEnd:]...)
	cases := []struct {
		name string
		msg  []byte
		pass bool
	}{{"as received", got, true}, {"Subject changed", subject, false}, {"List-Unsubscribe added", unsub, false}}
	var all [][]byte
	for _, c := range cases {
		all = append(all, c.msg)
	}
	py := dkimtest.Dkimpy(t, records, all...)
	for i, c := range cases {
		m := dkimtest.GoMsgauth(t, c.msg, records)
		if pass := allPass(m, py[i]); pass != c.pass {
			t.Errorf("%s: verifies %v; want %v (go-msgauth %v, dkimpy %q)", c.name, pass, c.pass, m, py[i])
		}
	}
	for name, want := range map[string]float64{"sendq_dkim_signed_total": 1, "sendq_dkim_no_key_total": 1, "sendq_dkim_errors_total": 0} {
		if got := counterValue(t, reg, name); got != want {
			t.Errorf("%s = %v; want %v", name, got, want)
		}
	}
}

// TestDKIMSignatureIsTheSameOnEveryAttempt: the relay takes the message
// and the connection drops before its reply; the retry, in another second
// (a fresh signature would carry another t=: asynq keeps retry times in
// whole seconds, so a delay of at least 2 s makes sure), sends the same
// bytes, signature included, and both copies verify.
func TestDKIMSignatureIsTheSameOnEveryAttempt(t *testing.T) {
	t.Parallel()
	var dropped atomic.Bool
	b, records, _ := dkimSetup(t, setupOpts{
		smtpOpts: []smtptest.Option{smtptest.WithHooks(smtptest.Hooks{
			Data: func(*smtptest.Session, []byte) error {
				if dropped.CompareAndSwap(false, true) {
					return smtptest.DropConnection
				}
				return nil
			},
		})},
		cfg: func(c *worker.Config) { c.RetryBaseDelay, c.RetryMaxDelay = 2500*time.Millisecond, 3*time.Second },
	})
	e := signedEmail("a@fabrikam.example")
	b.enqueue(t, e, 3)
	start := time.Now()
	if st := b.waitFinal(t, e.ID); st.Status != queue.StatusSent || st.Attempts != 2 {
		t.Fatalf("status %s after %d attempts; want sent after 2", st.Status, st.Attempts)
	}
	if d := time.Since(start); d < time.Second {
		t.Fatalf("the retry came after %s: too soon to tell a kept signature from a new one", d)
	}
	msgs := b.smtp.Messages()
	if len(msgs) != 2 {
		t.Fatalf("server holds %d copies; want 2", len(msgs))
	}
	if !bytes.Equal(msgs[0].Data, msgs[1].Data) {
		t.Errorf("the retry sent other bytes:\n%s\n----\n%s", msgs[0].Data, msgs[1].Data)
	}
	py := dkimtest.Dkimpy(t, records, msgs[0].Data, msgs[1].Data)
	for i, m := range msgs {
		if v := dkimtest.GoMsgauth(t, m.Data, records); !allPass(v, py[i]) {
			t.Errorf("copy %d: go-msgauth %v, dkimpy %q; want both signatures valid", i+1, v, py[i])
		}
	}
	rec, err := b.store.Get(t.Context(), e.ID)
	if err != nil || !strings.HasPrefix(string(msgs[1].Data), rec.DKIMSignature) || rec.DKIMSignature == "" {
		t.Errorf("record keeps DKIM signature %q (%v); want the one sent", rec.DKIMSignature, err)
	}
}

func counterValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}
