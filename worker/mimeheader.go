package worker

import (
	"encoding/base64"
	"fmt"
	"io"
	"maps"
	"mime"
	"path/filepath"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	gomail "github.com/wneessen/go-mail"
	"golang.org/x/text/unicode/norm"

	"github.com/sendq/sendq/queue"
)

// The header values BuildMessage writes itself, where go-mail's own are not
// what strict readers accept: go-mail writes a non-ASCII file name as an
// RFC 2047 word inside quotes (Python: "encoded word inside quoted
// string"), base64-encodes message/rfc822 and multipart parts (RFC 2046
// 5.2.1 and RFC 2045 6.4 forbid it), and folds a long encoded Subject
// before its first word (an empty first line, read as a leading space).

// maxLine is the line length headers are folded to (RFC 5322 2.1.1 says
// 78; RFC 2047 limits a line with encoded words to 76).
const maxLine = 76

// partHeader sets the Content-Type and Content-Disposition of attachment a
// (disposition "attachment" or "inline"). A non-ASCII file name goes in
// the disposition as an RFC 2231 filename* in UTF-8, continued over several
// lines when long, and Content-Type's name= carries an ASCII rendering for
// readers that know only that. Both forms in one header (filename= beside
// filename*=) would be a duplicate parameter to Python's email package.
//
// A message/rfc822 or multipart/* part is written as it is, not encoded
// (RFC 2046 5.2.1, RFC 2045 6.4), with CRLF line ends; the intake accepts
// only content that can travel so (lines of at most 998 octets, no NUL).
// go-mail can write an attachment unencoded only under the label 8bit:
// 7-bit content is 8bit data too (RFC 2045 6.2), and 8-bit content needs a
// relay that offers 8BITMIME, which Send checks.
func partHeader(a queue.Attachment, disposition string) gomail.FileOption {
	return func(f *gomail.File) {
		mt, params := mediaType(a)
		params["name"] = asciiFileName(a.FileName)
		f.Header.Set("Content-Type", contentType(mt, params))
		f.Header.Set("Content-Disposition", disposition+";"+fileNameParam(a.FileName))
		if unencoded(mt) {
			f.Enc = gomail.NoEncoding
			data := []byte(crlf.Replace(string(a.Data)))
			f.Writer = func(w io.Writer) (int64, error) {
				n, err := w.Write(data)
				return int64(n), err
			}
		}
	}
}

// mediaType is the media type of a and its parameters: the one the intake
// recorded, or the one its file name's extension maps to, or
// application/octet-stream (go-mail's choices). A type from the extension
// is never message/rfc822 or multipart/*: those are sent unencoded, and
// the intake checked only a declared one (RFC 2046 5.2.1 asks for no such
// check of an opaque application/octet-stream, base64-encoded).
func mediaType(a queue.Attachment) (string, map[string]string) {
	if mt, params, err := mime.ParseMediaType(a.ContentType); err == nil && (!unencoded(mt) || fitsUnencoded(a.Data)) {
		// (One that does not fit was queued before the intake checked:
		// it goes as opaque data.)
		return mt, params
	}
	mt, params, err := mime.ParseMediaType(mime.TypeByExtension(filepath.Ext(a.FileName)))
	if err != nil || unencoded(mt) {
		return "application/octet-stream", map[string]string{}
	}
	return mt, params
}

// fitsUnencoded reports whether data can travel unencoded: no NUL, no
// line over 998 octets (RFC 5321 4.5.3.1.6). The intake refuses the rest.
func fitsUnencoded(data []byte) bool {
	n := 0
	for _, c := range data {
		switch c {
		case 0:
			return false
		case '\r', '\n':
			n = 0
		default:
			if n++; n > 998 {
				return false
			}
		}
	}
	return true
}

// unencoded reports a media type whose body must not be encoded (RFC 2046
// 5.2.1, RFC 2045 6.4).
func unencoded(mt string) bool { return mt == "message/rfc822" || strings.HasPrefix(mt, "multipart/") }

