package dkim_test

import (
	"bytes"
	"strings"
	"testing"
	"time"

	gomail "github.com/wneessen/go-mail"

	"github.com/sendq/sendq/dkim"
	"github.com/sendq/sendq/internal/dkimtest"
)

// TestGoMailDKIMFailsOnceTheHeaderListFolds keeps reproduced why sendq
// signs with go-msgauth and not with go-mail's own DKIM signer (Msg.SetDKIM):
// in go-mail v0.8.1 that signer hashes the DKIM-Signature field unfolded
// and sends it folded. Folding at "; " is harmless under relaxed
// canonicalization, but an h= list too long for one line is cut in the
// middle, and the cut turns into a space the signer never hashed: both
// go-msgauth and dkimpy reject the message. With go-mail's short default
// list nothing is cut, and both accept it (the control).
//
// When this test fails because the long list verifies, the go-mail in
// go.mod is fixed: its signer could then be considered again.
func TestGoMailDKIMFailsOnceTheHeaderListFolds(t *testing.T) {
	t.Parallel()
	k := key(t, "contoso.example", "s2026", dkimtest.RSAKey(t))
	recs := records([]*dkim.Key{k})
	signedBy := func(headers ...string) []byte {
		t.Helper()
		m := gomail.NewMsg(gomail.WithNoDefaultUserAgent())
		if err := m.From("Contoso CRM <crm@contoso.example>"); err != nil {
			t.Fatal(err)
		}
		if err := m.To("sales@fabrikam.example", "minji@fabrikam.example"); err != nil {
			t.Fatal(err)
		}
		if err := m.Cc("manager@fabrikam.example"); err != nil {
			t.Fatal(err)
		}
		m.Subject("A new lead")
		m.SetDateWithValue(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
		m.SetMessageIDWithValue("0190b6a4-7e2c@contoso.example")
		m.SetGenHeader("List-Unsubscribe", "<https://contoso.example/u/abc>")
		m.SetGenHeader("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")
		m.SetBodyString(gomail.TypeTextHTML, "<p>A new lead: <b>Fabrikam</b></p>")
		signer := gomail.NewDKIMSigner(k.Domain, k.Selector, dkimtest.RSAKey(t))
		signer.HeaderCanonicalization(gomail.CanonicalizationRelaxed)
		signer.BodyCanonicalization(gomail.CanonicalizationRelaxed)
		if len(headers) > 0 {
			signer.SignHeaders(headers...)
		}
		m.SetDKIM(signer)
		var buf bytes.Buffer
		if _, err := m.WriteTo(&buf); err != nil {
			t.Fatalf("go-mail WriteTo with DKIM: %v", err)
		}
		return buf.Bytes()
	}
	short := signedBy() // go-mail's default: From, To, Subject, Date, Message-ID, Content-Type, MIME-Version
	long := signedBy("From", "To", "Cc", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type",
		"List-Unsubscribe", "List-Unsubscribe-Post")
	if !bytes.Contains(long, []byte("List-Unsubscribe-Post")) || !strings.Contains(hField(long), "\r\n") {
		t.Fatalf("the long h= list did not fold:\n%s", long)
	}

	v := bothVerifiers(t, recs, 1, short, long)
	t.Logf("short list: %s; long list: %s", v[0].detail, v[1].detail)
	if !v[0].msgauth || !v[0].dkimpy {
		t.Fatalf("control: go-mail's signature with its short default list fails: %s\n%s", v[0].detail, short)
	}
	if v[1].msgauth || v[1].dkimpy {
		t.Errorf("go-mail's signature with a folded h= list now verifies (%s): go-mail is fixed, "+
			"its DKIM signer could be adopted (see the dkim package doc)\n%s", v[1].detail, long)
	}
}

// hField returns the h= tag of the first DKIM-Signature of msg as written,
// folding included.
func hField(msg []byte) string {
	s := string(msg)
	i := strings.Index(s, "h=")
	if i < 0 {
		return ""
	}
	j := strings.Index(s[i:], ";")
	if j < 0 {
		return ""
	}
	return s[i : i+j]
}
