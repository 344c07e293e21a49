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
func (a *API) emailEvents(w http.ResponseWriter, r *http.Request, key *APIKey) {
	id := r.PathValue("id")
	if !validID(id) {
		WriteError(w, http.StatusNotFound, "not_found", "id", "no email with this id")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.cfg.RedisTimeout)
	defer cancel()
	scope := a.scope(key)
	evs, err := a.cfg.Events.Email(ctx, id)
	if err != nil {
		a.unavailable(w, err)
		return
	}
	if len(evs) == 0 || scope != "" {
		// No events yet: an email still queued has none; an unknown id,
		// or another key's email, is a 404.
		if _, err := a.look.StatusFor(ctx, id, scope); errors.Is(err, queue.ErrNotFound) {
			WriteError(w, http.StatusNotFound, "not_found", "id", "no email with this id")
			return
		} else if err != nil {
			a.unavailable(w, err)
			return
		}
	}
	if evs == nil {
		evs = []*events.Event{}
	}
	WriteJSON(w, http.StatusOK, EmailEvents{Events: evs})
}

// eventLog answers the recent events of every email after a cursor.
//
// A key that is not an admin key sees the events of its own emails (or its
// tenant's) only: the page is filtered by the owner in each email's
// record, so it may hold fewer than limit events while next_cursor still
// moves past the others.
func (a *API) eventLog(w http.ResponseWriter, r *http.Request, key *APIKey) {
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
		if scope := a.scope(key); scope != "" && len(evs) > 0 {
			ids := make([]string, len(evs))
			for i, ev := range evs {
				ids[i] = ev.Data.EmailID
			}
			owners, err := a.store.Owners(ctx, ids)
			if err != nil {
				a.unavailable(w, err)
				return
			}
			own := evs[:0:0]
			for _, ev := range evs {
				if queue.Owns(scope, owners[ev.Data.EmailID]) {
					own = append(own, ev)
				}
			}
			evs = own
		}
		WriteJSON(w, http.StatusOK, EventLog{Events: evs, NextCursor: next})
	}
}
