// Package dkim signs sendq's outgoing messages with DKIM (RFC 6376). It
// owns the signing keys (SENDQ_DKIM: loading and checking them, and the
// DNS record each needs), the choice of keys for a message (by its From
// domain), the signature itself, made with go-msgauth over the finished
// bytes (relaxed/relaxed), keeping one signature across an email's
// attempts, and the sendq_dkim_* metrics.
//
// The worker renders a message to the exact bytes it sends and calls
// Signer.Sign on them; go-mail's own DKIM support is not used, because in
// v0.8.1 it signs the unfolded DKIM-Signature and sends a folded one
// (sign_gomail_test.go keeps that reproduced).
package dkim

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/textproto"
	"slices"
	"strings"

	msgdkim "github.com/emersion/go-msgauth/dkim"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"golang.org/x/net/idna"
)

// SignedHeaders are the header fields a signature covers, each as many
// times as the message has it; one the message lacks is left out, unless
// it is one of Oversigned.
var SignedHeaders = []string{
	"From", "Sender", "Reply-To", "To", "Cc", "Subject", "Date", "Message-ID",
	"MIME-Version", "Content-Type", "Content-Transfer-Encoding",
	"List-Unsubscribe", "List-Unsubscribe-Post", "List-Id",
	"In-Reply-To", "References",
	"Importance", "Priority", "X-Priority", "Disposition-Notification-To",
}

// Oversigned are named in the signature once more than the message has
// them (RFC 6376 section 8.15): a receiver then rejects a copy to which one
// was added, such as a second From or Subject, or a List-Unsubscribe that
// was not there.
var Oversigned = []string{"From", "Reply-To", "Subject", "List-Unsubscribe", "List-Unsubscribe-Post"}

// Signer signs messages with the keys of their From domain. A Signer is
// safe for concurrent use.
type Signer struct {
	keys map[string][]*Key // by domain, in the order configured

	signed prometheus.Counter
	noKey  prometheus.Counter
	failed prometheus.Counter
}

// NewSigner returns a Signer with keys, its metrics registered on reg (none
// if reg is nil).
func NewSigner(keys []*Key, reg prometheus.Registerer) *Signer {
	f := promauto.With(reg)
	s := &Signer{
		keys: map[string][]*Key{},
		signed: f.NewCounter(prometheus.CounterOpts{Namespace: "sendq", Name: "dkim_signed_total",
			Help: "Messages signed with DKIM, one per delivery attempt (a retry carries its first attempt's signature and counts again)."}),
		noKey: f.NewCounter(prometheus.CounterOpts{Namespace: "sendq", Name: "dkim_no_key_total",
			Help: "Messages sent unsigned: no DKIM key matches their From domain."}),
		failed: f.NewCounter(prometheus.CounterOpts{Namespace: "sendq", Name: "dkim_errors_total",
			Help: "Messages that could not be signed (the email fails, reason invalid)."}),
	}
	for _, k := range keys {
		s.keys[k.Domain] = append(s.keys[k.Domain], k)
	}
	return s
}

// KeysFor returns the keys that sign mail from address from: those of its
// domain or, if it has none, of its closest parent domain that has some
// (a key for example.com signs mail from news.example.com: DMARC's relaxed
// alignment accepts it). Nil if none.
func (s *Signer) KeysFor(from string) []*Key {
	at := strings.LastIndexByte(from, '@')
	if at < 0 {
		return nil
	}
	domain, err := idna.Lookup.ToASCII(strings.TrimSuffix(from[at+1:], "."))
	if err != nil {
		return nil
	}
	domain = strings.ToLower(domain)
	for {
		if ks := s.keys[domain]; len(ks) > 0 {
			return ks
		}
		dot := strings.IndexByte(domain, '.')
		if dot < 0 {
			return nil
		}
		domain = domain[dot+1:]
	}
}

// Sign returns the DKIM-Signature header fields to write before msg, for a
// message whose From address is from: one signature per key KeysFor(from)
// returns, none (and no error) if it returns none. msg is the finished
// message (header, blank line, body, CRLF line ends) as the relay will
// receive it once dot-stuffing is undone.
//
// prior is what Sign returned for an earlier attempt of the same email. If
// it holds, in order, one signature by each of those keys over the same
// header fields, and each still verifies over msg, Sign returns prior
// unchanged: every attempt of an email then carries the same signature,
// where a fresh one would differ in its timestamp (t=). Otherwise (a key
// or the message changed) Sign signs anew.
func (s *Signer) Sign(msg []byte, from, prior string) (string, error) {
	keys := s.KeysFor(from)
	if len(keys) == 0 {
		s.noKey.Inc()
		return "", nil
	}
	sig, err := s.sign(msg, keys, prior)
	if err != nil {
		s.failed.Inc()
		return "", err
	}
	s.signed.Inc()
	return sig, nil
}

