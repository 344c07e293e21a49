package templates

import (
	"bytes"
	"errors"
	"fmt"
	htmltemplate "html/template"
	"regexp"
	"strconv"
	"strings"
	texttemplate "text/template"
)

// Parts of a template, as errors and the API name them.
const (
	PartSubject = "Subject"
	PartHtml    = "Html"
	PartText    = "Text"
)

// Source is what a template is made of: a Subject and at least one of
// Html and Text, each Go template text.
type Source struct {
	Subject string `json:"Subject"`
	Html    string `json:"Html,omitempty"`
	Text    string `json:"Text,omitempty"`
}

// ParseError is a template that does not parse: the part (Subject, Html or
// Text), the line in it (1 when unknown) and what is wrong.
type ParseError struct {
	Part    string
	Line    int
	Message string
}

func (e *ParseError) Error() string {
	return fmt.Sprintf("%s line %d: %s", e.Part, e.Line, e.Message)
}

// Parsed is a template ready to render. It is safe for concurrent use.
type Parsed struct {
	src     Source
	subject *texttemplate.Template
	html    *htmltemplate.Template
	text    *texttemplate.Template
}

// Source returns what p was parsed from.
func (p *Parsed) Source() Source { return p.src }

// errLine finds "Part:LINE:" in a template error.
var errLine = regexp.MustCompile(`^(?:html/)?template: ?([A-Za-z]+):(\d+):(?:\d+:)? ?(.*)$`)

func parseError(part string, err error) *ParseError {
	msg := err.Error()
	line := 1
	if m := errLine.FindStringSubmatch(msg); m != nil && m[1] == part {
		line, _ = strconv.Atoi(m[2])
		msg = m[3]
	}
	var he *htmltemplate.Error
	if errors.As(err, &he) {
		if he.Line > 0 {
			line = he.Line
		}
		// Without the escaper's dump of its contexts.
		msg, _, _ = strings.Cut(he.Description, ": {")
	}
	return &ParseError{Part: part, Line: line, Message: msg}
}

// Parse checks src and makes it ready to render. A *ParseError names the
// part and line at fault; Subject is required, and Html or Text.
func Parse(src Source) (*Parsed, error) {
	if strings.TrimSpace(src.Subject) == "" {
		return nil, &ParseError{Part: PartSubject, Line: 1, Message: "Subject is required"}
	}
	if src.Html == "" && src.Text == "" {
		return nil, &ParseError{Part: PartHtml, Line: 1, Message: "at least one of Html and Text is required"}
	}
	for _, p := range []struct{ part, s string }{{PartSubject, src.Subject}, {PartHtml, src.Html}, {PartText, src.Text}} {
		if strings.ContainsRune(p.s, 0) {
			return nil, &ParseError{Part: p.part, Line: 1 + strings.Count(p.s[:strings.IndexByte(p.s, 0)], "\n"), Message: "must not contain NUL characters"}
		}
	}
	p := &Parsed{src: src}
	var err error
	if p.subject, err = texttemplate.New(PartSubject).Option("missingkey=error").Parse(src.Subject); err != nil {
		return nil, parseError(PartSubject, err)
	}
	if src.Text != "" {
		if p.text, err = texttemplate.New(PartText).Option("missingkey=error").Parse(src.Text); err != nil {
			return nil, parseError(PartText, err)
		}
	}
	if src.Html != "" {
		if p.html, err = htmltemplate.New(PartHtml).Option("missingkey=error").Parse(src.Html); err != nil {
			return nil, parseError(PartHtml, err)
		}
		// html/template escapes (and finds what it cannot escape, such as
		// an action inside an unquoted attribute name) at the first
		// execution: do it now, so that a PUT says so, not a send.
		var buf bytes.Buffer
		if err := p.html.Execute(&buf, map[string]any{}); err != nil {
			var he *htmltemplate.Error
			if errors.As(err, &he) {
				return nil, parseError(PartHtml, err)
			}
		}
	}
	return p, nil
}
