package producer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
)

// The Logic Apps SMTP connector's operations, as routes of sendq: a Logic
// App (or anything built for the connector) posts the body it gave the
// connector to the operation it used, and gets sendq's 202. Each version
// takes exactly the fields the connector's own definition gives it; a
// field the version does not have is a 400 naming it, where /v1/emails
// takes the union of all three and sendq's extensions.

// connectorVersion is one of the connector's Send Email operations.
type connectorVersion struct {
	op          string            // the operation id and the route's last segment
	schema      string            // the connector's name for the body
	fields      map[string]string // body fields by lower-case name
	attachment  map[string]string // attachment fields by lower-case name
	required    []string          // attachment fields that must be given
	lacks       map[string]string // why a union field is not here, by lower-case name
	attachments string            // the connector's name for an attachment
}

var (
	connectorV1 = &connectorVersion{
		op: "SendEmail", schema: "Email", attachments: "Attachment",
		fields:     fieldSet("From", "To", "CC", "Bcc", "Subject", "Body", "IsHtml", "Importance", "ReadReceipt", "DeliveryReceipt", "Attachments"),
		attachment: fieldSet("FileName", "ContentId", "ContentData", "ContentType", "ContentTransferEncoding"),
		required:   []string{"ContentData", "ContentType", "ContentTransferEncoding"},
		lacks:      map[string]string{"sendat": "SendAt is a sendq extension: use POST /v1/emails for it"},
	}
	connectorV2 = &connectorVersion{
		op: "SendEmailV2", schema: "EmailV2", attachments: "AttachmentV2",
		fields:     connectorV1.fields,
		attachment: fieldSet("FileName", "ContentId", "ContentData", "ContentType"),
		required:   []string{"ContentData", "ContentType"},
		lacks: map[string]string{
			"sendat":                  connectorV1.lacks["sendat"],
			"contenttransferencoding": "AttachmentV2 has no ContentTransferEncoding: ContentData is base64 (use SendEmail for content as is)",
		},
	}
	connectorV3 = &connectorVersion{
		op: "SendEmailV3", schema: "EmailV3", attachments: "AttachmentV2",
		fields:     fieldSet("From", "To", "CC", "Bcc", "Subject", "Body", "Importance", "ReadReceipt", "DeliveryReceipt", "Attachments"),
		attachment: connectorV2.attachment,
		required:   connectorV2.required,
		lacks: map[string]string{
			"sendat":                  connectorV1.lacks["sendat"],
			"contenttransferencoding": connectorV2.lacks["contenttransferencoding"],
			"ishtml":                  "EmailV3 has no IsHtml: its Body is HTML (use SendEmail or SendEmailV2 for plain text)",
		},
	}
	// connectorVersions lists the operations in the connector's order.
	connectorVersions = []*connectorVersion{connectorV1, connectorV2, connectorV3}
)

// ConnectorOperations are the connector's operations sendq serves, as the
// last path segment of their routes: POST /SendEmail, /SendEmailV2,
// /SendEmailV3 and GET /TestConnection.
var ConnectorOperations = []string{"SendEmail", "SendEmailV2", "SendEmailV3", "TestConnection"}

func fieldSet(names ...string) map[string]string {
	m := make(map[string]string, len(names))
	for _, n := range names {
		m[strings.ToLower(n)] = n
	}
	return m
}

// registerConnector adds the connector's routes to mux. Under one leading
// path segment (/{connectionId}/SendEmailV3) they are served through
// ConnectorPaths.
func (a *API) registerConnector(mux *http.ServeMux) {
	for _, v := range connectorVersions {
		mux.Handle("POST /"+v.op, a.authorized(a.connectorSend(v)))
	}
	mux.Handle("GET /TestConnection", a.authorized(a.testConnection))
}

// ConnectorPaths serves the connector's operations under one leading path
// segment too, the shape of the connector's own definition
// (/{connectionId}/SendEmailV3): such a request is handed to next as
// /SendEmailV3, whatever the segment says. As a ServeMux does, it sets
// r.Pattern to the pattern that served the request, so metrics name the
// route. Wrap the mux that API.Register filled with it: a ServeMux cannot
// hold /{connectionId}/SendEmailV3 beside a subtree such as /ui/ (the two
// patterns conflict on /ui/SendEmailV3).
func ConnectorPaths(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		op, ok := connectorPath(r.URL.Path)
		if !ok {
			next.ServeHTTP(w, r)
			return
		}
		r2 := new(http.Request)
		*r2 = *r
		u := *r.URL
		u.Path, u.RawPath = "/"+op, ""
		r2.URL = &u
		next.ServeHTTP(w, r2)
		r.Pattern = r2.Pattern
	})
}

// connectorPath reports whether path is /{segment}/{operation} for one of
// ConnectorOperations, and which.
func connectorPath(path string) (string, bool) {
	seg, op, ok := strings.Cut(strings.TrimPrefix(path, "/"), "/")
	if !ok || seg == "" || !strings.HasPrefix(path, "/") {
		return "", false
	}
	for _, o := range ConnectorOperations {
		if op == o {
			return op, true
		}
	}
	return "", false
}

