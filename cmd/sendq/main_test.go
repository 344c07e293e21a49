package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/mail"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sendq/sendq/internal/proctest"
	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/internal/smtptest"
)

// binary is the sendq binary built once for the end-to-end tests.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sendq-e2e")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary, err = proctest.Build(dir, raceEnabled)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		_ = os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

type httpResult struct {
	Req     *http.Request
	ReqBody []byte
	Resp    *http.Response
	Body    []byte
}

func call(t *testing.T, method, url string, body []byte, header map[string]string) httpResult {
	t.Helper()
	req, err := http.NewRequestWithContext(context.Background(), method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return httpResult{Req: req, ReqBody: body, Resp: resp, Body: b}
}

func waitStatus(t *testing.T, base, id string, header map[string]string, want ...string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		r := call(t, "GET", base+"/v1/emails/"+id, nil, header)
		var st map[string]any
		_ = json.Unmarshal(r.Body, &st)
		for _, w := range want {
			if st["status"] == w {
				return st
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("email %s: status %s; want one of %v", id, r.Body, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// The seed: the connector's Send Email body as a Logic App sends it, with a
// non-ASCII subject, an attachment and an inline image.
var seedJSON = []byte(`{
  "From": "Sales Bot <sales-bot@contoso.example>",
  "To": "recipient1@contoso.example;recipient2@contoso.example",
  "CC": "Lead Owner <owner@contoso.example>",
  "Bcc": "audit@contoso.example",
  "Subject": "새 잠재 고객 생성됨: Contoso",
  "Body": "<p>A new lead was created.</p><img src=\"cid:logo\">",
  "IsHtml": true,
  "Importance": "High",
  "ReadReceipt": "sales-bot@contoso.example",
  "Attachments": [
    {"ContentData": "bGVhZCxzY29yZQpDb250b3NvLDk5Cg==", "ContentType": "text/csv", "ContentTransferEncoding": "base64", "FileName": "lead.csv"},
    {"ContentData": "PHN2ZyB4bWxucz0iaHR0cDovL3d3dy53My5vcmcvMjAwMC9zdmciLz4=", "ContentType": "image/svg+xml", "FileName": "logo.svg", "ContentId": "logo"},
    {"ContentData": "plain text, as is", "ContentType": "text/plain", "ContentTransferEncoding": "none", "FileName": "note.txt"}
  ]
}`)

func TestEndToEndSeedIsDeliveredByteForByte(t *testing.T) {
	rs := redistest.Start(t)
	sink := smtptest.Start(t)
	p := proctest.Start(t, binary, "serve", "REDIS_URL="+rs.URL(), "SENDQ_SMTP_URL=smtp://"+sink.Addr+"?tls=none",
		"SENDQ_API_KEYS=e2e-key-0001", "SENDQ_ALLOWED_FROM=@contoso.example")
	base := "http://" + p.Addr
	auth := map[string]string{"Authorization": "Bearer e2e-key-0001"}
	var seen []httpResult

	r := call(t, "POST", base+"/v1/emails", seedJSON, auth)
	seen = append(seen, r)
	if r.Resp.StatusCode != 202 {
		t.Fatalf("POST = %d %s", r.Resp.StatusCode, r.Body)
	}
	var acc struct{ ID, Status string }
	_ = json.Unmarshal(r.Body, &acc)
	if r.Resp.Header.Get("Location") != "/v1/emails/"+acc.ID || acc.Status != "queued" {
		t.Errorf("202 body %s Location %q", r.Body, r.Resp.Header.Get("Location"))
	}
	st := waitStatus(t, base, acc.ID, auth, "sent", "failed")
	if st["status"] != "sent" || st["attempts"] != float64(1) || st["sent_at"] == nil {
		t.Fatalf("status = %v; want sent in 1 attempt", st)
	}
	seen = append(seen, call(t, "GET", base+"/v1/emails/"+acc.ID, nil, auth))

	msgs := sink.Messages()
	if len(msgs) != 1 {
		t.Fatalf("SMTP server got %d messages; want 1", len(msgs))
	}
	msg := msgs[0]
	if msg.From != "sales-bot@contoso.example" {
		t.Errorf("MAIL FROM = %s", msg.From)
	}
	if got := strings.Join(msg.To, " "); got != "recipient1@contoso.example recipient2@contoso.example owner@contoso.example audit@contoso.example" {
		t.Errorf("RCPT TO = %s", got)
	}
	checkSeedMessage(t, msg.Data, acc.ID)

	// Errors and other routes, for the OpenAPI check below.
	seen = append(seen,
		call(t, "POST", base+"/v1/emails", []byte(`{"From":"x@contoso.example","To":"y@contoso.example","Importance":"Urgent"}`), auth),
		call(t, "POST", base+"/v1/emails", seedJSON, nil),
		call(t, "POST", base+"/v1/emails", []byte(`{"From":"x@elsewhere.example","To":"y@contoso.example"}`), auth),
		call(t, "GET", base+"/v1/emails/00000000-0000-7000-8000-000000000000", nil, auth),
		call(t, "GET", base+"/v1/emails?status=sent", nil, auth),
		call(t, "GET", base+"/readyz", nil, nil),
		call(t, "GET", base+"/healthz", nil, nil),
	)
	// The web view: behind the key, open with it.
	if r := call(t, "GET", base+"/ui/", nil, nil); r.Resp.StatusCode != 401 {
		t.Errorf("GET /ui/ without a key = %d; want 401", r.Resp.StatusCode)
	}
	if r := call(t, "GET", base+"/ui/", nil, auth); r.Resp.StatusCode != 200 || !bytes.Contains(r.Body, []byte("<html")) {
		t.Errorf("GET /ui/ with the key = %d; want 200 and the page", r.Resp.StatusCode)
	}
	wantCodes := []int{202, 200, 400, 401, 403, 404, 200, 200, 200}
	for i, r := range seen {
		if r.Resp.StatusCode != wantCodes[i] {
			t.Errorf("%s %s = %d; want %d: %s", r.Req.Method, r.Req.URL.Path, r.Resp.StatusCode, wantCodes[i], r.Body)
		}
	}
	checkOpenAPI(t, base, seen)

	m := call(t, "GET", base+"/metrics", nil, nil)
	for _, want := range []string{"sendq_emails_accepted_total 1", "sendq_emails_sent_total 1",
		`sendq_http_requests_total{code="202",route="POST /v1/emails"} 1`, "sendq_smtp_send_duration_seconds_count 1",
		`sendq_emails_failed_total{reason="permanent"} 0`} {
		if !bytes.Contains(m.Body, []byte(want)) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if bytes.Contains(m.Body, []byte("e2e-key-0001")) || strings.Contains(p.Logs(), "e2e-key-0001") {
		t.Errorf("the API key leaked into metrics or logs")
	}
	p.Stop(t, 30*time.Second)
}

// checkSeedMessage parses the delivered message and checks every header and
// part against the seed.
func checkSeedMessage(t *testing.T, data []byte, id string) {
	t.Helper()
	if bytes.Contains(bytes.ReplaceAll(data, []byte("\r\n"), nil), []byte("\n")) ||
		bytes.Contains(bytes.ReplaceAll(data, []byte("\r\n"), nil), []byte("\r")) {
		t.Errorf("message has a bare CR or LF")
	}
	m, err := mail.ReadMessage(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("message does not parse: %v\n%s", err, data)
	}
	h := m.Header
	dec := new(mime.WordDecoder)
	subj, err := dec.DecodeHeader(h.Get("Subject"))
	if err != nil || subj != "새 잠재 고객 생성됨: Contoso" {
		t.Errorf("Subject = %q (%v)", subj, err)
	}
	if strings.Contains(h.Get("Subject"), "새") {
		t.Errorf("Subject is not RFC 2047 encoded: %q", h.Get("Subject"))
	}
	for k, want := range map[string]string{
		"From":                        `"Sales Bot" <sales-bot@contoso.example>`,
		"To":                          "<recipient1@contoso.example>, <recipient2@contoso.example>",
		"Cc":                          `"Lead Owner" <owner@contoso.example>`,
		"Message-Id":                  "<" + id + "@contoso.example>",
		"Importance":                  "high",
		"X-Priority":                  "1",
		"Disposition-Notification-To": "<sales-bot@contoso.example>",
		"Mime-Version":                "1.0",
	} {
		if got := h.Get(k); got != want {
			t.Errorf("%s: %q; want %q", k, got, want)
		}
	}
	if _, ok := h["Bcc"]; ok || bytes.Contains(data, []byte("audit@")) {
		t.Errorf("the Bcc recipient is visible in the message")
	}
	if _, err := h.Date(); err != nil {
		t.Errorf("Date: %v", err)
	}
	parts := map[string][]byte{}
	var html string
	var inlineCID string
	walk(t, m.Header.Get("Content-Type"), m.Body, func(hdr map[string][]string, ctype string, body []byte) {
		disp, params, _ := mime.ParseMediaType(first(hdr["Content-Disposition"]))
		switch {
		case ctype == "text/html" && disp == "":
			html = string(body)
		case params["filename"] != "":
			parts[params["filename"]] = body
			if disp == "inline" {
				inlineCID = first(hdr["Content-Id"])
			}
		}
	})
	if html != `<p>A new lead was created.</p><img src="cid:logo">` {
		t.Errorf("HTML body = %q", html)
	}
	for name, want := range map[string]string{
		"lead.csv": "lead,score\nContoso,99\n",
		"logo.svg": `<svg xmlns="http://www.w3.org/2000/svg"/>`,
		"note.txt": "plain text, as is",
	} {
		if got := string(parts[name]); got != want {
			t.Errorf("attachment %s = %q; want %q", name, got, want)
		}
	}
	if inlineCID != "<logo>" {
		t.Errorf("inline part Content-ID = %q; want <logo>", inlineCID)
	}
}

func first(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

// walk visits every leaf part, decoded.
func walk(t *testing.T, ctype string, body io.Reader, visit func(map[string][]string, string, []byte)) {
	mt, params, err := mime.ParseMediaType(ctype)
	if err != nil {
		t.Fatalf("Content-Type %q: %v", ctype, err)
	}
	if !strings.HasPrefix(mt, "multipart/") {
		return
	}
	mr := multipart.NewReader(body, params["boundary"])
	for {
		p, err := mr.NextRawPart()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		pt, _, _ := mime.ParseMediaType(p.Header.Get("Content-Type"))
		if strings.HasPrefix(pt, "multipart/") {
			walk(t, p.Header.Get("Content-Type"), p, visit)
			continue
		}
		raw, _ := io.ReadAll(p)
		switch strings.ToLower(p.Header.Get("Content-Transfer-Encoding")) {
		case "base64":
			raw, err = base64.StdEncoding.DecodeString(strings.Join(strings.Fields(string(raw)), ""))
			if err != nil {
				t.Fatal(err)
			}
		case "quoted-printable":
			raw, _ = io.ReadAll(newQP(raw))
		}
		visit(p.Header, pt, raw)
	}
}
