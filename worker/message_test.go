package worker_test

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"io"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net/mail"
	"net/textproto"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sendq/sendq/producer"
	"github.com/sendq/sendq/queue"
	"github.com/sendq/sendq/worker"
)

const koreanSubject = "새 잠재 고객 생성됨"

// seedEmail is what the intake makes of a typical connector request.
func seedEmail() *queue.Email {
	return &queue.Email{
		V:         queue.PayloadVersion,
		ID:        "0190b6a4-7e2c-7c3a-9d1e-2f4b5c6d7e8f",
		CreatedAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		From:      queue.Address{Name: "Contoso CRM", Address: "crm@contoso.com"},
		To: []queue.Address{
			{Address: "sales@contoso.com"},
			{Name: "김민지", Address: "minji.kim@contoso.com"},
		},
		Cc:         []queue.Address{{Name: "Manager, Sales", Address: "manager@contoso.com"}},
		Bcc:        []queue.Address{{Address: "hidden-audit@contoso.com"}},
		Subject:    koreanSubject,
		Body:       `<p>새 잠재 고객: <b>Fabrikam</b></p><img src="cid:logo">`,
		IsHTML:     true,
		Importance: queue.ImportanceHigh,
		Attachments: []queue.Attachment{
			{FileName: "lead.pdf", ContentType: "application/pdf", Data: []byte("%PDF-1.4\n\x00\xff binary")},
			{FileName: "견적서 (최종).xlsx", Data: bytes.Repeat([]byte{0, 1, 2, 250, 251, 252}, 100)},
			{FileName: "logo.png", ContentType: "image/png", ContentID: "logo", Data: []byte("\x89PNG\r\n\x1a\n")},
		},
	}
}

// leaf is one non-multipart part of a message, its body decoded.
type leaf struct {
	header    textproto.MIMEHeader
	mediaType string
	parents   []string // the enclosing multipart types, outermost first
	data      []byte
}

// parsed is a message as a receiver reads it.
type parsed struct {
	raw    []byte
	header mail.Header
	// rawHeader maps each top-level header name (canonical) to its values
	// as written, unfolded as RFC 5322 says: CRLF before WSP removed.
	rawHeader map[string][]string
	leaves    []leaf
}

func build(t *testing.T, e *queue.Email, opts ...worker.MessageOption) *parsed {
	t.Helper()
	m, err := worker.BuildMessage(e, opts...)
	if err != nil {
		t.Fatalf("BuildMessage: %v", err)
	}
	var buf bytes.Buffer
	if _, err := m.WriteTo(&buf); err != nil {
		t.Fatalf("WriteTo: %v", err)
	}
	return parse(t, buf.Bytes())
}

func parse(t *testing.T, raw []byte) *parsed {
	t.Helper()
	msg, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("mail.ReadMessage: %v\n%s", err, raw)
	}
	p := &parsed{raw: raw, header: msg.Header, rawHeader: map[string][]string{}}
	head, _, ok := bytes.Cut(raw, []byte("\r\n\r\n"))
	if !ok {
		t.Fatalf("message has no end of header:\n%s", raw)
	}
	unfolded := strings.NewReplacer("\r\n ", " ", "\r\n\t", "\t").Replace(string(head))
	for _, line := range strings.Split(unfolded, "\r\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			t.Fatalf("header line %q has no colon", line)
		}
		k = textproto.CanonicalMIMEHeaderKey(k)
		p.rawHeader[k] = append(p.rawHeader[k], strings.TrimPrefix(v, " "))
	}
	p.leaves = walk(t, textproto.MIMEHeader(msg.Header), msg.Body, nil)
	return p
}

