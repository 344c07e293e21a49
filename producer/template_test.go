package producer_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sendq/sendq/internal/apitest"
	"github.com/sendq/sendq/producer"
	"github.com/sendq/sendq/queue"
	"github.com/sendq/sendq/templates"
)

const shippedTemplate = `{"Subject": "Order {{.OrderNo}} shipped, {{.FirstName}}",
 "Html": "<p>Hi {{.FirstName}},</p><p>order {{.OrderNo}} is on its way: <a href=\"{{.Link}}\">track it</a></p>",
 "Text": "Hi {{.FirstName}}, order {{.OrderNo}} is on its way: {{.Link}}"}`

// queued is the email the API queued under id (priority prio).
func (b *apiBundle) queuedEmail(t *testing.T, id, prio string) *queue.Email {
	t.Helper()
	payload := func() []byte {
		info, err := b.insp.GetTaskInfo(queue.DefaultTopology.Pick(prio, id), id)
		if err == nil {
			return info.Payload
		}
		// A batch's email is held in a chunk: its payload is in its record.
		rec, rerr := b.store.Get(context.Background(), id)
		if rerr != nil || rec.Payload == nil {
			t.Fatalf("email %s is not queued: %v (record: %v)", id, err, rerr)
		}
		return rec.Payload
	}()
	e, err := queue.DecodeEmail(payload)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func TestTemplatedSend(t *testing.T) {
	t.Parallel()
	b := setupAPI(t, nil)
	if r := b.do(t, "PUT", "/v1/templates/order-shipped", shippedTemplate, nil); r.code != http.StatusCreated || r.body["version"] != float64(1) {
		t.Fatalf("PUT = %d %s; want 201 version 1", r.code, r.raw)
	}
	r := b.do(t, "POST", "/v1/emails", `{"From": "shop@example.com", "To": "ada@example.com", "Template": "order-shipped",
		"TemplateData": {"FirstName": "Ada & <Co>", "OrderNo": 12345678, "Link": "javascript:alert(1)"}}`, nil)
	if r.code != http.StatusAccepted {
		t.Fatalf("send = %d %s; want 202", r.code, r.raw)
	}
	e := b.queuedEmail(t, r.body["id"].(string), queue.PriorityNormal)
	if want := "Order 12345678 shipped, Ada & <Co>"; e.Subject != want {
		t.Errorf("Subject = %q; want %q", e.Subject, want)
	}
	if !e.IsHTML || !strings.Contains(e.Body, "Ada &amp; &lt;Co&gt;") || !strings.Contains(e.Body, `href="#ZgotmplZ"`) {
		t.Errorf("Body = %q (html %v); want HTML, escaped, the javascript: link neutralised", e.Body, e.IsHTML)
	}
	if want := "Hi Ada & <Co>, order 12345678 is on its way: javascript:alert(1)"; e.Text != want {
		t.Errorf("Text = %q; want %q", e.Text, want)
	}
	if e.Template != "order-shipped" || e.TemplateVersion != 1 {
		t.Errorf("Template %q version %d; want order-shipped 1", e.Template, e.TemplateVersion)
	}

	// A new version: the queued email keeps what it was accepted with.
	if r := b.do(t, "PUT", "/v1/templates/order-shipped", `{"Subject": "v2 {{.FirstName}}", "Text": "v2"}`, nil); r.code != http.StatusOK || r.body["version"] != float64(2) {
		t.Fatalf("second PUT = %d %s; want 200 version 2", r.code, r.raw)
	}
	if again := b.queuedEmail(t, e.ID, queue.PriorityNormal); again.Subject != e.Subject || again.Body != e.Body {
		t.Errorf("the queued email changed with the template")
	}
	r = b.do(t, "POST", "/v1/emails", `{"From": "shop@example.com", "To": "ada@example.com", "Template": "order-shipped", "TemplateData": {"FirstName": "Ada"}}`, nil)
	if e2 := b.queuedEmail(t, r.body["id"].(string), queue.PriorityNormal); e2.Subject != "v2 Ada" || e2.IsHTML || e2.Body != "v2" || e2.Text != "" || e2.TemplateVersion != 2 {
		t.Errorf("send after the new version = %+v; want v2 as text only", e2)
	}
	// Pinned to version 1.
	r = b.do(t, "POST", "/v1/emails", `{"From": "shop@example.com", "To": "ada@example.com", "Template": "order-shipped", "TemplateVersion": 1,
		"TemplateData": {"FirstName": "Ada", "OrderNo": 1, "Link": "https://example.com/t"}}`, nil)
	if r.code != 202 || b.queuedEmail(t, r.body["id"].(string), queue.PriorityNormal).TemplateVersion != 1 {
		t.Errorf("pinned send = %d %s; want 202 with version 1", r.code, r.raw)
	}
}

func TestTemplatedSendErrors(t *testing.T) {
	t.Parallel()
	b := setupAPI(t, nil)
	if r := b.do(t, "PUT", "/v1/templates/order-shipped", shippedTemplate, nil); r.code != http.StatusCreated {
		t.Fatalf("PUT = %d %s", r.code, r.raw)
	}
	const base = `"From": "shop@example.com", "To": "ada@example.com"`
	for _, c := range []struct{ body, code, field string }{
		{`{` + base + `, "Template": "order-shipped", "TemplateData": {"FirstName": "Ada", "OrderNo": 1}}`, "missing_variable", "TemplateData.Link"},
		{`{` + base + `, "Template": "order-shipped", "TemplateData": {"FirstName": null, "OrderNo": 1, "Link": "x"}}`, "missing_variable", "TemplateData.FirstName"},
		{`{` + base + `, "Template": "order-shipped"}`, "missing_variable", "TemplateData.OrderNo"},
		{`{` + base + `, "Template": "nope", "TemplateData": {}}`, "unknown_template", "Template"},
		{`{` + base + `, "Template": "Bad Name"}`, "unknown_template", "Template"},
		{`{` + base + `, "Template": "order-shipped", "TemplateVersion": 9}`, "unknown_template", "TemplateVersion"},
		{`{` + base + `, "Template": "order-shipped", "Subject": "x"}`, "invalid_field", "Subject"},
		{`{` + base + `, "Template": "order-shipped", "Body": "x"}`, "invalid_field", "Body"},
		{`{` + base + `, "Template": "order-shipped", "IsHtml": false}`, "invalid_field", "IsHtml"},
		{`{` + base + `, "Subject": "s", "Body": "b", "TemplateData": {"a": 1}}`, "invalid_field", "TemplateData"},
		{`{` + base + `, "Template": "order-shipped", "TemplateData": [1]}`, "invalid_field", "TemplateData"},
		{`{` + base + `, "Template": "order-shipped", "TemplateVersion": "1"}`, "invalid_field", "TemplateVersion"},
		{`{` + base + `, "Template": "order-shipped", "TemplateData": {"FirstName": "A\r\nBcc: x@evil.example", "OrderNo": 1, "Link": "x"}}`, "invalid_field", "TemplateData"},
		{`{` + base + `, "Template": "order-shipped", "TemplateData": {"FirstName": "` + strings.Repeat("x", 1000) + `", "OrderNo": 1, "Link": "x"}}`, "invalid_field", "TemplateData"},
	} {
		r := b.do(t, "POST", "/v1/emails", c.body, nil)
		if code, field := errField(r); r.code != 400 || code != c.code || field != c.field {
			t.Errorf("POST %s = %d %s; want 400 %s on %s", c.body, r.code, r.raw, c.code, c.field)
		}
	}
}

func TestTemplatedBatch(t *testing.T) {
	t.Parallel()
	b := setupAPI(t, nil)
	if r := b.do(t, "PUT", "/v1/templates/order-shipped", shippedTemplate, nil); r.code != http.StatusCreated {
		t.Fatalf("PUT = %d %s", r.code, r.raw)
	}
	r := b.do(t, "POST", "/v1/emails/batch", `{"Defaults": {"From": "shop@example.com", "Template": "order-shipped",
		"TemplateData": {"Link": "https://example.com/track", "FirstName": "customer"}},
	 "Messages": [
	   {"To": "ada@example.com", "TemplateData": {"FirstName": "Ada", "OrderNo": 1}},
	   {"To": "bob@example.com", "TemplateData": {"OrderNo": 2, "Link": "https://example.com/bob"}},
	   {"To": "cy@example.com", "TemplateData": {"FirstName": "Cy"}},
	   {"To": "dee@example.com", "TemplateData": {"OrderNo": 4, "Link": null}},
	   {"To": "eve@example.com", "Template": "missing", "TemplateData": {"OrderNo": 5}}]}`, nil)
	if r.code != http.StatusAccepted {
		t.Fatalf("batch = %d %s; want 202", r.code, r.raw)
	}
	res := results(t, r)
	want := []struct{ subject, text, field, code string }{
		{"Order 1 shipped, Ada", "Hi Ada, order 1 is on its way: https://example.com/track", "", ""},
		{"Order 2 shipped, customer", "Hi customer, order 2 is on its way: https://example.com/bob", "", ""},
		{"", "", "Messages[2].TemplateData.OrderNo", "missing_variable"},
		{"", "", "Messages[3].TemplateData.Link", "missing_variable"},
		{"", "", "Messages[4].Template", "unknown_template"},
	}
	for i, w := range want {
		if w.field != "" {
			e, _ := res[i]["error"].(map[string]any)
			if resultField(res[i]) != w.field || e["code"] != w.code {
				t.Errorf("results[%d] = %v; want %s on %s", i, res[i], w.code, w.field)
			}
			continue
		}
		id, _ := res[i]["id"].(string)
		e := b.queuedEmail(t, id, queue.PriorityBulk)
		if e.Subject != w.subject || e.Text != w.text || e.TemplateVersion != 1 {
			t.Errorf("message %d: subject %q text %q; want %q and %q", i, e.Subject, e.Text, w.subject, w.text)
		}
	}
	for result, want := range map[string]float64{"rendered": 2, "missing_variable": 2, "unknown_template": 1, "invalid_data": 0} {
		if got := testutil.ToFloat64(b.m.TemplatedEmails.WithLabelValues(result)); got != want {
			t.Errorf("sendq_templated_emails_total{result=%q} = %v; want %v", result, got, want)
		}
	}
}

// Every template route, each exchange validated against openapi.yaml.
func TestTemplateRoutes(t *testing.T) {
	t.Parallel()
	b := setupAPI(t, func(c *producer.Config) {
		c.Keys = mustKeys(t, "acme=acme-key-0001,acme=acme-key-0002,other-key-0003")
	})
	v := apitest.NewValidator(t)
	acme := map[string]string{"Authorization": "Bearer acme-key-0001"}
	acme2 := map[string]string{"Authorization": "Bearer acme-key-0002"}
	other := map[string]string{"Authorization": "Bearer other-key-0003"}
	do := func(method, path, body string, h map[string]string, want int) response {
		t.Helper()
		r := b.doChecked(t, v, method, path, body, h)
		if r.code != want {
			t.Fatalf("%s %s = %d %s; want %d", method, path, r.code, r.raw, want)
		}
		return r
	}
	do("PUT", "/v1/templates/order-shipped", shippedTemplate, acme, 201)
	r := do("PUT", "/v1/templates/order-shipped", `{"subject": "v2 {{.FirstName}}", "html": "<b>{{.FirstName}}</b>"}`, acme2, 200)
	if r.body["version"] != float64(2) || r.body["name"] != "order-shipped" {
		t.Errorf("second PUT = %s; want version 2", r.raw)
	}
	do("PUT", "/v1/templates/welcome", `{"Subject": "Welcome", "Text": "Hello {{.FirstName}}"}`, acme, 201)
	// Another key (no tenant) has templates of its own.
	do("GET", "/v1/templates/order-shipped", "", other, 404)
	do("PUT", "/v1/templates/order-shipped", `{"Subject": "mine", "Text": "mine"}`, other, 201)

	r = do("GET", "/v1/templates", "", acme2, 200)
	list, _ := r.body["templates"].([]any)
	if len(list) != 2 || list[0].(map[string]any)["name"] != "order-shipped" || list[0].(map[string]any)["version"] != float64(2) {
		t.Errorf("GET /v1/templates = %s; want order-shipped (v2) and welcome", r.raw)
	}
	r = do("GET", "/v1/templates/order-shipped", "", acme, 200)
	if r.body["version"] != float64(2) || r.body["subject"] != "v2 {{.FirstName}}" {
		t.Errorf("GET current = %s", r.raw)
	}
	r = do("GET", "/v1/templates/order-shipped/versions/1", "", acme, 200)
	if r.body["version"] != float64(1) || !strings.Contains(r.body["text"].(string), "{{.Link}}") {
		t.Errorf("GET version 1 = %s", r.raw)
	}
	do("GET", "/v1/templates/order-shipped/versions/3", "", acme, 404)
	do("GET", "/v1/templates/order-shipped/versions/x", "", acme, 404)

	r = do("POST", "/v1/templates/order-shipped/render", `{"TemplateData": {"FirstName": "C&A"}}`, acme, 200)
	if r.body["subject"] != "v2 C&A" || r.body["html"] != "<b>C&amp;A</b>" || r.body["version"] != float64(2) {
		t.Errorf("render = %s", r.raw)
	}
	r = do("POST", "/v1/templates/order-shipped/render", `{"TemplateVersion": 1, "TemplateData": {"FirstName": "Ada", "OrderNo": 7}}`, acme, 400)
	if code, field := errField(r); code != "missing_variable" || field != "TemplateData.Link" {
		t.Errorf("render without Link = %s; want missing_variable TemplateData.Link", r.raw)
	}
	do("POST", "/v1/templates/nope/render", `{}`, acme, 400)
	r = do("POST", "/v1/templates/render", `{"Subject": "Hi {{.N}}", "Html": "<p>{{.N}}</p>", "Text": "{{.N}}", "TemplateData": {"N": 3}}`, acme, 200)
	if r.body["subject"] != "Hi 3" || r.body["html"] != "<p>3</p>" || r.body["text"] != "3" {
		t.Errorf("draft render = %s", r.raw)
	}

	for _, c := range []struct{ path, body, code, field string }{
		{"/v1/templates/x", `{"Subject": "s", "Html": "<p>\n{{if .A}}"}`, "invalid_template", "Html"},
		{"/v1/templates/x", `{"Subject": "{{.A", "Text": "t"}`, "invalid_template", "Subject"},
		{"/v1/templates/x", `{"Text": "t"}`, "invalid_template", "Subject"},
		{"/v1/templates/x", `{"Subject": "s"}`, "invalid_template", "Html"},
		{"/v1/templates/x", `{"Subject": "s", "Text": "t", "Nope": 1}`, "unknown_field", "Nope"},
		{"/v1/templates/x", `{"Subject": 1, "Text": "t"}`, "invalid_field", "Subject"},
		{"/v1/templates/Bad_Name", `{"Subject": "s", "Text": "t"}`, "invalid_field", "name"},
		{"/v1/templates/x", `[]`, "invalid_json", ""},
	} {
		r := do("PUT", c.path, c.body, acme, 400)
		if code, field := errField(r); code != c.code || field != c.field {
			t.Errorf("PUT %s %s = %s; want %s on %s", c.path, c.body, r.raw, c.code, c.field)
		}
	}
	if r := do("PUT", "/v1/templates/x", `{"Subject": "s", "Html": "<p>\n\n{{if .A}}"}`, acme, 400); !strings.Contains(string(r.raw), "line 3") {
		t.Errorf("parse error %s does not name line 3", r.raw)
	}

	// A send after the delete is unknown_template; the queued one stays.
	r = do("POST", "/v1/emails", `{"From": "shop@example.com", "To": "a@example.com", "Template": "welcome", "TemplateData": {"FirstName": "Ada"}}`, acme, 202)
	id := r.body["id"].(string)
	do("DELETE", "/v1/templates/welcome", "", acme, 200)
	do("DELETE", "/v1/templates/welcome", "", acme, 404)
	do("GET", "/v1/templates/welcome", "", acme, 404)
	if e := b.queuedEmail(t, id, queue.PriorityNormal); e.Subject != "Welcome" || e.Body != "Hello Ada" {
		t.Errorf("queued email after the delete = %q %q", e.Subject, e.Body)
	}
	r = do("POST", "/v1/emails", `{"From": "shop@example.com", "To": "a@example.com", "Template": "welcome", "TemplateData": {"FirstName": "Ada"}}`, acme, 400)
	if code, field := errField(r); code != "unknown_template" || field != "Template" {
		t.Errorf("send after delete = %s", r.raw)
	}
	// A name created again does not reuse the old numbers.
	r = do("PUT", "/v1/templates/welcome", `{"Subject": "again", "Text": "again"}`, acme, 201)
	if r.body["version"] != float64(2) {
		t.Errorf("PUT after delete = %s; want version 2", r.raw)
	}
}

// With Redis gone, a templated send, a batch and the template routes are
// 503 queue_unavailable (nothing queued, never a 400 or a 500), even for
// a template this API process has cached.
func TestTemplatesRedisDown(t *testing.T) {
	t.Parallel()
	b := setupAPI(t, func(c *producer.Config) { c.RedisTimeout = 500 * time.Millisecond })
	if r := b.do(t, "PUT", "/v1/templates/welcome", `{"Subject": "Hi {{.N}}", "Text": "t"}`, nil); r.code != 201 {
		t.Fatalf("PUT = %d %s", r.code, r.raw)
	}
	b.redis.Stop()
	for _, c := range []struct{ method, path, body string }{
		{"POST", "/v1/emails", `{"From": "a@example.com", "To": "b@example.com", "Template": "welcome", "TemplateData": {"N": 1}}`},
		{"POST", "/v1/emails/batch", `{"Defaults": {"From": "a@example.com", "Template": "welcome"}, "Messages": [{"To": "b@example.com", "TemplateData": {"N": 1}}]}`},
		{"POST", "/v1/templates/welcome/render", `{"TemplateData": {"N": 1}}`},
		{"PUT", "/v1/templates/welcome", `{"Subject": "x", "Text": "y"}`},
		{"GET", "/v1/templates", ""},
		{"GET", "/v1/templates/welcome", ""},
		{"DELETE", "/v1/templates/welcome", ""},
	} {
		r := b.do(t, c.method, c.path, c.body, nil)
		if code, _ := errField(r); r.code != http.StatusServiceUnavailable || code != "queue_unavailable" || r.header.Get("Retry-After") == "" {
			t.Errorf("%s %s with Redis down = %d %s; want 503 queue_unavailable with Retry-After", c.method, c.path, r.code, r.raw)
		}
	}
}

// An owner keeps at most templates.MaxTemplates names: one more is a 409
// naming the limit, while a new version of a kept one is still taken.
func TestTooManyTemplates(t *testing.T) {
	t.Parallel()
	b := setupAPI(t, nil)
	v := apitest.NewValidator(t)
	body := `{"Subject": "s", "Text": "t"}`
	for i := range templates.MaxTemplates {
		if r := b.do(t, "PUT", fmt.Sprintf("/v1/templates/t%d", i), body, nil); r.code != http.StatusCreated {
			t.Fatalf("PUT t%d = %d %s", i, r.code, r.raw)
		}
	}
	r := b.doChecked(t, v, "PUT", "/v1/templates/one-more", body, nil)
	if code, field := errField(r); r.code != http.StatusConflict || code != "too_many_templates" || field != "name" || !strings.Contains(r.raw2(), "1000") {
		t.Errorf("PUT beyond the limit = %d %s; want 409 too_many_templates naming 1000", r.code, r.raw)
	}
	if r := b.doChecked(t, v, "PUT", "/v1/templates/t7", `{"Subject": "s2", "Text": "t"}`, nil); r.code != http.StatusOK || r.body["version"] != float64(2) {
		t.Errorf("a new version at the limit = %d %s; want 200 version 2", r.code, r.raw)
	}
	// The current source again is that version: 200, nothing stored.
	if r := b.doChecked(t, v, "PUT", "/v1/templates/t7", `{"Subject": "s2", "Text": "t"}`, nil); r.code != http.StatusOK || r.body["version"] != float64(2) {
		t.Errorf("the same source again = %d %s; want 200 version 2", r.code, r.raw)
	}
}