// contentType formats a Content-Type value, a parameter on a line of its
// own where the line would grow past maxLine.
func contentType(mt string, params map[string]string) string {
	keys := slices.Sorted(maps.Keys(params))
	var b strings.Builder
	b.WriteString(mt)
	line := len("Content-Type: ") + len(mt)
	for _, k := range keys {
		// mime.FormatMediaType quotes and encodes the value as needed.
		p := strings.TrimPrefix(mime.FormatMediaType("x/x", map[string]string{k: params[k]}), "x/x;")
		b.WriteByte(';')
		if line+1+len(p) > maxLine {
			b.WriteString("\r\n")
			line = 0
		}
		b.WriteString(p)
		line += 1 + len(p)
	}
	return b.String()
}

// fileNameParam is the filename parameter of a Content-Disposition: quoted
// when name is printable ASCII, else RFC 2231 in UTF-8 (filename*=, or the
// sections filename*0*=, filename*1*= … when it does not fit on a line).
func fileNameParam(name string) string {
	if printableASCII(name) {
		return ` filename="` + quotedPair.Replace(name) + `"`
	}
	// Percent-encode each character whole, so that no line splits one.
	var pieces []string
	for _, r := range name {
		var b strings.Builder
		for _, c := range []byte(string(r)) {
			if isAttrChar(c) {
				b.WriteByte(c)
			} else {
				fmt.Fprintf(&b, "%%%02X", c)
			}
		}
		pieces = append(pieces, b.String())
	}
	value := strings.Join(pieces, "")
	if len("Content-Disposition: attachment; filename*=UTF-8''")+len(value) <= maxLine {
		return " filename*=UTF-8''" + value
	}
	// Sections (RFC 2231 3), each on a line of its own: the header's
	// first line ends after the disposition.
	var sections []string
	var cur strings.Builder
	room := maxLine - len(" filename*00*=UTF-8'';")
	for _, p := range pieces {
		if cur.Len() > 0 && cur.Len()+len(p) > room {
			sections = append(sections, cur.String())
			cur.Reset()
			room = maxLine - len(" filename*00*=;")
		}
		cur.WriteString(p)
	}
	sections = append(sections, cur.String())
	var b strings.Builder
	for i, v := range sections {
		if i > 0 {
			b.WriteString(";")
		}
		fmt.Fprintf(&b, "\r\n filename*%d*=", i)
		if i == 0 {
			b.WriteString("UTF-8''")
		}
		b.WriteString(v)
	}
	return b.String()
}

// quotedPair escapes a quoted-string's backslashes and quotes (the intake
// refuses both in file names; a name queued before stays whole).
var quotedPair = strings.NewReplacer(`\`, `\\`, `"`, `\"`)

// isAttrChar reports an RFC 2231 attribute-char: printable ASCII but
// space, "*", "'", "%" and the RFC 2045 tspecials.
func isAttrChar(c byte) bool {
	return c > ' ' && c < 0x7f && !strings.ContainsRune(`*'%()<>@,;:\"/[]?=`, rune(c))
}

// asciiFileName renders name in ASCII for readers that know no RFC 2231:
// accents dropped ("résumé.pdf" is "resume.pdf"), any other non-ASCII run
// an underscore, and "attachment" when nothing readable is left of the
// name before its extension.
func asciiFileName(name string) string {
	if printableASCII(name) {
		return name
	}
	var b strings.Builder
	for _, r := range norm.NFD.String(name) {
		switch {
		case unicode.Is(unicode.Mn, r):
		case r >= ' ' && r < 0x7f && r != '"' && r != '\\':
			b.WriteRune(r)
		case !strings.HasSuffix(b.String(), "_"):
			b.WriteByte('_')
		}
	}
	out := b.String()
	ext := filepath.Ext(out)
	if !strings.ContainsFunc(strings.TrimSuffix(out, ext), func(r rune) bool {
		return r < utf8.RuneSelf && (unicode.IsLetter(r) || unicode.IsDigit(r))
	}) {
		out = "attachment" + ext
	}
	return out
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] >= 0x7f {
			return false
		}
	}
	return true
}

