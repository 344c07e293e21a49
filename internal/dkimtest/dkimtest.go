// Package dkimtest gives tests what DKIM needs: signing keys written as PEM
// files, go-msgauth's verifier, and a second, independent one, Debian's python3-dkim
// (dkimpy, the library behind dkimverify), run with the public keys served
// from a map instead of DNS.
//
// Where python3-dkim is not installed the dkimpy checks are skipped with a
// message; set SENDQ_TEST_REQUIRE_DKIMPY=1 (make test does) to make that
// an error instead.
package dkimtest

import (
	"bufio"
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	msgdkim "github.com/emersion/go-msgauth/dkim"
)

var (
	rsaOnce sync.Once
	rsaKey  *rsa.PrivateKey
)

// RSAKey returns a 2048-bit RSA key, the same one for every call in a test
// binary (generating one takes a while under the race detector).
func RSAKey(t testing.TB) *rsa.PrivateKey {
	t.Helper()
	rsaOnce.Do(func() {
		var err error
		if rsaKey, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
	})
	return rsaKey
}

// Ed25519Key returns a new Ed25519 key.
func Ed25519Key(t testing.TB) ed25519.PrivateKey {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return priv
}

// WritePEM writes priv as an unencrypted PKCS #8 PEM file (what openssl
// genpkey writes) in a temporary directory and returns its path.
func WritePEM(t testing.TB, priv crypto.Signer) string {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "key.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// dkimpyScript reads a JSON object from standard input: "records"
// (selector._domainkey.domain -> TXT record, served instead of DNS) and
// "messages" (each base64), verifies every DKIM-Signature of each message
// with dkimpy, and prints a JSON list: for each message, one result per
// signature, topmost first, "pass" or "fail: reason".
const dkimpyScript = `
import base64, json, sys, dkim
req = json.load(sys.stdin)
records = {k.encode(): v.encode() for k, v in req["records"].items()}
def lookup(name, timeout=5):
    return records.get(name.rstrip(b"."))
out = []
for m in req["messages"]:
    msg = base64.b64decode(m)
    d = dkim.DKIM(msg)
    n = sum(1 for k, _ in d.headers if k.lower() == b"dkim-signature")
    res = []
    for i in range(n):
        try:
            ok = d.verify(idx=i, dnsfunc=lookup)
            res.append("pass" if ok else "fail: signature does not verify")
        except dkim.DKIMException as e:
            res.append("fail: " + str(e))
    out.append(res)
json.dump(out, sys.stdout)
`

// GoMsgauth verifies every DKIM-Signature of msg with go-msgauth, the keys
// coming from records (selector._domainkey.domain -> TXT record) instead
// of DNS, and returns one error (nil: pass) per signature, topmost first.
func GoMsgauth(t testing.TB, msg []byte, records map[string]string) []error {
	t.Helper()
	verifs, err := msgdkim.VerifyWithOptions(bytes.NewReader(msg), &msgdkim.VerifyOptions{
		LookupTXT: func(name string) ([]string, error) {
			if r, ok := records[name]; ok {
				return []string{r}, nil
			}
			return nil, fmt.Errorf("no TXT record at %s", name)
		}})
	if err != nil {
		t.Fatalf("go-msgauth: %v", err)
	}
	errs := make([]error, len(verifs))
	for i, v := range verifs {
		errs[i] = v.Err
	}
	return errs
}

// Dkimpy verifies every DKIM-Signature of each of msgs with python3-dkim
// (one Python process for all), the keys coming from records
// (selector._domainkey.domain -> TXT record), and returns, for each
// message, one result per signature, topmost first: "pass" or
// "fail: reason". It skips t when python3-dkim is missing, unless
// SENDQ_TEST_REQUIRE_DKIMPY is set.
func Dkimpy(t testing.TB, records map[string]string, msgs ...[]byte) [][]string {
	t.Helper()
	python := interpreter(t)
	req := struct {
		Records  map[string]string `json:"records"`
		Messages [][]byte          `json:"messages"` // base64, as encoding/json writes []byte
	}{records, msgs}
	in, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(python, "-c", dkimpyScript)
	cmd.Stdin = bytes.NewReader(in)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("dkimpy: %v\n%s", err, stderr.String())
	}
	var res [][]string
	if err := json.Unmarshal(out, &res); err != nil || len(res) != len(msgs) {
		t.Fatalf("dkimpy answered %q (%v) for %d messages", out, err, len(msgs))
	}
	return res
}

// interpreter is the Python that dkimverify runs on: the one python3-dkim
// is installed for (a python3 earlier in PATH, pyenv's say, may lack it).
func interpreter(t testing.TB) string {
	t.Helper()
	pyOnce.Do(func() { python, pyErr = findInterpreter() })
	if pyErr != "" {
		if os.Getenv("SENDQ_TEST_REQUIRE_DKIMPY") != "" {
			t.Fatalf("%s and SENDQ_TEST_REQUIRE_DKIMPY is set: run scripts/ensure-test-deps.sh", pyErr)
		}
		t.Skipf("%s: apt-get install python3-dkim (scripts/ensure-test-deps.sh) to verify with dkimpy too", pyErr)
	}
	return python
}

var (
	pyOnce sync.Once
	python string
	pyErr  string // why there is none
)

func findInterpreter() (string, string) {
	path, err := exec.LookPath("dkimverify")
	if err != nil {
		return "", "dkimverify (python3-dkim) not found"
	}
	f, err := os.Open(path)
	if err != nil {
		return "", err.Error()
	}
	defer f.Close()
	first, _ := bufio.NewReader(f).ReadString('\n')
	py, ok := strings.CutPrefix(strings.TrimSpace(first), "#!")
	if !ok || strings.Contains(py, " ") {
		py = "python3"
	}
	if err := exec.Command(py, "-c", "import dkim").Run(); err != nil {
		return "", py + " cannot import dkim"
	}
	return py, ""
}

// ReportCPU adds a "cpu-µs/op" metric to b: the process CPU time since
// start (a CPUTime value taken before the loop) over b.N.
func ReportCPU(b *testing.B, start time.Duration) {
	b.Helper()
	b.ReportMetric(float64(CPUTime()-start)/float64(time.Microsecond)/float64(b.N), "cpu-µs/op")
}