func (s *Signer) sign(msg []byte, keys []*Key, prior string) (string, error) {
	hk, err := headerKeys(msg)
	if err != nil {
		return "", fmt.Errorf("dkim: %w", err)
	}
	if prior != "" && stillValid(prior, msg, keys, hk) {
		return prior, nil
	}
	var out strings.Builder
	for _, k := range keys {
		signer, err := msgdkim.NewSigner(&msgdkim.SignOptions{
			Domain: k.Domain, Selector: k.Selector, Signer: k.signer,
			HeaderCanonicalization: msgdkim.CanonicalizationRelaxed,
			BodyCanonicalization:   msgdkim.CanonicalizationRelaxed,
			HeaderKeys:             hk,
		})
		if err != nil {
			return "", fmt.Errorf("dkim %s: %w", k.DNSName(), err)
		}
		if _, err := signer.Write(msg); err != nil {
			_ = signer.Close()
			return "", fmt.Errorf("dkim %s: %w", k.DNSName(), err)
		}
		if err := signer.Close(); err != nil {
			return "", fmt.Errorf("dkim %s: %w", k.DNSName(), err)
		}
		out.WriteString(signer.Signature())
	}
	return out.String(), nil
}

// stillValid reports whether prior holds one valid signature per key, in
// order, each over the header fields hk, for msg.
func stillValid(prior string, msg []byte, keys []*Key, hk []string) bool {
	txt := make(map[string]string, len(keys))
	for _, k := range keys {
		txt[k.DNSName()] = k.TXTRecord()
	}
	verifs, err := msgdkim.VerifyWithOptions(io.MultiReader(strings.NewReader(prior), bytes.NewReader(msg)),
		&msgdkim.VerifyOptions{LookupTXT: func(name string) ([]string, error) {
			if r, ok := txt[name]; ok {
				return []string{r}, nil
			}
			return nil, errors.New("not one of this domain's keys")
		}})
	if err != nil || len(verifs) != len(keys) {
		return false
	}
	for _, v := range verifs {
		if v.Err != nil || v.Domain != keys[0].Domain ||
			!slices.EqualFunc(v.HeaderKeys, hk, strings.EqualFold) {
			return false
		}
	}
	// Same count, each verified by a key of this domain: the selectors
	// must also come in the configured order.
	sels := selectors(prior)
	return slices.EqualFunc(sels, keys, func(s string, k *Key) bool { return s == k.Selector })
}

// headerKeys lists the SignedHeaders that msg's header has, each as many
// times as it occurs, in the order of SignedHeaders, then Oversigned.
func headerKeys(msg []byte) ([]string, error) {
	h, err := textproto.NewReader(bufio.NewReader(bytes.NewReader(headerOf(msg)))).ReadMIMEHeader()
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("read message header: %w", err)
	}
	var keys []string
	for _, name := range SignedHeaders {
		for range h.Values(name) {
			keys = append(keys, name)
		}
	}
	if !slices.Contains(keys, "From") {
		return nil, errors.New("the message has no From header")
	}
	return append(keys, Oversigned...), nil
}

// headerOf returns msg's header and the blank line after it.
func headerOf(msg []byte) []byte {
	if i := bytes.Index(msg, []byte("\r\n\r\n")); i >= 0 {
		return msg[:i+4]
	}
	return msg
}

// selectors returns the s= tag of each DKIM-Signature field in sigs.
func selectors(sigs string) []string {
	var out []string
	unfolded := strings.NewReplacer("\r\n ", " ", "\r\n\t", " ").Replace(sigs)
	for _, field := range strings.Split(unfolded, "\r\n") {
		name, value, ok := strings.Cut(field, ":")
		if !ok || !strings.EqualFold(strings.TrimSpace(name), "DKIM-Signature") {
			continue
		}
		sel := ""
		for _, tag := range strings.Split(value, ";") {
			k, v, _ := strings.Cut(tag, "=")
			if strings.TrimSpace(k) == "s" {
				sel = strings.TrimSpace(v)
			}
		}
		out = append(out, sel)
	}
	return out
}
