package bulk

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/sendq/sendq/client"
)

// readAll reads every row of text as format f.
func readAll(t *testing.T, f Format, text string) ([]row, error) {
	t.Helper()
	rr, err := newRowReader(f, strings.NewReader(text), "rows")
	if err != nil {
		return nil, err
	}
	var out []row
	for {
		r, err := rr.next()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, r)
	}
}

// A CSV record's line is where it starts, also after a record whose
// quoted field spans lines and after blank lines; To, CC, Bcc and From are
// matched in any case, every other column is TemplateData; an empty To is
// refused before sending.
func TestCSVRowsLinesAndColumns(t *testing.T) {
	text := "\ufeffto,Name,cc,Note\n" +
		"ada@example.org,Ada,,plain\n" +
		"bob@example.org,Bob,carol@example.org,\"two\nlines\"\n" +
		"\n" +
		" ,Nobody,,x\n" +
		"dan@example.org,Dan,,\"quote \"\"here\"\"\"\n"
	rows, err := readAll(t, FormatCSV, text)
	if err != nil {
		t.Fatalf("read = %v", err)
	}
	want := []row{
		{line: 2, msg: client.BatchMessage{Email: client.Email{To: "ada@example.org", TemplateData: map[string]any{"Name": "Ada", "Note": "plain"}}}},
		{line: 3, msg: client.BatchMessage{Email: client.Email{To: "bob@example.org", CC: "carol@example.org", TemplateData: map[string]any{"Name": "Bob", "Note": "two\nlines"}}}},
		{line: 6, msg: client.BatchMessage{Email: client.Email{TemplateData: map[string]any{"Name": "Nobody", "Note": "x"}}},
			rej: &Reject{Line: 6, Field: "To", Code: "missing_recipient", Message: "the To column is empty"}},
		{line: 7, msg: client.BatchMessage{Email: client.Email{To: "dan@example.org", TemplateData: map[string]any{"Name": "Dan", "Note": `quote "here"`}}}},
	}
	if !reflect.DeepEqual(rows, want) {
		t.Errorf("rows =\n%+v\nwant\n%+v", rows, want)
	}
}

// Every malformed CSV names its line and says what is wrong.
func TestCSVErrorsNameTheLine(t *testing.T) {
	for _, tc := range []struct {
		name, text, want string
	}{
		{"empty", "", "rows: is empty: want a header line with a To column"},
		{"no To", "Email,Name\na@example.org,A\n", "rows line 1: the header has no To column (it has Email, Name)"},
		{"duplicate", "To,Name,name\n", `rows line 1: columns 2 and 3 are both named "name"`},
		{"unnamed", "To,,Name\n", "rows line 1: column 2 of the header has no name"},
		{"field count", "To,Name\na@example.org,A\nb@example.org,B,extra\n", "rows line 3: wrong number of fields: not as many as the header has"},
		{"bare quote", "To,Name\na@example.org,A\nb@example.org,B\"x\n", `rows line 3: column 16: bare " in non-quoted-field`},
		{"open quote", "To,Name\na@example.org,\"A\nb@example.org,B\n", `rows line 3: column 17 (in a record starting on line 2): extraneous or missing " in quoted-field`},
	} {
		_, err := readAll(t, FormatCSV, tc.text)
		var ie *InputError
		if !errors.As(err, &ie) || err.Error() != tc.want {
			t.Errorf("%s: read = %v; want an *InputError %q", tc.name, err, tc.want)
		}
	}
}

// JSONL: one item per line, blank lines skipped but counted; anything
// else than one batch item on a line names the line.
func TestJSONLRows(t *testing.T) {
	rows, err := readAll(t, FormatJSONL, `{"To":"ada@example.org","Subject":"Hi","Body":"x"}`+"\n\n"+
		`{"to":"bob@example.org","IdempotencyKey":"k2","TemplateData":{"n":1}}`+"\n")
	if err != nil {
		t.Fatalf("read = %v", err)
	}
	want := []row{
		{line: 1, msg: client.BatchMessage{Email: client.Email{To: "ada@example.org", Subject: "Hi", Body: "x"}}},
		{line: 3, msg: client.BatchMessage{Email: client.Email{To: "bob@example.org", TemplateData: map[string]any{"n": 1.0}}, IdempotencyKey: "k2"}},
	}
	if !reflect.DeepEqual(rows, want) {
		t.Errorf("rows =\n%+v\nwant\n%+v", rows, want)
	}
	for _, tc := range []struct{ name, text, want string }{
		{"unknown field", `{"To":"a@example.org"}` + "\n" + `{"To":"b@example.org","Sender":"x"}`, `rows line 2: not a batch item: json: unknown field "Sender"`},
		{"array", "\n[1]\n", "rows line 2: not a JSON object (one batch item per line)"},
		{"two values", `{"To":"a@example.org"} {}`, "rows line 1: more than one JSON value on the line"},
		{"broken", `{"To":`, "rows line 1: not a batch item: unexpected EOF"},
		{"wrong type", `{"To":1}`, "rows line 1: not a batch item: json: cannot unmarshal number into Go struct field BatchMessage.Email.To of type string"},
		{"too long", `{"To":"` + strings.Repeat("a", maxLine) + `"}`, "rows line 1: longer than 32 MiB"},
	} {
		_, err := readAll(t, FormatJSONL, tc.text)
		var ie *InputError
		if !errors.As(err, &ie) || err.Error() != tc.want {
			t.Errorf("%s: read = %v; want an *InputError %q", tc.name, err, tc.want)
		}
	}
}

