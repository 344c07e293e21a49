package producer

import (
	"context"
	"errors"
	"net/http"

	"github.com/sendq/sendq/events"
	"github.com/sendq/sendq/queue"
)

// EmailEvents is the body of GET /v1/emails/{id}/events.
type EmailEvents struct {
	Events []*events.Event `json:"events"`
}

// EventLog is the body of GET /v1/events.
type EventLog struct {
	Events     []*events.Event `json:"events"`
	NextCursor string          `json:"next_cursor"`
}

// emailEvents answers an email's events, by sequence. Every API key sees
// every email's events, as with the status (sendq has no per-key
// ownership of emails).
func (a *API) emailEvents(w http.ResponseWriter, r *http.Request, _ *APIKey) {
	id := r.PathValue("id")
	if !validID(id) {
		WriteError(w, http.StatusNotFound, "not_found", "id", "no email with this id")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.cfg.RedisTimeout)
	defer cancel()
	evs, err := a.cfg.Events.Email(ctx, id)
	if err != nil {
		a.unavailable(w, err)
		return
	}
	if len(evs) == 0 {
		// No events yet: an email still queued has none; an unknown id
		// is a 404.
		if _, err := a.look.Status(ctx, id); errors.Is(err, queue.ErrNotFound) {
			WriteError(w, http.StatusNotFound, "not_found", "id", "no email with this id")
			return
		} else if err != nil {
			a.unavailable(w, err)
			return
		}
		evs = []*events.Event{}
	}
	WriteJSON(w, http.StatusOK, EmailEvents{Events: evs})
}

// eventLog answers the recent events of every email after a cursor.
func (a *API) eventLog(w http.ResponseWriter, r *http.Request, _ *APIKey) {
	q := r.URL.Query()
	limit, err := intParam(q.Get("limit"), 100, 1, 1000)
	if err != nil {
		WriteError(w, http.StatusBadRequest, "invalid_parameter", "limit", err.Error())
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.cfg.RedisTimeout)
	defer cancel()
	evs, next, err := a.cfg.Events.After(ctx, q.Get("after"), limit)
	switch {
	case errors.Is(err, events.ErrBadCursor):
		WriteError(w, http.StatusBadRequest, "invalid_parameter", "after", "after must be a next_cursor this API returned")
	case err != nil:
		a.unavailable(w, err)
	default:
		WriteJSON(w, http.StatusOK, EventLog{Events: evs, NextCursor: next})
	}
}
