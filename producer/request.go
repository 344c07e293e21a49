package producer

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"mime"
	"path"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
	jsonv1 "github.com/go-json-experiment/json/v1"

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

// request is the Send Email body: the union of the SMTP connector's V1, V2
// and V3 bodies, plus SendAt. Member names match case-insensitively
// (`case:ignore`, with '-' and '_' significant, as strings.EqualFold), an
// unknown member or one given twice is refused, and so are invalid UTF-8
// and a \u escape of half a surrogate pair: see requestOptions.
//
// Every field is a pointer or a slice, nil when the member is absent or
// null, so that presence is known: a batch's defaults and its messages
// can share this type, a message's member replacing the default's. The
// Go field names are the member names errors use; a field needs no json
// name of its own.
type request struct {
	From            *string              `json:",case:ignore"`
	To              *addressField        `json:",case:ignore"`
	CC              *addressField        `json:",case:ignore"`
	Bcc             *addressField        `json:",case:ignore"`
	Subject         *string              `json:",case:ignore"`
	Body            *string              `json:",case:ignore"`
	IsHtml          *flexBool            `json:",case:ignore"`
	Importance      *string              `json:",case:ignore"`
	Attachments     []*requestAttachment `json:",case:ignore"`
	ReadReceipt     *string              `json:",case:ignore"`
	DeliveryReceipt *receiptField        `json:",case:ignore"`
	SendAt          *string              `json:",case:ignore"`
	Priority        *string              `json:",case:ignore"`
	// Metadata is kept raw: decodeMetadata says what is wrong with it
	// pair by pair (metadata.go).
	Metadata        jsontext.Value `json:",case:ignore"`
	ListUnsubscribe *flexBool      `json:",case:ignore"` // unsubscribe.go
	// Template names a stored template that makes Subject and Body from
	// TemplateData, at TemplateVersion (default: the current one). See
	// template.go. TemplateData is kept raw: a batch merges its defaults'
	// and its message's key by key.
	Template        *string        `json:",case:ignore"`
	TemplateVersion *int           `json:",case:ignore"`
	TemplateData    jsontext.Value `json:",case:ignore"`
}

// requestAttachment is one member of Attachments.
type requestAttachment struct {
	ContentData             *string `json:",case:ignore"`
	ContentType             *string `json:",case:ignore"`
	ContentTransferEncoding *string `json:",case:ignore"`
	FileName                *string `json:",case:ignore"`
	ContentId               *string `json:",case:ignore"`
}

// requestOptions are the rules of the body beyond the struct tags. JSON v2
// already refuses duplicate names (also names that differ only in case,
// under `case:ignore`), invalid UTF-8 and lone surrogates by default.
var requestOptions = json.JoinOptions(
	// Silently dropping a member the caller thought meaningful would change
	// their message.
	json.RejectUnknownMembers(true),
	// `case:ignore` alone would also ignore '-' and '_' ("Is_Html"):
	// an unknown member to the connector, so a 400 here too.
	jsonv1.MatchCaseSensitiveDelimiter(true),
)

// addressField is To, CC or Bcc: a string of addresses separated by ';'
// or ',', or a JSON array of such strings (a null in it is an empty
// string, as encoding/json read it).
type addressField []string

func (f *addressField) UnmarshalJSONFrom(dec *jsontext.Decoder) error {
	const msg = "must be a string of addresses separated by ';' or an array of strings"
	tok, err := dec.ReadToken()
	if err != nil {
		return err
	}
	switch tok.Kind() {
	case '"':
		*f = addressField{tok.String()}
		return nil
	case '[':
		list := addressField{}
		for {
			switch dec.PeekKind() {
			case ']':
				_, err := dec.ReadToken()
				*f = list
				return err
			case 'n':
				if _, err := dec.ReadToken(); err != nil {
					return err
				}
			case '"', 0: // 0: the next read says what is wrong
				tok, err := dec.ReadToken()
				if err != nil {
					return err
				}
				list = append(list, tok.String())
			default:
				return errors.New(msg)
			}
		}
	}
	return errors.New(msg)
}

// flexBool is IsHtml: true or false, or the same as a string in any case
// (what a Logic Apps expression often gives).
type flexBool bool

func (b *flexBool) UnmarshalJSONFrom(dec *jsontext.Decoder) error {
	tok, err := dec.ReadToken()
	if err != nil {
		return err
	}
	v, ok := boolToken(tok)
	if !ok {
		return errors.New("must be true or false")
	}
	*b = flexBool(v)
	return nil
}

