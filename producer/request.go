package producer

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"mime"
	"path"
	"strconv"
	"strings"
	"time"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/sendq/sendq/queue"
)

// FieldError is a client error about one field of the request body.
type FieldError struct {
	Field   string
	Code    string
	Message string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Message }

func fieldErr(field, format string, args ...any) *FieldError {
	return &FieldError{Field: field, Code: "invalid_field", Message: fmt.Sprintf(format, args...)}
}

// The request fields, by lower-case name, with the spelling errors use.
var requestFields = map[string]string{
	"from": "From", "to": "To", "cc": "CC", "bcc": "Bcc", "subject": "Subject", "body": "Body",
	"ishtml": "IsHtml", "importance": "Importance", "attachments": "Attachments",
	"readreceipt": "ReadReceipt", "deliveryreceipt": "DeliveryReceipt", "sendat": "SendAt",
}

var attachmentFields = map[string]string{
	"contentdata": "ContentData", "contenttype": "ContentType",
	"contenttransferencoding": "ContentTransferEncoding", "filename": "FileName", "contentid": "ContentId",
}

// Limits bound what one request may ask for.
type Limits struct {
	// MaxRecipients across To, CC and Bcc. If zero, 100.
	MaxRecipients int
	// DefaultFrom is used when the request has no From.
	DefaultFrom string
}

// DecodeRequest parses and validates a Send Email body (the union of the
// connector's V1, V2 and V3 bodies; field names match case-insensitively)
// into an email ready to queue. It never changes what the caller asked
// for: anything it cannot send as given is a *FieldError.
func DecodeRequest(body []byte, lim Limits) (*queue.Email, error) {
	if lim.MaxRecipients <= 0 {
		lim.MaxRecipients = 100
	}
	// decodeObject refuses invalid UTF-8 in any value, naming the field.
	fields, err := decodeObject(body, requestFields, "")
	if err != nil {
		return nil, err
	}
	e := &queue.Email{IsHTML: true, Importance: queue.ImportanceNormal}

	fromRaw, err := optString(fields, "From")
	if err != nil {
		return nil, err
	}
	if strings.TrimSpace(fromRaw) == "" {
		fromRaw = lim.DefaultFrom
	}
	if strings.TrimSpace(fromRaw) == "" {
		return nil, &FieldError{Field: "From", Code: "missing_field", Message: "From is required"}
	}
	froms, ferr := addressList("From", fromRaw)
	if ferr != nil {
		return nil, ferr
	}
	if len(froms) != 1 {
		return nil, fieldErr("From", "must be exactly one address, got %d", len(froms))
	}
	e.From = froms[0]

	for _, f := range []struct {
		name string
		dst  *[]queue.Address
	}{{"To", &e.To}, {"CC", &e.Cc}, {"Bcc", &e.Bcc}} {
		list, err := recipientField(fields, f.name)
		if err != nil {
			return nil, err
		}
		*f.dst = list
	}
	n := len(e.Recipients())
	if n == 0 {
		return nil, &FieldError{Field: "To", Code: "missing_field", Message: "at least one recipient is required in To, CC or Bcc"}
	}
	if n > lim.MaxRecipients {
		return nil, fieldErr("To", "%d recipients across To, CC and Bcc; the limit is %d", n, lim.MaxRecipients)
	}

	if e.Subject, err = optString(fields, "Subject"); err != nil {
		return nil, err
	}
	if hasControl(e.Subject) {
		return nil, fieldErr("Subject", "must not contain control characters (CR, LF, NUL, tab)")
	}
	if longestWord(e.Subject) > maxHeaderWord {
		return nil, fieldErr("Subject", "has a word of more than %d characters without a space; a mail header line cannot carry it (RFC 5322 limits lines to 998)", maxHeaderWord)
	}
	if e.Body, err = optString(fields, "Body"); err != nil {
		return nil, err
	}
	if strings.ContainsRune(e.Body, 0) {
		return nil, fieldErr("Body", "must not contain NUL characters")
	}
	if raw, ok := fields["IsHtml"]; ok && !isNull(raw) {
		b, err := flexBool(raw)
		if err != nil {
			return nil, fieldErr("IsHtml", "must be true or false")
		}
		e.IsHTML = b
	}
	imp, err := optString(fields, "Importance")
	if err != nil {
		return nil, err
	}
	switch strings.ToLower(strings.TrimSpace(imp)) {
	case "", "normal":
	case "high":
		e.Importance = queue.ImportanceHigh
	case "low":
		e.Importance = queue.ImportanceLow
	default:
		return nil, fieldErr("Importance", "must be High, Normal or Low, got %q", imp)
	}

	rr, err := optString(fields, "ReadReceipt")
	if err != nil {
		return nil, err
	}
	if strings.TrimSpace(rr) != "" {
		a, err := ParseAddress(strings.TrimSpace(rr))
		if err != nil {
			return nil, fieldErr("ReadReceipt", "%v", err)
		}
		e.ReadReceipt = a.Address
	}
	if raw, ok := fields["DeliveryReceipt"]; ok && !isNull(raw) {
		if b, err := flexBool(raw); err == nil {
			e.DeliveryReceipt = b
		} else {
			var s string
			if json.Unmarshal(raw, &s) != nil {
				return nil, fieldErr("DeliveryReceipt", "must be an email address or true/false")
			}
			if strings.TrimSpace(s) != "" {
				a, err := ParseAddress(strings.TrimSpace(s))
				if err != nil {
					return nil, fieldErr("DeliveryReceipt", "%v", err)
				}
				e.DeliveryReceipt = true
				if !strings.EqualFold(a.Address, e.From.Address) {
					e.ReturnPath = a.Address
				}
			}
		}
	}
	if sa, err := optString(fields, "SendAt"); err != nil {
		return nil, err
	} else if sa != "" {
		t, err := time.Parse(time.RFC3339, sa)
		if err != nil {
			return nil, fieldErr("SendAt", "must be an RFC 3339 time such as 2026-01-02T15:04:05Z")
		}
		e.SendAt = t
	}

	if raw, ok := fields["Attachments"]; ok && !isNull(raw) {
		var items []json.RawMessage
		if err := json.Unmarshal(raw, &items); err != nil {
			return nil, fieldErr("Attachments", "must be an array of objects")
		}
		for i, item := range items {
			a, err := decodeAttachment(item, fmt.Sprintf("Attachments[%d]", i))
			if err != nil {
				return nil, err
			}
			e.Attachments = append(e.Attachments, a)
		}
	}
	return e, nil
}

