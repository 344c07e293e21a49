package producer

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"mime"
	"path"
	"slices"
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
	"readreceipt": "ReadReceipt", "deliveryreceipt": "DeliveryReceipt", "sendat": "SendAt", "priority": "Priority",
	"metadata":        "Metadata",
	"listunsubscribe": "ListUnsubscribe", // unsubscribe.go
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
	// MaxAttachments per email. If zero, 100 (DefaultMaxAttachments).
	MaxAttachments int
	// MaxSchedule is how far ahead SendAt may be. If zero, 30 days
	// (DefaultMaxSchedule).
	MaxSchedule time.Duration
	// MaxAge is the delivery window after SendAt (the worker's MaxAge): a
	// SendAt further back is refused. If zero, 72h (DefaultMaxAge).
	MaxAge time.Duration
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
	var fields fieldValues
	if err := decodeObject(body, requestFields, "", &fields); err != nil {
		return nil, err
	}
	e := &queue.Email{IsHTML: true, Importance: queue.ImportanceNormal}

	fromRaw, err := optString(&fields, "From")
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
		list, err := recipientField(&fields, f.name)
		if err != nil {
			return nil, err
		}
		*f.dst = list
	}
	n := countRecipients(e)
	if n == 0 {
		return nil, &FieldError{Field: "To", Code: "missing_field", Message: "at least one recipient is required in To, CC or Bcc"}
	}
	if n > lim.MaxRecipients {
		return nil, fieldErr("To", "%d recipients across To, CC and Bcc; the limit is %d", n, lim.MaxRecipients)
	}

	if e.Subject, err = optString(&fields, "Subject"); err != nil {
		return nil, err
	}
	if hasControl(e.Subject) {
		return nil, fieldErr("Subject", "must not contain control characters (CR, LF, NUL, tab)")
	}
	if longestWord(e.Subject) > maxHeaderWord {
		return nil, fieldErr("Subject", "has a word of more than %d characters without a space; a mail header line cannot carry it (RFC 5322 limits lines to 998)", maxHeaderWord)
	}
	if e.Body, err = optString(&fields, "Body"); err != nil {
		return nil, err
	}
	if strings.ContainsRune(e.Body, 0) {
		return nil, fieldErr("Body", "must not contain NUL characters")
	}
	if raw, ok := fields.get("IsHtml"); ok && !isNull(raw) {
		b, err := flexBool(raw)
		if err != nil {
			return nil, fieldErr("IsHtml", "must be true or false")
		}
		e.IsHTML = b
	}
	imp, err := optString(&fields, "Importance")
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

	rr, err := optString(&fields, "ReadReceipt")
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
	if raw, ok := fields.get("DeliveryReceipt"); ok && !isNull(raw) {
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
	if sa, err := optString(&fields, "SendAt"); err != nil {
		return nil, err
	} else if sa != "" {
		t, err := time.Parse(time.RFC3339, sa)
		if err != nil {
			return nil, fieldErr("SendAt", "must be an RFC 3339 time such as 2026-01-02T15:04:05Z")
		}
		e.SendAt = t
	}
	if raw, ok := fields.get("Metadata"); ok {
		if e.Metadata, err = decodeMetadata(raw); err != nil {
			return nil, err
		}
	}

	prio, err := optString(&fields, "Priority")
	if err != nil {
		return nil, err
	}
	if prio != "" {
		// Exactly as the contract spells them (unlike Importance, which
		// follows the connector's capitalised values).
		if !queue.ValidPriority(prio) {
			return nil, fieldErr("Priority", "must be high, normal or bulk (lower case), got %q", prio)
		}
		e.Priority = prio
	}

	if raw, ok := fields.get("Attachments"); ok && !isNull(raw) {
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
	if err := validate(e, lim); err != nil {
		return nil, err
	}
	if err := decodeListUnsubscribe(&fields, e); err != nil {
		return nil, err
	}
	return e, nil
}

// fieldValues holds the members of a decoded object by their known field
// name. An object has at most one member per known field, so a fixed array
// (on the caller's stack) holds them all.
type fieldValues struct {
	n  int
	kv [16]struct {
		name  string
		value json.RawMessage
	}
}

// get returns the value of the field name, if the object has it.
func (f *fieldValues) get(name string) (json.RawMessage, bool) {
	for _, kv := range f.kv[:f.n] {
		if kv.name == name {
			return kv.value, true
		}
	}
	return nil, false
}

func (f *fieldValues) add(name string, value json.RawMessage) {
	f.kv[f.n].name, f.kv[f.n].value = name, value
	f.n++
}

// decodeObject decodes a JSON object into out and maps its keys,
// case-insensitively, to the known field names (at most 16). An unknown
// field is an error: silently dropping a field the caller thought
// meaningful would change their message.
func decodeObject(raw []byte, known map[string]string, prefix string, out *fieldValues) error {
	if len(known) > len(out.kv) {
		panic("producer: decodeObject knows more fields than fieldValues holds")
	}
	trimmed := bytes.TrimSpace(raw)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		if prefix == "" {
			return &FieldError{Code: "invalid_json", Message: "body must be a JSON object"}
		}
		return fieldErr(prefix, "must be a JSON object")
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
	if !validJSON(trimmed) {
		var v any
		return invalid(json.Unmarshal(trimmed, &v)) // for the message
	}
	*out = fieldValues{}
	qualified := func(k string) string { // k as errors name it
		if prefix == "" {
			return k
		}
		return prefix + "." + k
	}
	for m := range members(trimmed) {
		name, ok := knownASCII(known, m)
		key := "" // the key as given; set for an error message
		if !ok {
			key = strings.ToValidUTF8(string(m.key), "\uFFFD")
			if m.escaped {
				var unquoted string
				if err := json.Unmarshal(m.quoted, &unquoted); err != nil {
					return invalid(err)
				}
				key = unquoted
			}
			if name, ok = known[strings.ToLower(key)]; !ok {
				return &FieldError{Field: qualified(key), Code: "unknown_field", Message: fmt.Sprintf("unknown field %q", key)}
			}
		}
		if _, dup := out.get(name); dup {
			if key == "" {
				key = string(m.key)
			}
			return &FieldError{Field: qualified(key), Code: "duplicate_field", Message: fmt.Sprintf("field %s is given twice (names match case-insensitively)", name)}
		}
		// encoding/json would turn both into U+FFFD without a word.
		v := json.RawMessage(m.value)
		if !utf8.Valid(v) {
			return fieldErr(qualified(name), "is not valid UTF-8")
		}
		if hasLoneSurrogate(v) {
			return fieldErr(qualified(name), "has a \\u escape of half a UTF-16 surrogate pair")
		}
		out.add(name, v)
	}
	return nil
}

// knownASCII is the common case of the name lookup in decodeObject: a key
// of ASCII letters without escapes, lower-cased without allocating. ok is
// false for a key it does not find, which the general lookup then decides.
func knownASCII(known map[string]string, m member) (string, bool) {
	var buf [32]byte
	if m.escaped || len(m.key) > len(buf) {
		return "", false
	}
	for i, c := range m.key {
		if c >= utf8.RuneSelf {
			return "", false
		}
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		buf[i] = c
	}
	name, ok := known[string(buf[:len(m.key)])]
	return name, ok
}

// validJSON reports whether b is one JSON value, as json.Valid does (the
// same grammar, the same nesting limit of 10000), four times faster: string
// contents, most of a request, cost a table lookup per byte instead of a
// call of json.Valid's state machine. json.Valid was the largest single
// cost of decoding a request.
func validJSON(b []byte) bool {
	const maxDepth = 10000 // encoding/json's maxNestingDepth
	var stackBuf [64]byte
	stack := stackBuf[:0] // '{' or '[' per open container
	i := skipSpace(b, 0)
	for {
		// A value starts at b[i].
		if i >= len(b) {
			return false
		}
		switch c := b[i]; {
		case c == '{' || c == '[':
			if len(stack) == maxDepth {
				return false
			}
			stack = append(stack, c)
			i = skipSpace(b, i+1)
			if i < len(b) && b[i] == c+2 { // '}' or ']': empty
				stack = stack[:len(stack)-1]
				i++
				break
			}
			if c == '{' {
				if i = validKey(b, i); i < 0 {
					return false
				}
			}
			continue
		case c == '"':
			if i = validString(b, i); i < 0 {
				return false
			}
		case c == '-' || '0' <= c && c <= '9':
			if i = validNumber(b, i); i < 0 {
				return false
			}
		case c == 't':
			if !bytes.HasPrefix(b[i:], []byte("true")) {
				return false
			}
			i += len("true")
		case c == 'f':
			if !bytes.HasPrefix(b[i:], []byte("false")) {
				return false
			}
			i += len("false")
		case c == 'n':
			if !bytes.HasPrefix(b[i:], []byte("null")) {
				return false
			}
			i += len("null")
		default:
			return false
		}
		// After a value: close containers, or a comma and the next value.
		for {
			i = skipSpace(b, i)
			if len(stack) == 0 {
				return i == len(b)
			}
			if i >= len(b) {
				return false
			}
			open := stack[len(stack)-1]
			if b[i] == open+2 {
				stack = stack[:len(stack)-1]
				i++
				continue
			}
			if b[i] != ',' {
				return false
			}
			i = skipSpace(b, i+1)
			if open == '{' {
				if i = validKey(b, i); i < 0 {
					return false
				}
			}
			break
		}
	}
}

// validKey checks `"key" :` at b[i] and returns the index of the value
// after it, or -1.
func validKey(b []byte, i int) int {
	if i >= len(b) || b[i] != '"' {
		return -1
	}
	if i = validString(b, i); i < 0 {
		return -1
	}
	i = skipSpace(b, i)
	if i >= len(b) || b[i] != ':' {
		return -1
	}
	return skipSpace(b, i+1)
}

// stringStop marks the bytes that end a run of plain string content: the
// quote, the backslash and the control characters JSON forbids raw.
var stringStop = func() (t [256]bool) {
	for c := 0; c < 0x20; c++ {
		t[c] = true
	}
	t['"'], t['\\'] = true, true
	return t
}()

// validString checks the string starting at b[i] == '"' and returns the
// index after it, or -1. Like encoding/json, it accepts any byte from 0x20
// up but the quote and the backslash, UTF-8 or not.
func validString(b []byte, i int) int {
	for i++; i < len(b); i++ {
		c := b[i]
		if !stringStop[c] {
			continue
		}
		switch {
		case c == '"':
			return i + 1
		case c < 0x20:
			return -1
		}
		// A backslash escape.
		if i++; i >= len(b) {
			return -1
		}
		switch b[i] {
		case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
		case 'u':
			if hex4(b[i+1:]) < 0 {
				return -1
			}
			i += 4
		default:
			return -1
		}
	}
	return -1
}

// validNumber checks the number starting at b[i] and returns the index
// after it, or -1: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func validNumber(b []byte, i int) int {
	digits := func(i int) int {
		for i < len(b) && '0' <= b[i] && b[i] <= '9' {
			i++
		}
		return i
	}
	if b[i] == '-' {
		i++
	}
	switch {
	case i >= len(b):
		return -1
	case b[i] == '0':
		i++
	case '1' <= b[i] && b[i] <= '9':
		i = digits(i + 1)
	default:
		return -1
	}
	if i < len(b) && b[i] == '.' {
		j := digits(i + 1)
		if j == i+1 {
			return -1
		}
		i = j
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		j := digits(i)
		if j == i {
			return -1
		}
		i = j
	}
	return i
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
// It jumps from quote to quote (bytes.IndexByte) and only looks closer
// when a backslash lies in between.
func skipString(b []byte, i int) (int, bool) {
	escaped := false
	for i++; i < len(b); {
		q := bytes.IndexByte(b[i:], '"')
		if q < 0 {
			return len(b), escaped
		}
		bs := bytes.IndexByte(b[i:i+q], '\\')
		if bs < 0 {
			return i + q + 1, escaped
		}
		escaped = true
		i += bs + 2 // the backslash and the byte it escapes
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

// hex4 reads the 4 hex digits at the start of b (of a \u escape); -1 if
// there are not 4.
func hex4(b []byte) rune {
	if len(b) < 4 {
		return -1
	}
	var r rune
	for _, c := range b[:4] {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c -= 'a' - 10
		case 'A' <= c && c <= 'F':
			c -= 'A' - 10
		default:
			return -1
		}
		r = r<<4 | rune(c)
	}
	return r
}

// hasLoneSurrogate reports a \uD800-\uDFFF escape in JSON text b that is not
// a high half directly followed by a low half.
func hasLoneSurrogate(b []byte) bool {
	at := func(i int) rune { // the \u escape's digits at b[i:]
		if i > len(b) {
			return -1
		}
		return hex4(b[i:])
	}
	for i := 0; i < len(b); i++ {
		bs := bytes.IndexByte(b[i:], '\\')
		if bs < 0 {
			return false
		}
		i += bs + 1 // the escaped byte, so that \\u is skipped whole
		if i >= len(b) || b[i] != 'u' {
			continue
		}
		r := at(i + 1)
		if !utf16.IsSurrogate(r) {
			continue
		}
		if r >= 0xdc00 {
			return true
		}
		if i+6 >= len(b) || b[i+5] != '\\' || b[i+6] != 'u' {
			return true
		}
		if lo := at(i + 7); lo < 0xdc00 || lo > 0xdfff {
			return true
		}
		i += 10
	}
	return false
}

// countRecipients is len(e.Recipients()) without building the list: the
// number of distinct envelope addresses across To, Cc and Bcc.
func countRecipients(e *queue.Email) int {
	var seen [16]string
	if len(e.To)+len(e.Cc)+len(e.Bcc) > len(seen) {
		return len(e.Recipients())
	}
	n := 0
	for _, list := range [][]queue.Address{e.To, e.Cc, e.Bcc} {
		for _, a := range list {
			if !slices.Contains(seen[:n], a.Address) {
				seen[n] = a.Address
				n++
			}
		}
	}
	return n
}

func isNull(raw json.RawMessage) bool { return string(bytes.TrimSpace(raw)) == "null" }

func optString(fields *fieldValues, name string) (string, error) {
	return optStringAt(fields, name, name)
}

func optStringAt(fields *fieldValues, name, label string) (string, error) {
	raw, ok := fields.get(name)
	if !ok || isNull(raw) {
		return "", nil
	}
	if s, ok := stringValue(raw); ok {
		return s, nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", fieldErr(label, "must be a string")
	}
	return s, nil
}

// stringValue returns the value of a JSON string as json.Unmarshal would,
// without its reflection: the common case, text and the usual escapes.
// raw is a value decodeObject checked (valid JSON and UTF-8, no lone
// surrogate). ok is false for anything else, which is left to
// json.Unmarshal: not a string, or a \u escape of a surrogate.
func stringValue(raw json.RawMessage) (string, bool) {
	if len(raw) < 2 || raw[0] != '"' || raw[len(raw)-1] != '"' {
		return "", false
	}
	body := raw[1 : len(raw)-1]
	next := bytes.IndexByte(body, '\\')
	if next < 0 {
		return string(body), true
	}
	var sb strings.Builder
	sb.Grow(len(body))
	for next >= 0 {
		sb.Write(body[:next])
		if next+1 >= len(body) {
			return "", false
		}
		n := 2 // the escape's length
		switch c := body[next+1]; c {
		case '"', '\\', '/':
			sb.WriteByte(c)
		case 'b':
			sb.WriteByte('\b')
		case 'f':
			sb.WriteByte('\f')
		case 'n':
			sb.WriteByte('\n')
		case 'r':
			sb.WriteByte('\r')
		case 't':
			sb.WriteByte('\t')
		case 'u':
			r := hex4(body[next+2:])
			if r < 0 || utf16.IsSurrogate(r) {
				return "", false
			}
			sb.WriteRune(r)
			n = 6
		default:
			return "", false
		}
		body = body[next+n:]
		next = bytes.IndexByte(body, '\\')
	}
	sb.Write(body)
	return sb.String(), true
}

func flexBool(raw json.RawMessage) (bool, error) {
	switch string(raw) { // what json.Unmarshal into a bool would read
	case "true":
		return true, nil
	case "false":
		return false, nil
	}
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
func recipientField(fields *fieldValues, name string) ([]queue.Address, error) {
	raw, ok := fields.get(name)
	if !ok || isNull(raw) {
		return nil, nil
	}
	if s, ok := stringValue(raw); ok {
		return addressList(name, s)
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
	var f fieldValues
	if err := decodeObject(raw, attachmentFields, label, &f); err != nil {
		return a, err
	}
	get := func(name string) (string, error) { return optStringAt(&f, name, label+"."+name) }
	data, err := get("ContentData")
	if err != nil {
		return a, err
	}
	if raw, ok := f.get("ContentData"); !ok || isNull(raw) {
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
	if err := checkUnencoded(label, a); err != nil {
		return a, err
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
