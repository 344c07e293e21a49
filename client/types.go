package client

import (
	"fmt"
	"time"
)

// Email is the body of a send: the Logic Apps SMTP connector's Send Email
// fields, with their names. Addresses are "user@example.com" or
// "Name <user@example.com>"; To, CC and Bcc hold one or more separated by
// ";". At least one recipient is needed across To, CC and Bcc.
type Email struct {
	// From is the sender; empty: the server's SENDQ_DEFAULT_FROM.
	From string `json:"From,omitempty"`
	To   string `json:"To,omitempty"`
	CC   string `json:"CC,omitempty"`
	Bcc  string `json:"Bcc,omitempty"`
	// Subject has no control characters.
	Subject string `json:"Subject,omitempty"`
	Body    string `json:"Body,omitempty"`
	// IsHtml says whether Body is HTML. Nil: HTML, as sendq's default
	// (and the connector's V3) has it; use Bool(false) for plain text.
	IsHtml     *bool      `json:"IsHtml,omitempty"`
	Importance Importance `json:"Importance,omitempty"`
	// ReadReceipt is an address that asks for a read receipt.
	ReadReceipt string `json:"ReadReceipt,omitempty"`
	// DeliveryReceipt is an address that receives the relay's delivery
	// status notifications.
	DeliveryReceipt string       `json:"DeliveryReceipt,omitempty"`
	Attachments     []Attachment `json:"Attachments,omitempty"`
	// SendAt holds the email until then (a sendq extension); zero: now.
	SendAt time.Time `json:"SendAt,omitzero"`
	// Priority is "high", "normal" or "bulk" (a sendq extension); empty:
	// normal for Send, bulk for a batch's messages.
	Priority string `json:"Priority,omitempty"`
	// Template names a stored template (PutTemplate) that makes Subject
	// and Body from TemplateData at intake; leave Subject, Body and
	// IsHtml empty with it. A sendq extension.
	Template string `json:"Template,omitempty"`
	// TemplateVersion pins a version of Template; zero: the current one.
	TemplateVersion int `json:"TemplateVersion,omitempty"`
	// TemplateData holds the template's variables. A variable the
	// template uses and TemplateData lacks is an *APIError with Code
	// missing_variable. In a batch, the defaults' and a message's are
	// merged key by key, the message's winning.
	TemplateData map[string]any `json:"TemplateData,omitempty"`
}

// Attachment is a file sent with an email, as the connector's attachments
// are named.
type Attachment struct {
	// ContentData is the content itself; it is sent base64-encoded.
	ContentData []byte `json:"ContentData"`
	// ContentType such as "application/pdf"; empty: guessed from FileName.
	ContentType string `json:"ContentType,omitempty"`
	// FileName is required: a plain name without path separators.
	FileName string `json:"FileName"`
	// ContentId makes the attachment inline: an HTML Body shows it with
	// <img src="cid:ContentId">.
	ContentId string `json:"ContentId,omitempty"`
}

// Importance is an email's importance.
type Importance string

// The connector's importance values.
const (
	ImportanceNormal Importance = "Normal"
	ImportanceLow    Importance = "Low"
	ImportanceHigh   Importance = "High"
)

// Bool returns a pointer to b, for Email.IsHtml.
func Bool(b bool) *bool { return &b }

// Accepted is sendq's answer to a send: the email is stored in its queue.
type Accepted struct {
	// ID names the email in Status, Wait and Cancel.
	ID string `json:"id"`
	// Status is StateQueued, or StateScheduled for a SendAt in the future.
	Status State `json:"status"`
}

// State is an email's delivery state.
type State string

// The states of an email. Sent, Failed and Canceled are final.
const (
	StateQueued    State = "queued"    // waiting for a worker
	StateScheduled State = "scheduled" // held until its SendAt
	StateSending   State = "sending"   // a worker is delivering it
	StateRetrying  State = "retrying"  // some recipients were deferred; tried again at NextAttemptAt
	StateSent      State = "sent"      // every recipient was sent to
	StateFailed    State = "failed"    // at least one recipient failed for good (see FailureReason)
	StateCanceled  State = "canceled"  // canceled through the API
)

// Final reports whether s is a state an email does not leave by itself.
func (s State) Final() bool {
	return s == StateSent || s == StateFailed || s == StateCanceled
}

// EmailStatus is an email's delivery status.
type EmailStatus struct {
	ID          string `json:"id"`
	Status      State  `json:"status"`
	Attempts    int    `json:"attempts"`
	MaxAttempts int    `json:"max_attempts"`
	// LastError is the last SMTP error, such as "451 4.7.1 try again later".
	LastError string `json:"last_error"`
	// FailureReason says why the email is failed or canceled: permanent,
	// transient, expired, canceled or invalid.
	FailureReason string      `json:"failure_reason,omitempty"`
	CreatedAt     time.Time   `json:"created_at"`
	SentAt        *time.Time  `json:"sent_at"`
	NextAttemptAt *time.Time  `json:"next_attempt_at,omitempty"`
	Subject       string      `json:"subject"`
	Recipients    []Recipient `json:"recipients"`
}

// Recipient is one recipient's outcome.
type Recipient struct {
	Address string `json:"address"`
	// Kind is "to", "cc" or "bcc".
	Kind string `json:"kind"`
	// Status is pending, sent, deferred (tried again later) or failed.
	Status string `json:"status"`
	// Code, EnhancedCode and Message are the SMTP server's last reply
	// for this recipient, such as 550, "5.1.1", "no such user".
	Code         int       `json:"code,omitempty"`
	EnhancedCode string    `json:"enhanced_code,omitempty"`
	Message      string    `json:"message,omitempty"`
	UpdatedAt    time.Time `json:"updated_at,omitzero"`
}

// APIError is an answer of sendq other than success: its HTTP status and
// the error it named. Check for it with errors.As.
type APIError struct {
	// Status is the HTTP status code, such as 400.
	Status int
	// Code is sendq's machine-readable code, such as "invalid_field".
	Code string
	// Field names the field, parameter or header at fault, if one is.
	Field string
	// Message says what went wrong, for people.
	Message string

	raw []byte // the answer's body, for SendBatch
}

func (e *APIError) Error() string {
	s := fmt.Sprintf("sendq: %d %s", e.Status, e.Code)
	if e.Field != "" {
		s += " (" + e.Field + ")"
	}
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

// Temporary reports whether the same request may succeed later: sendq
// was over a rate limit (429) or could not reach its queue (503), or a
// proxy in front of it failed (502, 504). The client retries these itself.
func (e *APIError) Temporary() bool { return retryableStatus(e.Status) }