// walk returns the leaves of the MIME tree of a part with header h and body
// r, descending into nested multiparts.
func walk(t *testing.T, h textproto.MIMEHeader, r io.Reader, parents []string) []leaf {
	t.Helper()
	mt, params, err := mime.ParseMediaType(h.Get("Content-Type"))
	if err != nil {
		t.Fatalf("Content-Type %q: %v", h.Get("Content-Type"), err)
	}
	if strings.HasPrefix(mt, "multipart/") {
		mr := multipart.NewReader(r, params["boundary"])
		var out []leaf
		for {
			part, err := mr.NextRawPart()
			if err == io.EOF {
				return out
			}
			if err != nil {
				t.Fatalf("%s part: %v", mt, err)
			}
			out = append(out, walk(t, part.Header, part, append(slices.Clip(parents), mt))...)
		}
	}
	switch cte := strings.ToLower(h.Get("Content-Transfer-Encoding")); cte {
	case "base64":
		r = base64.NewDecoder(base64.StdEncoding, r)
	case "quoted-printable":
		r = quotedprintable.NewReader(r)
	case "", "7bit", "8bit", "binary":
	default:
		t.Fatalf("unexpected Content-Transfer-Encoding %q", cte)
	}
	data, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("decode %s part: %v", mt, err)
	}
	return []leaf{{header: h, mediaType: mt, parents: parents, data: data}}
}

// fileName returns the disposition of a part and its file name, decoded
// when it is RFC 2047 encoded (as written when it is not, or cannot be).
func fileName(l leaf) (disposition, name string) {
	d, params, err := mime.ParseMediaType(l.header.Get("Content-Disposition"))
	if err != nil {
		return "", ""
	}
	name = params["filename"]
	if dec, err := new(mime.WordDecoder).DecodeHeader(name); err == nil {
		name = dec
	}
	return d, name
}

func addrList(t *testing.T, h mail.Header, key string) []queue.Address {
	t.Helper()
	list, err := h.AddressList(key)
	if err != nil {
		t.Fatalf("%s: %v", key, err)
	}
	out := make([]queue.Address, len(list))
	for i, a := range list {
		out[i] = queue.Address{Name: a.Name, Address: a.Address}
	}
	return out
}

