package token_test

import (
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/sendq/sendq/token"
)

const key = "0123456789abcdef0123456789abcdef-test"

func signer(t testing.TB, k string) *token.Signer {
	t.Helper()
	s, err := token.NewSigner(k)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestNewSignerNeedsALongKeyAndNeverEchoesIt(t *testing.T) {
	_, err := token.NewSigner("short-secret-key")
	if err == nil || strings.Contains(err.Error(), "short-secret-key") {
		t.Errorf("NewSigner(short) = %v; want an error without the key", err)
	}
}

func TestBounceRoundTripsInAnyCase(t *testing.T) {
	s := signer(t, key)
	id := uuid.Must(uuid.NewV7()).String()
	tok, err := s.Bounce(id)
	if err != nil {
		t.Fatal(err)
	}
	if tok != strings.ToLower(tok) || len("b+"+tok) > 64 {
		t.Errorf("token %q: want lower case, and b+token within a 64-octet local part", tok)
	}
	for _, v := range []string{tok, strings.ToUpper(tok), strings.ToUpper(tok[:10]) + tok[10:]} {
		got, ok := s.VerifyBounce(v)
		if !ok || got != id {
			t.Errorf("VerifyBounce(%q) = %q, %v; want %q, true", v, got, ok, id)
		}
	}
	if _, err := s.Bounce("not-a-uuid"); err == nil {
		t.Errorf("Bounce(not-a-uuid): no error")
	}
	addr := token.BounceAddress(tok, "bounces.example.com")
	got, ok := token.ParseBounceAddress(strings.ToUpper(addr), "Bounces.Example.com")
	if !ok || !strings.EqualFold(got, tok) {
		t.Errorf("ParseBounceAddress(%q) = %q, %v", strings.ToUpper(addr), got, ok)
	}
}

func TestForgedAndAlteredTokensFail(t *testing.T) {
	s := signer(t, key)
	other := signer(t, key+"-other")
	id := uuid.NewString()
	tok, _ := s.Bounce(id)
	unsub := s.Unsubscribe(id, "alice@example.com")
	flip := func(tok string, i int) string {
		c := tok[i]
		r := byte('a')
		if c == 'a' {
			r = 'b'
		}
		return tok[:i] + string(r) + tok[i+1:]
	}
	otherTok, _ := other.Bounce(id)
	for name, v := range map[string]string{
		"empty": "", "truncated": tok[:len(tok)-1], "extended": tok + "a", "other key": otherTok,
		"first char": flip(tok, 0), "middle": flip(tok, 20), "last": flip(tok, len(tok)-1),
		"not base32": strings.Repeat("!", len(tok)), "an unsubscribe token": unsub,
	} {
		if got, ok := s.VerifyBounce(v); ok {
			t.Errorf("VerifyBounce(%s) = %q, true; want false", name, got)
		}
	}
	for name, v := range map[string]string{
		"truncated": unsub[:len(unsub)-2], "altered": flip(unsub, 30), "a bounce token": tok,
		"other key": other.Unsubscribe(id, "alice@example.com"), "huge": strings.Repeat("a", 5000),
	} {
		if _, _, ok := s.VerifyUnsubscribe(v); ok {
			t.Errorf("VerifyUnsubscribe(%s) = true; want false", name)
		}
	}
}

func TestUnsubscribeNamesEmailAndRecipient(t *testing.T) {
	s := signer(t, key)
	for _, tc := range []struct{ id, rcpt string }{
		{uuid.NewString(), "alice@example.com"}, {"custom-id", "Bob.O'Neil+tag@example.co.uk"}, {"x", "ü@例え.jp"},
	} {
		tok := s.Unsubscribe(tc.id, tc.rcpt)
		id, rcpt, ok := s.VerifyUnsubscribe(strings.ToUpper(tok))
		if !ok || id != tc.id || rcpt != tc.rcpt {
			t.Errorf("VerifyUnsubscribe(Unsubscribe(%q, %q)) = %q, %q, %v", tc.id, tc.rcpt, id, rcpt, ok)
		}
	}
}

func FuzzVerify(f *testing.F) {
	s := signer(f, key)
	tok, _ := s.Bounce(uuid.NewString())
	f.Add(tok)
	f.Add(s.Unsubscribe("id", "a@b.c"))
	f.Add("")
	f.Fuzz(func(t *testing.T, v string) {
		if id, ok := s.VerifyBounce(v); ok {
			again, err := s.Bounce(id)
			if err != nil || !strings.EqualFold(again, v) {
				t.Fatalf("VerifyBounce(%q) accepted a token Bounce does not make (%q)", v, again)
			}
		}
		if id, rcpt, ok := s.VerifyUnsubscribe(v); ok && !strings.EqualFold(s.Unsubscribe(id, rcpt), v) {
			t.Fatalf("VerifyUnsubscribe(%q) accepted a token Unsubscribe does not make", v)
		}
	})
}
