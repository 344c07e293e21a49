package dkim_test

import (
	"bytes"
	"crypto"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sendq/sendq/dkim"
	"github.com/sendq/sendq/internal/dkimtest"
)

// sample is a message as sendq writes one: folded address and
// Content-Type headers, List-Unsubscribe, a multipart body with trailing
// spaces and empty lines at its end (what relaxed canonicalization
// forgives).
const sample = "Date: Fri, 02 Jan 2026 03:04:05 +0000\r\n" +
	"Importance: high\r\n" +
	"List-Unsubscribe: <https://contoso.example/u/abc>,\r\n <mailto:unsubscribe@contoso.example?subject=abc>\r\n" +
	"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" +
	"MIME-Version: 1.0\r\n" +
	"Message-ID: <0190b6a4-7e2c@contoso.example>\r\n" +
	"Subject: =?UTF-8?q?=EC=83=88_=EC=9E=A0=EC=9E=AC_=EA=B3=A0=EA=B0=9D?=\r\n" +
	"From: \"Contoso CRM\" <crm@contoso.example>\r\n" +
	"To: <sales@fabrikam.example>,\r\n \"Kim Minji\" <minji@fabrikam.example>\r\n" +
	"Cc: \"Manager, Sales\" <manager@fabrikam.example>\r\n" +
	"Content-Type: multipart/alternative;\r\n boundary=sendq-0123456789abcdef\r\n" +
	"\r\n" +
	"--sendq-0123456789abcdef\r\n" +
	"Content-Transfer-Encoding: quoted-printable\r\n" +
	"Content-Type: text/plain; charset=UTF-8\r\n" +
	"\r\n" +
	"A new lead:   Fabrikam  \r\n" +
	"\r\n" +
	"--sendq-0123456789abcdef\r\n" +
	"Content-Transfer-Encoding: quoted-printable\r\n" +
	"Content-Type: text/html; charset=UTF-8\r\n" +
	"\r\n" +
	"<p>A new lead: <b>Fabrikam</b></p>\r\n" +
	"--sendq-0123456789abcdef--\r\n" +
	"\r\n\r\n"

const from = "crm@contoso.example"

type keyCase struct {
	name string
	keys func(t *testing.T) []*dkim.Key
}

func key(t *testing.T, domain, selector string, priv crypto.Signer) *dkim.Key {
	t.Helper()
	k, err := dkim.NewKey(domain, selector, priv)
	if err != nil {
		t.Fatalf("NewKey: %v", err)
	}
	return k
}

var keyCases = []keyCase{
	{"rsa-2048", func(t *testing.T) []*dkim.Key {
		return []*dkim.Key{key(t, "contoso.example", "s2026", dkimtest.RSAKey(t))}
	}},
	{"ed25519", func(t *testing.T) []*dkim.Key {
		return []*dkim.Key{key(t, "contoso.example", "ed2026", dkimtest.Ed25519Key(t))}
	}},
	{"rsa and ed25519 (RFC 8463 dual signing)", func(t *testing.T) []*dkim.Key {
		return []*dkim.Key{key(t, "contoso.example", "s2026", dkimtest.RSAKey(t)),
			key(t, "contoso.example", "ed2026", dkimtest.Ed25519Key(t))}
	}},
}

func records(keys []*dkim.Key) map[string]string {
	m := map[string]string{}
	for _, k := range keys {
		m[k.DNSName()] = k.TXTRecord()
	}
	return m
}

// verdict is what the two verifiers made of one message.
type verdict struct {
	msgauth, dkimpy bool // every expected signature passed
	detail          string
}

// bothVerifiers checks each of msgs with go-msgauth and with dkimpy (one
// Python run for all): does each verifier find want signatures, all valid?
func bothVerifiers(t *testing.T, recs map[string]string, want int, msgs ...[]byte) []verdict {
	t.Helper()
	py := dkimtest.Dkimpy(t, recs, msgs...)
	out := make([]verdict, len(msgs))
	for i, msg := range msgs {
		errs := dkimtest.GoMsgauth(t, msg, recs)
		v := verdict{msgauth: len(errs) == want, dkimpy: len(py[i]) == want,
			detail: fmt.Sprintf("go-msgauth %v; dkimpy %q", errs, py[i])}
		for _, err := range errs {
			v.msgauth = v.msgauth && err == nil
		}
		for _, r := range py[i] {
			v.dkimpy = v.dkimpy && r == "pass"
		}
		out[i] = v
	}
	return out
}