func TestBuildMessageSeed(t *testing.T) {
	e := seedEmail()
	p := build(t, e)

	if got := addrList(t, p.header, "From"); !slices.Equal(got, []queue.Address{e.From}) {
		t.Errorf("From = %+v; want %+v", got, e.From)
	}
	if got := addrList(t, p.header, "To"); !slices.Equal(got, e.To) {
		t.Errorf("To = %+v; want %+v", got, e.To)
	}
	if got := addrList(t, p.header, "Cc"); !slices.Equal(got, e.Cc) {
		t.Errorf("Cc = %+v; want %+v", got, e.Cc)
	}
	if v, ok := p.rawHeader["Bcc"]; ok {
		t.Errorf("message has a Bcc header %q", v)
	}
	if bytes.Contains(p.raw, []byte(e.Bcc[0].Address)) {
		t.Errorf("message contains the Bcc address %s", e.Bcc[0].Address)
	}

	subj := p.rawHeader["Subject"]
	if len(subj) != 1 || !strings.HasPrefix(subj[0], "=?") {
		t.Fatalf("Subject = %q; want one RFC 2047 encoded value", subj)
	}
	if strings.Contains(subj[0], "새") {
		t.Errorf("Subject %q holds raw UTF-8", subj[0])
	}
	if got, err := new(mime.WordDecoder).DecodeHeader(subj[0]); err != nil || got != koreanSubject {
		t.Errorf("DecodeHeader(%q) = %q, %v; want %q", subj[0], got, err, koreanSubject)
	}

	if got, err := p.header.Date(); err != nil || !got.Equal(e.CreatedAt) {
		t.Errorf("Date = %v, %v; want %v", got, err, e.CreatedAt)
	}
	wantID := "<" + e.ID + "@contoso.com>"
	if got := p.header.Get("Message-Id"); got != wantID {
		t.Errorf("Message-Id = %q; want %q", got, wantID)
	}
	if got := "<" + worker.MessageID(e) + ">"; got != wantID {
		t.Errorf("MessageID = %q; want %q", got, wantID)
	}
	if got := p.header.Get("Importance"); got != "high" {
		t.Errorf("Importance = %q; want high", got)
	}
	if got := p.header.Get("X-Priority"); got != "1" {
		t.Errorf("X-Priority = %q; want 1", got)
	}
	if got := p.header.Get("Disposition-Notification-To"); got != "" {
		t.Errorf("Disposition-Notification-To = %q without a ReadReceipt", got)
	}
	if got := p.header.Get("Mime-Version"); got != "1.0" {
		t.Errorf("Mime-Version = %q; want 1.0", got)
	}

	// The HTML body and the inline logo belong together in
	// multipart/related; the other attachments sit beside them in
	// multipart/mixed.
	var bodies, files []leaf
	for _, l := range p.leaves {
		if strings.HasPrefix(l.mediaType, "text/html") || l.mediaType == "text/plain" {
			bodies = append(bodies, l)
		} else {
			files = append(files, l)
		}
	}
	if len(bodies) != 1 || bodies[0].mediaType != "text/html" {
		t.Fatalf("body parts %+v; want one text/html", bodies)
	}
	if got := string(bodies[0].data); got != e.Body {
		t.Errorf("HTML body = %q; want %q", got, e.Body)
	}
	if !slices.Equal(bodies[0].parents, []string{"multipart/mixed", "multipart/related"}) {
		t.Errorf("HTML body inside %q; want multipart/mixed, multipart/related", bodies[0].parents)
	}
	if len(files) != len(e.Attachments) {
		t.Fatalf("%d file parts; want %d", len(files), len(e.Attachments))
	}
	for _, a := range e.Attachments {
		i := slices.IndexFunc(files, func(l leaf) bool { _, n := fileName(l); return n == a.FileName })
		if i < 0 {
			t.Errorf("no part with file name %q", a.FileName)
			continue
		}
		l := files[i]
		if !bytes.Equal(l.data, a.Data) {
			t.Errorf("part %q data = %q; want %q", a.FileName, l.data, a.Data)
		}
		if a.ContentType != "" && l.mediaType != a.ContentType {
			t.Errorf("part %q Content-Type = %q; want %q", a.FileName, l.mediaType, a.ContentType)
		}
		disp, _ := fileName(l)
		// textproto canonicalises the key, whatever case go-mail wrote.
		cid := l.header.Get(textproto.CanonicalMIMEHeaderKey("Content-ID"))
		if a.ContentID != "" {
			if disp != "inline" || cid != "<"+a.ContentID+">" {
				t.Errorf("part %q: disposition %q, Content-ID %q; want inline, <%s>", a.FileName, disp, cid, a.ContentID)
			}
			if !slices.Contains(l.parents, "multipart/related") {
				t.Errorf("inline part %q inside %q; want multipart/related", a.FileName, l.parents)
			}
		} else {
			if disp != "attachment" || cid != "" {
				t.Errorf("part %q: disposition %q, Content-ID %q; want attachment and none", a.FileName, disp, cid)
			}
			if !slices.Equal(l.parents, []string{"multipart/mixed"}) {
				t.Errorf("attachment %q inside %q; want multipart/mixed", a.FileName, l.parents)
			}
		}
	}
}

