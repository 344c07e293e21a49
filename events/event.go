package events

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/sendq/sendq/queue"
)

// Event types: one event per change of one recipient.
const (
	TypeSent         = "email.sent"         // the relay answered 250 to the message for the recipient
	TypeDeferred     = "email.deferred"     // a transient failure (4xx, network); a retry is scheduled
	TypeFailed       = "email.failed"       // a permanent failure, or attempts or time ran out
	TypeBounced      = "email.bounced"      // an asynchronous bounce after a 250
	TypeDelivered    = "email.delivered"    // a success DSN, only when one was asked for
	TypeComplained   = "email.complained"   // the recipient reported the message as spam
	TypeSuppressed   = "email.suppressed"   // not sent: the address is on the suppression list
	TypeUnsubscribed = "email.unsubscribed" // the recipient unsubscribed
	TypeCanceled     = "email.canceled"     // the email was canceled before the recipient was settled
)

// Types lists every event type.
var Types = []string{TypeSent, TypeDeferred, TypeFailed, TypeBounced, TypeDelivered,
	TypeComplained, TypeSuppressed, TypeUnsubscribed, TypeCanceled}

// StatusCanceled is the recipient status an email.canceled event carries.
const StatusCanceled = "canceled"

// Event is one change of one recipient of one email. The webhook body is
// Type, Timestamp and Data (Body); the API shows ID too, which is the
// webhook-id header of every delivery of the event.
type Event struct {
	ID        string    `json:"id"`
	Type      string    `json:"type"`
	Timestamp time.Time `json:"timestamp"`
	Data      Data      `json:"data"`
}

// Data is the event's subject and what happened to it.
type Data struct {
	EmailID string `json:"email_id"`
	// BatchID is the batch the email came in; empty for a single send.
	BatchID   string `json:"batch_id,omitempty"`
	Recipient string `json:"recipient"`
	// Status is the recipient's status after the change: sent, deferred,
	// failed, canceled, or the state the other event types name (bounced,
	// delivered, complained, suppressed, unsubscribed).
	Status  string `json:"status"`
	Attempt int    `json:"attempt"`
	// Sequence increases with every event of the email, from 1: a consumer
	// keeps the highest it has seen per email and drops older ones.
	// Assigned when the event is stored.
	Sequence     int64             `json:"sequence"`
	Code         int               `json:"code,omitempty"`
	EnhancedCode string            `json:"enhanced_code,omitempty"`
	Message      string            `json:"message,omitempty"`
	Metadata     map[string]string `json:"metadata,omitempty"`
}

// New returns an event of type typ that happened at at, with a new id.
// Its Sequence is assigned when it is stored (Log.Emit, Log.Prepare).
func New(typ string, at time.Time, d Data) *Event {
	return &Event{ID: "evt_" + strings.ReplaceAll(uuid.Must(uuid.NewV7()).String(), "-", ""),
		Type: typ, Timestamp: at.UTC(), Data: d}
}

// About returns the Data of an event about recipient of e: the email's
// id, batch and metadata, and the recipient's status and last reply.
func About(e *queue.Email, recipient, status string, attempt int, r queue.Reply) Data {
	return Data{EmailID: e.ID, BatchID: e.BatchID, Recipient: recipient, Status: status, Attempt: attempt,
		Code: r.Code, EnhancedCode: r.EnhancedCode, Message: r.Message, Metadata: e.Metadata}
}

// FromAttempt returns the events of one delivery attempt of e: one for every
// recipient whose result the attempt recorded (sent, deferred or failed),
// in the order of e's recipients.
func FromAttempt(e *queue.Email, attempt int, results map[string]queue.RecipientResult) []*Event {
	var out []*Event
	for _, r := range e.Recipients() {
		res, ok := results[r]
		if !ok {
			continue
		}
		var typ string
		switch res.Status {
		case queue.RecipientSent:
			typ = TypeSent
		case queue.RecipientDeferred:
			typ = TypeDeferred
		case queue.RecipientFailed:
			typ = TypeFailed
		default:
			continue
		}
		out = append(out, New(typ, res.UpdatedAt, About(e, r, res.Status, attempt, res.Reply)))
	}
	return out
}

// Canceled returns the email.canceled events of e, canceled at at: one for
// every recipient rec has not settled (sent or failed).
func Canceled(e *queue.Email, rec *queue.Record, at time.Time) []*Event {
	var out []*Event
	attempts := 0
	if rec != nil {
		attempts = rec.Attempts
	}
	for _, r := range e.Recipients() {
		if rec != nil {
			if st, ok := rec.Recipients[r]; ok && (st.Status == queue.RecipientSent || st.Status == queue.RecipientFailed) {
				continue
			}
		}
		out = append(out, New(TypeCanceled, at, About(e, r, StatusCanceled, attempts, queue.Reply{})))
	}
	return out
}

// body is what a webhook delivers: the event without its id, which
// travels as the webhook-id header.
type body struct {
	Type      string    `json:"type"`
	Timestamp time.Time `json:"timestamp"`
	Data      Data      `json:"data"`
}

// Body returns the webhook body of ev, the bytes that are signed: the
// same for every delivery of the event.
func (ev *Event) Body() ([]byte, error) {
	b, err := json.Marshal(body{Type: ev.Type, Timestamp: ev.Timestamp, Data: ev.Data})
	if err != nil {
		return nil, fmt.Errorf("encode event %s: %w", ev.ID, err)
	}
	return b, nil
}
