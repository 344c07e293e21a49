package main

import (
	"bytes"
	"encoding/json"
	"mime"
	"net/mail"
	"strings"
	"testing"
	"time"

	"github.com/sendq/sendq/deploy"
	"github.com/sendq/sendq/internal/apitest"
	"github.com/sendq/sendq/internal/proctest"
	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/internal/smtptest"
)

// connectorV1JSON is a request made of the connector document's own field
// table (the seed: To, CC, Subject, Body, From, IsHtml, Bcc, Importance,
// and an attachment's ContentData, ContentType, ContentTransferEncoding,
// FileName, ContentId), as the first Send Email took it.
var connectorV1JSON = []byte(`{
  "To": "recipient1@contoso.example;recipient2@contoso.example",
  "CC": "owner@contoso.example",
  "Subject": "새 잠재 고객 생성됨",
  "Body": "A new lead was created in Salesforce.",
  "From": "sales-bot@contoso.example",
  "IsHtml": false,
  "Bcc": "audit@contoso.example",
  "Importance": "High",
  "Attachments": [{"ContentData": "lead,score\nContoso,99\n", "ContentType": "text/csv",
    "ContentTransferEncoding": "none", "FileName": "lead.csv", "ContentId": "lead"}]
}`)

// connectorV3JSON is the same table as Send Email (V3) takes it: no IsHtml
// (the Body is HTML) and no ContentTransferEncoding (ContentData is base64).
var connectorV3JSON = []byte(`{
  "To": "recipient1@contoso.example;recipient2@contoso.example",
  "CC": "owner@contoso.example",
  "Subject": "새 잠재 고객 생성됨",
  "Body": "<p>A new lead was created in Salesforce.</p>",
  "From": "sales-bot@contoso.example",
  "Bcc": "audit@contoso.example",
  "Importance": "High",
  "Attachments": [{"ContentData": "bGVhZCxzY29yZQpDb250b3NvLDk5Cg==", "ContentType": "text/csv",
    "FileName": "lead.csv", "ContentId": "lead"}]
}`)

