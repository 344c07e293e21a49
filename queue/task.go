package queue

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/hibiken/asynq"
)

// TypeSendEmail is the asynq task type of one email to deliver.
const TypeSendEmail = "email:send"

// Name is the asynq queue that holds emails.
const Name = "emails"

// PayloadVersion is the version of the Email payload this build writes.
// DecodeEmail accepts this version only; a newer worker must keep reading
// every version an older API may still have queued.
const PayloadVersion = 1

// Importance values of an email, as the SMTP connector names them.
const (
	ImportanceNormal = "normal"
	ImportanceHigh   = "high"
	ImportanceLow    = "low"
)

// Address is a parsed mailbox: an optional display name and an address.
type Address struct {
	Name    string `json:"name,omitempty"`
	Address string `json:"address"`
}

// Attachment is one decoded attachment or inline part.
type Attachment struct {
	FileName    string `json:"file_name"`
	ContentType string `json:"content_type,omitempty"`
	// ContentID, when set, makes the part inline (Content-ID: <id>) so that
	// an HTML body can refer to it as cid:id.
	ContentID string `json:"content_id,omitempty"`
	Data      []byte `json:"data"`
}

// Email is the task payload: a validated email, ready to be built into a
// MIME message. Every field was checked by the intake; the worker trusts it.
type Email struct {
	V         int       `json:"v"`
	ID        string    `json:"id"`
	CreatedAt time.Time `json:"created_at"`

	From Address   `json:"from"`
	To   []Address `json:"to,omitempty"`
	Cc   []Address `json:"cc,omitempty"`
	Bcc  []Address `json:"bcc,omitempty"`

	Subject    string `json:"subject,omitempty"`
	Body       string `json:"body,omitempty"`
	IsHTML     bool   `json:"is_html"`
	Importance string `json:"importance,omitempty"`

	// ReadReceipt is the address for Disposition-Notification-To.
	ReadReceipt string `json:"read_receipt,omitempty"`
	// DeliveryReceipt asks the relay for RFC 3461 delivery status
	// notifications; ReturnPath, when set, is the envelope sender that
	// receives them (otherwise From).
	DeliveryReceipt bool   `json:"delivery_receipt,omitempty"`
	ReturnPath      string `json:"return_path,omitempty"`

	Attachments []Attachment `json:"attachments,omitempty"`

	// SendAt, when set, holds the email until then (a sendq extension).
	SendAt time.Time `json:"send_at,omitzero"`

	// BodyHash is the SHA-256 of the request body when the request carried
	// an Idempotency-Key: a repeat with the same key must have the same body.
	BodyHash string `json:"body_hash,omitempty"`

	// Owner names who may see and change the email: the id of the API key
	// that sent it ("key:" and the key's id, never the key) or its tenant
	// ("tenant:" and the name). Empty when the intake had no keys.
	Owner string `json:"owner,omitempty"`
	// Metadata is the caller's own string pairs (at most 10), echoed in
	// the status body and in every event of the email.
	Metadata map[string]string `json:"metadata,omitempty"`

	// ListUnsubscribe asks for RFC 8058 one-click unsubscribe headers
	// (List-Unsubscribe, List-Unsubscribe-Post); the email then has
	// exactly one recipient.
	ListUnsubscribe bool `json:"list_unsubscribe,omitempty"`
	// Suppressed lists the recipients the intake found on the
	// suppression list: they are never sent to.
	Suppressed []Suppressed `json:"suppressed,omitempty"`
	// Priority is high, normal or bulk (PriorityHigh…); empty (payloads
	// of releases before priorities) is normal.
	Priority string `json:"priority,omitempty"`
	// BatchID is the batch the email came in, if any.
	BatchID string `json:"batch_id,omitempty"`
}

// Suppressed is a recipient the intake found suppressed, and why.
type Suppressed struct {
	Address string `json:"address"`
	Reason  string `json:"reason"`
}

