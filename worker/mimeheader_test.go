package worker_test

import (
	"bytes"
	"mime"
	"net/mail"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sendq/sendq/queue"
	"github.com/sendq/sendq/worker"
)

// The header values BuildMessage writes itself (issue 11: items 5, 6, 7,
// 11), checked as a strict reader reads them.

// rawHeaderLines returns the header section of msg as written, line by line.
func rawHeaderLines(t *testing.T, msg []byte) []string {
	t.Helper()
	head, _, ok := bytes.Cut(msg, []byte("\r\n\r\n"))
	if !ok {
		t.Fatalf("no end of header:\n%s", msg)
	}
	return strings.Split(string(head), "\r\n")
}

// checkStrict fails t unless raw is what a strict reader takes without a
// second thought: CRLF line ends only, no line over 998 octets, every
// header field with text on its first line, every part's Content-Type and
// Content-Disposition read by mime.ParseMediaType with no RFC 2047 word
// inside a parameter, message/rfc822 and multipart parts unencoded and a
// message/rfc822 part a message. setup runs it on every message the test
// server took.
func checkStrict(t *testing.T, raw []byte) *parsed {
	t.Helper()
	for i, c := range raw {
		if c == '\n' && (i == 0 || raw[i-1] != '\r') || c == '\r' && (i+1 == len(raw) || raw[i+1] != '\n') {
			t.Errorf("bare CR or LF at byte %d: %q", i, raw[max(0, i-40):min(len(raw), i+40)])
			return nil
		}
	}
	for n, line := range strings.Split(string(raw), "\r\n") {
		if len(line) > 998 {
			t.Errorf("line %d is %d octets, over 998", n+1, len(line))
		}
	}
	lines := rawHeaderLines(t, raw)
	for i, l := range lines {
		name, v, ok := strings.Cut(l, ":")
		if ok && !strings.HasPrefix(l, " ") && !strings.HasPrefix(l, "\t") && strings.TrimSpace(v) == "" &&
			i+1 < len(lines) && (strings.HasPrefix(lines[i+1], " ") || strings.HasPrefix(lines[i+1], "\t")) {
			t.Errorf("header %s is folded before its first word (an empty first line): %q", name, lines[i:i+2])
		}
	}
	p := parse(t, raw)
	for _, l := range p.leaves {
		for _, h := range []string{"Content-Type", "Content-Disposition"} {
			v := l.header.Get(h)
			if v == "" {
				continue
			}
			if _, _, err := mime.ParseMediaType(v); err != nil {
				t.Errorf("%s %q: %v", h, v, err)
			}
			if strings.Contains(v, "=?") {
				t.Errorf("%s %q holds an RFC 2047 word in a parameter", h, v)
			}
		}
		cte := strings.ToLower(l.header.Get("Content-Transfer-Encoding"))
		if l.mediaType == "message/rfc822" {
			if cte != "7bit" && cte != "8bit" && cte != "binary" {
				t.Errorf("message/rfc822 part with Content-Transfer-Encoding %q (RFC 2046 5.2.1)", cte)
			}
			if _, err := mail.ReadMessage(bytes.NewReader(l.data)); err != nil {
				t.Errorf("message/rfc822 part does not read as a message: %v", err)
			}
		}
	}
	return p
}

func TestBuildMessagePriorityHeaders(t *testing.T) {
	tests := []struct {
		importance string
		want       map[string]string // "" means absent
	}{
		{queue.ImportanceHigh, map[string]string{"Importance": "high", "Priority": "urgent", "X-Priority": "1", "X-Msmail-Priority": "High"}},
		{queue.ImportanceLow, map[string]string{"Importance": "low", "Priority": "non-urgent", "X-Priority": "5", "X-Msmail-Priority": "Low"}},
		{queue.ImportanceNormal, map[string]string{"Importance": "", "Priority": "", "X-Priority": "", "X-Msmail-Priority": ""}},
	}
	for _, tt := range tests {
		e := seedEmail()
		e.Importance = tt.importance
		p := build(t, e)
		for k, want := range tt.want {
			got := p.rawHeader[k]
			if want == "" && got != nil || want != "" && !slices.Equal(got, []string{want}) {
				t.Errorf("importance %s: %s = %q; want %q", tt.importance, k, got, want)
			}
		}
	}
}

