package bulk

import (
	"bufio"
	"bytes"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/sendq/sendq/client"
)

// Format is how a file's rows are written.
type Format int

// The formats of a file of rows.
const (
	// FormatAuto is FormatOf the file's name.
	FormatAuto Format = iota
	// FormatCSV is a header line, then one row per record: the To column
	// is the recipient, CC, Bcc and From optional, every other column a
	// TemplateData key.
	FormatCSV
	// FormatJSONL is one batch item (a JSON object, as in the Messages of
	// POST /v1/emails/batch) per line; blank lines are skipped.
	FormatJSONL
)

func (f Format) String() string {
	switch f {
	case FormatCSV:
		return "csv"
	case FormatJSONL:
		return "jsonl"
	}
	return "auto"
}

// FormatOf returns the format of a file by its name: JSONL for a name
// ending in .jsonl or .ndjson, CSV for any other.
func FormatOf(name string) Format {
	n := strings.ToLower(name)
	if strings.HasSuffix(n, ".jsonl") || strings.HasSuffix(n, ".ndjson") {
		return FormatJSONL
	}
	return FormatCSV
}

// maxLine is the longest JSONL line read: a message larger than sendq's
// default SENDQ_MAX_MESSAGE_BYTES is refused by the server anyway.
const maxLine = 32 << 20

// InputError is a file that cannot be sent as it is: missing, unreadable,
// or not well-formed at Line. Nothing was sent when Run returns one.
type InputError struct {
	File string
	Line int // 0 when the whole file is at fault
	Err  error
}

func (e *InputError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s line %d: %v", e.File, e.Line, e.Err)
	}
	return fmt.Sprintf("%s: %v", e.File, e.Err)
}

func (e *InputError) Unwrap() error { return e.Err }

// Reject is a row that was not queued: its first line in the file, the
// field at fault (as sendq names it, without the Messages[i]. prefix) and
// why.
type Reject struct {
	Line    int
	Field   string
	Code    string
	Message string
}

// row is one row of a file: the message it becomes, or the reason it is
// refused before it is sent.
type row struct {
	line int
	msg  client.BatchMessage
	rej  *Reject
}

// rowReader reads the rows of a file in order; next returns io.EOF after
// the last one and an *InputError for a malformed one.
type rowReader interface {
	next() (row, error)
}

func newRowReader(f Format, r io.Reader, name string) (rowReader, error) {
	if f == FormatJSONL {
		s := bufio.NewScanner(r)
		s.Buffer(make([]byte, 0, 64<<10), maxLine)
		return &jsonlRows{s: s, name: name}, nil
	}
	return newCSVRows(r, name)
}

// csvRows reads a CSV file with a header line.
type csvRows struct {
	r                 *csv.Reader
	name              string
	cols              []string
	to, cc, bcc, from int // column indexes, -1 when absent
}

func newCSVRows(r io.Reader, name string) (*csvRows, error) {
	cr := csv.NewReader(r)
	head, err := cr.Read()
	if errors.Is(err, io.EOF) {
		return nil, &InputError{File: name, Err: errors.New("is empty: want a header line with a To column")}
	}
	if err != nil {
		return nil, csvError(name, err)
	}
	cr.ReuseRecord = true
	c := &csvRows{r: cr, name: name, cols: make([]string, len(head)), to: -1, cc: -1, bcc: -1, from: -1}
	seen := map[string]int{}
	for i, h := range head {
		if i == 0 {
			h = strings.TrimPrefix(h, "\ufeff") // a spreadsheet's byte order mark
		}
		h = strings.TrimSpace(h)
		if h == "" {
			return nil, &InputError{File: name, Line: 1, Err: fmt.Errorf("column %d of the header has no name", i+1)}
		}
		if j, dup := seen[strings.ToLower(h)]; dup {
			return nil, &InputError{File: name, Line: 1, Err: fmt.Errorf("columns %d and %d are both named %q", j+1, i+1, h)}
		}
		seen[strings.ToLower(h)] = i
		c.cols[i] = h
		for _, a := range []struct {
			name string
			idx  *int
		}{{"To", &c.to}, {"CC", &c.cc}, {"Bcc", &c.bcc}, {"From", &c.from}} {
			if strings.EqualFold(h, a.name) {
				*a.idx = i
			}
		}
	}
	if c.to < 0 {
		return nil, &InputError{File: name, Line: 1, Err: fmt.Errorf("the header has no To column (it has %s)", strings.Join(c.cols, ", "))}
	}
	return c, nil
}

func (c *csvRows) next() (row, error) {
	rec, err := c.r.Read()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return row{}, io.EOF
		}
		return row{}, csvError(c.name, err)
	}
	line, _ := c.r.FieldPos(0)
	rw := row{line: line}
	data := make(map[string]any, len(rec))
	for i, v := range rec {
		switch i {
		case c.to:
			rw.msg.To = strings.TrimSpace(v)
		case c.cc:
			rw.msg.CC = strings.TrimSpace(v)
		case c.bcc:
			rw.msg.Bcc = strings.TrimSpace(v)
		case c.from:
			rw.msg.From = strings.TrimSpace(v)
		default:
			data[c.cols[i]] = v
		}
	}
	if len(data) > 0 {
		rw.msg.TemplateData = data
	}
	if rw.msg.To == "" {
		rw.rej = &Reject{Line: line, Field: "To", Code: "missing_recipient", Message: "the To column is empty"}
	}
	return rw, nil
}

// csvError names the line of a CSV parse error.
func csvError(name string, err error) error {
	var pe *csv.ParseError
	if !errors.As(err, &pe) {
		return &InputError{File: name, Err: fmt.Errorf("read: %w", err)}
	}
	if errors.Is(pe.Err, csv.ErrFieldCount) {
		return &InputError{File: name, Line: pe.StartLine, Err: errors.New("wrong number of fields: not as many as the header has")}
	}
	if pe.StartLine != pe.Line {
		return &InputError{File: name, Line: pe.Line, Err: fmt.Errorf("column %d (in a record starting on line %d): %w", pe.Column, pe.StartLine, pe.Err)}
	}
	return &InputError{File: name, Line: pe.Line, Err: fmt.Errorf("column %d: %w", pe.Column, pe.Err)}
}

// jsonlRows reads one batch item per line.
type jsonlRows struct {
	s    *bufio.Scanner
	name string
	line int
}

func (j *jsonlRows) next() (row, error) {
	for j.s.Scan() {
		j.line++
		b := bytes.TrimSpace(j.s.Bytes())
		if len(b) == 0 {
			continue
		}
		if b[0] != '{' {
			return row{}, &InputError{File: j.name, Line: j.line, Err: errors.New("not a JSON object (one batch item per line)")}
		}
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		var m client.BatchMessage
		if err := dec.Decode(&m); err != nil {
			return row{}, &InputError{File: j.name, Line: j.line, Err: fmt.Errorf("not a batch item: %w", err)}
		}
		if dec.More() {
			return row{}, &InputError{File: j.name, Line: j.line, Err: errors.New("more than one JSON value on the line")}
		}
		return row{line: j.line, msg: m}, nil
	}
	if err := j.s.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return row{}, &InputError{File: j.name, Line: j.line + 1, Err: fmt.Errorf("longer than %d MiB", maxLine>>20)}
		}
		return row{}, &InputError{File: j.name, Err: fmt.Errorf("read: %w", err)}
	}
	return row{}, io.EOF
}
