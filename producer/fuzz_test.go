package producer

import (
	"errors"
	"net/mail"
	"strings"
	"testing"
	"unicode"

	"github.com/sendq/sendq/queue"
)

// fuzzLimit is small so that the fuzzer reaches the recipient limit.
const fuzzLimit = 3

// isControlRune is what no header value sendq writes may hold: Unicode
// control characters (C0, DEL, C1) and the Unicode line separators.
func isControlRune(r rune) bool { return unicode.IsControl(r) || r == '\u2028' || r == '\u2029' }

func hasControlRune(s string) bool { return strings.ContainsFunc(s, isControlRune) }

// checkAddress fails t unless a is free of control characters and
// survives a round trip through net/mail unchanged.
func checkAddress(t *testing.T, what string, a queue.Address) {
	t.Helper()
	if hasControlRune(a.Name) || hasControlRune(a.Address) {
		t.Fatalf("%s %+v has a control character", what, a)
	}
	if got, err := mail.ParseAddress(a.Address); err != nil || got.Address != a.Address {
		t.Fatalf("%s: mail.ParseAddress(%q) = %v, %v; want %q", what, a.Address, got, err, a.Address)
	}
	s := (&mail.Address{Name: a.Name, Address: a.Address}).String() // as the worker writes it
	if got, err := mail.ParseAddress(s); err != nil || got.Name != a.Name || got.Address != a.Address {
		t.Fatalf("%s: mail.ParseAddress(%q) = %+v, %v; want %+v", what, s, got, err, a)
	}
}

func FuzzDecodeRequest(f *testing.F) {
	f.Add([]byte(seedBody))
	f.Add([]byte(minimal("")))
	f.Add([]byte(minimal(`"Subject":"Hi\r\nBcc: x@evil.com"`)))
	f.Add([]byte(`{"From":"f@example.com","To":"=?utf-8?q?a=0D=0Abcc=3Ax=40y?= <a@b.com>"}`))
	f.Add([]byte(`{"From":"f@example.com","To":["\"a>b\"@example.com","a@b.com"],"cc":"x@y.com","BCC":"z@y.com"}`))
	f.Add([]byte(minimal(`"Attachments":[{"ContentData":"YQ==","FileName":"../x","ContentId":"<a>"}]`)))
	f.Add([]byte(minimal(`"Subject":"\ud83d","subject":"x","DeliveryReceipt":"d@example.com","ReadReceipt":"r@example.com"`)))
	f.Fuzz(func(t *testing.T, body []byte) {
		e, err := DecodeRequest(body, Limits{MaxRecipients: fuzzLimit})
		if err != nil {
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("DecodeRequest(%q) error %T %v; want a *FieldError", body, err, err)
			}
			if e != nil {
				t.Fatalf("DecodeRequest(%q) = %+v with error %v", body, e, err)
			}
			return
		}
		checkAddress(t, "From", e.From)
		for _, list := range [][]queue.Address{e.To, e.Cc, e.Bcc} {
			for _, a := range list {
				checkAddress(t, "recipient", a)
			}
		}
		for _, addr := range []string{e.ReadReceipt, e.ReturnPath} {
			if addr != "" {
				checkAddress(t, "receipt", queue.Address{Address: addr})
			}
		}
		if n := len(e.Recipients()); n == 0 || n > fuzzLimit {
			t.Fatalf("DecodeRequest(%q) has %d recipients; want 1 to %d", body, n, fuzzLimit)
		}
		if hasControlRune(e.Subject) {
			t.Fatalf("DecodeRequest(%q).Subject = %q; want no control characters", body, e.Subject)
		}
		if strings.ContainsRune(e.Body, 0) {
			t.Fatalf("DecodeRequest(%q).Body has a NUL", body)
		}
		for _, a := range e.Attachments {
			if a.FileName == "" || a.FileName == "." || a.FileName == ".." ||
				strings.ContainsAny(a.FileName, `/\`) || hasControlRune(a.FileName) {
				t.Fatalf("DecodeRequest(%q) accepted file name %q", body, a.FileName)
			}
			if hasControlRune(a.ContentType) || strings.ContainsAny(a.ContentID, "<>\r\n ") || hasControlRune(a.ContentID) {
				t.Fatalf("DecodeRequest(%q) accepted attachment %q %q", body, a.ContentType, a.ContentID)
			}
		}
		switch e.Importance {
		case queue.ImportanceNormal, queue.ImportanceHigh, queue.ImportanceLow:
		default:
			t.Fatalf("DecodeRequest(%q).Importance = %q", body, e.Importance)
		}
	})
}

func FuzzParseAddress(f *testing.F) {
	for _, s := range []string{
		"a@example.com",
		"John Doe <j@example.com>",
		`"Doe, John" <j@example.com>`,
		"=?utf-8?q?J=C3=BCrgen?= <j@example.com>",
		"=?utf-8?q?a=0D=0Abcc:x@y?= <a@b.com>",
		`"a>b"@example.com`,
		"<@relay.example.com:a@example.com>",
		"a@[127.0.0.1]",
		"a\xff@example.com",
		"j@example.com (John)",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := ParseAddress(s)
		if err != nil {
			if a != (queue.Address{}) {
				t.Fatalf("ParseAddress(%q) = %+v with error %v", s, a, err)
			}
			return
		}
		if hasControlRune(a.Name) || hasControlRune(a.Address) {
			t.Fatalf("ParseAddress(%q) = %+v; want no control characters", s, a)
		}
		if err := checkAddrSpec(a.Address); err != nil {
			t.Fatalf("ParseAddress(%q) = %+v, but its address fails checkAddrSpec: %v", s, a, err)
		}
		checkAddress(t, "ParseAddress("+s+")", a)
	})
}
