package producer

import (
	"crypto/sha256"
	"slices"
	"testing"
)

func TestParseAPIKeysTenants(t *testing.T) {
	tests := []struct {
		in             string
		secret, tenant string
		allow          []string
	}{
		{"plain-key-0001", "plain-key-0001", "", nil},
		{"plain-key-0001:@a.example|ops@b.example", "plain-key-0001", "", []string{"@a.example", "ops@b.example"}},
		{"acme=tenant-key-01", "tenant-key-01", "acme", nil},
		{"acme.eu_2-x=tenant-key-01:@a.example", "tenant-key-01", "acme.eu_2-x", []string{"@a.example"}},
		// base64 padding is part of the key, not a tenant's '='.
		{"c2VjcmV0a2V5MTIzNA==", "c2VjcmV0a2V5MTIzNA==", "", nil},
		{"c2VjcmV0a2V5MTI=", "c2VjcmV0a2V5MTI=", "", nil},
		{"c2VjcmV0a2V5MTI=:@a.example", "c2VjcmV0a2V5MTI=", "", []string{"@a.example"}},
		// Not a tenant name: the '=' is part of the key.
		{"a b=long-enough-key", "a b=long-enough-key", "", nil},
		{"=long-enough-key", "=long-enough-key", "", nil},
	}
	for _, tt := range tests {
		keys, err := ParseAPIKeys(tt.in)
		if err != nil || len(keys) != 1 {
			t.Errorf("ParseAPIKeys(%q) = %v, %v; want one key", tt.in, keys, err)
			continue
		}
		k := keys[0]
		if k.digest != sha256.Sum256([]byte(tt.secret)) || k.Tenant != tt.tenant || !slices.Equal(k.AllowedFrom, tt.allow) {
			t.Errorf("ParseAPIKeys(%q) = tenant %q allow %v; want key %q, tenant %q, allow %v", tt.in, k.Tenant, k.AllowedFrom, tt.secret, tt.tenant, tt.allow)
		}
		wantOwner := "key:" + k.ID
		if tt.tenant != "" {
			wantOwner = "tenant:" + tt.tenant
		}
		if k.Owner() != wantOwner {
			t.Errorf("ParseAPIKeys(%q).Owner() = %q; want %q", tt.in, k.Owner(), wantOwner)
		}
	}
	for _, bad := range []string{"acme=short", "short", "acme=short:@a.example"} {
		if _, err := ParseAPIKeys(bad); err == nil {
			t.Errorf("ParseAPIKeys(%q) = nil error; want a key shorter than 8 characters refused", bad)
		}
	}
}