// SuppressedReason returns why the intake found addr suppressed, if it did.
func (e *Email) SuppressedReason(addr string) (string, bool) {
	for _, s := range e.Suppressed {
		if s.Address == addr {
			return s.Reason, true
		}
	}
	return "", false
}

// PriorityOrNormal is e's priority, normal when unset.
func (e *Email) PriorityOrNormal() string {
	if e.Priority == "" {
		return PriorityNormal
	}
	return e.Priority
}

// Recipients returns every envelope recipient (To, then Cc, then Bcc) once,
// in order of first appearance.
func (e *Email) Recipients() []string {
	seen := make(map[string]bool)
	var out []string
	for _, list := range [][]Address{e.To, e.Cc, e.Bcc} {
		for _, a := range list {
			if !seen[a.Address] {
				seen[a.Address] = true
				out = append(out, a.Address)
			}
		}
	}
	return out
}

// EnvelopeFrom is the MAIL FROM address.
func (e *Email) EnvelopeFrom() string {
	if e.ReturnPath != "" {
		return e.ReturnPath
	}
	return e.From.Address
}

// NewTask returns the asynq task for e, on its queue in DefaultTopology.
// The task id is the email id, so asynq itself refuses a second task for
// the same email in the same queue.
func NewTask(e *Email, opts ...asynq.Option) (*asynq.Task, error) {
	return DefaultTopology.NewTask(e, opts...)
}

// NewTask returns the asynq task for e on its queue in t (Pick).
func (t *Topology) NewTask(e *Email, opts ...asynq.Option) (*asynq.Task, error) {
	if e.ID == "" {
		return nil, errors.New("queue: email has no id")
	}
	e.V = PayloadVersion
	b, ok := appendEmail(make([]byte, 0, encodedSize(e)), e)
	if !ok {
		// A time encoding/json refuses: let it say why.
		var err error
		if b, err = json.Marshal(e); err != nil {
			return nil, fmt.Errorf("queue: encode email: %w", err)
		}
	}
	opts = append([]asynq.Option{asynq.TaskID(e.ID), asynq.Queue(t.Pick(e.PriorityOrNormal(), e.ID))}, opts...)
	return asynq.NewTask(TypeSendEmail, b, opts...), nil
}

// The payload is written by hand, field by field in the order of Email:
// encoding/json's reflection made NewTask cost more than twice as much.
// The bytes are exactly those json.Marshal(e) writes (HTML-safe string
// escapes, RFC 3339 times, base64 data, the same omitempty and omitzero
// fields), so every payload is still format v1 as DecodeEmail reads it.

// The conversions below stop the build when Email, Address or Attachment
// gains, loses or changes a field, until appendEmail and these copies
// follow. (They cannot see a changed json tag.)
var (
	_ = struct {
		V                       int
		ID                      string
		CreatedAt               time.Time
		From                    Address
		To, Cc, Bcc             []Address
		Subject, Body           string
		IsHTML                  bool
		Importance, ReadReceipt string
		DeliveryReceipt         bool
		ReturnPath              string
		Attachments             []Attachment
		SendAt                  time.Time
		BodyHash                string
		Owner                   string
		Metadata                map[string]string
		ListUnsubscribe         bool
		Suppressed              []Suppressed
		Priority, BatchID       string
	}(Email{})
	_ = struct{ Name, Address string }(Address{})
	_ = struct{ Address, Reason string }(Suppressed{})
	_ = struct {
		FileName, ContentType, ContentID string
		Data                             []byte
	}(Attachment{})
)

