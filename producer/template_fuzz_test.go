package producer

import (
	"bytes"
	"errors"
	"mime"
	"net/mail"
	"strings"
	"testing"
	"time"

	"github.com/go-json-experiment/json/jsontext"

	"github.com/sendq/sendq/queue"
	"github.com/sendq/sendq/templates"
	"github.com/sendq/sendq/worker"
)

// fuzzSendTemplates are the stored templates FuzzTemplatedSend sends
// with, and the top-level variables each reads whatever the data.
var fuzzSendTemplates = []struct {
	src  templates.Source
	uses []string
}{
	{templates.Source{Subject: "Order {{.OrderNo}}: {{.FirstName}}", Html: `<p>{{.FirstName}}</p><a href="{{.Link}}">t</a>`, Text: "{{.FirstName}} {{.Link}}"}, []string{"OrderNo", "FirstName", "Link"}},
	{templates.Source{Subject: "{{.User.Name}} {{if .Paid}}paid{{end}}", Text: "{{range .Items}}{{.}}\n{{end}}"}, []string{"User", "Paid", "Items"}},
	{templates.Source{Subject: `{{index .M "k"}}{{printf "%v" .FirstName}}`, Html: "<b>{{.FirstName}}</b>"}, []string{"M", "FirstName"}},
}

// FuzzTemplatedSend sends random TemplateData with each of a set of
// templates, as POST /v1/emails decodes and renders it, then builds the
// message the worker would send: every fault is a *FieldError (a 400)
// naming its field, never a panic or a store error; a variable a
// template reads and the data lacks is always a 400; and the message's
// header holds no CR or LF but its own line ends (the Subject reads back
// as rendered, and no header was added).
func FuzzTemplatedSend(f *testing.F) {
	for _, s := range []string{
		`{}`, `null`, `[]`, `"x"`,
		`{"OrderNo": 1042, "FirstName": "Ada", "Link": "https://example.com/t?a=1&b=2"}`,
		`{"OrderNo": 1, "FirstName": "Ada\r\nBcc: evil@example.com", "Link": "x"}`,
		`{"OrderNo": 1, "FirstName": "=?utf-8?q?=0D=0ABcc:_x@example.com?=", "Link": "javascript:alert(1)"}`,
		`{"User": {"Name": "u\n"}, "Paid": true, "Items": ["a", 2, {"b": 1}]}`,
		`{"User": {"Name": null}, "Paid": 0, "Items": 3}`,
		`{"M": {"k": "v"}, "FirstName": "\u2028"}`,
		`{"M": {}, "FirstName": "x"}`,
		`{"OrderNo": 1e400, "FirstName": "a", "Link": "b"}`,
	} {
		for i := range fuzzSendTemplates {
			f.Add(s, uint8(i))
		}
	}
	parsed := make([]*templates.Parsed, len(fuzzSendTemplates))
	for i, t := range fuzzSendTemplates {
		p, err := templates.Parse(t.src)
		if err != nil {
			f.Fatal(err)
		}
		parsed[i] = p
	}
	f.Fuzz(func(t *testing.T, data string, which uint8) {
		i := int(which) % len(fuzzSendTemplates)
		src := func(name string, n int) (*templates.Version, error) {
			return &templates.Version{Name: name, Version: 1, Parsed: parsed[i]}, nil
		}
		if !jsontext.Value(data).IsValid() {
			return // not a body: invalid_json before any template
		}
		body := `{"From": "shop@example.com", "To": "ada@example.com", "Template": "t", "TemplateData": ` + data + `}`
		r, err := decodeRequest([]byte(body))
		var e *queue.Email
		if err == nil {
			e, err = r.emailFrom(Limits{MaxRecipients: 10}, src)
		}
		if err != nil {
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field == "" || fe.Code == "" {
				t.Fatalf("TemplateData %s: error %T %v; want a *FieldError naming a field", data, err, err)
			}
			return
		}
		d, derr := templates.DecodeData(jsontext.Value(data))
		if derr != nil {
			t.Fatalf("TemplateData %s accepted, but DecodeData refuses it: %v", data, derr)
		}
		for _, name := range fuzzSendTemplates[i].uses {
			if _, ok := d[name]; !ok {
				t.Fatalf("template %d: TemplateData %s accepted without %s (subject %q)", i, data, name, e.Subject)
			}
		}
		e.ID, e.CreatedAt = "0197a1b2-0000-7000-8000-000000000001", time.Unix(1e9, 0).UTC()
		raw, err := worker.RenderMessage(e, worker.WithTextPart())
		if err != nil {
			t.Fatalf("TemplateData %s: RenderMessage: %v", data, err)
		}
		head, _, _ := bytes.Cut(raw, []byte("\r\n\r\n"))
		if bytes.Contains(bytes.ReplaceAll(head, []byte("\r\n"), nil), []byte("\r")) || bytes.Contains(bytes.ReplaceAll(head, []byte("\r\n"), nil), []byte("\n")) {
			t.Fatalf("TemplateData %s: a bare CR or LF in the header:\n%q", data, head)
		}
		m, err := mail.ReadMessage(bytes.NewReader(raw))
		if err != nil {
			t.Fatalf("TemplateData %s: the message does not parse: %v", data, err)
		}
		got, err := new(mime.WordDecoder).DecodeHeader(m.Header.Get("Subject"))
		// A Subject holding an encoded word of its own ("=?utf-8?q?…?=")
		// is written as given (as for any send), so it reads back decoded.
		literal := strings.Contains(e.Subject, "=?")
		if err != nil && !literal || strings.TrimSpace(got) != strings.TrimSpace(e.Subject) && !literal || len(m.Header["Subject"]) != 1 || len(m.Header["Bcc"]) != 0 || len(m.Header["To"]) != 1 {
			t.Fatalf("TemplateData %s: header %v; want Subject %q once, one To, no Bcc", data, m.Header, e.Subject)
		}
		if strings.ContainsAny(e.Subject, "\r\n") {
			t.Fatalf("Subject %q holds CR or LF", e.Subject)
		}
	})
}