// decodeObject decodes a JSON object and maps its keys, case-insensitively,
// to the known field names. An unknown field is an error: silently dropping
// a field the caller thought meaningful would change their message.
func decodeObject(raw []byte, known map[string]string, prefix string) (map[string]json.RawMessage, error) {
	trimmed := bytes.TrimSpace(raw)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		if prefix == "" {
			return nil, &FieldError{Code: "invalid_json", Message: "body must be a JSON object"}
		}
		return nil, fieldErr(prefix, "must be a JSON object")
	}
	invalid := func(err error) error {
		if prefix == "" {
			return &FieldError{Code: "invalid_json", Message: "body is not valid JSON: " + err.Error()}
		}
		return fieldErr(prefix, "is not a valid JSON object")
	}
	// One validating scan (no allocation), then a walk over the top-level
	// members in order: decoding into a map would keep only the last of two
	// members with the same name, silently dropping the first.
	if !json.Valid(trimmed) {
		var v any
		return nil, invalid(json.Unmarshal(trimmed, &v)) // for the message
	}
	out := make(map[string]json.RawMessage, len(known))
	for m := range members(trimmed) {
		k := strings.ToValidUTF8(string(m.key), "\uFFFD")
		if m.escaped {
			if err := json.Unmarshal(m.quoted, &k); err != nil {
				return nil, invalid(err)
			}
		}
		v := json.RawMessage(m.value)
		name, ok := known[strings.ToLower(k)]
		field := k
		if prefix != "" {
			field = prefix + "." + k
		}
		if !ok {
			return nil, &FieldError{Field: field, Code: "unknown_field", Message: fmt.Sprintf("unknown field %q", k)}
		}
		if _, dup := out[name]; dup {
			return nil, &FieldError{Field: field, Code: "duplicate_field", Message: fmt.Sprintf("field %s is given twice (names match case-insensitively)", name)}
		}
		// encoding/json would turn both into U+FFFD without a word.
		label := name
		if prefix != "" {
			label = prefix + "." + name
		}
		if !utf8.Valid(v) {
			return nil, fieldErr(label, "is not valid UTF-8")
		}
		if hasLoneSurrogate(v) {
			return nil, fieldErr(label, "has a \\u escape of half a UTF-16 surrogate pair")
		}
		out[name] = v
	}
	return out, nil
}