func TestFormatOf(t *testing.T) {
	for name, want := range map[string]Format{"rows.csv": FormatCSV, "rows.txt": FormatCSV, "x.jsonl": FormatJSONL, "X.NDJSON": FormatJSONL} {
		if got := FormatOf(name); got != want {
			t.Errorf("FormatOf(%q) = %v; want %v", name, got, want)
		}
	}
}

// The keys of a run are the same for the same file and options, and all
// different when the file, an option, the batch size or the run label
// changes: a changed send never replays an old answer.
func TestBatchKeys(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	a := write("a.csv", "To,Name\nada@example.org,Ada\n")
	b := write("b.csv", "To,Name\nada@example.org,Adb\n")
	digest := func(p string) []byte {
		d, n, err := scan(p, FormatCSV)
		if err != nil || n != 1 {
			t.Fatalf("scan(%s) = %d rows, %v", p, n, err)
		}
		return d
	}
	def := client.Email{Template: "t", From: "shop@example.com"}
	base := batchKey(keyBase(digest(a), FormatCSV, def, 500, ""), 0)
	if again := batchKey(keyBase(digest(a), FormatCSV, def, 500, ""), 0); again != base {
		t.Errorf("the same file and options: key %s, then %s", base, again)
	}
	if len(base) > 255 || strings.ContainsAny(base, " \r\n") {
		t.Errorf("key %q is not a valid Idempotency-Key", base)
	}
	other := map[string]string{
		"another file":     batchKey(keyBase(digest(b), FormatCSV, def, 500, ""), 0),
		"another template": batchKey(keyBase(digest(a), FormatCSV, client.Email{Template: "u", From: "shop@example.com"}, 500, ""), 0),
		"another version":  batchKey(keyBase(digest(a), FormatCSV, client.Email{Template: "t", TemplateVersion: 2, From: "shop@example.com"}, 500, ""), 0),
		"another From":     batchKey(keyBase(digest(a), FormatCSV, client.Email{Template: "t"}, 500, ""), 0),
		"another priority": batchKey(keyBase(digest(a), FormatCSV, client.Email{Template: "t", From: "shop@example.com", Priority: "high"}, 500, ""), 0),
		"another size":     batchKey(keyBase(digest(a), FormatCSV, def, 499, ""), 0),
		"another run":      batchKey(keyBase(digest(a), FormatCSV, def, 500, "again"), 0),
		"another format":   batchKey(keyBase(digest(a), FormatJSONL, def, 500, ""), 0),
		"another batch":    batchKey(keyBase(digest(a), FormatCSV, def, 500, ""), 1),
	}
	seen := map[string]string{base: "the first"}
	for what, k := range other {
		if prev, dup := seen[k]; dup {
			t.Errorf("%s has the key of %s", what, prev)
		}
		seen[k] = what
	}
}

func TestScanMissingFile(t *testing.T) {
	_, _, err := scan(filepath.Join(t.TempDir(), "nope.csv"), FormatCSV)
	var ie *InputError
	if !errors.As(err, &ie) || !strings.HasSuffix(err.Error(), "nope.csv: no such file") {
		t.Errorf("scan(missing) = %v; want an *InputError ending in \"nope.csv: no such file\"", err)
	}
}

func TestItemField(t *testing.T) {
	for in, want := range map[string]string{
		"Messages[3].To":                "To",
		"Messages[12].TemplateData.Foo": "TemplateData.Foo",
		"Messages[0]":                   "",
		"Defaults.From":                 "Defaults.From",
		"":                              "",
	} {
		if got := itemField(in); got != want {
			t.Errorf("itemField(%q) = %q; want %q", in, got, want)
		}
	}
}

func TestMergeByLine(t *testing.T) {
	got := mergeByLine([]Reject{{Line: 2}, {Line: 9}}, []Reject{{Line: 1}, {Line: 5}, {Line: 12}})
	var lines []int
	for _, r := range got {
		lines = append(lines, r.Line)
	}
	if want := []int{1, 2, 5, 9, 12}; !reflect.DeepEqual(lines, want) {
		t.Errorf("mergeByLine = %v; want %v", lines, want)
	}
}
