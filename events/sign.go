package events

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Standard Webhooks 1.0 headers.
const (
	HeaderID        = "webhook-id"
	HeaderTimestamp = "webhook-timestamp"
	HeaderSignature = "webhook-signature"
)

// secretPrefix starts a Standard Webhooks secret.
const secretPrefix = "whsec_"

// MinSecretBytes is the shortest key a secret may carry: 24 random bytes
// (the specification asks for 24 to 64).
const MinSecretBytes = 24

// Secrets are the signing keys of SENDQ_WEBHOOK_SECRET: one, or several
// while rotating, and every delivery is signed with each.
type Secrets struct{ keys [][]byte }

// Len is the number of keys.
func (s Secrets) Len() int { return len(s.keys) }

// ParseSecrets reads SENDQ_WEBHOOK_SECRET: whsec_ followed by the base64
// of at least 24 bytes, several separated by spaces. An error names the
// secret by its position, never by its value.
func ParseSecrets(v string) (Secrets, error) {
	fields := strings.Fields(v)
	if len(fields) == 0 {
		return Secrets{}, errors.New("no secret given")
	}
	var s Secrets
	for i, f := range fields {
		what := "the secret"
		if len(fields) > 1 {
			what = fmt.Sprintf("secret %d of %d", i+1, len(fields))
		}
		enc, ok := strings.CutPrefix(f, secretPrefix)
		if !ok {
			return Secrets{}, fmt.Errorf("%s does not start with %s (want whsec_ and the base64 of at least %d random bytes, such as from: openssl rand -base64 32)", what, secretPrefix, MinSecretBytes)
		}
		key, err := base64.StdEncoding.DecodeString(enc)
		if err != nil {
			return Secrets{}, fmt.Errorf("%s is not whsec_ followed by standard base64", what)
		}
		if len(key) < MinSecretBytes {
			return Secrets{}, fmt.Errorf("%s holds %d bytes; at least %d are required", what, len(key), MinSecretBytes)
		}
		s.keys = append(s.keys, key)
	}
	return s, nil
}

// Sign returns the webhook-signature header of one delivery: "v1,<base64
// HMAC-SHA256 of id.timestamp.body>" for every key, separated by spaces.
func (s Secrets) Sign(id string, ts time.Time, body []byte) string {
	var sb strings.Builder
	for i, key := range s.keys {
		if i > 0 {
			sb.WriteByte(' ')
		}
		h := hmac.New(sha256.New, key)
		h.Write([]byte(id))
		h.Write([]byte{'.'})
		h.Write(strconv.AppendInt(nil, ts.Unix(), 10))
		h.Write([]byte{'.'})
		h.Write(body)
		sb.WriteString("v1,")
		sb.WriteString(base64.StdEncoding.EncodeToString(h.Sum(nil)))
	}
	return sb.String()
}

// Endpoint is one webhook receiver of SENDQ_WEBHOOK_URLS.
type Endpoint struct {
	URL string
	// Key names the endpoint in Redis and in task ids: a digest of the URL,
	// so a URL's tokens never appear there.
	Key string
	// Host is the scheme and host, what logs show of the URL.
	Host string
}

// ParseEndpoints reads SENDQ_WEBHOOK_URLS: absolute http or https URLs
// separated by commas. An error names the entry by its position only (a
// URL may carry a token).
func ParseEndpoints(v string) ([]Endpoint, error) {
	var out []Endpoint
	seen := map[string]bool{}
	for i, raw := range strings.Split(v, ",") {
		raw = strings.TrimSpace(raw)
		if raw == "" {
			continue
		}
		u, err := url.Parse(raw)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("entry %d is not an absolute http:// or https:// URL", i+1)
		}
		if u.Fragment != "" {
			return nil, fmt.Errorf("entry %d has a #fragment, which HTTP never sends", i+1)
		}
		if seen[raw] {
			return nil, fmt.Errorf("entry %d repeats an earlier URL", i+1)
		}
		seen[raw] = true
		sum := sha256.Sum256([]byte(raw))
		out = append(out, Endpoint{URL: raw, Key: fmt.Sprintf("%x", sum[:8]), Host: u.Scheme + "://" + u.Host})
	}
	return out, nil
}
