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
	"text/template/parse"
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
	if p.subject, err = texttemplate.New(PartSubject).Option("missingkey=error").Funcs(textFuncs).Parse(src.Subject); err != nil {
		return nil, parseError(PartSubject, err)
	}
	if err := guardText(PartSubject, p.subject); err != nil {
		return nil, err
	}
	if src.Text != "" {
		if p.text, err = texttemplate.New(PartText).Option("missingkey=error").Funcs(textFuncs).Parse(src.Text); err != nil {
			return nil, parseError(PartText, err)
		}
		if err := guardText(PartText, p.text); err != nil {
			return nil, err
		}
	}
	if src.Html != "" {
		if p.html, err = htmltemplate.New(PartHtml).Option("missingkey=error").Funcs(htmltemplate.FuncMap(textFuncs)).Parse(src.Html); err != nil {
			return nil, parseError(PartHtml, err)
		}
		for _, d := range p.html.Templates() {
			if d.Name() != PartHtml {
				return nil, &ParseError{Part: PartHtml, Line: 1, Message: noDefine}
			}
		}
		if err := guardRanges(PartHtml, p.html.Tree); err != nil {
			return nil, err
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

// textFuncs replace the builtins that would give nothing for a value
// that is not there: index of a missing key is an error, as .M.k is.
var textFuncs = texttemplate.FuncMap{"index": strictIndex, rangeGuard: guardRange}

// rangeGuard is the function every {{range}} pipeline ends in (see
// guardRanges).
const rangeGuard = "sendqRange"

// Bounds on ranges. A template's work must stay bounded by its data:
// Go templates count {{range N}} to N (1e18 with an empty body, which
// nothing, not even MaxOutput, would stop), and nested ranges multiply.
// So a range goes over at most maxRangeLen elements (or to that
// number), ranges nest at most maxRangeDepth deep, and {{define}},
// {{template}} and {{block}} (which could nest them without bound) are
// refused: at most 1,000,000 iterations a part.
const (
	maxRangeLen   = 1000
	maxRangeDepth = 2
)

const noDefine = "{{define}}, {{template}} and {{block}} are not supported: each part is one template"

func guardRange(v any) (any, error) {
	n := -1
	switch c := v.(type) {
	case int64:
		if c < 0 || c > maxRangeLen {
			return nil, fmt.Errorf("range over the number %d: at most %d", c, maxRangeLen)
		}
	case []any:
		n = len(c)
	case map[string]any:
		n = len(c)
	}
	if n > maxRangeLen {
		return nil, fmt.Errorf("range over %d elements: at most %d", n, maxRangeLen)
	}
	return v, nil
}

// guardRanges makes every {{range X}} of tree read {{range X |
// sendqRange}}, and refuses ranges nested deeper than maxRangeDepth and
// {{template}} (a *ParseError for part).
func guardRanges(part string, tree *parse.Tree) error {
	var walk func(n parse.Node, depth int) error
	walk = func(n parse.Node, depth int) error {
		switch n := n.(type) {
		case *parse.ListNode:
			if n == nil {
				return nil
			}
			for _, c := range n.Nodes {
				if err := walk(c, depth); err != nil {
					return err
				}
			}
		case *parse.IfNode:
			return errors.Join(walk(n.List, depth), walk(n.ElseList, depth))
		case *parse.WithNode:
			return errors.Join(walk(n.List, depth), walk(n.ElseList, depth))
		case *parse.TemplateNode:
			return &ParseError{Part: part, Line: lineOf(tree, n), Message: noDefine}
		case *parse.RangeNode:
			if depth >= maxRangeDepth {
				return &ParseError{Part: part, Line: lineOf(tree, n), Message: fmt.Sprintf("{{range}} nested more than %d deep", maxRangeDepth)}
			}
			// As html/template adds its escapers to a pipeline.
			n.Pipe.Cmds = append(n.Pipe.Cmds, &parse.CommandNode{NodeType: parse.NodeCommand, Pos: n.Pos,
				Args: []parse.Node{parse.NewIdentifier(rangeGuard).SetTree(nil).SetPos(n.Pos)}})
			return errors.Join(walk(n.List, depth+1), walk(n.ElseList, depth))
		}
		return nil
	}
	if tree == nil || tree.Root == nil {
		return nil
	}
	if err := walk(tree.Root, 0); err != nil {
		var pe *ParseError
		if errors.As(err, &pe) {
			return pe // the first, not the join
		}
		return err
	}
	return nil
}

func lineOf(tree *parse.Tree, n parse.Node) int {
	loc, _ := tree.ErrorContext(n)
	// loc is "name:line:col".
	parts := strings.Split(loc, ":")
	if len(parts) >= 3 {
		if l, err := strconv.Atoi(parts[len(parts)-2]); err == nil {
			return l
		}
	}
	return 1
}

// strictIndex is text/template's index for the values DecodeData makes:
// a missing map key, an index out of range or a value that cannot be
// indexed is an error.
func strictIndex(item any, keys ...any) (any, error) {
	v := item
	for _, k := range keys {
		switch c := v.(type) {
		case map[string]any:
			s, ok := k.(string)
			if !ok {
				return nil, fmt.Errorf("the key of a map must be a string, not %v", k)
			}
			x, ok := c[s]
			if !ok {
				return nil, fmt.Errorf("map has no entry for key %q", s)
			}
			v = x
		case []any:
			i, ok := k.(int64)
			if n, isInt := k.(int); isInt {
				i, ok = int64(n), true
			}
			if !ok || i < 0 || i >= int64(len(c)) {
				return nil, fmt.Errorf("index %v out of range (%d elements)", k, len(c))
			}
			v = c[i]
		default:
			return nil, fmt.Errorf("cannot index a %T", v)
		}
	}
	return v, nil
}

func guardText(part string, t *texttemplate.Template) error {
	for _, d := range t.Templates() {
		if d.Name() != part {
			return &ParseError{Part: part, Line: 1, Message: noDefine}
		}
	}
	return guardRanges(part, t.Tree)
}