func TestBuildMessageDate(t *testing.T) {
	created := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		name   string
		sendAt time.Time
		want   time.Time
	}{
		{"not scheduled: when it was accepted", time.Time{}, created},
		{"scheduled: SendAt", created.Add(30 * time.Hour), created.Add(30 * time.Hour)},
		{"SendAt already past at acceptance: acceptance", created.Add(-time.Minute), created},
	}
	for _, tt := range tests {
		e := seedEmail()
		e.CreatedAt, e.SendAt = created, tt.sendAt
		if got, err := build(t, e).header.Date(); err != nil || !got.Equal(tt.want) {
			t.Errorf("%s: Date = %v, %v; want %v", tt.name, got, err, tt.want)
		}
	}
}

// A long subject is folded with text on its first line (a header folded
// before its first word reads as a leading space), in lines of at most 76
// characters when it holds encoded words, and reads back as given.
func TestBuildMessageLongSubject(t *testing.T) {
	for _, subject := range []string{
		strings.Repeat(koreanSubject+" ", 6),
		strings.Repeat("新しい見込み客が作成されました", 5),
		"Re: " + strings.Repeat("Ünïcödé and ASCII mixed, ", 8),
		strings.Repeat("A new lead was created in Salesforce. ", 6),
		"  two leading spaces, then a long " + strings.Repeat("word ", 20) + " and trailing  ",
		"x" + strings.Repeat("y", 200) + " z",
		koreanSubject,
		"",
	} {
		e := seedEmail()
		e.Subject = subject
		m := buildRaw(t, e)
		p := checkStrict(t, m)
		encoded := false
		for i, l := range rawHeaderLines(t, m) {
			if strings.HasPrefix(l, "Subject:") {
				if subject != "" && strings.TrimSpace(strings.TrimPrefix(l, "Subject:")) == "" {
					t.Errorf("Subject %q: first line %q is empty", subject, l)
				}
				encoded = strings.Contains(l, "=?")
				for _, c := range rawHeaderLines(t, m)[i:] {
					if c != l && !strings.HasPrefix(c, " ") {
						break
					}
					// An ASCII word longer than a line cannot be folded.
					body := strings.TrimSpace(strings.TrimPrefix(c, "Subject:"))
					if limit := map[bool]int{true: 76, false: 78}[encoded]; len(c) > limit && (encoded || strings.Contains(body, " ")) {
						t.Errorf("Subject %q: line %q is %d long, over %d", subject, c, len(c), limit)
					}
				}
			}
		}
		if got := p.rawHeader["Subject"]; len(got) != 1 || !decodedIs(got[0], subject) {
			t.Errorf("Subject %q reads back as %q", subject, got)
		}
		if got, err := new(mime.WordDecoder).DecodeHeader(p.header.Get("Subject")); err != nil || got != strings.TrimSpace(subject) && got != subject {
			t.Errorf("net/mail reads Subject %q as %q, %v", subject, got, err)
		}
	}
}

func buildRaw(t *testing.T, e *queue.Email) []byte {
	t.Helper()
	m, err := worker.BuildMessage(e)
	if err != nil {
		t.Fatalf("BuildMessage: %v", err)
	}
	var buf bytes.Buffer
	if _, err := m.WriteTo(&buf); err != nil {
		t.Fatalf("WriteTo: %v", err)
	}
	return buf.Bytes()
}

