package templates

import (
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
)

// MaxOutput bounds each rendered part (a {{range}} over a large list can
// make much more than the data it was given).
const MaxOutput = 10 << 20

// Rendered is a template filled with data.
type Rendered struct {
	Subject string
	Html    string
	Text    string
}

// MissingError is a variable the template uses and the data lacks (or
// gives as null). Name is its path in the data, such as FirstName or
// Order.Total; empty when the template reached it through a function
// (index) and the path is not known.
type MissingError struct {
	Part string
	Name string
}

func (e *MissingError) Error() string {
	if e.Name == "" {
		return fmt.Sprintf("%s uses a value TemplateData does not have", e.Part)
	}
	return fmt.Sprintf("%s uses %s, which TemplateData does not have", e.Part, e.Name)
}

// DataError is data the template cannot use as it is (a field of a
// string, a range over a number), or a rendered Subject that cannot be a
// header line.
type DataError struct {
	Part    string
	Message string
}

func (e *DataError) Error() string { return e.Part + ": " + e.Message }

// noValue is what text/template writes for a value that is not there.
const noValue = "<no value>"

var (
	// missingKey is text/template's error for a map without the key.
	missingKey = regexp.MustCompile(`at <(\$?\.[^>]*)>: map has no entry for key "([^"]*)"`)
	// indexMissing is strictIndex's error for a map without the key.
	indexMissing = regexp.MustCompile(`at <index (\$?\.[^ >]*)[^>]*>: error calling index: map has no entry for key "([^"]*)"`)
	// atExpr is the expression an execution error is about.
	atExpr = regexp.MustCompile(`executing "[^"]*" at <([^>]*)>: (.*)$`)
)

// Render fills p with data. Every variable the template uses must be in
// data with a value other than null: a *MissingError names the first that
// is not. Data the template cannot use is a *DataError, and so is a
// rendered Subject with a control character (CR, LF, tab, NUL, …), which
// would otherwise end or change the header.
func (p *Parsed) Render(data map[string]any) (Rendered, error) {
	var out Rendered
	if data == nil {
		data = map[string]any{}
	}
	var err error
	if out.Subject, err = run(PartSubject, p.subject.Execute, data, p.src.Subject, len(p.src.Subject)); err != nil {
		return out, err
	}
	if hasControl(out.Subject) {
		return out, &DataError{Part: PartSubject, Message: "the rendered Subject contains a control character (CR, LF, tab, NUL or another); a header cannot carry it"}
	}
	if p.html != nil {
		if out.Html, err = run(PartHtml, p.html.Execute, data, "", len(p.src.Html)); err != nil {
			return out, err
		}
	}
	if p.text != nil {
		if out.Text, err = run(PartText, p.text.Execute, data, p.src.Text, len(p.src.Text)); err != nil {
			return out, err
		}
	}
	return out, nil
}

// run executes one part. src is the text/template source of the part, to
// tell a "<no value>" it wrote itself from one written for a missing value
// ("" for html/template, which writes nothing for one); size is the
// source's, about what the output takes.
func run(part string, exec func(io.Writer, any) error, data map[string]any, src string, size int) (string, error) {
	// A strings.Builder hands its bytes over as the string, uncopied.
	var buf strings.Builder
	buf.Grow(size + size/8 + 64)
	if err := exec(&limited{w: &buf, n: MaxOutput}, data); err != nil {
		return "", execError(part, err)
	}
	s := buf.String()
	if src != "" && strings.Count(s, noValue) > strings.Count(src, noValue)+countInData(data) {
		return "", &MissingError{Part: part}
	}
	return s, nil
}

func execError(part string, err error) error {
	if errors.Is(err, errTooLarge) {
		return &DataError{Part: part, Message: fmt.Sprintf("renders to more than %d bytes", MaxOutput)}
	}
	msg := err.Error()
	if m := missingKey.FindStringSubmatch(msg); m != nil {
		return &MissingError{Part: part, Name: dataPath(m[1])}
	}
	if m := indexMissing.FindStringSubmatch(msg); m != nil {
		return &MissingError{Part: part, Name: strings.TrimPrefix(dataPath(m[1])+"."+m[2], ".")}
	}
	if m := atExpr.FindStringSubmatch(msg); m != nil {
		expr, why := m[1], m[2]
		if _, rest, ok := strings.Cut(why, "error calling "); ok {
			if _, r, ok := strings.Cut(rest, ": "); ok {
				why = r
			}
		}
		if strings.Contains(expr, rangeGuard) {
			return &DataError{Part: part, Message: why}
		}
		return &DataError{Part: part, Message: dataPath(expr) + ": " + why}
	}
	if i := strings.LastIndex(msg, ": "); i >= 0 {
		msg = msg[i+2:]
	}
	return &DataError{Part: part, Message: msg}
}

// dataPath is ".Order.Total" or "$.Order.Total" as Order.Total.
func dataPath(expr string) string {
	return strings.TrimPrefix(strings.TrimPrefix(expr, "$"), ".")
}

// countInData counts "<no value>" in the strings of data: a caller may
// send it on purpose.
func countInData(v any) int {
	switch v := v.(type) {
	case string:
		return strings.Count(v, noValue)
	case map[string]any:
		n := 0
		for _, x := range v {
			n += countInData(x)
		}
		return n
	case []any:
		n := 0
		for _, x := range v {
			n += countInData(x)
		}
		return n
	}
	return 0
}

var errTooLarge = errors.New("templates: output too large")

type limited struct {
	w io.Writer
	n int
}

func (l *limited) Write(p []byte) (int, error) {
	if len(p) > l.n {
		return 0, errTooLarge
	}
	l.n -= len(p)
	return l.w.Write(p)
}

// hasControl is true for a rune no header may hold: C0 and C1 controls
// and the Unicode line and paragraph separators.
func hasControl(s string) bool {
	return strings.ContainsFunc(s, func(r rune) bool {
		return r < 0x20 || r >= 0x7f && r <= 0x9f || r == 0x2028 || r == 0x2029
	})
}
