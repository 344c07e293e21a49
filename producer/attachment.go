package producer

import (
	"bytes"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"strings"

	"github.com/sendq/sendq/queue"
)

// maxLineOctets is SMTP's line limit without the CRLF (RFC 5321 4.5.3.1.6).
const maxLineOctets = 998

// checkUnencoded refuses a message/rfc822 or multipart/* attachment that
// cannot travel as the worker sends it: unencoded, as RFC 2046 5.2.1 and
// RFC 2045 6.4 require (base64 would leave it unreadable to a strict
// parser), with CRLF line ends. It must be what it claims to be (a message,
// or parts within its boundary), have no NUL and no line over 998 octets.
// 8-bit content is accepted: it needs a relay that offers 8BITMIME, which
// the worker checks.
func checkUnencoded(label string, a queue.Attachment) error {
	mt, params, err := mime.ParseMediaType(a.ContentType)
	if err != nil || mt != "message/rfc822" && !strings.HasPrefix(mt, "multipart/") {
		return nil
	}
	field := label + ".ContentData"
	why := func(format string, args ...any) error {
		return fieldErr(field, "a "+mt+" attachment is sent unencoded (RFC 2046 5.2.1, RFC 2045 6.4), so it "+format+
			"; send it as application/octet-stream to have it base64-encoded", args...)
	}
	if i := bytes.IndexByte(a.Data, 0); i >= 0 {
		return why("must not hold a NUL byte (at byte %d)", i)
	}
	line, n := 1, 0
	for _, c := range a.Data {
		if c == '\r' || c == '\n' {
			if c == '\n' {
				line++
			}
			n = 0
			continue
		}
		if n++; n > maxLineOctets {
			return why("must not have a line over %d bytes (line %d)", maxLineOctets, line)
		}
	}
	if mt == "message/rfc822" {
		m, err := mail.ReadMessage(bytes.NewReader(a.Data))
		if err != nil || len(m.Header) == 0 {
			return why("must be an RFC 5322 message (a header, a blank line, a body)")
		}
		return nil
	}
	boundary := params["boundary"]
	if boundary == "" {
		return fieldErr(label+".ContentType", "%s needs its boundary parameter, such as %s; boundary=\"b1\"", mt, mt)
	}
	r := multipart.NewReader(bytes.NewReader(a.Data), boundary)
	parts := 0
	for {
		p, err := r.NextRawPart()
		if err == io.EOF {
			break
		}
		if err == nil {
			_, err = io.Copy(io.Discard, p)
		}
		if err != nil {
			return why("must be body parts delimited by its boundary %q: %v", boundary, err)
		}
		parts++
	}
	if parts == 0 {
		return why("must hold at least one body part delimited by its boundary %q", boundary)
	}
	return nil
}