func TestSignVerifiesWithBothVerifiers(t *testing.T) {
	for _, tc := range keyCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			keys := tc.keys(t)
			reg := prometheus.NewRegistry()
			s := dkim.NewSigner(keys, reg)
			sig, err := s.Sign([]byte(sample), from, "")
			if err != nil {
				t.Fatalf("Sign: %v", err)
			}
			if got := strings.Count(sig, "DKIM-Signature:"); got != len(keys) {
				t.Fatalf("Sign gave %d signatures; want %d:\n%s", got, len(keys), sig)
			}
			for _, want := range []string{"c=relaxed/relaxed", "d=contoso.example",
				"h=From:To:Cc:Subject:Date:Message-ID:MIME-Version:Content-Type:List-Unsubscribe:List-Unsubscribe-Post:Importance:From:Reply-To:Subject:List-Unsubscribe:List-Unsubscribe-Post;"} {
				if !strings.Contains(strings.NewReplacer("\r\n", "", " ", "").Replace(sig), strings.ReplaceAll(want, " ", "")) {
					t.Errorf("signature lacks %q:\n%s", want, sig)
				}
			}
			signed := []byte(sig + sample)
			recs := records(keys)
			if got := testutil.ToFloat64(mustCounter(t, reg, "sendq_dkim_signed_total")); got != 1 {
				t.Errorf("sendq_dkim_signed_total = %v; want 1", got)
			}

			// A receiver that sees a covered header or the body changed
			// rejects the message; what relaxed canonicalization forgives
			// (a header refolded, as relays do) still passes.
			msgs := [][]byte{signed}
			tampers := []struct{ name, old, new string }{
				{"Subject", "Subject: =?UTF-8?q?=EC=83=88", "Subject: =?UTF-8?q?=EC=83=89"},
				{"List-Unsubscribe", "<https://contoso.example/u/abc>", "<https://evil.example/u/abc>"},
				{"List-Unsubscribe-Post", "List-Unsubscribe=One-Click", "List-Unsubscribe=One-Clack"},
				{"From", "\"Contoso CRM\" <crm@", "\"Contoso IT\" <crm@"},
				{"body", "<b>Fabrikam</b>", "<b>Northwind</b>"},
				{"a second Subject", "Importance: high\r\n", "Importance: high\r\nSubject: Urgent\r\n"},
				{"a Reply-To", "Importance: high\r\n", "Importance: high\r\nReply-To: <evil@evil.example>\r\n"},
			}
			for _, tamper := range tampers {
				bad := bytes.Replace(signed, []byte(tamper.old), []byte(tamper.new), 1)
				if bytes.Equal(bad, signed) {
					t.Fatalf("tamper %s: %q not in the message", tamper.name, tamper.old)
				}
				msgs = append(msgs, bad)
			}
			refolded := bytes.Replace(signed, []byte("To: <sales@fabrikam.example>,\r\n \"Kim"), []byte("To: <sales@fabrikam.example>,  \"Kim"), 1)
			// A relay on the way adds its Received line on top.
			received := append([]byte("Received: from relay.contoso.example by mx.fabrikam.example;\r\n Fri, 02 Jan 2026 03:04:06 +0000\r\n"), signed...)
			msgs = append(msgs, refolded, received)

			v := bothVerifiers(t, recs, len(keys), msgs...)
			if !v[0].msgauth || !v[0].dkimpy {
				t.Fatalf("signed message does not verify: %s\n%s", v[0].detail, signed)
			}
			for i, tamper := range tampers {
				if got := v[1+i]; got.msgauth || got.dkimpy {
					t.Errorf("tampered %s still verifies: %s", tamper.name, got.detail)
				}
			}
			for i, what := range []string{"refolded To", "a Received line added"} {
				if got := v[1+len(tampers)+i]; !got.msgauth || !got.dkimpy {
					t.Errorf("%s fails: %s", what, got.detail)
				}
			}
		})
	}
}

func mustCounter(t *testing.T, reg *prometheus.Registry, name string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: name},
				func() float64 { return mf.GetMetric()[0].GetCounter().GetValue() })
		}
	}
	t.Fatalf("no metric %s", name)
	return nil
}

