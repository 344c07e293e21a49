package producer

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"

	"github.com/sendq/sendq/suppression"
)

// SuppressionList is the body of GET /v1/suppressions.
type SuppressionList struct {
	Suppressions []suppression.Entry `json:"suppressions"`
	Reason       string              `json:"reason,omitempty"`
	Page         int                 `json:"page"`
	PageSize     int                 `json:"page_size"`
	Total        int                 `json:"total"`
}

// suppressionsOff answers when the list is disabled; true if it did.
func (a *API) suppressionsOff(w http.ResponseWriter) bool {
	if a.cfg.Suppression != nil {
		return false
	}
	WriteError(w, http.StatusNotFound, "suppression_disabled", "", "the suppression list is off on this server (SENDQ_SUPPRESSION=false)")
	return true
}

func (a *API) listSuppressions(w http.ResponseWriter, r *http.Request, _ *APIKey) {
	if a.suppressionsOff(w) {
		return
	}
	q := r.URL.Query()
	reason := q.Get("reason")
	if reason != "" && !suppression.ValidReason(reason) {
		WriteError(w, http.StatusBadRequest, "invalid_parameter", "reason", "reason must be one of "+strings.Join(suppression.Reasons, ", "))
		return
	}
	page, size, ok := pageParams(w, q)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.cfg.RedisTimeout)
	defer cancel()
	p, err := a.cfg.Suppression.List(ctx, reason, page, size)
	if err != nil {
		a.unavailable(w, err)
		return
	}
	WriteJSON(w, http.StatusOK, SuppressionList{Suppressions: p.Entries, Reason: reason, Page: page, PageSize: size, Total: p.Total})
}

// suppressionAddress returns the path's address, validated, or answers 400.
func (a *API) suppressionAddress(w http.ResponseWriter, r *http.Request) (string, bool) {
	raw := r.PathValue("address")
	addr, err := ParseAddress(raw)
	if err != nil || addr.Name != "" {
		msg := "must be a bare email address such as alice@example.com"
		if err != nil {
			msg = err.Error()
		}
		WriteError(w, http.StatusBadRequest, "invalid_parameter", "address", msg)
		return "", false
	}
	return addr.Address, true
}

func (a *API) getSuppression(w http.ResponseWriter, r *http.Request, _ *APIKey) {
	a.onEntry(w, r, a.cfg.Suppression.Get)
}

// putRequest is the optional body of PUT /v1/suppressions/{address}.
type putRequest struct {
	Reason string `json:"reason"`
}

func (a *API) putSuppression(w http.ResponseWriter, r *http.Request, _ *APIKey) {
	if a.suppressionsOff(w) {
		return
	}
	addr, ok := a.suppressionAddress(w, r)
	if !ok {
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 4<<10))
	if err != nil {
		WriteError(w, http.StatusRequestEntityTooLarge, "body_too_large", "", "the body is larger than 4 KiB")
		return
	}
	req := putRequest{Reason: suppression.ReasonManual}
	if len(strings.TrimSpace(string(body))) > 0 {
		if !isJSON(r.Header.Get("Content-Type")) {
			WriteError(w, http.StatusUnsupportedMediaType, "unsupported_media_type", "Content-Type", "Content-Type must be application/json")
			return
		}
		dec := json.NewDecoder(strings.NewReader(string(body)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil || dec.More() {
			WriteError(w, http.StatusBadRequest, "invalid_json", "", `the body must be {"reason": "manual"} or empty`)
			return
		}
		if req.Reason == "" {
			req.Reason = suppression.ReasonManual
		}
		if !suppression.ValidReason(req.Reason) {
			WriteError(w, http.StatusBadRequest, "invalid_field", "reason", "reason must be one of "+strings.Join(suppression.Reasons, ", "))
			return
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.cfg.RedisTimeout)
	defer cancel()
	e := suppression.Entry{Address: addr, Reason: req.Reason, CreatedAt: a.now()}
	created, err := a.cfg.Suppression.Put(ctx, e)
	if err != nil {
		a.unavailable(w, err)
		return
	}
	a.m.SuppressionsAdded.WithLabelValues(req.Reason).Inc()
	e.Address, e.CreatedAt = suppression.Normalize(addr), e.CreatedAt.UTC()
	code := http.StatusOK
	if created {
		code = http.StatusCreated
	}
	WriteJSON(w, code, e)
}

func (a *API) deleteSuppression(w http.ResponseWriter, r *http.Request, _ *APIKey) {
	a.onEntry(w, r, a.cfg.Suppression.Delete)
}

// onEntry runs op on the path's address (GET and DELETE of one entry) and
// answers the entry it returns.
func (a *API) onEntry(w http.ResponseWriter, r *http.Request, op func(context.Context, string) (*suppression.Entry, error)) {
	if a.suppressionsOff(w) {
		return
	}
	addr, ok := a.suppressionAddress(w, r)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.cfg.RedisTimeout)
	defer cancel()
	e, err := op(ctx, addr)
	a.writeEntry(w, e, err)
}

// writeEntry answers one suppression entry, the 404 of an address that is
// not suppressed, or the 503 of a Redis error.
func (a *API) writeEntry(w http.ResponseWriter, e *suppression.Entry, err error) {
	switch {
	case errors.Is(err, suppression.ErrNotFound):
		WriteError(w, http.StatusNotFound, "not_found", "address", "this address is not suppressed")
	case err != nil:
		a.unavailable(w, err)
	default:
		WriteJSON(w, http.StatusOK, e)
	}
}