// A non-ASCII file name is RFC 2231 in Content-Disposition (continued over
// lines when long), never an RFC 2047 word in quotes, and Content-Type's
// name= carries an ASCII rendering.
func TestBuildMessageFileNames(t *testing.T) {
	tests := []struct{ name, ascii string }{
		{"lead.pdf", "lead.pdf"},
		{"Q3 report (final).pdf", "Q3 report (final).pdf"},
		{"résumé.pdf", "resume.pdf"},
		{"견적서 (최종).xlsx", "attachment.xlsx"},
		{"Angebot für Müller & Söhne.docx", "Angebot fur Muller & Sohne.docx"},
		{strings.Repeat("보고서", 27) + ".pdf", "attachment.pdf"}, // 247 bytes, near the intake's 255
		{"2024 실적 보고서.pdf", "2024 _ _.pdf"},
		{"😀.png", "attachment.png"},
		{"it's 100% *done*; ok=yes.txt", "it's 100% *done*; ok=yes.txt"},
		{"naïve 'quote'.txt", "naive 'quote'.txt"},
	}
	e := seedEmail()
	e.Attachments = nil
	for _, tt := range tests {
		e.Attachments = append(e.Attachments, queue.Attachment{FileName: tt.name, Data: []byte("data of " + tt.name)})
	}
	p := checkStrict(t, buildRaw(t, e))
	for _, tt := range tests {
		i := slices.IndexFunc(p.leaves, func(l leaf) bool { return string(l.data) == "data of "+tt.name })
		if i < 0 {
			t.Errorf("no part for %q", tt.name)
			continue
		}
		l := p.leaves[i]
		disp, params, err := mime.ParseMediaType(l.header.Get("Content-Disposition"))
		if err != nil || disp != "attachment" || params["filename"] != tt.name {
			t.Errorf("%q: Content-Disposition %q reads as %q %q, %v", tt.name, l.header.Get("Content-Disposition"), disp, params["filename"], err)
		}
		if _, ctParams, err := mime.ParseMediaType(l.header.Get("Content-Type")); err != nil || ctParams["name"] != tt.ascii {
			t.Errorf("%q: Content-Type %q name = %q, %v; want %q", tt.name, l.header.Get("Content-Type"), ctParams["name"], err, tt.ascii)
		}
	}
}

// message/rfc822 and multipart/* parts go unencoded (RFC 2046 5.2.1, RFC
// 2045 6.4) with CRLF line ends; one queued before the intake checked them
// that cannot travel so goes as application/octet-stream, base64.
func TestBuildMessageUnencodedParts(t *testing.T) {
	eml := "From: Kim Minji <minji.kim@contoso.com>\nSubject: =?UTF-8?B?7IOIIOyeoOyerCDqs6DqsJ0=?=\nMIME-Version: 1.0\n" +
		"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n새 잠재 고객: Fabrikam\n.\n끝\n"
	multi := "--b1\r\nContent-Type: text/plain\r\n\r\none\r\n--b1\r\nContent-Type: text/html\r\n\r\n<p>two</p>\r\n--b1--\r\n"
	e := seedEmail()
	e.Attachments = []queue.Attachment{
		{FileName: "fwd.eml", ContentType: "message/rfc822", Data: []byte(eml)},
		{FileName: "alt.txt", ContentType: `multipart/alternative; boundary="b1"`, Data: []byte(multi)},
		{FileName: "old.eml", ContentType: "message/rfc822", Data: []byte("Subject: x\n\na\x00b\n")},
	}
	p := checkStrict(t, buildRaw(t, e))
	var sawMessage, sawOne, sawTwo, sawOld bool
	for _, l := range p.leaves {
		cte := l.header.Get("Content-Transfer-Encoding")
		switch {
		case l.mediaType == "message/rfc822":
			sawMessage = true
			if cte != "8bit" || string(l.data) != strings.ReplaceAll(eml, "\n", "\r\n") {
				t.Errorf("message/rfc822 part: Content-Transfer-Encoding %q, data %q; want 8bit and the message with CRLF", cte, l.data)
			}
		case string(l.data) == "one":
			sawOne = slices.Contains(l.parents, "multipart/alternative")
		case string(l.data) == "<p>two</p>":
			sawTwo = slices.Contains(l.parents, "multipart/alternative")
		case bytes.Contains(l.data, []byte("a\x00b")):
			sawOld = l.mediaType == "application/octet-stream" && cte == "base64"
		}
	}
	if !sawMessage || !sawOne || !sawTwo || !sawOld {
		t.Errorf("message/rfc822 %v, multipart parts %v %v (inside multipart/alternative), old one as base64 octet-stream %v; want all",
			sawMessage, sawOne, sawTwo, sawOld)
	}
}