// encodedSize is the length of e's payload when no string needs an
// escape (the usual email), so that appendEmail allocates once.
func encodedSize(e *Email) int {
	opt := func(key, s string) int {
		if s == "" {
			return 0
		}
		return len(`,"":""`) + len(key) + len(s)
	}
	addr := func(a Address) int {
		return len(`{"address":""}`) + len(a.Address) + opt("name", a.Name)
	}
	list := func(key string, l []Address) int {
		if len(l) == 0 {
			return 0
		}
		n := len(`,"":[]`) + len(key) + len(l) - 1
		for _, a := range l {
			n += addr(a)
		}
		return n
	}
	const timeLen = len(`""`) + len(time.RFC3339Nano)
	n := len(`{"v":,"id":"","created_at":,"from":,"is_html":false}`) + len(strconv.Itoa(e.V)) + len(e.ID) + timeLen +
		addr(e.From) + list("to", e.To) + list("cc", e.Cc) + list("bcc", e.Bcc) +
		opt("subject", e.Subject) + opt("body", e.Body) + opt("importance", e.Importance) +
		opt("read_receipt", e.ReadReceipt) + len(`,"delivery_receipt":true`) + opt("return_path", e.ReturnPath) +
		opt("body_hash", e.BodyHash) + opt("owner", e.Owner) + opt("priority", e.Priority) + opt("batch_id", e.BatchID)
	if len(e.Metadata) > 0 {
		n += len(`,"metadata":{}`) + len(e.Metadata) - 1
		for k, v := range e.Metadata {
			n += len(`"":""`) + len(k) + len(v)
		}
	}
	if !e.SendAt.IsZero() {
		n += len(`,"send_at":`) + timeLen
	}
	if e.ListUnsubscribe {
		n += len(`,"list_unsubscribe":true`)
	}
	if len(e.Suppressed) > 0 {
		n += len(`,"suppressed":[]`) + len(e.Suppressed) - 1
		for _, s := range e.Suppressed {
			n += len(`{"address":"","reason":""}`) + len(s.Address) + len(s.Reason)
		}
	}
	if len(e.Attachments) > 0 {
		n += len(`,"attachments":[]`) + len(e.Attachments) - 1
		for _, a := range e.Attachments {
			n += len(`{"file_name":"","data":""}`) + len(a.FileName) + opt("content_type", a.ContentType) +
				opt("content_id", a.ContentID) + base64.StdEncoding.EncodedLen(len(a.Data))
		}
	}
	return n
}

