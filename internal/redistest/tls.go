package redistest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// TLSServer is a redis-server that speaks only TLS (Debian's build has
// it), with a certificate for 127.0.0.1 signed by a certificate authority
// made for the test.
type TLSServer struct {
	*Server
	// CAFile is the CA's certificate (PEM): what a client must trust.
	CAFile string
}

// URL is the rediss:// URL of the server.
func (s *TLSServer) URL() string { return "rediss://" + s.Addr + "/0" }

// StartTLS starts a TLS-only redis-server for t (clients need no
// certificate of their own) and stops it when t ends. It skips the test
// when redis-server is missing and SENDQ_TEST_REQUIRE_REDIS is unset: an
// in-process fallback speaks no TLS.
func StartTLS(t testing.TB) *TLSServer {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("SENDQ_TEST_REQUIRE_REDIS") != "" {
			t.Fatalf("redis-server not found and SENDQ_TEST_REQUIRE_REDIS is set")
		}
		t.Skip("redis-server not found: the TLS test needs a real one")
	}
	dir := t.TempDir()
	ca, cert, key := writeTestPKI(t, dir)
	s := &Server{Real: true, dir: dir}
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ { // a free port can be taken before redis binds it
		port, err := freePort()
		if err != nil {
			t.Fatalf("free port: %v", err)
		}
		s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		s.args = []string{"--port", "0", "--tls-port", strconv.Itoa(port), "--bind", "127.0.0.1",
			"--tls-cert-file", cert, "--tls-key-file", key, "--tls-ca-cert-file", ca, "--tls-auth-clients", "no",
			"--save", "", "--appendonly", "no", "--dir", dir, "--protected-mode", "yes"}
		if lastErr = s.start(bin); lastErr == nil {
			t.Cleanup(s.Stop)
			return &TLSServer{Server: s, CAFile: ca}
		}
	}
	t.Fatalf("start TLS redis-server: %v", lastErr)
	return nil
}

// writeTestPKI writes a CA certificate, and a server certificate for the
// IP address 127.0.0.1 (no DNS name) signed by it with its key, as PEM
// files in dir.
func writeTestPKI(t testing.TB, dir string) (caFile, certFile, keyFile string) {
	t.Helper()
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "sendq test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "redistest"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, typ string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	return write("ca.pem", "CERTIFICATE", caDER), write("server.pem", "CERTIFICATE", der), write("server-key.pem", "PRIVATE KEY", keyDER)
}