func TestEndToEndConnectorRoutes(t *testing.T) {
	rs := redistest.Start(t)
	sink := smtptest.Start(t)
	p := proctest.Start(t, binary, "serve", "REDIS_URL="+rs.URL(), "SENDQ_SMTP_URL=smtp://"+sink.Addr+"?tls=none",
		"SENDQ_API_KEYS=e2e-key-0001", "SENDQ_ALLOWED_FROM=@contoso.example")
	base := "http://" + p.Addr
	auth := map[string]string{"Authorization": "Bearer e2e-key-0001"}
	textJSON := map[string]string{"Authorization": "Bearer e2e-key-0001", "Content-Type": "text/json"}
	var seen []httpResult
	send := func(path string, body []byte, header map[string]string) string {
		t.Helper()
		r := call(t, "POST", base+path, body, header)
		seen = append(seen, r)
		var acc struct{ ID, Status string }
		_ = json.Unmarshal(r.Body, &acc)
		if r.Resp.StatusCode != 202 || acc.Status != "queued" || r.Resp.Header.Get("Location") != "/v1/emails/"+acc.ID {
			t.Fatalf("POST %s = %d %s Location %q; want 202 queued with Location", path, r.Resp.StatusCode, r.Body, r.Resp.Header.Get("Location"))
		}
		return acc.ID
	}

	v1 := send("/SendEmail", connectorV1JSON, auth)
	v3 := send("/8a1b5f0e-shared-smtp/SendEmailV3", connectorV3JSON, textJSON)
	for _, id := range []string{v1, v3} {
		if st := waitStatus(t, base, id, auth, "sent", "failed"); st["status"] != "sent" {
			t.Fatalf("email %s: %v; want sent", id, st)
		}
		seen = append(seen, call(t, "GET", base+"/v1/emails/"+id, nil, auth))
	}

	msgs := sink.Messages()
	if len(msgs) != 2 {
		t.Fatalf("SMTP server got %d messages; want 2", len(msgs))
	}
	byID := map[string]smtptest.Message{}
	for _, m := range msgs {
		pm, err := mail.ReadMessage(bytes.NewReader(m.Data))
		if err != nil {
			t.Fatal(err)
		}
		id := strings.TrimSuffix(strings.TrimPrefix(pm.Header.Get("Message-Id"), "<"), "@contoso.example>")
		byID[id] = m
	}
	for _, tc := range []struct {
		id, bodyType, body string
	}{
		{v1, "text/plain", "A new lead was created in Salesforce."},
		{v3, "text/html", "<p>A new lead was created in Salesforce.</p>"},
	} {
		m, ok := byID[tc.id]
		if !ok {
			t.Fatalf("no message with Message-ID <%s@contoso.example>", tc.id)
		}
		if got := strings.Join(m.To, " "); m.From != "sales-bot@contoso.example" ||
			got != "recipient1@contoso.example recipient2@contoso.example owner@contoso.example audit@contoso.example" {
			t.Errorf("%s: MAIL FROM %s RCPT TO %s", tc.id, m.From, got)
		}
		pm, _ := mail.ReadMessage(bytes.NewReader(m.Data))
		subject, _ := new(mime.WordDecoder).DecodeHeader(pm.Header.Get("Subject"))
		if subject != "새 잠재 고객 생성됨" || pm.Header.Get("Importance") != "high" && pm.Header.Get("Importance") != "High" {
			t.Errorf("%s: Subject %q Importance %q", tc.id, subject, pm.Header.Get("Importance"))
		}
		var body, csv string
		walk(t, pm.Header.Get("Content-Type"), pm.Body, func(h map[string][]string, ctype string, data []byte) {
			switch ctype {
			case "text/csv":
				csv = string(data)
			case tc.bodyType:
				body = string(bytes.TrimSpace(data))
			}
		})
		if body != tc.body || csv != "lead,score\nContoso,99\n" {
			t.Errorf("%s: %s body %q, lead.csv %q; want %q and the CSV", tc.id, tc.bodyType, body, csv, tc.body)
		}
	}

	// What each version lacks is refused, naming the field; the rest of
	// the connector's routes, for the checks below.
	withIsHTML := bytes.Replace(connectorV3JSON, []byte(`"Importance"`), []byte(`"IsHtml": true, "Importance"`), 1)
	seen = append(seen,
		call(t, "POST", base+"/SendEmailV3", withIsHTML, textJSON),
		call(t, "POST", base+"/SendEmailV2", connectorV1JSON, auth),
		call(t, "POST", base+"/conn/SendEmailV3", connectorV3JSON, nil),
		call(t, "GET", base+"/TestConnection", nil, auth),
		call(t, "GET", base+"/8a1b5f0e-shared-smtp/TestConnection", nil, auth),
		call(t, "GET", base+"/TestConnection", nil, map[string]string{"Authorization": "Bearer wrong-key-1"}),
		call(t, "DELETE", base+"/v1/emails/"+v3, nil, auth),
	)
	want := []struct {
		code  int
		field string
	}{{202, ""}, {202, ""}, {200, ""}, {200, ""},
		{400, "IsHtml"}, {400, "Attachments[0].ContentTransferEncoding"}, {401, "Authorization"},
		{200, ""}, {200, ""}, {401, "Authorization"}, {409, "id"}}
	for i, r := range seen {
		var e struct{ Error struct{ Field string } }
		_ = json.Unmarshal(r.Body, &e)
		if r.Resp.StatusCode != want[i].code || e.Error.Field != want[i].field {
			t.Errorf("%s %s = %d %s; want %d naming %q", r.Req.Method, r.Req.URL.Path, r.Resp.StatusCode, r.Body, want[i].code, want[i].field)
		}
	}
	checkOpenAPI(t, base, seen)
	// Every one of these requests is also one the custom connector
	// definition describes, answered as it says.
	cv := apitest.NewConnectorValidator(t, deploy.LogicAppsDefinition)
	for _, r := range seen {
		cv.Check(t, r.Req, r.ReqBody, r.Resp, r.Body)
	}

	m := call(t, "GET", base+"/metrics", nil, nil)
	for _, w := range []string{`sendq_http_requests_total{code="202",route="POST /SendEmailV3"} 1`,
		`sendq_http_requests_total{code="202",route="POST /SendEmail"} 1`,
		`sendq_http_requests_total{code="200",route="GET /TestConnection"} 2`} {
		if !bytes.Contains(m.Body, []byte(w)) {
			t.Errorf("/metrics lacks %q", w)
		}
	}
	p.Stop(t, 30*time.Second)
}
