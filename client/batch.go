package client

import (
	"context"
	crand "crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
)

// Batch is the body of SendBatch: up to the server's SENDQ_MAX_BATCH
// messages (1,000 by default), each taking every field it leaves empty
// from Defaults.
type Batch struct {
	// Defaults holds the fields the messages share (From, Subject, Body…).
	Defaults Email          `json:"Defaults,omitzero"`
	Messages []BatchMessage `json:"Messages"`
	// Validation is ValidationPermissive (the default: the valid messages
	// are queued, each invalid one reported) or ValidationStrict (nothing
	// is queued when one is invalid).
	Validation string `json:"Validation,omitempty"`
}

// The Validation modes of a batch.
const (
	ValidationPermissive = "permissive"
	ValidationStrict     = "strict"
)

// BatchMessage is one email of a batch: its own fields, and optionally the
// IdempotencyKey a single Send of it would carry, so that the message and
// a later Send with that key are one email.
type BatchMessage struct {
	Email
	IdempotencyKey string `json:"IdempotencyKey,omitempty"`
}

// BatchResult is sendq's answer to a batch: one result per message, in
// their order.
type BatchResult struct {
	BatchID  string         `json:"batch_id"`
	Accepted int            `json:"accepted"`
	Rejected int            `json:"rejected"`
	Results  []BatchOutcome `json:"results"`
}

// BatchOutcome is what became of one message of a batch: an id and its
// status, or the error that kept it out of the queue.
type BatchOutcome struct {
	Index  int        `json:"index"`
	ID     string     `json:"id,omitempty"`
	Status State      `json:"status,omitempty"`
	Error  *ItemError `json:"error,omitempty"`
}

// ItemError says why one message of a batch was not queued; Field names
// it, such as "Messages[3].To".
type ItemError struct {
	Code    string `json:"code"`
	Field   string `json:"field"`
	Message string `json:"message"`
}

// SendBatch queues b through POST /v1/emails/batch. Like Send, it carries
// an Idempotency-Key (generated unless one is given), so a retry after a
// lost answer or a 503 returns the first answer and queues nothing twice.
//
// When sendq queued nothing (every message invalid, or one invalid under
// ValidationStrict) the error is an *APIError with Status 400 and the
// result still says why each message was refused.
func (c *Client) SendBatch(ctx context.Context, b Batch, opts ...SendOption) (*BatchResult, error) {
	var o sendOptions
	for _, opt := range opts {
		opt(&o)
	}
	if o.idemKey == "" {
		o.idemKey = crand.Text()
	}
	body, err := json.Marshal(b)
	if err != nil {
		return nil, fmt.Errorf("sendq client: encode the batch: %w", err)
	}
	var res BatchResult
	_, err = c.do(ctx, http.MethodPost, "/v1/emails/batch", body, o.idemKey, &res)
	var ae *APIError
	if errors.As(err, &ae) && ae.Status == http.StatusBadRequest && ae.raw != nil {
		// Nothing queued: the body is a batch answer, not an error body.
		if json.Unmarshal(ae.raw, &res) == nil && res.Results != nil {
			ae.Code, ae.Message = "batch_rejected", fmt.Sprintf("no message was queued (%d rejected)", res.Rejected)
			return &res, ae
		}
	}
	if err != nil {
		return nil, err
	}
	return &res, nil
}
