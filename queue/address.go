package queue

import (
	"fmt"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// idnaProfile converts domains as a mail client looks them up: UTS #46
// mapping (case folded), IDNA2008 validity and the bidi rule, and the DNS
// length limits, so that what it accepts a resolver can look up.
var idnaProfile = idna.New(idna.MapForLookup(), idna.BidiRule(), idna.VerifyDNSLength(true), idna.Transitional(false))

// ASCIIAddress returns addr with its domain in ASCII: an internationalised
// domain as IDNA A-labels ("bücher.example" is "xn--bcher-kva.example", RFC
// 5891), as SMTP and an RFC 5322 header carry it without SMTPUTF8. An ASCII
// domain is returned as it is. The local part is left alone: no ASCII form
// of a non-ASCII local part exists (RFC 6531). The intake refuses an
// address whose domain has no IDNA form, so the worker can rely on one.
func ASCIIAddress(addr string) (string, error) {
	at := strings.LastIndexByte(addr, '@')
	domain := addr[at+1:]
	if at < 0 || !strings.ContainsFunc(domain, func(r rune) bool { return r >= utf8.RuneSelf }) {
		return addr, nil
	}
	d, err := idnaProfile.ToASCII(domain)
	if err != nil {
		return "", fmt.Errorf("domain %q has no IDNA form: %w", domain, err)
	}
	return addr[:at+1] + d, nil
}
