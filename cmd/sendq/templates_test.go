package main

import (
	"bytes"
	"encoding/json"
	"mime"
	"net/mail"
	"strings"
	"testing"
	"time"

	"github.com/sendq/sendq/internal/proctest"
	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/internal/smtptest"
)

// A templated email arrives as it was rendered at intake: its subject, an
// HTML part with the variables escaped, and the template's own Text as the
// text/plain alternative (not one derived from the HTML), even after the
// template changed and was deleted while the email waited.
func TestTemplatedEmailIsDelivered(t *testing.T) {
	rs := redistest.Start(t)
	sink := smtptest.Start(t)
	p := proctest.Start(t, binary, "serve", "REDIS_URL="+rs.URL(), "SENDQ_SMTP_URL=smtp://"+sink.Addr+"?tls=none",
		"SENDQ_API_KEYS=tpl-key-0001")
	base := "http://" + p.Addr
	auth := map[string]string{"Authorization": "Bearer tpl-key-0001"}
	var seen []httpResult
	must := func(r httpResult, code int) httpResult {
		t.Helper()
		seen = append(seen, r)
		if r.Resp.StatusCode != code {
			t.Fatalf("%s %s = %d %s; want %d", r.Req.Method, r.Req.URL.Path, r.Resp.StatusCode, r.Body, code)
		}
		return r
	}
	must(call(t, "PUT", base+"/v1/templates/order-shipped", []byte(`{
	  "Subject": "Order {{.OrderNo}} shipped — C&A {{.FirstName}}",
	  "Html": "<p>Hi {{.FirstName}}</p><p><a href=\"{{.Link}}\">Track order {{.OrderNo}}</a></p>",
	  "Text": "Hi {{.FirstName}}\nTrack order {{.OrderNo}}: {{.Link}}\n"}`), auth), 201)
	r := must(call(t, "POST", base+"/v1/emails", []byte(`{"From": "shop@example.com", "To": "ada@example.com",
	  "Template": "order-shipped", "SendAt": "`+time.Now().Add(2*time.Second).UTC().Format(time.RFC3339)+`",
	  "TemplateData": {"FirstName": "Ada <b>", "OrderNo": 1042, "Link": "https://example.com/t?o=1042&x=1"}}`), auth), 202)
	var acc struct{ ID string }
	_ = json.Unmarshal(r.Body, &acc)
	// Changed, then deleted, while the email waits for its SendAt.
	must(call(t, "PUT", base+"/v1/templates/order-shipped", []byte(`{"Subject": "changed", "Text": "changed"}`), auth), 200)
	must(call(t, "DELETE", base+"/v1/templates/order-shipped", nil, auth), 200)
	if st := waitStatus(t, base, acc.ID, auth, "sent", "failed"); st["status"] != "sent" {
		t.Fatalf("status = %v", st)
	}
	msgs := sink.Messages()
	if len(msgs) != 1 {
		t.Fatalf("SMTP server got %d messages; want 1", len(msgs))
	}
	m, err := mail.ReadMessage(bytes.NewReader(msgs[0].Data))
	if err != nil {
		t.Fatal(err)
	}
	subject, err := new(mime.WordDecoder).DecodeHeader(m.Header.Get("Subject"))
	if err != nil || subject != "Order 1042 shipped — C&A Ada <b>" {
		t.Errorf("Subject = %q, %v; want the rendered subject, not HTML-escaped", subject, err)
	}
	if ct := m.Header.Get("Content-Type"); !strings.HasPrefix(ct, "multipart/alternative") {
		t.Errorf("Content-Type = %q; want multipart/alternative", ct)
	}
	parts := map[string]string{}
	walk(t, m.Header.Get("Content-Type"), m.Body, func(_ map[string][]string, ct string, body []byte) {
		parts[ct] = strings.ReplaceAll(string(body), "\r\n", "\n")
	})
	if want := "Hi Ada <b>\nTrack order 1042: https://example.com/t?o=1042&x=1\n"; parts["text/plain"] != want {
		t.Errorf("text part = %q; want the template's Text %q", parts["text/plain"], want)
	}
	if want := `<p>Hi Ada &lt;b&gt;</p><p><a href="https://example.com/t?o=1042&amp;x=1">Track order 1042</a></p>`; parts["text/html"] != want {
		t.Errorf("html part = %q; want %q", parts["text/html"], want)
	}
	checkOpenAPI(t, base, seen)
	p.Stop(t, 30*time.Second)
}
