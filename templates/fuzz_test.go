package templates

import (
	"errors"
	"strings"
	"testing"
)

// fuzzTemplates are the templates the fuzz target renders: variables at
// the top level, nested, in conditions, ranges and functions, in every
// part and in an HTML attribute.
var fuzzTemplates = []Source{
	{Subject: "Order {{.OrderNo}} for {{.FirstName}}", Html: `<p>Hi {{.FirstName}}</p><a href="{{.Link}}">x</a>`, Text: "Hi {{.FirstName}} {{.OrderNo}}"},
	{Subject: "{{.User.Name}}", Text: "{{if .Paid}}paid {{.Total}}{{else}}due{{end}}"},
	{Subject: "{{with .User}}{{.Name}}{{end}} {{len .Items}} items", Html: "{{range .Items}}<li>{{.}}</li>{{end}}"},
	{Subject: `{{index .M "k"}}`, Text: `{{printf "%v" .FirstName}}`},
	{Subject: "plain", Html: "<script>var x = {{.FirstName}};</script><p style=\"color: {{.Link}}\">{{.OrderNo}}</p>"},
}

// used lists the top-level variables template i reads directly.
var used = [][]string{
	{"OrderNo", "FirstName", "Link"},
	{"User", "Paid"},
	{"User", "Items"},
	{"M", "FirstName"},
	{"FirstName", "Link", "OrderNo"},
}

// FuzzRender renders random TemplateData against fuzzTemplates: nothing
// panics, every error is a MissingError or a DataError (never anything
// that would be a 500), a variable the template reads at the top level
// and the data lacks is a MissingError, and no rendered Subject holds a
// CR, LF or other control character.
func FuzzRender(f *testing.F) {
	for _, seed := range []string{
		`{}`,
		`{"OrderNo": 1, "FirstName": "Ada", "Link": "https://example.com"}`,
		`{"OrderNo": null, "FirstName": "Ada", "Link": "x"}`,
		`{"FirstName": "a\r\nBcc: x@evil.example", "OrderNo": 1, "Link": "x"}`,
		`{"User": {"Name": "u"}, "Paid": true, "Total": 1.5, "Items": ["a", 3]}`,
		`{"User": "not an object", "Paid": 0, "Items": 7}`,
		`{"M": {"k": "<no value>"}, "FirstName": "\u2028"}`,
		`{"M": {}, "FirstName": ["x"], "Link": "javascript:alert(1)"}`,
		`{"User": {"Name": null}, "Items": [], "Paid": false}`,
		`{"OrderNo": 12345678901234567890, "FirstName": {}, "Link": []}`,
	} {
		f.Add(seed)
	}
	parsed := make([]*Parsed, len(fuzzTemplates))
	for i, src := range fuzzTemplates {
		p, err := Parse(src)
		if err != nil {
			f.Fatalf("Parse(%+v): %v", src, err)
		}
		parsed[i] = p
	}
	f.Fuzz(func(t *testing.T, raw string) {
		data, err := DecodeData([]byte(raw))
		if err != nil {
			return // the intake answers 400 invalid_field for it
		}
		for i, p := range parsed {
			out, err := p.Render(data)
			var me *MissingError
			var de *DataError
			if err != nil && !errors.As(err, &me) && !errors.As(err, &de) {
				t.Fatalf("template %d: Render(%s) = %T %v; want a MissingError or DataError", i, raw, err, err)
			}
			if err == nil {
				for _, name := range used[i] {
					if _, ok := data[name]; !ok {
						t.Fatalf("template %d: Render(%s) succeeded without %s", i, raw, name)
					}
				}
				if strings.ContainsAny(out.Subject, "\r\n\x00") || hasControl(out.Subject) {
					t.Fatalf("template %d: Render(%s) Subject = %q holds a control character", i, raw, out.Subject)
				}
				if src := fuzzTemplates[i].Subject + fuzzTemplates[i].Text; strings.Count(out.Subject+out.Text, noValue) > strings.Count(src, noValue)+2*countInData(data) {
					t.Fatalf("template %d: Render(%s) wrote %q for a missing value", i, raw, noValue)
				}
			}
		}
	})
}
