package producer

import (
	"encoding/base64"
	"slices"
	"strings"
	"testing"

	"github.com/sendq/sendq/queue"
)

func TestSplitAddressList(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []string
	}{
		{"empty", "", nil},
		{"only separators and space", " ; ,\t;", nil},
		{"single", "a@example.com", []string{"a@example.com"}},
		{"semicolons", "a@example.com;b@example.com", []string{"a@example.com", "b@example.com"}},
		{"commas", "a@example.com,b@example.com", []string{"a@example.com", "b@example.com"}},
		{"mixed separators", "a@example.com, b@example.com; c@example.com", []string{"a@example.com", "b@example.com", "c@example.com"}},
		{"trailing semicolon", "a@example.com;", []string{"a@example.com"}},
		{"trailing comma and space", "a@example.com, ", []string{"a@example.com"}},
		{"leading and doubled separators", ";;a@example.com;;b@example.com;;", []string{"a@example.com", "b@example.com"}},
		{"whitespace trimmed", "  a@example.com \t;\t b@example.com  ", []string{"a@example.com", "b@example.com"}},
		{"angle brackets", "<a@example.com>;<b@example.com>", []string{"<a@example.com>", "<b@example.com>"}},
		{"display names", "Ann <a@example.com>; Bob <b@example.com>", []string{"Ann <a@example.com>", "Bob <b@example.com>"}},
		{"quoted name with comma", `"Doe, John" <j@example.com>, x@example.com`, []string{`"Doe, John" <j@example.com>`, "x@example.com"}},
		{"quoted name with semicolon", `"a;b" <j@example.com>;x@example.com`, []string{`"a;b" <j@example.com>`, "x@example.com"}},
		{"escaped quote inside quotes", `"say \"hi; there\"" <j@example.com>;x@example.com`, []string{`"say \"hi; there\"" <j@example.com>`, "x@example.com"}},
		{"separator inside angle brackets", "<a,b@example.com>;c@example.com", []string{"<a,b@example.com>", "c@example.com"}},
		{"separator inside comment", "a@example.com (Ann; admin), b@example.com", []string{"a@example.com (Ann; admin)", "b@example.com"}},
		{"encoded word", "=?utf-8?q?J=C3=BCrgen?= <j@example.com>;b@example.com", []string{"=?utf-8?q?J=C3=BCrgen?= <j@example.com>", "b@example.com"}},
		{"unterminated quote swallows the rest", `"a;b <j@example.com>;c@example.com`, []string{`"a;b <j@example.com>;c@example.com`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := SplitAddressList(tt.in); !slices.Equal(got, tt.want) {
				t.Errorf("SplitAddressList(%q) = %q; want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestParseAddress(t *testing.T) {
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	tests := []struct {
		name string
		in   string
		want queue.Address
	}{
		{"bare", "a@example.com", queue.Address{Address: "a@example.com"}},
		{"angle only", "<a@example.com>", queue.Address{Address: "a@example.com"}},
		{"display name", "John Doe <j@example.com>", queue.Address{Name: "John Doe", Address: "j@example.com"}},
		{"quoted display name", `"Doe, John" <j@example.com>`, queue.Address{Name: "Doe, John", Address: "j@example.com"}},
		{"quoted name with escaped quote", `"say \"hi\"" <j@example.com>`, queue.Address{Name: `say "hi"`, Address: "j@example.com"}},
		{"utf-8 display name", "Jürgen <j@example.com>", queue.Address{Name: "Jürgen", Address: "j@example.com"}},
		{"rfc 2047 q", "=?utf-8?q?J=C3=BCrgen?= <j@example.com>", queue.Address{Name: "Jürgen", Address: "j@example.com"}},
		{"rfc 2047 b korean", "=?UTF-8?B?" + b64("홍길동") + "?= <h@example.com>", queue.Address{Name: "홍길동", Address: "h@example.com"}},
		{"rfc 2047 adjacent words", "=?utf-8?q?a?= =?utf-8?q?b?= <a@example.com>", queue.Address{Name: "ab", Address: "a@example.com"}},
		// Inside a quoted string an encoded word is plain text (RFC 2047
		// section 5), so this is not decoded and the CRLF never appears.
		{"encoded word inside quotes is literal", `"=?utf-8?q?a=0D=0Ab?=" <a@example.com>`, queue.Address{Name: "=?utf-8?q?a=0D=0Ab?=", Address: "a@example.com"}},
		{"backslash in ASCII name", `"a\\b" <a@example.com>`, queue.Address{Name: `a\b`, Address: "a@example.com"}},
		{"comment becomes name", "j@example.com (John)", queue.Address{Name: "John", Address: "j@example.com"}},
		{"plus and subdomains", "user+tag@mail.example.co.uk", queue.Address{Address: "user+tag@mail.example.co.uk"}},
		{"atext specials", "a!#$%&'*+-/=?^_`{|}~z@example.com", queue.Address{Address: "a!#$%&'*+-/=?^_`{|}~z@example.com"}},
		{"dotted local part", "first.last@example.com", queue.Address{Address: "first.last@example.com"}},
		// A quoted local part that is a plain dot-atom is the same mailbox
		// unquoted (RFC 5321 section 4.1.2).
		{"needlessly quoted local part", `"a"@example.com`, queue.Address{Address: "a@example.com"}},
		{"internationalised", "josé@exämple.com", queue.Address{Address: "josé@exämple.com"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseAddress(tt.in)
			if err != nil || got != tt.want {
				t.Errorf("ParseAddress(%q) = %+v, %v; want %+v, nil", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestParseAddressRejects(t *testing.T) {
	tests := []struct {
		name string
		in   string
	}{
		{"empty", ""},
		{"spaces", "   "},
		{"no at", "example.com"},
		{"no domain", "a@"},
		{"no local part", "@example.com"},
		{"two addresses", "a@example.com, b@example.com"},
		{"two addresses no separator", "a@example.com b@example.com"},
		{"CRLF header injection", "a@example.com\r\nBcc: x@evil.com"},
		{"LF in address", "a\n@example.com"},
		{"CR in name", "Ann\r <a@example.com>"},
		{"LF in name", "Ann\nBcc: x@evil.com <a@example.com>"},
		{"NUL", "a@example.com\x00"},
		{"NUL in name", "A\x00nn <a@example.com>"},
		{"tab", "Ann\t<a@example.com>"},
		{"DEL", "a\x7f@example.com"},
		{"unicode line separator", "Ann\u2028Bcc <a@example.com>"},
		{"next line", "Ann\u0085 <a@example.com>"},
		{"encoded CRLF with colon", "=?utf-8?q?a=0D=0Abcc:x@y?= <a@b.com>"},
		{"encoded CRLF bcc header", "=?utf-8?q?a=0D=0Abcc=3A_x=40evil.com?= <a@b.com>"},
		{"encoded LF", "=?utf-8?q?a=0Ab?= <a@b.com>"},
		{"encoded NUL", "=?utf-8?b?" + base64.StdEncoding.EncodeToString([]byte("a\x00b")) + "?= <a@b.com>"},
		{"encoded next line latin-1", "=?iso-8859-1?q?a=85b?= <a@b.com>"},
		{"encoded tab", "=?utf-8?q?a=09b?= <a@b.com>"},
		{"C1 control in name", "Ann\u009b31m <a@example.com>"},
		{"encoded C1 control", "=?utf-8?q?a=C2=80b?= <a@b.com>"},
		{"encoded invalid utf-8", "=?utf-8?q?a=80b?= <a@b.com>"},
		// net/mail writes this name as =?utf-8?q?=C3=A9\?=, which it cannot
		// read back.
		{"backslash in non-ASCII name", `"é\\" <a@example.com>`},
		{"encoded backslash in non-ASCII name", "=?utf-8?q?=80=5C?=<0@0>"},
		{"quoted local part with >", `"a>b"@example.com`},
		{"quoted local part with > in angle", `John <"a>b"@example.com>`},
		{"quoted local part with space", `"a b"@example.com`},
		{"quoted local part smuggling an address", `"<x@evil.com>"@example.com`},
		{"quoted local part with quote", `"a\"b"@example.com`},
		{"quoted local part with at", `"a@b"@example.com`},
		{"route address", "<@relay.example.com:a@example.com>"},
		{"route address bare", "@relay.example.com:a@example.com"},
		{"ipv4 address literal", "a@[127.0.0.1]"},
		{"ipv6 address literal", "a@[IPv6:::1]"},
		{"empty dot-atom", "a..b@example.com"},
		{"leading dot", ".a@example.com"},
		{"empty domain label", "a@example..com"},
		{"hyphen label", "a@-example.com"},
		{"underscore in domain", "a@ex_ample.com"},
		{"local part too long", strings.Repeat("a", 65) + "@example.com"},
		{"domain label too long", "a@" + strings.Repeat("b", 64) + ".com"},
		{"address too long", "a@" + strings.Repeat(strings.Repeat("b", 60)+".", 5) + "com"},
		{"invalid utf-8 in address", "a\xff@example.com"},
		{"invalid utf-8 in name", "\xffAnn <a@example.com>"},
		{"truncated utf-8", "Ann\xe2\x82 <a@example.com>"},
		{"group syntax", "undisclosed-recipients:;"},
		// The worker sends an internationalised domain as IDNA A-labels:
		// one that has none is refused here (issue 11).
		{"domain label starting with a combining mark", "a@\u0301b.example"},
		{"domain label breaking the bidi rule", "a@bא.example"},
		{"domain with a joiner out of context", "a@b\u200dc.example"},
		{"domain too long as A-labels", "a@" + strings.Repeat("ü", 60) + ".example"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseAddress(tt.in)
			if err == nil {
				t.Errorf("ParseAddress(%q) = %+v, nil; want an error", tt.in, got)
			}
		})
	}
}
