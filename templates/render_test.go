package templates

import (
	"errors"
	"strings"
	"testing"
)

func mustParse(t *testing.T, src Source) *Parsed {
	t.Helper()
	p, err := Parse(src)
	if err != nil {
		t.Fatalf("Parse(%+v): %v", src, err)
	}
	return p
}

func data(t *testing.T, js string) map[string]any {
	t.Helper()
	d, err := DecodeData([]byte(js))
	if err != nil {
		t.Fatalf("DecodeData(%s): %v", js, err)
	}
	return d
}

func TestRender(t *testing.T) {
	p := mustParse(t, Source{
		Subject: "Order {{.OrderNo}} for {{.Name}}",
		Html:    `<p>Hi {{.Name}}</p><a href="{{.Link}}">track</a>{{range .Items}}<li>{{.}}</li>{{end}}`,
		Text:    "Hi {{.Name}}, {{if .Paid}}paid{{else}}due{{end}} {{.Total}}",
	})
	got, err := p.Render(data(t, `{"OrderNo":12345678,"Name":"C&A <script>","Link":"javascript:alert(1)","Items":["a","b"],"Paid":false,"Total":9.5}`))
	if err != nil {
		t.Fatal(err)
	}
	if want := "Order 12345678 for C&A <script>"; got.Subject != want {
		t.Errorf("Subject = %q; want %q (text/template: never HTML-escaped)", got.Subject, want)
	}
	if !strings.Contains(got.Html, "C&amp;A &lt;script&gt;") || !strings.Contains(got.Html, `href="#ZgotmplZ"`) {
		t.Errorf("Html = %q; want the name escaped and the javascript: link neutralised", got.Html)
	}
	if want := "Hi C&A <script>, due 9.5"; got.Text != want {
		t.Errorf("Text = %q; want %q", got.Text, want)
	}
}

func TestRenderMissing(t *testing.T) {
	p := mustParse(t, Source{
		Subject: "Hello {{.Name}}",
		Html:    `<p>{{.Order.Total}}</p>{{index .M "k"}}`,
		Text:    `{{index .M "k"}}`,
	})
	for _, c := range []struct {
		data, part, name string
	}{
		{`{}`, "Subject", "Name"},
		{`{"Name":null}`, "Subject", "Name"},
		{`{"Name":"x","Order":{}}`, "Html", "Order.Total"},
		{`{"Name":"x","Order":{"Total":null},"M":{}}`, "Html", "Order.Total"},
		{`{"Name":"x","Order":{"Total":1},"M":{}}`, "Html", "M.k"},
	} {
		_, err := p.Render(data(t, c.data))
		var me *MissingError
		if !errors.As(err, &me) || me.Part != c.part || me.Name != c.name {
			t.Errorf("Render(%s) = %v; want missing %s in %s", c.data, err, c.name, c.part)
		}
	}
	// A "<no value>" the caller sent is theirs.
	got, err := p.Render(data(t, `{"Name":"x","Order":{"Total":1},"M":{"k":"<no value>"}}`))
	if err != nil || got.Text != "<no value>" {
		t.Errorf("Render = %+v, %v; want the caller's own <no value>", got, err)
	}
}

func TestRenderSubjectControl(t *testing.T) {
	p := mustParse(t, Source{Subject: "Hi {{.Name}}", Text: "x"})
	for _, name := range []string{"a\r\nBcc: x@example.com", "a\nb", "tab\there", "nul\x00", "\u2028"} {
		_, err := p.Render(map[string]any{"Name": name})
		var de *DataError
		if !errors.As(err, &de) || de.Part != "Subject" {
			t.Errorf("Render(Name=%q) = %v; want a Subject DataError", name, err)
		}
	}
}

