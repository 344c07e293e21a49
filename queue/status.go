package queue

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/hibiken/asynq"
)

// Email states, as the status API shows them.
const (
	StatusQueued    = "queued"
	StatusScheduled = "scheduled"
	StatusSending   = "sending"
	StatusRetrying  = "retrying"
	StatusSent      = "sent"
	StatusFailed    = "failed"
	StatusCanceled  = "canceled"
)

// RecipientStatus is one recipient in the status body.
type RecipientStatus struct {
	Address      string    `json:"address"`
	Kind         string    `json:"kind"` // to, cc or bcc
	Status       string    `json:"status"`
	Code         int       `json:"code,omitempty"`
	EnhancedCode string    `json:"enhanced_code,omitempty"`
	Message      string    `json:"message,omitempty"`
	Relay        string    `json:"relay,omitempty"` // the relay that gave the reply (accepted it, when sent)
	UpdatedAt    time.Time `json:"updated_at,omitzero"`
	// Reason is why a suppressed recipient is on the suppression list.
	Reason string `json:"reason,omitempty"`
}

// EmailStatus is the body of GET /v1/emails/{id}.
type EmailStatus struct {
	ID            string            `json:"id"`
	Status        string            `json:"status"`
	Attempts      int               `json:"attempts"`
	MaxAttempts   int               `json:"max_attempts"`
	LastError     string            `json:"last_error"`
	FailureReason string            `json:"failure_reason,omitempty"`
	CreatedAt     time.Time         `json:"created_at"`
	SentAt        *time.Time        `json:"sent_at"`
	NextAttemptAt *time.Time        `json:"next_attempt_at,omitempty"`
	Subject       string            `json:"subject"`
	Recipients    []RecipientStatus `json:"recipients"`
	// Priority is high, normal or bulk.
	Priority string `json:"priority,omitempty"`
	// BatchID is the batch the email came in (POST /v1/emails/batch).
	BatchID string `json:"batch_id,omitempty"`
	// Queue is the asynq queue that holds the task; never shown.
	Queue string `json:"-"`
	// Owner is the email's owner (Email.Owner); never shown.
	Owner string `json:"-"`
	// Metadata is the send's own string pairs, while the queue holds
	// the email (events carry them too).
	Metadata map[string]string `json:"metadata,omitempty"`
}

// ErrNotFound is returned when neither asynq nor sendq knows an email.
var ErrNotFound = errors.New("email not found")

// Lookup answers status queries from asynq's task state and sendq's record.
type Lookup struct {
	Inspector *asynq.Inspector
	Store     *Store
	// Topology names the queues; nil is DefaultTopology.
	Topology *Topology
}

