package producer

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"net/http"
	"strings"
)

// APIKey is one accepted key with its own optional From allow-list.
type APIKey struct {
	digest [32]byte
	// ID names the key in idempotency records without revealing it.
	ID string
	// Tenant groups keys that see each other's emails; empty: the key is
	// on its own.
	Tenant      string
	AllowedFrom []string
	// admin: the key sees and changes every email (SENDQ_ADMIN_KEYS).
	admin bool
}

// Owner is what the emails this key sends record as their owner
// (queue.Email.Owner): "tenant:" and the tenant's name when the key has
// one, else "key:" and the key's id. Never the key itself.
func (k *APIKey) Owner() string {
	if k.Tenant != "" {
		return "tenant:" + k.Tenant
	}
	return "key:" + k.ID
}

// maxKeyTenant bounds a tenant's name.
const maxKeyTenant = 64

// ParseAPIKeys parses SENDQ_API_KEYS: keys separated by ',', each
// optionally preceded by a tenant name and '=' and followed by ':' and a
// '|'-separated From allow-list ("acme=key1:@a.com|ops@b.com,key2").
//
// Keys of one tenant see and change each other's emails (an old and a new
// key while one is rotated); a key without a tenant sees only its own.
// The text before the first '=' is a tenant when it is a name (1 to 64
// letters, digits, '.', '_' or '-') and more than '=' follows it, so that
// the '=' padding that ends a base64 key stays part of the key.
func ParseAPIKeys(s string) ([]APIKey, error) {
	var keys []APIKey
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		secret, allow, _ := strings.Cut(item, ":")
		var tenant string
		if name, rest, ok := strings.Cut(secret, "="); ok && validTenant(name) && strings.Trim(rest, "=") != "" {
			tenant, secret = name, rest
		}
		if len(secret) < 8 {
			return nil, fmt.Errorf("API key %d is shorter than 8 characters", len(keys)+1)
		}
		k := APIKey{digest: sha256.Sum256([]byte(secret)), Tenant: tenant}
		k.ID = hex.EncodeToString(k.digest[:8])
		if allow != "" {
			list, err := ParseAllowList(strings.ReplaceAll(allow, "|", ","))
			if err != nil {
				return nil, fmt.Errorf("API key %d: %w", len(keys)+1, err)
			}
			k.AllowedFrom = list
		}
		keys = append(keys, k)
	}
	return keys, nil
}

func validTenant(name string) bool {
	if name == "" || len(name) > maxKeyTenant {
		return false
	}
	for _, c := range name {
		if !(c == '-' || c == '_' || c == '.' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return true
}

// ParseAllowList parses a comma-separated list of addresses (a@x.com) and
// domains (@x.com), lower-cased.
func ParseAllowList(s string) ([]string, error) {
	var out []string
	for _, item := range strings.Split(s, ",") {
		item = strings.ToLower(strings.TrimSpace(item))
		if item == "" {
			continue
		}
		if strings.HasPrefix(item, "@") {
			if err := checkAddrSpec("x" + item); err != nil {
				return nil, fmt.Errorf("allowed sender domain %q: %v", item, err)
			}
		} else if err := checkAddrSpec(item); err != nil {
			return nil, fmt.Errorf("allowed sender %q: %v", item, err)
		}
		out = append(out, item)
	}
	return out, nil
}

// allowed reports whether addr matches an allow-list (an empty list allows
// everything).
func allowed(list []string, addr string) bool {
	if len(list) == 0 {
		return true
	}
	addr = strings.ToLower(addr)
	at := strings.LastIndexByte(addr, '@')
	for _, a := range list {
		if a == addr || (strings.HasPrefix(a, "@") && at >= 0 && addr[at:] == a) {
			return true
		}
	}
	return false
}

// authenticate finds the key presented as "Authorization: Bearer KEY".
func authenticate(keys []APIKey, r *http.Request) (*APIKey, bool) {
	h := r.Header.Get("Authorization")
	scheme, token, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
		return nil, false
	}
	return MatchKey(keys, strings.TrimSpace(token))
}

// MatchKey finds token among keys. It compares fixed-length SHA-256
// digests in constant time and looks at every key, so timing reveals
// neither the key nor which one matched.
func MatchKey(keys []APIKey, token string) (*APIKey, bool) {
	d := sha256.Sum256([]byte(token))
	var found *APIKey
	for i := range keys {
		if subtle.ConstantTimeCompare(d[:], keys[i].digest[:]) == 1 {
			found = &keys[i]
		}
	}
	return found, found != nil
}

// KeyChecker returns a function that reports whether a key is one of keys.
func KeyChecker(keys []APIKey) func(string) bool {
	return func(token string) bool {
		_, ok := MatchKey(keys, token)
		return ok
	}
}
