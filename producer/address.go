package producer

import (
	"fmt"
	"net/mail"
	"strings"
	"unicode/utf8"

	"github.com/sendq/sendq/queue"
)

// SplitAddressList splits a connector address list on ';' or ',' outside
// quotes, angle brackets and comments. Empty entries (a trailing ';') are
// dropped.
func SplitAddressList(s string) []string {
	if !utf8.ValidString(s) {
		// Each invalid byte reads as U+FFFD, as when ranging over s.
		s = string([]rune(s))
	}
	var out []string
	start := 0
	inQuote, escaped := false, false
	angle, paren := 0, 0
	flush := func(end int) {
		if t := strings.TrimSpace(s[start:end]); t != "" {
			out = append(out, t)
		}
	}
	for i, r := range s {
		switch {
		case escaped:
			escaped = false
		case r == '\\' && (inQuote || paren > 0):
			escaped = true
		case r == '"' && paren == 0:
			inQuote = !inQuote
		case inQuote:
		case r == '<':
			angle++
		case r == '>' && angle > 0:
			angle--
		case r == '(':
			paren++
		case r == ')' && paren > 0:
			paren--
		case (r == ';' || r == ',') && angle == 0 && paren == 0:
			flush(i)
			start = i + 1
		}
	}
	flush(len(s))
	return out
}

// ParseAddress parses one mailbox ("a@b.com" or "Name <a@b.com>") and
// refuses anything that could smuggle a header or an SMTP command: control
// characters anywhere (also once RFC 2047 words are decoded), and address
// forms a relay may read differently (quoted local parts, route addresses,
// address literals).
func ParseAddress(s string) (queue.Address, error) {
	if !utf8.ValidString(s) {
		return queue.Address{}, fmt.Errorf("is not valid UTF-8")
	}
	if hasControl(s) {
		return queue.Address{}, fmt.Errorf("contains a control character")
	}
	if bareAddrSpec(s) && checkAddrSpec(s) == nil {
		// The common case, "user@example.com": nothing for net/mail to do.
		return queue.Address{Address: s}, nil
	}
	if name, addr, ok := simpleNameAddr(s); ok {
		// The next most common, "Sales Bot <bot@example.com>": net/mail
		// would read the same and write it back unchanged.
		return queue.Address{Name: name, Address: addr}, nil
	}
	a, err := mail.ParseAddress(s)
	if err != nil {
		return queue.Address{}, fmt.Errorf("%q is not an email address", s)
	}
	if hasControl(a.Name) {
		return queue.Address{}, fmt.Errorf("display name of %q contains a control character", s)
	}
	if longestWord(a.Name) > maxHeaderWord {
		return queue.Address{}, fmt.Errorf("display name of %q has a word of more than %d characters; a mail header line cannot carry it", s, maxHeaderWord)
	}
	if !utf8.ValidString(a.Name) {
		return queue.Address{}, fmt.Errorf("display name of %q is not valid UTF-8 once decoded", s)
	}
	if err := checkAddrSpec(a.Address); err != nil {
		return queue.Address{}, fmt.Errorf("%q: %v", a.Address, err)
	}
	// The worker writes the address with (*mail.Address).String, which
	// cannot write every name (it leaves a backslash in a non-ASCII name
	// unencoded): refuse a name that would not read back the same.
	if rt, err := mail.ParseAddress(a.String()); err != nil || rt.Name != a.Name || rt.Address != a.Address {
		return queue.Address{}, fmt.Errorf("display name of %q cannot be written in a header as given", s)
	}
	return queue.Address{Name: a.Name, Address: a.Address}, nil
}

// checkAddrSpec accepts dot-atom local parts and host-name domains only.
func checkAddrSpec(addr string) error {
	at := strings.LastIndexByte(addr, '@')
	if at <= 0 || at == len(addr)-1 {
		return fmt.Errorf("needs a local part and a domain")
	}
	local, domain := addr[:at], addr[at+1:]
	if len(local) > 64 || len(addr) > 254 {
		return fmt.Errorf("is too long")
	}
	for atom := range strings.SplitSeq(local, ".") {
		if atom == "" {
			return fmt.Errorf("local part has an empty dot-atom")
		}
		for _, r := range atom {
			if r < 0x80 && !isAtext(byte(r)) {
				return fmt.Errorf("local part has %q: quoted or special local parts are not accepted", r)
			}
		}
	}
	for label := range strings.SplitSeq(domain, ".") {
		if label == "" || len(label) > 63 {
			return fmt.Errorf("domain has an empty or too long label")
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("domain label %q starts or ends with '-'", label)
		}
		for _, r := range label {
			if r < 0x80 && !(r == '-' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
				return fmt.Errorf("domain has %q", r)
			}
		}
	}
	// The worker sends an internationalised domain as IDNA A-labels.
	if _, err := queue.ASCIIAddress(addr); err != nil {
		return err
	}
	return nil
}

func isAtext(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0
}

// hasControl reports a C0 or C1 control character or DEL (CR, LF, NUL
// among them) or a Unicode line separator. Tab is a control character too:
// no header sendq writes needs one.
func hasControl(s string) bool {
	for _, r := range s {
		if r < 0x20 || r >= 0x7f && r <= 0x9f || r == 0x2028 || r == 0x2029 {
			return true
		}
	}
	return false
}

// simpleNameAddr splits "Name <addr>" where the name is words of ASCII
// letters, digits, '-' and '_' separated by single spaces and addr passes
// the bare address check: the form net/mail reads as exactly that name and
// address, and writes back unquoted. ok is false for anything else, which
// goes to net/mail.
func simpleNameAddr(s string) (name, addr string, ok bool) {
	lt := strings.IndexByte(s, '<')
	if lt <= 0 || s[len(s)-1] != '>' {
		return "", "", false
	}
	name, addr = strings.TrimSuffix(s[:lt], " "), s[lt+1:len(s)-1]
	if name == "" || len(name) > maxHeaderWord || !bareAddrSpec(addr) || checkAddrSpec(addr) != nil {
		return "", "", false
	}
	for i := 0; i < len(name); i++ {
		switch c := name[i]; {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_':
		case c == ' ' && i > 0 && name[i-1] != ' ' && i < len(name)-1:
		default:
			return "", "", false
		}
	}
	return name, addr, true
}

// bareAddrSpec reports whether s is only ASCII atext, dots and one '@': an
// address without a display name, quotes, comments or white space.
func bareAddrSpec(s string) bool {
	at := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '@':
			at++
		case c == '.' || isAtext(c):
		default:
			return false
		}
	}
	return at == 1
}