// appendEmail appends json.Marshal(e) to b. ok is false when a time is
// outside what RFC 3339 can write, which json.Marshal refuses.
func appendEmail(b []byte, e *Email) (_ []byte, ok bool) {
	b = append(b, `{"v":`...)
	b = strconv.AppendInt(b, int64(e.V), 10)
	b = append(b, `,"id":`...)
	b = appendString(b, e.ID)
	b = append(b, `,"created_at":`...)
	if b, ok = appendTime(b, e.CreatedAt); !ok {
		return b, false
	}
	b = append(b, `,"from":`...)
	b = appendAddress(b, e.From)
	b = appendAddresses(b, `,"to":`, e.To)
	b = appendAddresses(b, `,"cc":`, e.Cc)
	b = appendAddresses(b, `,"bcc":`, e.Bcc)
	b = appendOptString(b, `,"subject":`, e.Subject)
	b = appendOptString(b, `,"body":`, e.Body)
	b = append(b, `,"is_html":`...)
	b = strconv.AppendBool(b, e.IsHTML)
	b = appendOptString(b, `,"importance":`, e.Importance)
	b = appendOptString(b, `,"read_receipt":`, e.ReadReceipt)
	if e.DeliveryReceipt {
		b = append(b, `,"delivery_receipt":true`...)
	}
	b = appendOptString(b, `,"return_path":`, e.ReturnPath)
	if len(e.Attachments) > 0 {
		b = append(b, `,"attachments":[`...)
		for i, a := range e.Attachments {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"file_name":`...)
			b = appendString(b, a.FileName)
			b = appendOptString(b, `,"content_type":`, a.ContentType)
			b = appendOptString(b, `,"content_id":`, a.ContentID)
			b = append(b, `,"data":`...)
			if a.Data == nil {
				b = append(b, "null"...)
			} else {
				b = append(b, '"')
				b = base64.StdEncoding.AppendEncode(b, a.Data)
				b = append(b, '"')
			}
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	if !e.SendAt.IsZero() {
		b = append(b, `,"send_at":`...)
		if b, ok = appendTime(b, e.SendAt); !ok {
			return b, false
		}
	}
	b = appendOptString(b, `,"body_hash":`, e.BodyHash)
	b = appendOptString(b, `,"owner":`, e.Owner)
	if len(e.Metadata) > 0 {
		// Keys sorted, as encoding/json writes a map.
		b = append(b, `,"metadata":{`...)
		for i, k := range slices.Sorted(maps.Keys(e.Metadata)) {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, k)
			b = append(b, ':')
			b = appendString(b, e.Metadata[k])
		}
		b = append(b, '}')
	}
	if e.ListUnsubscribe {
		b = append(b, `,"list_unsubscribe":true`...)
	}
	if len(e.Suppressed) > 0 {
		b = append(b, `,"suppressed":[`...)
		for i, s := range e.Suppressed {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"address":`...)
			b = appendString(b, s.Address)
			b = append(b, `,"reason":`...)
			b = appendString(b, s.Reason)
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	b = appendOptString(b, `,"priority":`, e.Priority)
	b = appendOptString(b, `,"batch_id":`, e.BatchID)
	return append(b, '}'), true
}

func appendAddress(b []byte, a Address) []byte {
	b = append(b, '{')
	if a.Name != "" {
		b = append(b, `"name":`...)
		b = appendString(b, a.Name)
		b = append(b, ',')
	}
	b = append(b, `"address":`...)
	b = appendString(b, a.Address)
	return append(b, '}')
}

func appendAddresses(b []byte, key string, list []Address) []byte {
	if len(list) == 0 {
		return b
	}
	b = append(b, key...)
	b = append(b, '[')
	for i, a := range list {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendAddress(b, a)
	}
	return append(b, ']')
}

func appendOptString(b []byte, key, s string) []byte {
	if s == "" {
		return b
	}
	return appendString(append(b, key...), s)
}

// appendTime writes t as time.Time.MarshalJSON does; ok is false where
// MarshalJSON fails (a year outside 0-9999, a zone offset of 24 hours or
// more).
func appendTime(b []byte, t time.Time) ([]byte, bool) {
	b = append(b, '"')
	n0 := len(b)
	b = t.AppendFormat(b, time.RFC3339Nano)
	if len(b)-n0 < len("9999-") || b[n0+len("9999")] != '-' {
		return b, false
	}
	if b[len(b)-1] != 'Z' {
		c := b[len(b)-len("Z07:00")]
		hh := b[len(b)-len("07:00"):]
		if '0' <= c && c <= '9' || 10*(hh[0]-'0')+(hh[1]-'0') >= 24 {
			return b, false
		}
	}
	return append(b, '"'), true
}

const hexDigits = "0123456789abcdef"

// jsonSafe holds the ASCII bytes encoding/json writes as they are (with
// its default HTML escaping: not <, > or &).
var jsonSafe = func() (t [utf8.RuneSelf]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = !strings.ContainsRune(`"\<>&`, rune(c))
	}
	return t
}()

// appendString writes s as a JSON string exactly as encoding/json does.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if jsonSafe[c] {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '\\', '"':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// DecodeEmail decodes a task payload written by NewTask.
func DecodeEmail(payload []byte) (*Email, error) {
	var e Email
	if err := json.Unmarshal(payload, &e); err != nil {
		return nil, fmt.Errorf("queue: decode email: %w", err)
	}
	if e.V != PayloadVersion {
		return nil, fmt.Errorf("queue: unsupported payload version %d", e.V)
	}
	if e.ID == "" {
		return nil, errors.New("queue: payload has no id")
	}
	return &e, nil
}