func TestBuildMessageHeaders(t *testing.T) {
	tests := []struct {
		name string
		edit func(e *queue.Email)
		want map[string]string // "" means the header must be absent
	}{
		{"normal importance", func(e *queue.Email) { e.Importance = queue.ImportanceNormal },
			map[string]string{"Importance": "", "X-Priority": "", "Priority": "", "X-Msmail-Priority": ""}},
		{"empty importance", func(e *queue.Email) { e.Importance = "" },
			map[string]string{"Importance": "", "X-Priority": ""}},
		{"high importance", func(e *queue.Email) { e.Importance = queue.ImportanceHigh },
			map[string]string{"Importance": "high", "X-Priority": "1"}},
		{"low importance", func(e *queue.Email) { e.Importance = queue.ImportanceLow },
			map[string]string{"Importance": "low", "X-Priority": "5"}},
		{"read receipt", func(e *queue.Email) { e.ReadReceipt = "reader@contoso.com" },
			map[string]string{"Disposition-Notification-To": "<reader@contoso.com>"}},
		{"no read receipt", nil, map[string]string{"Disposition-Notification-To": ""}},
		{"no Cc", func(e *queue.Email) { e.Cc = nil }, map[string]string{"Cc": ""}},
		{"no To, Bcc only", func(e *queue.Email) { e.To, e.Cc = nil, nil }, map[string]string{"To": "", "Cc": "", "Bcc": ""}},
		{"ASCII subject as is", func(e *queue.Email) { e.Subject = "New lead created" }, map[string]string{"Subject": "New lead created"}},
		{"from domain in Message-ID", func(e *queue.Email) { e.From.Address = "a@mail.fabrikam.com" },
			map[string]string{"Message-Id": "<0190b6a4-7e2c-7c3a-9d1e-2f4b5c6d7e8f@mail.fabrikam.com>"}},
		// go-mail would write an internationalised domain as an encoded
		// word, =?UTF-8?q?<...@ex=C3=A4mple.com>?=, which is no msg-id.
		{"internationalised from domain", func(e *queue.Email) { e.From.Address = "crm@exämple.com" },
			map[string]string{"Message-Id": "<0190b6a4-7e2c-7c3a-9d1e-2f4b5c6d7e8f@sendq.invalid>"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := seedEmail()
			e.Importance = queue.ImportanceNormal
			if tt.edit != nil {
				tt.edit(e)
			}
			p := build(t, e)
			for k, want := range tt.want {
				got, ok := p.rawHeader[k]
				switch {
				case want == "" && ok:
					t.Errorf("header %s = %q; want none", k, got)
				case want != "" && !slices.Equal(got, []string{want}):
					t.Errorf("header %s = %q; want %q", k, got, want)
				}
			}
		})
	}
}

// TestBuildMessageLineBreaks checks that every line break of the body
// survives, whatever its form: mime/quotedprintable alone loses the LF of a
// CR, encoded bytes, LF sequence.
func TestBuildMessageLineBreaks(t *testing.T) {
	for _, body := range []string{
		"첫째 줄\r둘째\n셋째 줄",
		"\r\x12\n",
		"a\r=\nb",
		"a\r\r\nb\n\rc",
		"a\nb\r\nc\rd",
	} {
		e := seedEmail()
		e.IsHTML, e.Body, e.Attachments = false, body, nil
		p := build(t, e)
		want := canonicalLines(body)
		if len(p.leaves) != 1 || canonicalLines(string(p.leaves[0].data)) != want {
			t.Errorf("body %q reads back as %q; want %q", body, p.leaves[0].data, want)
		}
	}
}

func TestBuildMessagePlainText(t *testing.T) {
	e := seedEmail()
	e.IsHTML = false
	e.Body = "Hello,\r\n\r\nA new lead: Fabrikam.\r\n.\r\nBye"
	e.Attachments = nil
	p := build(t, e)
	if len(p.leaves) != 1 || p.leaves[0].mediaType != "text/plain" {
		t.Fatalf("parts %+v; want one text/plain", p.leaves)
	}
	if got := string(p.leaves[0].data); got != e.Body {
		t.Errorf("text body = %q; want %q", got, e.Body)
	}
	if _, params, _ := mime.ParseMediaType(p.leaves[0].header.Get("Content-Type")); !strings.EqualFold(params["charset"], "utf-8") {
		t.Errorf("Content-Type %q; want charset UTF-8", p.leaves[0].header.Get("Content-Type"))
	}
}

