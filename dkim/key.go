package dkim

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
)

// MinRSABits is the smallest RSA key Key accepts (RFC 8301 allows 1024;
// Gmail and Yahoo expect 2048).
const MinRSABits = 2048

// Key is one signing key: the domain it signs for (the signature's d=),
// its selector (s=) and the private key. Its public half is what the
// domain publishes in DNS (TXTRecord at DNSName).
type Key struct {
	Domain   string
	Selector string
	signer   crypto.Signer
}

// NewKey returns the key priv for domain and selector: RSA of at least
// MinRSABits bits, or Ed25519 (RFC 8463).
func NewKey(domain, selector string, priv crypto.Signer) (*Key, error) {
	domain = strings.ToLower(strings.TrimSuffix(domain, "."))
	if !isDNSName(domain) || !strings.Contains(domain, ".") {
		return nil, fmt.Errorf("domain %q is not a DNS name such as example.com", domain)
	}
	if !isDNSName(selector) {
		return nil, fmt.Errorf("selector %q is not a DNS label such as s2026", selector)
	}
	switch k := priv.(type) {
	case *rsa.PrivateKey:
		if bits := k.N.BitLen(); bits < MinRSABits {
			return nil, fmt.Errorf("the RSA key has %d bits; DKIM keys need at least %d", bits, MinRSABits)
		}
	case ed25519.PrivateKey:
	default:
		return nil, fmt.Errorf("a %T key: DKIM signs with RSA (at least %d bits) or Ed25519", priv, MinRSABits)
	}
	return &Key{Domain: domain, Selector: selector, signer: priv}, nil
}

// ParseKey returns the key for domain and selector from a PEM file's
// contents: PKCS #8 ("PRIVATE KEY", what openssl genpkey writes) or
// PKCS #1 ("RSA PRIVATE KEY"), unencrypted. Its errors never quote the
// file's contents.
func ParseKey(domain, selector string, pemBytes []byte) (*Key, error) {
	var block *pem.Block
	for rest := pemBytes; ; {
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, errors.New("no PEM-encoded private key found")
		}
		if strings.HasSuffix(block.Type, "PRIVATE KEY") {
			break
		}
	}
	if block.Type == "ENCRYPTED PRIVATE KEY" || block.Headers["Proc-Type"] != "" {
		return nil, errors.New("the private key is encrypted: write it unencrypted (openssl pkey -in KEY -out PLAIN.pem) and restrict the file's permissions instead")
	}
	var priv any
	var err error
	switch block.Type {
	case "PRIVATE KEY":
		priv, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		priv, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("a %q PEM block: DKIM signs with RSA (at least %d bits) or Ed25519", block.Type, MinRSABits)
	}
	if err != nil {
		// x509's messages name the problem, never the bytes.
		return nil, fmt.Errorf("parse private key: %w", err)
	}
	signer, ok := priv.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("a %T key: DKIM signs with RSA (at least %d bits) or Ed25519", priv, MinRSABits)
	}
	return NewKey(domain, selector, signer)
}

// LoadKeys reads the keys SENDQ_DKIM names: a comma-separated list of
// domain:selector:/path/to/key.pem. A domain may have several keys (an
// RSA and an Ed25519 one, as RFC 8463 advises: a message is then signed
// with both). An error names the entry at fault, never the key.
func LoadKeys(spec string) ([]*Key, error) {
	var keys []*Key
	seen := map[string]bool{}
	for i, entry := range strings.Split(spec, ",") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		domain, selector, path, ok := split3(entry)
		if !ok {
			return nil, fmt.Errorf("entry %d %q: want domain:selector:/path/to/key.pem", i+1, entry)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("entry %d (%s:%s): read key: %w", i+1, domain, selector, err)
		}
		k, err := ParseKey(domain, selector, data)
		if err != nil {
			return nil, fmt.Errorf("entry %d (%s:%s, %s): %w", i+1, domain, selector, path, err)
		}
		if seen[k.DNSName()] {
			return nil, fmt.Errorf("entry %d: %s:%s is listed twice", i+1, domain, selector)
		}
		seen[k.DNSName()] = true
		keys = append(keys, k)
	}
	return keys, nil
}

// split3 splits "domain:selector:path"; the path may hold colons.
func split3(s string) (a, b, c string, ok bool) {
	parts := strings.SplitN(s, ":", 3)
	if len(parts) != 3 || parts[0] == "" || parts[1] == "" || parts[2] == "" {
		return "", "", "", false
	}
	return strings.TrimSpace(parts[0]), strings.TrimSpace(parts[1]), strings.TrimSpace(parts[2]), true
}

// Algorithm is the signature's a= tag: rsa-sha256 or ed25519-sha256.
func (k *Key) Algorithm() string {
	if _, ok := k.signer.(ed25519.PrivateKey); ok {
		return "ed25519-sha256"
	}
	return "rsa-sha256"
}

// DNSName is where the public key is published: selector._domainkey.domain.
func (k *Key) DNSName() string { return k.Selector + "._domainkey." + k.Domain }

// TXTRecord is the DNS TXT record to publish at DNSName (RFC 6376 section
// 3.6.1): "v=DKIM1; k=rsa; p=…" with the SubjectPublicKeyInfo of an RSA
// key, "v=DKIM1; k=ed25519; p=…" with the 32 bytes of an Ed25519 one. A
// value longer than 255 bytes (RSA) goes in DNS as several strings of one
// record; most DNS consoles split it themselves.
func (k *Key) TXTRecord() string {
	switch pub := k.signer.Public().(type) {
	case ed25519.PublicKey:
		return "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(pub)
	default:
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil { // not for an *rsa.PublicKey
			panic(fmt.Sprintf("dkim: marshal public key: %v", err))
		}
		return "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(der)
	}
}

// isDNSName reports whether s is dot-separated LDH labels (letters,
// digits, hyphens, underscores; no empty label, none over 63 bytes).
func isDNSName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}