// boolToken reads true and false, also as strings in any case.
func boolToken(tok jsontext.Token) (v, ok bool) {
	switch tok.Kind() {
	case 't', 'f':
		return tok.Bool(), true
	case '"':
		switch strings.ToLower(strings.TrimSpace(tok.String())) {
		case "true":
			return true, true
		case "false":
			return false, true
		}
	}
	return false, false
}

// receiptField is DeliveryReceipt: true or false (or the strings), or the
// address that receives the delivery status notifications.
type receiptField struct {
	On      bool
	Address string // as given, when not a boolean
}

func (r *receiptField) UnmarshalJSONFrom(dec *jsontext.Decoder) error {
	tok, err := dec.ReadToken()
	if err != nil {
		return err
	}
	if v, ok := boolToken(tok); ok {
		*r = receiptField{On: v}
		return nil
	}
	if tok.Kind() != '"' {
		return errors.New("must be an email address or true/false")
	}
	*r = receiptField{Address: tok.String()}
	return nil
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
//
// A body naming a Template is refused here (unknown_template): only the
// API, which reads the stored templates, renders one.
func DecodeRequest(body []byte, lim Limits) (*queue.Email, error) {
	r, err := decodeRequest(body)
	if err != nil {
		return nil, err
	}
	return r.emailFrom(lim, nil)
}

// decodeRequest decodes body as the rules of request and requestOptions
// say; every error is a *FieldError.
func decodeRequest(body []byte) (*request, error) {
	// Unicode white space around the object (a form feed, a no-break
	// space) has always been accepted, not only JSON's four.
	body = bytes.TrimSpace(body)
	var r *request
	if err := json.Unmarshal(body, &r, requestOptions); err != nil {
		return nil, decodeError(body, err)
	}
	if r == nil {
		return nil, &FieldError{Code: "invalid_json", Message: "body must be a JSON object"}
	}
	return r, nil
}

// email checks every field of r and builds the email it asks for.
func (r *request) email(lim Limits) (*queue.Email, error) {
	if lim.MaxRecipients <= 0 {
		lim.MaxRecipients = 100
	}
	e := &queue.Email{IsHTML: true, Importance: queue.ImportanceNormal}

	fromRaw := deref(r.From)
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
		list *addressField
		dst  *[]queue.Address
	}{{"To", r.To, &e.To}, {"CC", r.CC, &e.Cc}, {"Bcc", r.Bcc, &e.Bcc}} {
		if f.list == nil {
			continue
		}
		for _, s := range *f.list {
			list, err := addressList(f.name, s)
			if err != nil {
				return nil, err
			}
			*f.dst = append(*f.dst, list...)
		}
	}
	n := countRecipients(e)
	if n == 0 {
		return nil, &FieldError{Field: "To", Code: "missing_field", Message: "at least one recipient is required in To, CC or Bcc"}
	}
	if n > lim.MaxRecipients {
		return nil, fieldErr("To", "%d recipients across To, CC and Bcc; the limit is %d", n, lim.MaxRecipients)
	}

	e.Subject = deref(r.Subject)
	if hasControl(e.Subject) {
		return nil, fieldErr("Subject", "must not contain control characters (CR, LF, NUL, tab)")
	}
	if longestWord(e.Subject) > maxHeaderWord {
		return nil, fieldErr("Subject", "has a word of more than %d characters without a space; a mail header line cannot carry it (RFC 5322 limits lines to 998)", maxHeaderWord)
	}
	e.Body = deref(r.Body)
	if strings.ContainsRune(e.Body, 0) {
		return nil, fieldErr("Body", "must not contain NUL characters")
	}
	if r.IsHtml != nil {
		e.IsHTML = bool(*r.IsHtml)
	}
	imp := deref(r.Importance)
	switch strings.ToLower(strings.TrimSpace(imp)) {
	case "", "normal":
	case "high":
		e.Importance = queue.ImportanceHigh
	case "low":
		e.Importance = queue.ImportanceLow
	default:
		return nil, fieldErr("Importance", "must be High, Normal or Low, got %q", imp)
	}

	if rr := strings.TrimSpace(deref(r.ReadReceipt)); rr != "" {
		a, err := ParseAddress(rr)
		if err != nil {
			return nil, fieldErr("ReadReceipt", "%v", err)
		}
		e.ReadReceipt = a.Address
	}
	if dr := r.DeliveryReceipt; dr != nil {
		e.DeliveryReceipt = dr.On
		if s := strings.TrimSpace(dr.Address); s != "" {
			a, err := ParseAddress(s)
			if err != nil {
				return nil, fieldErr("DeliveryReceipt", "%v", err)
			}
			e.DeliveryReceipt = true
			if !strings.EqualFold(a.Address, e.From.Address) {
				e.ReturnPath = a.Address
			}
		}
	}
	if sa := deref(r.SendAt); sa != "" {
		t, err := time.Parse(time.RFC3339, sa)
		if err != nil {
			return nil, fieldErr("SendAt", "must be an RFC 3339 time such as 2026-01-02T15:04:05Z")
		}
		e.SendAt = t
	}
	var err error
	if e.Metadata, err = decodeMetadata(r.Metadata); err != nil {
		return nil, err
	}
	if prio := deref(r.Priority); prio != "" {
		// Exactly as the contract spells them (unlike Importance, which
		// follows the connector's capitalised values).
		if !queue.ValidPriority(prio) {
			return nil, fieldErr("Priority", "must be high, normal or bulk (lower case), got %q", prio)
		}
		e.Priority = prio
	}

	for i, ra := range r.Attachments {
		label := fmt.Sprintf("Attachments[%d]", i)
		if ra == nil {
			return nil, fieldErr(label, "must be a JSON object")
		}
		a, err := ra.attachment(label)
		if err != nil {
			return nil, err
		}
		e.Attachments = append(e.Attachments, a)
	}
	if err := validate(e, lim); err != nil {
		return nil, err
	}
	if err := decodeListUnsubscribe(r.ListUnsubscribe, e); err != nil {
		return nil, err
	}
	return e, nil
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// decodeError is the *FieldError for err, the error of decoding body.
// It names the member at fault as Attachments[2].ContentData.
func decodeError(body []byte, err error) *FieldError {
	// Bad JSON anywhere is a fault of the body itself, whatever else is
	// wrong with it. JSON v2 reports the first fault it meets, so it is
	// asked once more, ignoring what is not the grammar.
	lenient := json.JoinOptions(jsontext.AllowInvalidUTF8(true), jsontext.AllowDuplicateNames(true))
	if !jsontext.Value(body).IsValid(lenient) {
		// For the message: the first fault of the grammar.
		if serr := json.Unmarshal(body, new(jsontext.Value), lenient); serr != nil {
			err = serr
		}
		return &FieldError{Code: "invalid_json", Message: "body is not valid JSON: " + strings.TrimPrefix(err.Error(), "jsontext: ")}
	}
	var syn *jsontext.SyntacticError
	var sem *json.SemanticError
	switch {
	case errors.As(err, &syn) && syn.Err == jsontext.ErrDuplicateName:
		canonical := fieldPath(syn.JSONPointer, false)
		canonical = canonical[strings.LastIndexAny(canonical, ".]")+1:]
		return &FieldError{Field: fieldPath(syn.JSONPointer, true), Code: "duplicate_field",
			Message: fmt.Sprintf("field %s is given twice (names match case-insensitively)", canonical)}
	case errors.As(err, &syn):
		// Valid JSON but for its text: invalid UTF-8, or half a surrogate
		// pair, which encoding/json would have turned into U+FFFD without
		// a word. It names the member of the body that holds it.
		top, ok := firstToken(syn.JSONPointer)
		if !ok {
			// In a member name: read leniently, the name is unknown.
			var r request
			if lerr := json.Unmarshal(body, &r, requestOptions, jsontext.AllowInvalidUTF8(true)); lerr != nil && !errors.As(lerr, &syn) {
				return decodeError(body, lerr)
			}
			return &FieldError{Code: "invalid_json", Message: "body is not valid Unicode text: " + strings.TrimPrefix(err.Error(), "jsontext: ")}
		}
		return fieldErr(fieldPath(jsontext.Pointer("").AppendToken(top), false), "is not valid Unicode text: %v", syn.Err)
	case errors.As(err, &sem) && sem.JSONPointer == "":
		return &FieldError{Code: "invalid_json", Message: "body must be a JSON object"}
	case errors.As(err, &sem) && sem.Err == json.ErrUnknownName:
		name := sem.JSONPointer.LastToken()
		return &FieldError{Field: fieldPath(sem.JSONPointer, true), Code: "unknown_field", Message: fmt.Sprintf("unknown field %q", name)}
	case errors.As(err, &sem):
		field := fieldPath(sem.JSONPointer, false)
		if sem.Err != nil { // from addressField, flexBool or receiptField
			return fieldErr(field, "%v", sem.Err)
		}
		switch sem.GoType {
		case reflect.TypeFor[string]():
			return fieldErr(field, "must be a string")
		case reflect.TypeFor[[]*requestAttachment]():
			return fieldErr(field, "must be an array of objects")
		case reflect.TypeFor[requestAttachment]():
			return fieldErr(field, "must be a JSON object")
		case reflect.TypeFor[int]():
			return fieldErr(field, "must be a whole number")
		}
		return fieldErr(field, "must not be a JSON %s", sem.JSONKind)
	}
	return &FieldError{Code: "invalid_json", Message: "body is not valid JSON: " + err.Error()}
}

// firstToken is the first reference token of p: the member of the body
// it is in.
func firstToken(p jsontext.Pointer) (string, bool) {
	for tok := range p.Tokens() {
		return tok, true
	}
	return "", false
}

// fieldPath names the member p points to in a request as errors do:
// Attachments[2].ContentData. Names of request's fields take the Go
// field's spelling; asGiven keeps the last name as the body spelled it
// (an unknown member, or the second of a duplicate).
func fieldPath(p jsontext.Pointer, asGiven bool) string {
	tokens := slices.Collect(p.Tokens())
	var b strings.Builder
	t := reflect.TypeFor[request]()
	for i, tok := range tokens {
		for t != nil && t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		if t == reflect.TypeFor[jsontext.Value]() {
			t = nil // a raw member (Metadata): its names follow a '.'
		}
		if t != nil && t.Kind() == reflect.Slice {
			b.WriteString("[" + tok + "]")
			t = t.Elem()
			continue
		}
		name := tok
		var next reflect.Type
		if t != nil && t.Kind() == reflect.Struct {
			for f := range t.Fields() {
				if strings.EqualFold(f.Name, tok) {
					name, next = f.Name, f.Type
					break
				}
			}
		}
		if asGiven && i == len(tokens)-1 {
			name = tok
		}
		if b.Len() > 0 {
			b.WriteByte('.')
		}
		b.WriteString(name)
		t = next
	}
	return b.String()
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

// attachment checks a and decodes its content; label names it in errors
// (Attachments[2]).
func (a *requestAttachment) attachment(label string) (queue.Attachment, error) {
	var out queue.Attachment
	if a.ContentData == nil {
		return out, &FieldError{Field: label + ".ContentData", Code: "missing_field", Message: "ContentData is required"}
	}
	data := *a.ContentData
	enc := deref(a.ContentTransferEncoding)
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
			return out, fieldErr(label+".ContentData", "is not valid base64 (ContentTransferEncoding is base64)")
		}
		out.Data = b
	case "none":
		out.Data = []byte(data)
	default:
		return out, fieldErr(label+".ContentTransferEncoding", "must be base64 or none, got %q", enc)
	}
	out.FileName = deref(a.FileName)
	if strings.TrimSpace(out.FileName) == "" {
		return out, &FieldError{Field: label + ".FileName", Code: "missing_field", Message: "FileName is required"}
	}
	// go-mail writes " : < > ? | as '_', so they are refused rather than
	// silently changed.
	if hasControl(out.FileName) || strings.ContainsAny(out.FileName, `/\":<>?|`) || out.FileName == "." || out.FileName == ".." ||
		path.Base(out.FileName) != out.FileName || len(out.FileName) > 255 {
		return out, fieldErr(label+".FileName", `must be a plain file name without path separators, control characters or any of " : < > ? |`)
	}
	out.ContentType = deref(a.ContentType)
	if out.ContentType != "" {
		if hasControl(out.ContentType) {
			return out, fieldErr(label+".ContentType", "must not contain control characters")
		}
		mt, params, err := mime.ParseMediaType(out.ContentType)
		if err != nil || !strings.Contains(mt, "/") {
			return out, fieldErr(label+".ContentType", "%q is not a media type such as application/pdf", out.ContentType)
		}
		out.ContentType = mime.FormatMediaType(mt, params)
	}
	if err := checkUnencoded(label, out); err != nil {
		return out, err
	}
	out.ContentID = strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(deref(a.ContentId)), "<"), ">")
	if out.ContentID != "" {
		if hasControl(out.ContentID) || strings.ContainsAny(out.ContentID, "<>\" ()[]\\,;:") || len(out.ContentID) > 250 {
			return out, fieldErr(label+".ContentId", "must be an id such as logo@example or logo.png, without spaces, quotes or angle brackets")
		}
	}
	return out, nil
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