// subjectValue is the Subject header's value as written. Printable ASCII
// (tab allowed) is written as it is, folded at spaces; anything else as
// RFC 2047 encoded words (B or Q, whichever is shorter), one per line. The
// first line always holds text: a header folded before its first word
// reads, to Python's email package among others, as a leading space.
func subjectValue(s string) string {
	first := maxLine - len("Subject: ")
	if !needsEncoding(s) {
		return foldASCII(s, first)
	}
	return encodeWords(s, first)
}

// needsEncoding reports whether s has a byte that cannot be written in a
// header as it is (mime.WordEncoder's test).
func needsEncoding(s string) bool {
	for i := 0; i < len(s); i++ {
		if (s[i] < ' ' || s[i] > '~') && s[i] != '\t' {
			return true
		}
	}
	return false
}

// foldASCII folds s at spaces into lines of about maxLine, the first of
// room first. A fold is a CRLF before a space, so unfolding gives s back;
// a word longer than a line stays whole (the intake bounds words).
func foldASCII(s string, first int) string {
	var b strings.Builder
	room := first
	for i := 0; i < len(s); {
		j := i
		for j < len(s) && s[j] == ' ' {
			j++
		}
		content := j < len(s)
		for j < len(s) && s[j] != ' ' {
			j++
		}
		word := s[i:j] // with the spaces before it
		if i > 0 && content && len(word) > room {
			b.WriteString("\r\n")
			room = maxLine
		}
		b.WriteString(word)
		room -= len(word)
		i = j
	}
	return b.String()
}

// encodeWords writes s as RFC 2047 encoded words of whole characters, each
// on its own line within maxLine (the first within first).
func encodeWords(s string, first int) string {
	qLen := 0
	for i := 0; i < len(s); i++ {
		qLen += qByteLen(s[i])
	}
	useB := (len(s)+2)/3*4 < qLen
	encLen := func(n, q int) int {
		if useB {
			return (n + 2) / 3 * 4
		}
		return q
	}
	overhead := len("=?UTF-8?Q??=")
	var words []string
	room := first - overhead
	start, q := 0, 0 // the word so far is s[start:i], q its Q length
	for i := 0; i < len(s); {
		_, size := utf8.DecodeRuneInString(s[i:])
		rq := 0
		for k := i; k < i+size; k++ {
			rq += qByteLen(s[k])
		}
		if i > start && encLen(i+size-start, q+rq) > room {
			words = append(words, encodeWord(s[start:i], useB))
			start, q, room = i, 0, maxLine-len(" ")-overhead
		}
		q += rq
		i += size
	}
	words = append(words, encodeWord(s[start:], useB))
	return strings.Join(words, "\r\n ")
}

// encodeWord is one RFC 2047 encoded word of UTF-8 text.
func encodeWord(text string, useB bool) string {
	if useB {
		return "=?UTF-8?B?" + base64.StdEncoding.EncodeToString([]byte(text)) + "?="
	}
	var b strings.Builder
	b.WriteString("=?UTF-8?Q?")
	for i := 0; i < len(text); i++ {
		switch c := text[i]; {
		case c == ' ':
			b.WriteByte('_')
		case qByteLen(c) == 1:
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, "=%02X", c)
		}
	}
	b.WriteString("?=")
	return b.String()
}

// qByteLen is the length of byte c in a Q encoded word: letters, digits,
// space (as "_") and "!*+-/" stand for themselves (the set RFC 2047 5(3)
// allows everywhere), every other byte is "=XX".
func qByteLen(c byte) int {
	switch {
	case c == ' ', c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9',
		strings.IndexByte("!*+-/", c) >= 0:
		return 1
	}
	return 3
}
