package queue

import (
	"errors"
	"fmt"
	"time"

	"github.com/go-json-experiment/json"
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
//
// The payload is Email as github.com/go-json-experiment/json writes it
// with its default options (JSON v2: invalid UTF-8 is an error, not
// replaced; <, > and & are not escaped): the members and formats that
// encoding/json, with which earlier releases read and wrote it, reads as
// the same email. testdata/ keeps payloads of an earlier release.
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
	DeliveryReceipt bool   `json:"delivery_receipt,omitzero"`
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
	ListUnsubscribe bool `json:"list_unsubscribe,omitzero"`
	// Suppressed lists the recipients the intake found on the
	// suppression list: they are never sent to.
	Suppressed []Suppressed `json:"suppressed,omitempty"`
	// Priority is high, normal or bulk (PriorityHigh…); empty (payloads
	// of releases before priorities) is normal.
	Priority string `json:"priority,omitempty"`
	// BatchID is the batch the email came in, if any.
	BatchID string `json:"batch_id,omitempty"`

	// Text, with an HTML Body, is the text/plain alternative the sender
	// gave (a template with both Html and Text): the message is
	// multipart/alternative with it instead of a text derived from the
	// HTML. A worker of an earlier release ignores it (an unknown member)
	// and sends the HTML with its own derived text, so the payload
	// version stays 1.
	Text string `json:"text,omitempty"`
	// Template and TemplateVersion name the template version Subject,
	// Body and Text were rendered from at intake (the email carries the
	// rendered result: a template changed or deleted later does not
	// change it).
	Template        string `json:"template,omitempty"`
	TemplateVersion int    `json:"template_version,omitzero"`

	// SharedAttachments, when set, is the Redis key of the attachments
	// the email shares with others of its batch, kept once
	// (Store.Share) instead of in every payload; Attachments is then
	// empty until the worker loads them (Store.LoadShared).
	SharedAttachments string `json:"shared_attachments,omitempty"`
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
	b, err := json.Marshal(e)
	if err != nil {
		return nil, fmt.Errorf("queue: encode email: %w", err)
	}
	opts = append([]asynq.Option{asynq.TaskID(e.ID), asynq.Queue(t.Pick(e.PriorityOrNormal(), e.ID))}, opts...)
	return asynq.NewTask(TypeSendEmail, b, opts...), nil
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