func TestParseError(t *testing.T) {
	for _, c := range []struct {
		src  Source
		part string
		line int
	}{
		{Source{Subject: "{{.A", Text: "x"}, "Subject", 1},
		{Source{Subject: "s", Html: "<p>\n\n{{if .A}}x"}, "Html", 3},
		{Source{Subject: "s", Text: "a\n{{.A}\n"}, "Text", 2},
		{Source{Subject: "s", Html: "<p>\n{{if .A}}<a href=\"{{end}}x\">"}, "Html", 2},
		{Source{Subject: "", Text: "x"}, "Subject", 1},
		{Source{Subject: "s", Text: "a\n{{range .A}}{{range .}}\n{{range .}}x{{end}}{{end}}{{end}}"}, "Text", 3},
		{Source{Subject: "s", Html: "<p>\n{{template \"x\" .}}</p>"}, "Html", 2},
		{Source{Subject: `{{define "x"}}y{{end}}s`, Text: "t"}, "Subject", 1},
		{Source{Subject: "s", Text: `{{block "b" .}}x{{end}}`}, "Text", 1},
		{Source{Subject: "s"}, "Html", 1},
	} {
		_, err := Parse(c.src)
		var pe *ParseError
		if !errors.As(err, &pe) || pe.Part != c.part || pe.Line != c.line {
			t.Errorf("Parse(%+v) = %v; want a parse error in %s line %d", c.src, err, c.part, c.line)
		}
	}
}

func TestDecodeData(t *testing.T) {
	d := data(t, `{"i":12345678901,"f":1.5,"n":null,"a":[1],"o":{"x":null,"y":true}}`)
	if d["i"] != int64(12345678901) || d["f"] != 1.5 {
		t.Errorf("numbers = %#v %#v", d["i"], d["f"])
	}
	if _, ok := d["n"]; ok {
		t.Errorf("null member kept: %#v", d)
	}
	if o := d["o"].(map[string]any); len(o) != 1 {
		t.Errorf("nested null kept: %#v", o)
	}
	if _, err := DecodeData([]byte(`{"big":1e400}`)); err == nil {
		t.Error("DecodeData(1e400) = nil error; want out of range")
	}
	if _, err := DecodeData([]byte(`{"a":[1,null]}`)); err == nil {
		t.Error("DecodeData(null in an array) = nil error")
	}
	if _, err := DecodeData([]byte(`[1]`)); err == nil {
		t.Error("DecodeData([1]) = nil error; want must be an object")
	}
}

// {{range N}} over a number from the data is bounded: an empty body
// would otherwise count to 1e18 with nothing to stop it.
func TestRenderRangeOverNumber(t *testing.T) {
	p := mustParse(t, Source{Subject: "s", Html: "{{range .N}}{{end}}<p>{{range $i, $x := .L}}{{$i}}{{$x}}{{end}}</p>", Text: "{{range .N}}.{{end}}"})
	if _, err := p.Render(map[string]any{"N": int64(1e18), "L": []any{"a"}}); err == nil {
		t.Fatal("range over 1e18 rendered")
	}
	long := make([]any, 1001)
	for i := range long {
		long[i] = "x"
	}
	if _, err := p.Render(map[string]any{"N": int64(1), "L": long}); err == nil {
		t.Fatal("range over 1,001 elements rendered")
	}
	got, err := p.Render(map[string]any{"N": int64(3), "L": []any{"a", "b"}})
	if err != nil || got.Html != "<p>0a1b</p>" || got.Text != "..." {
		t.Errorf("Render = %+v, %v; want the small ranges as Go templates run them", got, err)
	}
}

func TestRenderNestedRange(t *testing.T) {
	p := mustParse(t, Source{Subject: "s", Text: "{{range .Orders}}{{.No}}:{{range .Lines}} {{.}}{{end}};{{end}}"})
	got, err := p.Render(data(t, `{"Orders": [{"No": 1, "Lines": ["a", "b"]}, {"No": 2, "Lines": []}]}`))
	if err != nil || got.Text != "1: a b;2:;" {
		t.Errorf("Render = %q, %v; want two levels of range", got.Text, err)
	}
}