// TestSignKeepsThePriorSignature: a retry carries the first attempt's
// signature, byte for byte, although it is signed a second later (a fresh
// signature would have another t=); a changed message or key gets a new one.
func TestSignKeepsThePriorSignature(t *testing.T) {
	t.Parallel()
	keys := []*dkim.Key{key(t, "contoso.example", "s2026", dkimtest.RSAKey(t)),
		key(t, "contoso.example", "ed2026", dkimtest.Ed25519Key(t))}
	s := dkim.NewSigner(keys, nil)
	first, err := s.Sign([]byte(sample), from, "")
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond) // t= has a resolution of one second
	fresh, err := s.Sign([]byte(sample), from, "")
	if err != nil {
		t.Fatal(err)
	}
	if fresh == first {
		t.Fatal("two signatures a second apart are equal: this test cannot tell reuse from re-signing")
	}
	if again, err := s.Sign([]byte(sample), from, first); err != nil || again != first {
		t.Errorf("Sign with the prior signature = %q, %v; want the prior one %q", again, err, first)
	}

	changed := strings.Replace(sample, "Fabrikam</b>", "Northwind</b>", 1)
	sig, err := s.Sign([]byte(changed), from, first)
	if err != nil {
		t.Fatal(err)
	}
	if sig == first {
		t.Error("a changed message kept the prior signature")
	}
	if v := bothVerifiers(t, records(keys), 2, []byte(sig+changed)); !v[0].msgauth || !v[0].dkimpy {
		t.Errorf("re-signed changed message: %s", v[0].detail)
	}

	rotated := dkim.NewSigner([]*dkim.Key{key(t, "contoso.example", "s2027", dkimtest.Ed25519Key(t))}, nil)
	sig, err = rotated.Sign([]byte(sample), from, first)
	if err != nil {
		t.Fatal(err)
	}
	if sig == first || !strings.Contains(sig, "s=s2027") {
		t.Errorf("after a key rotation Sign = %q; want a new signature with s=s2027", sig)
	}
	for _, prior := range []string{"garbage", "DKIM-Signature: v=1; a=rsa-sha256; b=AAAA\r\n"} {
		if sig, err := s.Sign([]byte(sample), from, prior); err != nil || sig == prior || strings.Count(sig, "DKIM-Signature:") != 2 {
			t.Errorf("Sign with prior %q = %q, %v; want two new signatures", prior, sig, err)
		}
	}
}

func TestKeysFor(t *testing.T) {
	t.Parallel()
	ed := dkimtest.Ed25519Key(t)
	a := key(t, "contoso.example", "a", ed)
	b := key(t, "mail.contoso.example", "b", ed)
	c := key(t, "xn--bcher-kva.example", "c", ed)
	s := dkim.NewSigner([]*dkim.Key{a, b, c}, nil)
	tests := []struct {
		from string
		want *dkim.Key
	}{
		{"crm@contoso.example", a},
		{"CRM@Contoso.Example", a},
		{"crm@news.contoso.example", a},    // closest parent with a key
		{"crm@mail.contoso.example", b},    // its own key first
		{"crm@eu.mail.contoso.example", b}, // the closest parent
		{"crm@bücher.example", c},          // an IDN domain, as its A-label
		{"crm@fabrikam.example", nil},      // no key
		{"crm@notcontoso.example", nil},    // a suffix is not a parent
		{"contoso.example", nil},           // no @
		{"crm@example", nil},               // the top-level domain has none
		{"crm@contoso.example.", a},        // a trailing dot
	}
	for _, tc := range tests {
		got := s.KeysFor(tc.from)
		if tc.want == nil {
			if len(got) != 0 {
				t.Errorf("KeysFor(%q) = %v; want none", tc.from, got)
			}
			continue
		}
		if len(got) != 1 || got[0] != tc.want {
			t.Errorf("KeysFor(%q) = %v; want %s", tc.from, got, tc.want.DNSName())
		}
	}
	reg := prometheus.NewRegistry()
	s = dkim.NewSigner([]*dkim.Key{a}, reg)
	if sig, err := s.Sign([]byte(sample), "crm@fabrikam.example", ""); sig != "" || err != nil {
		t.Errorf("Sign without a key = %q, %v; want nothing", sig, err)
	}
	if got := testutil.ToFloat64(mustCounter(t, reg, "sendq_dkim_no_key_total")); got != 1 {
		t.Errorf("sendq_dkim_no_key_total = %v; want 1", got)
	}
}

func TestSignNeedsAFromHeader(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	s := dkim.NewSigner([]*dkim.Key{key(t, "contoso.example", "a", dkimtest.Ed25519Key(t))}, reg)
	noFrom := strings.Replace(sample, "From: \"Contoso CRM\" <crm@contoso.example>\r\n", "", 1)
	if _, err := s.Sign([]byte(noFrom), from, ""); err == nil {
		t.Error("Sign of a message without From: no error")
	}
	if got := testutil.ToFloat64(mustCounter(t, reg, "sendq_dkim_errors_total")); got != 1 {
		t.Errorf("sendq_dkim_errors_total = %v; want 1", got)
	}
}

func ExampleKey_TXTRecord() {
	k, err := dkim.ParseKey("contoso.example", "ed2026", []byte(`-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEINjTz0e8w77cRfMzbf9vIOohUIoQ+hyLzmf6XxpMu+0M
-----END PRIVATE KEY-----`))
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(k.DNSName(), "IN TXT", `"`+k.TXTRecord()+`"`)
	// Output: ed2026._domainkey.contoso.example IN TXT "v=DKIM1; k=ed25519; p=Wt6fExZhUkJ7LsPP4qUoU9dK+/cD7fqmePOam2ml1n4="
}
