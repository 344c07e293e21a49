// Package token signs and verifies the references sendq puts in the mail
// it sends: the bounce reference in the envelope sender
// (b+TOKEN@SENDQ_BOUNCE_DOMAIN) and in the X-Sendq-Ref header, which names
// an email, and the one-click unsubscribe reference in the List-Unsubscribe
// URL, which names an email and a recipient. Both are HMAC-SHA256 signed
// with SENDQ_SIGNING_KEY, so nobody without the key can make sendq change
// the state of an email or suppress an address.
//
// Tokens are lower-case base32 without padding: an MTA that folds the case
// of a local part (or a person who types it) does not break one, since
// Verify folds it back first.
package token

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base32"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"github.com/google/uuid"
)

// MinKeyLen is the shortest SENDQ_SIGNING_KEY accepted, in bytes.
const MinKeyLen = 32

// Kinds, the first byte of a token; each is signed apart from the other.
const (
	kindBounce      = 'b'
	kindUnsubscribe = 'u'
)

// MAC lengths. A bounce token sits in a local part (at most 64 octets), so
// its MAC is 80 bits: forging one takes about 2^79 online guesses, each an
// SMTP RCPT that is refused.
const (
	bounceMAC      = 10
	unsubscribeMAC = 16
)

var enc = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// Signer makes and checks tokens with one key.
type Signer struct{ key []byte }

// NewSigner returns a Signer for key, which must be at least MinKeyLen
// bytes. The error never contains the key.
func NewSigner(key string) (*Signer, error) {
	if len(key) < MinKeyLen {
		return nil, fmt.Errorf("signing key is %d bytes; at least %d are needed", len(key), MinKeyLen)
	}
	return &Signer{key: []byte(key)}, nil
}

func (s *Signer) mac(kind byte, payload []byte, n int) []byte {
	h := hmac.New(sha256.New, s.key)
	h.Write([]byte("sendq token v1"))
	h.Write([]byte{kind})
	h.Write(payload)
	return h.Sum(nil)[:n]
}

func (s *Signer) seal(kind byte, payload []byte, n int) string {
	b := make([]byte, 0, 1+len(payload)+n)
	b = append(b, kind)
	b = append(b, payload...)
	b = append(b, s.mac(kind, payload, n)...)
	return enc.EncodeToString(b)
}

// open returns the payload of a token of kind, or ok false.
func (s *Signer) open(kind byte, tok string, n int) ([]byte, bool) {
	if len(tok) == 0 || len(tok) > 1024 {
		return nil, false
	}
	b, err := enc.DecodeString(strings.ToLower(tok))
	if err != nil || len(b) < 1+n || b[0] != kind {
		return nil, false
	}
	payload, sum := b[1:len(b)-n], b[len(b)-n:]
	if !hmac.Equal(sum, s.mac(kind, payload, n)) {
		return nil, false
	}
	// Only the canonical spelling of the bytes is accepted, so one
	// reference has one token (base32 without padding may leave spare
	// bits in its last character).
	if enc.EncodeToString(b) != strings.ToLower(tok) {
		return nil, false
	}
	return payload, true
}

// ErrNotUUID is returned by Bounce for an email id that is not a UUID:
// only a UUID fits a local part with its signature.
var ErrNotUUID = errors.New("email id is not a UUID")

// Bounce returns the bounce token of email id (a UUID): 44 characters.
func (s *Signer) Bounce(emailID string) (string, error) {
	u, err := uuid.Parse(emailID)
	if err != nil || u.String() != strings.ToLower(emailID) {
		return "", ErrNotUUID
	}
	return s.seal(kindBounce, u[:], bounceMAC), nil
}

// VerifyBounce returns the email id a bounce token names, in any case.
func (s *Signer) VerifyBounce(tok string) (emailID string, ok bool) {
	p, ok := s.open(kindBounce, tok, bounceMAC)
	if !ok || len(p) != 16 {
		return "", false
	}
	return uuid.UUID(p).String(), true
}

// Unsubscribe returns the unsubscribe token naming email id and recipient
// rcpt.
func (s *Signer) Unsubscribe(emailID, rcpt string) string {
	p := binary.AppendUvarint(nil, uint64(len(emailID)))
	p = append(p, emailID...)
	p = append(p, rcpt...)
	return s.seal(kindUnsubscribe, p, unsubscribeMAC)
}

// VerifyUnsubscribe returns the email id and recipient an unsubscribe
// token names.
func (s *Signer) VerifyUnsubscribe(tok string) (emailID, rcpt string, ok bool) {
	p, ok := s.open(kindUnsubscribe, tok, unsubscribeMAC)
	if !ok {
		return "", "", false
	}
	n, k := binary.Uvarint(p)
	if k <= 0 || n > uint64(len(p)-k) {
		return "", "", false
	}
	id, rest := string(p[k:k+int(n)]), string(p[k+int(n):])
	if id == "" || rest == "" {
		return "", "", false
	}
	return id, rest, true
}

// BounceAddress is the envelope sender that carries bounce token tok:
// b+TOKEN@domain.
func BounceAddress(tok, domain string) string { return "b+" + tok + "@" + domain }

// ParseBounceAddress returns the token of a bounce address at domain
// (b+TOKEN@domain, compared case-insensitively), or ok false. It does not
// verify the token.
func ParseBounceAddress(addr, domain string) (tok string, ok bool) {
	local, dom, found := strings.Cut(addr, "@")
	if !found || !strings.EqualFold(dom, domain) || len(local) < 3 || !strings.EqualFold(local[:2], "b+") {
		return "", false
	}
	return local[2:], true
}