// dotEncode returns msg as it goes on the wire after DATA.
func dotEncode(t *testing.T, msg []byte) []byte {
	t.Helper()
	var out bytes.Buffer
	bw := bufio.NewWriter(&out)
	dw := textproto.NewWriter(bw).DotWriter()
	if _, err := dw.Write(msg); err != nil {
		t.Fatal(err)
	}
	if err := dw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := bw.Flush(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// allowedHeaders are the only top-level headers BuildMessage may write.
var allowedHeaders = map[string]bool{
	"From": true, "To": true, "Cc": true, "Subject": true, "Date": true, "Message-Id": true,
	"Mime-Version": true, "Content-Type": true, "Importance": true, "Priority": true,
	"X-Priority": true, "X-Msmail-Priority": true, "Disposition-Notification-To": true,
	"Content-Transfer-Encoding": true,
}

// canonicalLines makes line ends comparable: quoted-printable writes every
// line end, CR, LF or CRLF, as CRLF.
func canonicalLines(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "\r\n", "\n"), "\r", "\n")
}

// decodedIs reports whether a header value as written means want: either it
// is want verbatim or it decodes (RFC 2047) to want.
func decodedIs(raw, want string) bool {
	if raw == want {
		return true
	}
	got, err := new(mime.WordDecoder).DecodeHeader(raw)
	return err == nil && got == want
}

func FuzzBuildMessage(f *testing.F) {
	f.Add(koreanSubject, "김민지", `<p>새 잠재 고객</p><img src="cid:logo">`, "logo.png", true, true)
	f.Add("New lead", "Kim, Minji", "Hello\n.\nBye\r\n.\r\n", "lead.pdf", false, false)
	f.Add("=?utf-8?q?hi?=", `"quoted" \name`, "\r\r\n\n.", "견적서 (최종).xlsx", true, false)
	f.Add("Hi\r\nBcc: x@evil.com", "a\r\nb", "x", "../x", false, false)
	f.Add(strings.Repeat("long subject ", 30), strings.Repeat("名", 80), strings.Repeat("a", 2000), strings.Repeat("f", 250), false, true)
	f.Fuzz(func(t *testing.T, subject, name, body, file string, html, inline bool) {
		att := map[string]any{
			"ContentData": base64.StdEncoding.EncodeToString([]byte(body)),
			"FileName":    file,
		}
		if inline {
			att["ContentId"] = "logo"
		}
		req, err := json.Marshal(map[string]any{
			"From":        (&mail.Address{Name: name, Address: "crm@contoso.com"}).String(),
			"To":          (&mail.Address{Name: name, Address: "sales@contoso.com"}).String(),
			"CC":          "manager@contoso.com",
			"Bcc":         "hidden-audit@contoso.com",
			"Subject":     subject,
			"Body":        body,
			"IsHtml":      html,
			"Importance":  "High",
			"ReadReceipt": "reader@contoso.com",
			"Attachments": []any{att},
		})
		if err != nil {
			t.Fatal(err)
		}
		e, err := producer.DecodeRequest(req, producer.Limits{})
		if err != nil {
			return // the intake refuses it: the worker never sees it
		}
		e.ID = "0190b6a4-7e2c-7c3a-9d1e-2f4b5c6d7e8f"
		e.CreatedAt = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

		m, err := worker.BuildMessage(e)
		if err != nil {
			t.Fatalf("BuildMessage(%+v): %v", e, err)
		}
		var buf bytes.Buffer
		if _, err := m.WriteTo(&buf); err != nil {
			t.Fatalf("WriteTo: %v", err)
		}
		raw := buf.Bytes()

		for i, c := range raw {
			if c == '\n' && (i == 0 || raw[i-1] != '\r') || c == '\r' && (i+1 == len(raw) || raw[i+1] != '\n') {
				t.Fatalf("bare CR or LF at byte %d: %q", i, raw[max(0, i-40):min(len(raw), i+40)])
			}
		}
		if n := bytes.Count(dotEncode(t, raw), []byte("\r\n.\r\n")); n != 1 {
			t.Fatalf("dot-encoded message has %d end-of-data lines; want 1", n)
		}

		p := parse(t, raw)
		for k := range p.rawHeader {
			if !allowedHeaders[k] {
				t.Fatalf("unexpected header %s: %q", k, p.rawHeader[k])
			}
		}
		for k := range p.header {
			if !allowedHeaders[k] {
				t.Fatalf("net/mail reads unexpected header %s: %q", k, p.header[k])
			}
		}
		head, _, _ := bytes.Cut(raw, []byte("\r\n\r\n"))
		if bytes.Contains(bytes.ToLower(head), []byte("hidden-audit@contoso.com")) {
			t.Fatalf("header holds the Bcc address:\n%s", head)
		}

		// Nothing the caller sent is silently changed.
		if got := p.rawHeader["Subject"]; len(got) != 1 || !decodedIs(got[0], e.Subject) {
			t.Fatalf("Subject header %q; want %q", got, e.Subject)
		}
		if got := addrList(t, p.header, "From"); !slices.Equal(got, []queue.Address{e.From}) {
			t.Fatalf("From = %+v; want %+v", got, e.From)
		}
		if got := addrList(t, p.header, "To"); !slices.Equal(got, e.To) {
			t.Fatalf("To = %+v; want %+v", got, e.To)
		}
		if got, want := p.header.Get("Message-Id"), "<"+worker.MessageID(e)+">"; got != want {
			t.Fatalf("Message-Id = %q; want %q", got, want)
		}
		var sawBody, sawFile bool
		for _, l := range p.leaves {
			if _, n := fileName(l); n != "" {
				if sawFile || !decodedIs(paramFileName(l), e.Attachments[0].FileName) || !bytes.Equal(l.data, e.Attachments[0].Data) {
					t.Fatalf("file part %q (%d bytes); want %q (%d bytes)", paramFileName(l), len(l.data), e.Attachments[0].FileName, len(e.Attachments[0].Data))
				}
				sawFile = true
				continue
			}
			if sawBody || canonicalLines(string(l.data)) != canonicalLines(e.Body) {
				t.Fatalf("body part %q; want %q", l.data, e.Body)
			}
			sawBody = true
		}
		if !sawBody || !sawFile {
			t.Fatalf("body part %v, file part %v; want both", sawBody, sawFile)
		}
	})
}

