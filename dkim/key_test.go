package dkim_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sendq/sendq/dkim"
	"github.com/sendq/sendq/internal/dkimtest"
)

func writeFile(t *testing.T, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "key.pem")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadKeys(t *testing.T) {
	t.Parallel()
	rsaPath := dkimtest.WritePEM(t, dkimtest.RSAKey(t))
	edPath := dkimtest.WritePEM(t, dkimtest.Ed25519Key(t))
	pkcs1 := writeFile(t, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(dkimtest.RSAKey(t))}))

	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	smallPath := dkimtest.WritePEM(t, small)
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecPath := dkimtest.WritePEM(t, ec)
	ecDER, _ := x509.MarshalECPrivateKey(ec)
	ecSEC1 := writeFile(t, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: ecDER}))
	// Not a key, but something that looks like a secret: errors must
	// never quote it.
	const secret = "hunter2-TOP-SECRET-bytes"
	garbage := writeFile(t, []byte("-----BEGIN PRIVATE KEY-----\n"+base64.StdEncoding.EncodeToString([]byte(secret))+"\n-----END PRIVATE KEY-----\n"))
	plain := writeFile(t, []byte(secret))
	encrypted := writeFile(t, pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: []byte(secret)}))
	cert := writeFile(t, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte(secret)}))

	tests := []struct {
		name, spec string
		want       []string // DNSName of each key, or nil
		wantErr    string   // a substring of the error
	}{
		{"rsa pkcs8", "contoso.example:s1:" + rsaPath, []string{"s1._domainkey.contoso.example"}, ""},
		{"rsa pkcs1", "contoso.example:s1:" + pkcs1, []string{"s1._domainkey.contoso.example"}, ""},
		{"ed25519", "Contoso.Example.:ed:" + edPath, []string{"ed._domainkey.contoso.example"}, ""},
		{"several, spaces", " contoso.example:s1:" + rsaPath + " , contoso.example:ed:" + edPath + ",fabrikam.example:s1:" + edPath + ",",
			[]string{"s1._domainkey.contoso.example", "ed._domainkey.contoso.example", "s1._domainkey.fabrikam.example"}, ""},
		{"empty", "", nil, ""},
		{"rsa 1024", "contoso.example:s1:" + smallPath, nil, "the RSA key has 1024 bits; DKIM keys need at least 2048"},
		{"ecdsa pkcs8", "contoso.example:s1:" + ecPath, nil, "RSA (at least 2048 bits) or Ed25519"},
		{"ec sec1", "contoso.example:s1:" + ecSEC1, nil, `"EC PRIVATE KEY"`},
		{"missing file", "contoso.example:s1:/nonexistent/key.pem", nil, "entry 1 (contoso.example:s1): read key: open /nonexistent/key.pem"},
		{"no path", "contoso.example:s1", nil, "want domain:selector:/path/to/key.pem"},
		{"no selector", "contoso.example::" + rsaPath, nil, "want domain:selector:/path/to/key.pem"},
		{"bad domain", "contoso example:s1:" + rsaPath, nil, `domain "contoso example" is not a DNS name`},
		{"single-label domain", "localhost:s1:" + rsaPath, nil, `domain "localhost" is not a DNS name`},
		{"bad selector", "contoso.example:s 1:" + rsaPath, nil, `selector "s 1" is not a DNS label`},
		{"second entry bad", "contoso.example:s1:" + rsaPath + ",fabrikam.example:s1:" + plain, nil, "entry 2 (fabrikam.example:s1, " + plain + "): no PEM-encoded private key found"},
		{"not a key", "contoso.example:s1:" + garbage, nil, "parse private key"},
		{"encrypted", "contoso.example:s1:" + encrypted, nil, "the private key is encrypted"},
		{"a certificate", "contoso.example:s1:" + cert, nil, "no PEM-encoded private key found"},
		{"duplicate", "contoso.example:s1:" + rsaPath + ",contoso.example:s1:" + edPath, nil, "entry 2: contoso.example:s1 is listed twice"},
	}
	for _, tc := range tests {
		keys, err := dkim.LoadKeys(tc.spec)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%s: LoadKeys error = %v; want one containing %q", tc.name, err, tc.wantErr)
			}
			if err != nil && (strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), base64.StdEncoding.EncodeToString([]byte(secret)))) {
				t.Errorf("%s: the error quotes the file: %v", tc.name, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: LoadKeys: %v", tc.name, err)
			continue
		}
		var got []string
		for _, k := range keys {
			got = append(got, k.DNSName())
		}
		if strings.Join(got, ",") != strings.Join(tc.want, ",") {
			t.Errorf("%s: keys %q; want %q", tc.name, got, tc.want)
		}
	}
}

// TestOpenSSLKeys follows the README: keys made with openssl load, and the
// TXT record sendq derives carries the public key openssl extracts.
func TestOpenSSLKeys(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed")
	}
	dir := t.TempDir()
	for _, tc := range []struct{ name, algo, k string }{
		{"rsa", "RSA", "rsa"},
		{"ed25519", "ed25519", "ed25519"},
	} {
		key := filepath.Join(dir, tc.name+".pem")
		args := []string{"genpkey", "-algorithm", tc.algo, "-out", key}
		if tc.algo == "RSA" {
			args = append(args, "-pkeyopt", "rsa_keygen_bits:2048")
		}
		if out, err := exec.Command("openssl", args...).CombinedOutput(); err != nil {
			t.Fatalf("openssl %v: %v\n%s", args, err, out)
		}
		der, err := exec.Command("openssl", "pkey", "-in", key, "-pubout", "-outform", "DER").Output()
		if err != nil {
			t.Fatalf("openssl pkey -pubout: %v", err)
		}
		if tc.k == "ed25519" {
			der = der[len(der)-32:] // DKIM publishes the 32 key bytes, not the SubjectPublicKeyInfo
		}
		keys, err := dkim.LoadKeys("contoso.example:" + tc.name + ":" + key)
		if err != nil {
			t.Fatalf("LoadKeys of openssl's %s key: %v", tc.name, err)
		}
		want := "v=DKIM1; k=" + tc.k + "; p=" + base64.StdEncoding.EncodeToString(der)
		if got := keys[0].TXTRecord(); got != want {
			t.Errorf("%s TXTRecord = %q; want %q", tc.name, got, want)
		}
		if got, want := keys[0].Algorithm(), tc.k+"-sha256"; got != want {
			t.Errorf("%s Algorithm = %q; want %q", tc.name, got, want)
		}
	}
}