// connectorSend checks that the body has only the fields of version v,
// then serves it as POST /v1/emails does.
func (a *API) connectorSend(v *connectorVersion) func(http.ResponseWriter, *http.Request, *APIKey) {
	return func(w http.ResponseWriter, r *http.Request, key *APIKey) {
		// The checks of send, in its order, before the body is read here.
		if !isJSON(r.Header.Get("Content-Type")) {
			WriteError(w, http.StatusUnsupportedMediaType, "unsupported_media_type", "Content-Type", "Content-Type must be application/json or text/json")
			return
		}
		body, err := readBody(http.MaxBytesReader(w, r.Body, a.cfg.MaxBodyBytes), r.ContentLength)
		if err != nil {
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				WriteError(w, http.StatusRequestEntityTooLarge, "body_too_large", "", fmt.Sprintf("body is larger than %d bytes", a.cfg.MaxBodyBytes))
				return
			}
			WriteError(w, http.StatusBadRequest, "invalid_body", "", "could not read the body")
			return
		}
		if fe := v.check(body); fe != nil {
			WriteError(w, http.StatusBadRequest, fe.Code, fe.Field, fe.Message)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.ContentLength = int64(len(body))
		a.send(w, r, key)
	}
}

// check reports the first field of body that version v does not have, an
// attachment field v requires that is missing, and a DeliveryReceipt that
// is not an address. A body that is not a JSON object, or an Attachments
// that is not an array of objects, passes: DecodeRequest then says what is
// wrong with it, as it does on /v1/emails. Names match case-insensitively,
// as everywhere in sendq.
func (v *connectorVersion) check(body []byte) *FieldError {
	var top map[string]json.RawMessage
	if json.Unmarshal(body, &top) != nil {
		return nil
	}
	var attachments json.RawMessage
	for _, k := range sortedKeys(top) {
		lk := strings.ToLower(k)
		name, ok := v.fields[lk]
		if !ok {
			return v.unknown(k, k, lk)
		}
		switch name {
		case "Attachments":
			attachments = top[k]
		case "DeliveryReceipt":
			if fe := connectorAddress(name, top[k]); fe != nil {
				return fe
			}
		}
	}
	var items []map[string]json.RawMessage
	if attachments == nil || json.Unmarshal(attachments, &items) != nil {
		return nil
	}
	for i, item := range items {
		label := fmt.Sprintf("Attachments[%d]", i)
		given := make(map[string]bool, len(item))
		for _, k := range sortedKeys(item) {
			lk := strings.ToLower(k)
			name, ok := v.attachment[lk]
			if !ok {
				return v.unknown(label+"."+k, k, lk)
			}
			if !isNull(item[k]) {
				given[name] = true
			}
		}
		for _, name := range v.required {
			if !given[name] {
				return &FieldError{Field: label + "." + name, Code: "missing_field",
					Message: fmt.Sprintf("%s is required in the connector's %s (%s)", name, v.attachments, v.op)}
			}
		}
	}
	return nil
}

func (v *connectorVersion) unknown(field, key, lower string) *FieldError {
	msg := fmt.Sprintf("unknown field %q: the connector's %s (%s) has no such field", key, v.schema, v.op)
	if why, ok := v.lacks[lower]; ok {
		msg = fmt.Sprintf("unknown field %q: %s", key, why)
	}
	return &FieldError{Field: field, Code: "unknown_field", Message: msg}
}

// connectorAddress checks a field the connector types as an address
// (format email): a string, and not the true or false that /v1/emails also
// takes for DeliveryReceipt.
func connectorAddress(name string, raw json.RawMessage) *FieldError {
	if isNull(raw) {
		return nil
	}
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return fieldErr(name, "must be an email address (the connector's %s is one; true/false is only taken by POST /v1/emails)", name)
	}
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "true", "false":
		return fieldErr(name, "must be an email address (the connector's %s is one; true/false is only taken by POST /v1/emails)", name)
	}
	return nil
}

// sortedKeys returns m's keys in byte order, so that of two faults the
// same one is reported every time.
func sortedKeys(m map[string]json.RawMessage) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// Connection is the body of GET /TestConnection.
type Connection struct {
	Status string `json:"status"`
}

// testConnection answers 200 when the caller's key is valid (authorized
// checked it) and Redis answers: what a Logic App's connection test asks.
func (a *API) testConnection(w http.ResponseWriter, r *http.Request, _ *APIKey) {
	if a.rdb == nil {
		a.unavailable(w, errors.New("no Redis client"))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.cfg.RedisTimeout)
	defer cancel()
	if err := a.rdb.Ping(ctx).Err(); err != nil {
		a.unavailable(w, err)
		return
	}
	WriteJSON(w, http.StatusOK, Connection{Status: "ok"})
}

// isNull reports whether raw is JSON null: null counts as absent, as in
// DecodeRequest.
func isNull(raw json.RawMessage) bool { return string(bytes.TrimSpace(raw)) == "null" }