// FindTask returns the task of email id from whichever of its candidate
// queues (Topology.Candidates) holds it, or asynq.ErrTaskNotFound.
func FindTask(insp *asynq.Inspector, t *Topology, id string) (*asynq.TaskInfo, error) {
	for _, q := range t.Candidates(id) {
		info, err := insp.GetTaskInfo(q, id)
		if errors.Is(err, asynq.ErrTaskNotFound) || errors.Is(err, asynq.ErrQueueNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		return info, nil
	}
	return nil, asynq.ErrTaskNotFound
}

// Status returns the status of email id, or ErrNotFound.
func (l *Lookup) Status(ctx context.Context, id string) (*EmailStatus, error) {
	return l.StatusFor(ctx, id, "")
}

// StatusFor is Status for one owner: the email of another owner (or of
// none) is ErrNotFound, as if it did not exist. An empty owner is every
// owner.
func (l *Lookup) StatusFor(ctx context.Context, id, owner string) (*EmailStatus, error) {
	rec, rerr := l.Store.Get(ctx, id)
	if rerr != nil && !errors.Is(rerr, ErrNoRecord) {
		return nil, rerr
	}
	var info *asynq.TaskInfo
	if rec == nil || rec.Chunk == "" {
		// Held by its own task (a single send, or an email that left its
		// chunk), or by none: asynq's task says where it stands. The
		// record is read again after it: the worker writes the record
		// before the task moves on, so a task seen finished comes with
		// the record that finished it.
		var err error
		info, err = FindTask(l.Inspector, l.Topology, id)
		if err != nil && !errors.Is(err, asynq.ErrTaskNotFound) {
			return nil, fmt.Errorf("get task: %w", err)
		}
		if err != nil {
			info = nil
		}
		rec, rerr = l.Store.Get(ctx, id)
		if rerr != nil && !errors.Is(rerr, ErrNoRecord) {
			return nil, rerr
		}
	}
	if info == nil && rec == nil {
		return nil, ErrNotFound
	}
	st, err := Compose(id, info, rec)
	if err != nil {
		return nil, err
	}
	if !Owns(owner, st.Owner) {
		return nil, ErrNotFound
	}
	return st, nil
}

// Compose builds the status body from asynq's task info (nil once asynq has
// forgotten the task) and sendq's record (nil before the first attempt).
func Compose(id string, info *asynq.TaskInfo, rec *Record) (*EmailStatus, error) {
	if rec == nil {
		rec = &Record{Recipients: map[string]RecipientResult{}}
	}
	st := &EmailStatus{ID: id, CreatedAt: rec.CreatedAt, Attempts: rec.Attempts, LastError: rec.LastError, FailureReason: rec.Reason, Owner: rec.Owner,
		Priority: rec.Priority, BatchID: rec.BatchID}
	if st.Priority == "" {
		st.Priority = PriorityNormal
	}
	if !rec.SentAt.IsZero() {
		t := rec.SentAt
		st.SentAt = &t
	}
	var held *Email
	if info == nil && rec.Payload != nil {
		held, _ = DecodeEmail(rec.Payload) // unreadable: the record alone, below
	}
	if held != nil {
		// A chunk holds the email (or held it): its record has its
		// payload (beside it) and its state.
		e := held
		st.Status = rec.State
		if st.Status == StatusRetrying && rec.Chunk == "" {
			// Left its chunk, and its own task is gone (retention over).
			st.Status = StatusFailed
		}
		st.CreatedAt, st.Subject, st.Owner, st.Metadata = e.CreatedAt, e.Subject, e.Owner, e.Metadata
		st.Priority, st.BatchID = e.PriorityOrNormal(), e.BatchID
		st.MaxAttempts = rec.MaxAttempts
		if st.Status == StatusScheduled {
			st.NextAttemptAt = timePtr(e.SendAt)
		}
		st.Recipients = emailRecipients(e, rec)
		return st, nil
	}
	if info == nil {
		// asynq no longer holds the task (retention over, or canceled):
		// the record is all there is.
		st.Status = rec.State
		if st.Status == StatusSending || st.Status == StatusRetrying || st.Status == "" {
			st.Status = StatusFailed
		}
		st.Recipients = recordRecipients(rec)
		return st, nil
	}
	e, err := DecodeEmail(info.Payload)
	if err != nil {
		return nil, err
	}
	if !rec.CreatedAt.IsZero() && !rec.CreatedAt.Equal(e.CreatedAt) {
		// The record belongs to an earlier email with the same id (an
		// Idempotency-Key reused after that one was forgotten).
		rec = &Record{Recipients: map[string]RecipientResult{}}
		st.Attempts, st.LastError, st.FailureReason, st.SentAt = 0, "", "", nil
	}
	st.CreatedAt, st.Subject, st.Owner, st.Metadata = e.CreatedAt, e.Subject, e.Owner, e.Metadata
	st.Priority, st.BatchID, st.Queue = e.PriorityOrNormal(), e.BatchID, info.Queue
	st.MaxAttempts = info.MaxRetry + 1
	if st.LastError == "" {
		st.LastError = info.LastErr
	}
	switch info.State {
	case asynq.TaskStatePending:
		st.Status = StatusQueued
	case asynq.TaskStateScheduled:
		st.Status = StatusScheduled
		st.NextAttemptAt = timePtr(info.NextProcessAt)
	case asynq.TaskStateActive:
		st.Status = StatusSending
	case asynq.TaskStateRetry:
		st.Status = StatusRetrying
		st.NextAttemptAt = timePtr(info.NextProcessAt)
	case asynq.TaskStateCompleted:
		st.Status = StatusSent
	case asynq.TaskStateArchived:
		st.Status = StatusFailed
		if rec.State == StatusCanceled {
			st.Status = StatusCanceled
		}
	default:
		st.Status = StatusQueued
	}
	if st.Status == StatusFailed && st.FailureReason == "" {
		// sendq's worker writes the reason whenever it fails an email.
		// Without one, asynq archived the task by itself: after its
		// attempts ran out with the worker dying each time (a lost lease
		// counts as a failed attempt, and leaves an error), or on request
		// from outside sendq (asynq's CLI or web UI), maybe before any
		// attempt.
		st.FailureReason = ReasonArchived
		if info.Retried >= info.MaxRetry && info.LastErr != "" {
			st.FailureReason = ReasonTransient
		}
	}
	st.Recipients = emailRecipients(e, rec)
	return st, nil
}

// emailRecipients are e's recipients, To, Cc then Bcc, each with its
// result in rec (pending if none).
func emailRecipients(e *Email, rec *Record) []RecipientStatus {
	var out []RecipientStatus
	for _, kind := range []struct {
		name string
		list []Address
	}{{"to", e.To}, {"cc", e.Cc}, {"bcc", e.Bcc}} {
		for _, a := range kind.list {
			rs := RecipientStatus{Address: a.Address, Kind: kind.name, Status: RecipientPending}
			if r, ok := rec.Recipients[a.Address]; ok {
				rs.Status, rs.UpdatedAt, rs.Reason = r.Status, r.UpdatedAt, r.Reason
				rs.Code, rs.EnhancedCode, rs.Message = r.Reply.Code, r.Reply.EnhancedCode, r.Reply.Message
				rs.Relay = r.Relay
			} else if why, ok := e.SuppressedReason(a.Address); ok {
				rs.Status, rs.Reason = RecipientSuppressed, why // found so at intake
			}
			out = append(out, rs)
		}
	}
	return out
}

func recordRecipients(rec *Record) []RecipientStatus {
	out := make([]RecipientStatus, 0, len(rec.Recipients))
	for addr, r := range rec.Recipients {
		out = append(out, RecipientStatus{
			Address: addr, Status: r.Status, UpdatedAt: r.UpdatedAt, Reason: r.Reason,
			Code: r.Reply.Code, EnhancedCode: r.Reply.EnhancedCode, Message: r.Reply.Message,
			Relay: r.Relay,
		})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Address < out[j].Address })
	return out
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}
