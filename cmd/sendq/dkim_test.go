package main

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	msgdkim "github.com/emersion/go-msgauth/dkim"

	"github.com/sendq/sendq/internal/dkimtest"
	"github.com/sendq/sendq/internal/proctest"
	"github.com/sendq/sendq/internal/promtool"
	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/internal/smtptest"
)

// TestDKIMBadKeyStopsTheStart: a worker whose SENDQ_DKIM names a missing
// file, a weak key or something that is no key does not start; the error
// names the variable and never quotes the file.
func TestDKIMBadKeyStopsTheStart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	const secret = "c2VjcmV0LWtleS1tYXRlcmlhbC1uZXZlci1wcmludA"
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("-----BEGIN PRIVATE KEY-----\n"+secret+"\n-----END PRIVATE KEY-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	weak, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	weakPath := dkimtest.WritePEM(t, weak)
	weakPEM, _ := os.ReadFile(weakPath)
	weakBody := strings.Split(string(weakPEM), "\n")[1] // the first line of base64

	for _, tc := range []struct{ name, spec, want string }{
		{"missing file", "contoso.example:s1:" + filepath.Join(dir, "nope.pem"), "no such file"},
		{"weak key", "contoso.example:s1:" + weakPath, "1024 bits"},
		{"not a key", "contoso.example:s1:" + garbage, "private key"},
		{"bad syntax", "contoso.example", "domain:selector:/path/to/key.pem"},
	} {
		var stdout, stderr bytes.Buffer
		env := map[string]string{"SENDQ_DKIM": tc.spec, "SENDQ_HTTP_ADDR": "127.0.0.1:0", "SENDQ_OUTBOX_DIR": t.TempDir()}
		code := run([]string{"worker"}, func(k string) string { return env[k] }, &stdout, &stderr)
		out := stdout.String() + stderr.String()
		if code == 0 || !strings.Contains(out, "SENDQ_DKIM") || !strings.Contains(out, tc.want) {
			t.Errorf("%s: exit %d, output %q; want a failure naming SENDQ_DKIM and %q", tc.name, code, out, tc.want)
		}
		if strings.Contains(out, secret) || strings.Contains(out, weakBody) {
			t.Errorf("%s: the output quotes the key file: %q", tc.name, out)
		}
	}
}

// TestDKIMSignedEndToEnd: `sendq serve` with SENDQ_DKIM signs what it
// delivers (both verifiers accept what the relay received), with a
// text/plain alternative to the HTML, logs the TXT record to publish and
// counts the signature in /metrics, which promtool's linter accepts.
func TestDKIMSignedEndToEnd(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t)
	sink := smtptest.Start(t)
	keyPath := dkimtest.WritePEM(t, dkimtest.RSAKey(t))
	edPath := dkimtest.WritePEM(t, dkimtest.Ed25519Key(t))
	p := proctest.Start(t, binary, "serve", "REDIS_URL="+rs.URL(), "SENDQ_SMTP_URL=smtp://"+sink.Addr+"?tls=none",
		"SENDQ_DKIM=contoso.example:s2026:"+keyPath+",contoso.example:ed2026:"+edPath)
	base := "http://" + p.Addr

	r := call(t, "POST", base+"/v1/emails", seedJSON, nil)
	if r.Resp.StatusCode != 202 {
		t.Fatalf("POST = %d %s", r.Resp.StatusCode, r.Body)
	}
	var acc struct{ ID string }
	_ = json.Unmarshal(r.Body, &acc)
	if st := waitStatus(t, base, acc.ID, nil, "sent", "failed"); st["status"] != "sent" {
		t.Fatalf("status = %v; want sent", st)
	}
	msgs := sink.Messages()
	if len(msgs) != 1 {
		t.Fatalf("SMTP server got %d messages; want 1", len(msgs))
	}
	data := msgs[0].Data
	checkSeedMessage(t, data, acc.ID)

	// The TXT records, as the startup log gives them to publish.
	records := map[string]string{}
	for _, line := range splitLines(p.Logs()) {
		if !strings.Contains(line, "dkim key loaded") {
			continue
		}
		name, txt := logField(line, "dns_name"), logField(line, "txt")
		records[name] = txt
	}
	if len(records) != 2 {
		t.Fatalf("log gives %d DKIM records; want 2:\n%s", len(records), p.Logs())
	}
	verifs, err := msgdkim.VerifyWithOptions(bytes.NewReader(data), &msgdkim.VerifyOptions{
		LookupTXT: func(name string) ([]string, error) {
			if r, ok := records[name]; ok {
				return []string{r}, nil
			}
			return nil, fmt.Errorf("no record at %s", name)
		}})
	if err != nil || len(verifs) != 2 || verifs[0].Err != nil || verifs[1].Err != nil {
		t.Errorf("go-msgauth: %v %+v; want two valid signatures", err, verifs)
	}
	if py := dkimtest.Dkimpy(t, records, data); len(py[0]) != 2 || py[0][0] != "pass" || py[0][1] != "pass" {
		t.Errorf("dkimpy: %q; want two passes", py[0])
	}
	if !bytes.Contains(data, []byte("multipart/alternative")) || !bytes.Contains(data, []byte("Content-Type: text/plain")) {
		t.Errorf("the HTML body has no text/plain alternative:\n%s", data)
	}
	for _, secret := range []string{keyPath, edPath} {
		b, _ := os.ReadFile(secret)
		block, _ := pem.Decode(b)
		if strings.Contains(p.Logs(), base64.StdEncoding.EncodeToString(block.Bytes)[:40]) {
			t.Errorf("the log holds private key material from %s", secret)
		}
	}

	m := call(t, "GET", base+"/metrics", nil, nil)
	for _, want := range []string{"sendq_dkim_signed_total 1", "sendq_dkim_no_key_total 0", "sendq_dkim_errors_total 0"} {
		if !bytes.Contains(m.Body, []byte(want)) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	out, err := promtool.CheckMetrics(t, m.Body)
	if err != nil {
		t.Fatalf("promtool check metrics: %v", err)
	}
	if strings.TrimSpace(out) != "" {
		t.Errorf("promtool check metrics on /metrics:\n%s", out)
	}
}

// logField returns the value of key=value in a text log line (quoted or not).
func logField(line, key string) string {
	i := strings.Index(line, " "+key+"=")
	if i < 0 {
		return ""
	}
	v := line[i+len(key)+2:]
	if strings.HasPrefix(v, `"`) {
		var s string
		if err := json.NewDecoder(strings.NewReader(v)).Decode(&s); err == nil {
			return s
		}
	}
	v, _, _ = strings.Cut(v, " ")
	return v
}