// member is one top-level member of a JSON object.
type member struct {
	key     []byte // between the quotes, escapes not undone
	quoted  []byte // the key with its quotes
	escaped bool   // the key has a backslash escape
	value   []byte // the raw value
}

// members yields the top-level members of b, which must be a valid JSON
// object (json.Valid): the walk trusts the syntax and only finds bounds.
func members(b []byte) func(func(member) bool) {
	return func(yield func(member) bool) {
		i := skipSpace(b, 1)
		for i < len(b) && b[i] == '"' {
			end, escaped := skipString(b, i)
			m := member{key: b[i+1 : end-1], quoted: b[i:end], escaped: escaped}
			i = skipSpace(b, end)
			i = skipSpace(b, i+1) // the colon
			vend := skipValue(b, i)
			m.value = b[i:vend]
			if !yield(m) {
				return
			}
			i = skipSpace(b, vend)
			if i < len(b) && b[i] == ',' {
				i = skipSpace(b, i+1)
			}
		}
	}
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skipString returns the index after the string starting at b[i] == '"'.
func skipString(b []byte, i int) (int, bool) {
	escaped := false
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			escaped = true
			i++
		case '"':
			return i + 1, escaped
		}
	}
	return len(b), escaped
}

// skipValue returns the index after the value starting at b[i].
func skipValue(b []byte, i int) int {
	switch b[i] {
	case '"':
		end, _ := skipString(b, i)
		return end
	case '{', '[':
		depth := 0
		for i < len(b) {
			switch b[i] {
			case '"':
				i, _ = skipString(b, i)
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
			i++
		}
		return i
	default: // number, true, false, null
		for i < len(b) && !strings.ContainsRune(",}] \t\r\n", rune(b[i])) {
			i++
		}
		return i
	}
}

// hasLoneSurrogate reports a \uD800-\uDFFF escape in JSON text b that is not
// a high half directly followed by a low half.
func hasLoneSurrogate(b []byte) bool {
	hex4 := func(i int) rune {
		if i+4 > len(b) {
			return -1
		}
		n, err := strconv.ParseUint(string(b[i:i+4]), 16, 16)
		if err != nil {
			return -1
		}
		return rune(n)
	}
	for i := 0; i < len(b); i++ {
		if b[i] != '\\' {
			continue
		}
		i++ // the escaped byte, so that \\u is skipped whole
		if i >= len(b) || b[i] != 'u' {
			continue
		}
		r := hex4(i + 1)
		if !utf16.IsSurrogate(r) {
			continue
		}
		if r >= 0xdc00 {
			return true
		}
		if i+6 >= len(b) || b[i+5] != '\\' || b[i+6] != 'u' {
			return true
		}
		if lo := hex4(i + 7); lo < 0xdc00 || lo > 0xdfff {
			return true
		}
		i += 10
	}
	return false
}

func isNull(raw json.RawMessage) bool { return string(bytes.TrimSpace(raw)) == "null" }

func optString(fields map[string]json.RawMessage, name string) (string, error) {
	return optStringAt(fields, name, name)
}

func optStringAt(fields map[string]json.RawMessage, name, label string) (string, error) {
	raw, ok := fields[name]
	if !ok || isNull(raw) {
		return "", nil
	}
	if s, ok := plainString(raw); ok {
		return s, nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", fieldErr(label, "must be a string")
	}
	return s, nil
}

// plainString returns the value of a JSON string without escapes, the
// common case, without a second scan; ok is false for anything else.
func plainString(raw json.RawMessage) (string, bool) {
	if len(raw) < 2 || raw[0] != '"' || raw[len(raw)-1] != '"' {
		return "", false
	}
	body := raw[1 : len(raw)-1]
	for _, c := range body {
		if c == '\\' || c == '"' || c < 0x20 {
			return "", false
		}
	}
	return string(body), true // UTF-8 was checked by decodeObject
}

func flexBool(raw json.RawMessage) (bool, error) {
	var b bool
	if err := json.Unmarshal(raw, &b); err == nil {
		return b, nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		switch strings.ToLower(strings.TrimSpace(s)) {
		case "true":
			return true, nil
		case "false":
			return false, nil
		}
	}
	return false, fmt.Errorf("not a boolean")
}

// recipientField reads To, CC or Bcc: a string of addresses separated by
// ';' or ',', or a JSON array of such strings.
func recipientField(fields map[string]json.RawMessage, name string) ([]queue.Address, error) {
	raw, ok := fields[name]
	if !ok || isNull(raw) {
		return nil, nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return addressList(name, s)
	}
	var arr []string
	if err := json.Unmarshal(raw, &arr); err != nil {
		return nil, fieldErr(name, "must be a string of addresses separated by ';' or an array of strings")
	}
	var out []queue.Address
	for _, item := range arr {
		list, err := addressList(name, item)
		if err != nil {
			return nil, err
		}
		out = append(out, list...)
	}
	return out, nil
}

func addressList(field, s string) ([]queue.Address, error) {
	if hasControl(s) {
		return nil, fieldErr(field, "must not contain control characters (CR, LF, NUL)")
	}
	var out []queue.Address
	for _, part := range SplitAddressList(s) {
		a, err := ParseAddress(part)
		if err != nil {
			return nil, fieldErr(field, "%v", err)
		}
		out = append(out, a)
	}
	return out, nil
}

func decodeAttachment(raw []byte, label string) (queue.Attachment, error) {
	var a queue.Attachment
	f, err := decodeObject(raw, attachmentFields, label)
	if err != nil {
		return a, err
	}
	get := func(name string) (string, error) { return optStringAt(f, name, label+"."+name) }
	data, err := get("ContentData")
	if err != nil {
		return a, err
	}
	if raw, ok := f["ContentData"]; !ok || isNull(raw) {
		return a, &FieldError{Field: label + ".ContentData", Code: "missing_field", Message: "ContentData is required"}
	}
	enc, err := get("ContentTransferEncoding")
	if err != nil {
		return a, err
	}
	switch strings.ToLower(strings.TrimSpace(enc)) {
	case "", "base64":
		clean := strings.Map(func(r rune) rune {
			if r == '\r' || r == '\n' || r == ' ' || r == '\t' {
				return -1
			}
			return r
		}, data)
		b, err := base64.StdEncoding.DecodeString(clean)
		if err != nil {
			return a, fieldErr(label+".ContentData", "is not valid base64 (ContentTransferEncoding is base64)")
		}
		a.Data = b
	case "none":
		a.Data = []byte(data)
	default:
		return a, fieldErr(label+".ContentTransferEncoding", "must be base64 or none, got %q", enc)
	}
	if a.FileName, err = get("FileName"); err != nil {
		return a, err
	}
	if strings.TrimSpace(a.FileName) == "" {
		return a, &FieldError{Field: label + ".FileName", Code: "missing_field", Message: "FileName is required"}
	}
	// go-mail writes " : < > ? | as '_', so they are refused rather than
	// silently changed.
	if hasControl(a.FileName) || strings.ContainsAny(a.FileName, `/\":<>?|`) || a.FileName == "." || a.FileName == ".." ||
		path.Base(a.FileName) != a.FileName || len(a.FileName) > 255 {
		return a, fieldErr(label+".FileName", `must be a plain file name without path separators, control characters or any of " : < > ? |`)
	}
	if a.ContentType, err = get("ContentType"); err != nil {
		return a, err
	}
	if a.ContentType != "" {
		if hasControl(a.ContentType) {
			return a, fieldErr(label+".ContentType", "must not contain control characters")
		}
		mt, params, err := mime.ParseMediaType(a.ContentType)
		if err != nil || !strings.Contains(mt, "/") {
			return a, fieldErr(label+".ContentType", "%q is not a media type such as application/pdf", a.ContentType)
		}
		a.ContentType = mime.FormatMediaType(mt, params)
	}
	if a.ContentID, err = get("ContentId"); err != nil {
		return a, err
	}
	a.ContentID = strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(a.ContentID), "<"), ">")
	if a.ContentID != "" {
		if hasControl(a.ContentID) || strings.ContainsAny(a.ContentID, "<>\" ()[]\\,;:") || len(a.ContentID) > 250 {
			return a, fieldErr(label+".ContentId", "must be an id such as logo@example or logo.png, without spaces, quotes or angle brackets")
		}
	}
	return a, nil
}

// maxHeaderWord bounds an ASCII run without white space in a header value.
// Headers are folded at white space only, and RFC 5322 limits a line to 998
// characters; non-ASCII text is RFC 2047 encoded in short words anyway.
const maxHeaderWord = 900

func longestWord(s string) int {
	longest, cur := 0, 0
	for i := 0; i < len(s); i++ {
		if s[i] == ' ' || s[i] >= 0x80 {
			cur = 0
			continue
		}
		cur++
		longest = max(longest, cur)
	}
	return longest
}
