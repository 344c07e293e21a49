package producer_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/sendq/sendq/queue"
)

const shippedTemplate = `{"Subject": "Order {{.OrderNo}} shipped, {{.FirstName}}",
 "Html": "<p>Hi {{.FirstName}},</p><p>order {{.OrderNo}} is on its way: <a href=\"{{.Link}}\">track it</a></p>",
 "Text": "Hi {{.FirstName}}, order {{.OrderNo}} is on its way: {{.Link}}"}`

// queued is the email the API queued under id (priority prio).
func (b *apiBundle) queuedEmail(t *testing.T, id, prio string) *queue.Email {
	t.Helper()
	info, err := b.insp.GetTaskInfo(queue.DefaultTopology.Pick(prio, id), id)
	if err != nil {
		t.Fatalf("email %s is not queued: %v", id, err)
	}
	e, err := queue.DecodeEmail(info.Payload)
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
}