// paramFileName returns the filename parameter of a part as written.
func paramFileName(l leaf) string {
	_, params, _ := mime.ParseMediaType(l.header.Get("Content-Disposition"))
	return params["filename"]
}

// An email carrying its own Text (a template with Html and Text) is
// multipart/alternative with that text, with or without WithTextPart; an
// HTML email without one gets the derived text only with WithTextPart.
func TestBuildMessageGivenText(t *testing.T) {
	e := seedEmail()
	e.Attachments = nil
	e.Body = "<p>Hi <b>Ada</b></p>"
	e.Text = "Hi Ada, in plain words\n"
	for _, opts := range [][]worker.MessageOption{nil, {worker.WithTextPart()}} {
		p := build(t, e, opts...)
		if len(p.leaves) != 2 || p.leaves[0].mediaType != "text/plain" || p.leaves[1].mediaType != "text/html" {
			t.Fatalf("parts %+v; want text/plain then text/html", p.leaves)
		}
		if got := string(p.leaves[0].data); got != "Hi Ada, in plain words\r\n" {
			t.Errorf("text part = %q; want the given Text", got)
		}
		if mt, _, _ := mime.ParseMediaType(p.header.Get("Content-Type")); mt != "multipart/alternative" {
			t.Errorf("Content-Type = %q; want multipart/alternative", mt)
		}
	}
	e.Text = ""
	if p := build(t, e); len(p.leaves) != 1 || p.leaves[0].mediaType != "text/html" {
		t.Errorf("without Text or WithTextPart: parts %+v; want text/html alone", p.leaves)
	}
}
