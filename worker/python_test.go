package worker_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sendq/sendq/queue"
)

// python3 returns the python3 to run, or skips t when there is none, unless
// SENDQ_TEST_REQUIRE_PYTHON is set (make test sets it;
// scripts/ensure-test-deps.sh installs python3 from Debian's packages).
func python3(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("python3")
	if err != nil {
		if os.Getenv("SENDQ_TEST_REQUIRE_PYTHON") != "" {
			t.Fatalf("python3 not found and SENDQ_TEST_REQUIRE_PYTHON is set: %v", err)
		}
		t.Skip("python3 not found (apt-get install python3); set SENDQ_TEST_REQUIRE_PYTHON=1 to make this a failure")
	}
	return p
}

// pyReport is what testdata/check_email.py says of one message.
type pyReport struct {
	Path    string   `json:"path"`
	Defects []string `json:"defects"`
	Subject string   `json:"subject"`
	Parts   []struct {
		Type         string  `json:"type"`
		Filename     *string `json:"filename"`
		Disposition  *string `json:"disposition"`
		CTE          string  `json:"cte"`
		Text         *string `json:"text"`
		InnerSubject *string `json:"inner_subject"`
		Size         *int    `json:"size"`
	} `json:"parts"`
}

// Messages as delivered, read by Python's email package with
// policy.default (what Python mail tools use): no defect anywhere, in the
// message, a part or a header, and the subject, file names, texts and a
// forwarded message read back as sent (issue 11).
func TestDeliveredMessagesReadCleanlyInPython(t *testing.T) {
	t.Parallel()
	py := python3(t)
	longKorean := strings.Repeat("새 잠재 고객 생성됨: 주식회사 파브리캄, 담당자 김민지 ", 4)
	eml := "From: Kim Minji <minji.kim@contoso.com>\nTo: sales@contoso.com\nSubject: =?UTF-8?B?7IOIIOyeoOyerCDqs6DqsJ0=?=\n" +
		"Date: Fri, 02 Jan 2026 03:04:05 +0000\nMessage-ID: <fwd-1@contoso.com>\nMIME-Version: 1.0\n" +
		"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n새 잠재 고객: Fabrikam\n.\n끝\n"
	type file struct {
		name, contentType string
		data              string
	}
	cases := []struct {
		name  string
		edit  func(e *queue.Email)
		files []file
	}{
		{"plain", func(e *queue.Email) {
			e.IsHTML, e.Subject, e.Body = false, "Weekly report", "Hello,\r\n\r\nThe numbers:\n.\n  indented\r\nBye\n"
		}, nil},
		{"HTML with an inline image", func(e *queue.Email) {
			e.Subject, e.Importance = "새 잠재 고객 생성됨", queue.ImportanceHigh
			e.From.Name = "Contoso CRM"
			e.Body = `<p>새 잠재 고객: <b>Fabrikam</b></p><img src="cid:logo">`
			e.Attachments = []queue.Attachment{{FileName: "logo.png", ContentType: "image/png", ContentID: "logo", Data: []byte("\x89PNG\r\n\x1a\n")}}
		}, nil},
		{"attachments with non-ASCII names", func(e *queue.Email) { e.Subject = "Files" }, []file{
			{"견적서 (최종).xlsx", "", "\x00\x01\x02\xfa\xfb"},
			{"résumé.pdf", "application/pdf", "%PDF-1.4\n"},
			{strings.Repeat("보고서", 27) + ".pdf", "application/pdf", "%PDF-1.7\n"},
			{"Angebot für Müller & Söhne.docx", "", "PK\x03\x04"},
			{"lead.pdf", "application/pdf", "%PDF-1.4\n\x00\xff"},
		}},
		{"a forwarded .eml", func(e *queue.Email) { e.Subject = "Fwd: 새 잠재 고객" }, []file{
			{"forwarded.eml", "message/rfc822", eml},
			{"alternatives.txt", `multipart/alternative; boundary="b1"`,
				"--b1\r\nContent-Type: text/plain\r\n\r\none\r\n--b1\r\nContent-Type: text/html\r\n\r\n<p>two</p>\r\n--b1--\r\n"},
		}},
		{"a Korean subject longer than one line", func(e *queue.Email) { e.Subject = longKorean }, nil},
	}

	b := setup(t, setupOpts{})
	dir := t.TempDir()
	var paths []string
	emails := map[string]*queue.Email{}
	for i, c := range cases {
		e := newEmail(fmt.Sprintf("case%d@example.com", i))
		c.edit(e)
		for _, f := range c.files {
			e.Attachments = append(e.Attachments, queue.Attachment{FileName: f.name, ContentType: f.contentType, Data: []byte(f.data)})
		}
		b.enqueue(t, e, 3)
		if st := b.waitFinal(t, e.ID); st.Status != queue.StatusSent {
			t.Fatalf("%s: %s (%s); want sent", c.name, st.Status, st.LastError)
		}
		path := filepath.Join(dir, fmt.Sprintf("case%d.eml", i))
		if err := os.WriteFile(path, messageTo(t, b.smtp, e.To[0].Address).Data, 0o600); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, path)
		emails[path] = e
	}

	cmd := exec.Command(py, append([]string{filepath.Join("testdata", "check_email.py")}, paths...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("check_email.py: %v\n%s", err, stderr.String())
	}
	var reports []pyReport
	if err := json.Unmarshal(out, &reports); err != nil {
		t.Fatalf("check_email.py output %q: %v", out, err)
	}
	if len(reports) != len(cases) {
		t.Fatalf("%d reports; want %d", len(reports), len(cases))
	}
	for i, r := range reports {
		c, e := cases[i], emails[r.Path]
		if len(r.Defects) > 0 {
			t.Errorf("%s: Python reports defects %q", c.name, r.Defects)
		}
		if r.Subject != e.Subject {
			t.Errorf("%s: Python reads Subject %q; want %q", c.name, r.Subject, e.Subject)
		}
		var names []string
		var texts, inner []string
		// An HTML body comes with a text/plain alternative (the text part).
		bodyType, plain := "text/plain", 0
		if e.IsHTML {
			bodyType = "text/html"
		}
		for _, p := range r.Parts {
			if p.Filename != nil {
				names = append(names, *p.Filename)
			}
			if p.Text != nil && p.Filename == nil && p.Type == bodyType {
				texts = append(texts, *p.Text) // the body first
			}
			if p.Text != nil && p.Filename == nil && p.Type == "text/plain" {
				plain++
			}
			if p.InnerSubject != nil {
				inner = append(inner, *p.InnerSubject)
			}
		}
		var wantNames []string
		for _, a := range e.Attachments {
			wantNames = append(wantNames, a.FileName)
		}
		slices.Sort(names)
		slices.Sort(wantNames)
		if !slices.Equal(names, wantNames) {
			t.Errorf("%s: Python reads file names %q; want %q", c.name, names, wantNames)
		}
		// A message ends with a line break, which a single part's body
		// keeps.
		trim := func(s string) string { return strings.TrimRight(canonicalLines(s), "\n") }
		if len(texts) == 0 || trim(texts[0]) != trim(e.Body) {
			t.Errorf("%s: Python reads the body as %q; want %q", c.name, texts, e.Body)
		}
		if e.IsHTML && plain == 0 {
			t.Errorf("%s: Python finds no text/plain alternative to the HTML body", c.name)
		}
		if c.name == "a forwarded .eml" && !slices.Equal(inner, []string{"새 잠재 고객"}) {
			t.Errorf("%s: Python reads the forwarded message's Subject as %q; want 새 잠재 고객", c.name, inner)
		}
	}
}
