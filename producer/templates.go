package producer

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"

	"github.com/sendq/sendq/templates"
)

// TemplateSaved is the body of PUT /v1/templates/{name}, and one
// template of GET /v1/templates.
type TemplateSaved struct {
	Name      string    `json:"name"`
	Version   int       `json:"version"`
	CreatedAt time.Time `json:"created_at"`
}

// TemplateList is the body of GET /v1/templates.
type TemplateList struct {
	Templates []TemplateSaved `json:"templates"`
}

// TemplateBody is the body of GET /v1/templates/{name} and of one of its
// versions.
type TemplateBody struct {
	Name      string    `json:"name"`
	Version   int       `json:"version"`
	CreatedAt time.Time `json:"created_at"`
	Subject   string    `json:"subject"`
	Html      string    `json:"html"`
	Text      string    `json:"text"`
}

// TemplateRendered is the body of the render routes' 200: html or text
// empty when the template has no such part. Version is absent for a
// draft.
type TemplateRendered struct {
	Version int    `json:"version,omitempty"`
	Subject string `json:"subject"`
	Html    string `json:"html"`
	Text    string `json:"text"`
}

// TemplateDeleted is the body of DELETE /v1/templates/{name}.
type TemplateDeleted struct {
	Name    string `json:"name"`
	Deleted bool   `json:"deleted"`
}

// templateRequest is the body of PUT /v1/templates/{name} and of POST
// /v1/templates/render (which adds TemplateData), decoded with the rules
// of a send (requestOptions).
type templateRequest struct {
	Subject      *string        `json:",case:ignore"`
	Html         *string        `json:",case:ignore"`
	Text         *string        `json:",case:ignore"`
	TemplateData jsontext.Value `json:",case:ignore"`
}

// renderRequest is the body of POST /v1/templates/{name}/render.
type renderRequest struct {
	TemplateData    jsontext.Value `json:",case:ignore"`
	TemplateVersion *int           `json:",case:ignore"`
}

func (a *API) registerTemplates(mux *http.ServeMux) {
	mux.Handle("GET /v1/templates", a.authorized(a.listTemplates))
	mux.Handle("POST /v1/templates/render", a.authorized(a.renderDraft))
	mux.Handle("PUT /v1/templates/{name}", a.authorized(a.putTemplate))
	mux.Handle("GET /v1/templates/{name}", a.authorized(a.getTemplate))
	mux.Handle("DELETE /v1/templates/{name}", a.authorized(a.deleteTemplate))
	mux.Handle("GET /v1/templates/{name}/versions/{n}", a.authorized(a.getTemplate))
	mux.Handle("POST /v1/templates/{name}/render", a.authorized(a.renderTemplate))
}

// readJSON reads a small JSON body into v with the rules of a send; false
// answered the 4xx.
func (a *API) readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	if !isJSON(r.Header.Get("Content-Type")) {
		WriteError(w, http.StatusUnsupportedMediaType, "unsupported_media_type", "Content-Type", "Content-Type must be application/json or text/json")
		return false
	}
	if r.ContentLength > a.cfg.MaxBodyBytes {
		a.tooLarge(w)
		return false
	}
	body, err := readBody(http.MaxBytesReader(w, r.Body, a.cfg.MaxBodyBytes), r.ContentLength)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			a.tooLarge(w)
		} else {
			WriteError(w, http.StatusBadRequest, "invalid_body", "", "could not read the body")
		}
		return false
	}
	if err := jsonv2.Unmarshal(body, v, requestOptions); err != nil {
		fe := templateDecodeError(body, err)
		WriteError(w, http.StatusBadRequest, fe.Code, fe.Field, fe.Message)
		return false
	}
	return true
}

// templateDecodeError names the member at fault as decodeError does for
// a send.
func templateDecodeError(body []byte, err error) *FieldError {
	fe := decodeError(body, err)
	if fe.Code == "invalid_json" && fe.Message == "body must be a JSON object" {
		return fe
	}
	var sem *jsonv2.SemanticError
	if errors.As(err, &sem) && sem.Err == nil && sem.JSONPointer != "" {
		field, _ := firstToken(sem.JSONPointer)
		return fieldErr(field, "must not be a JSON %s", sem.JSONKind)
	}
	return fe
}

// templateName is the path's name, or a 404 answered.
func templateName(w http.ResponseWriter, r *http.Request) (string, bool) {
	name := r.PathValue("name")
	if !templates.ValidName(name) {
		WriteError(w, http.StatusNotFound, "not_found", "name", "no template with this name (names are [a-z0-9][a-z0-9._-]{0,63})")
		return "", false
	}
	return name, true
}

// parseFault is the 400 of a template that does not parse.
func parseFault(w http.ResponseWriter, err error) bool {
	var pe *templates.ParseError
	if !errors.As(err, &pe) {
		return false
	}
	WriteError(w, http.StatusBadRequest, "invalid_template", pe.Part, fmt.Sprintf("%s line %d: %s", pe.Part, pe.Line, pe.Message))
	return true
}

func (a *API) putTemplate(w http.ResponseWriter, r *http.Request, key *APIKey) {
	name := r.PathValue("name")
	if !templates.ValidName(name) {
		WriteError(w, http.StatusBadRequest, "invalid_field", "name", "a template name is 1 to 64 of a-z, 0-9, '.', '_' and '-', beginning with a letter or digit")
		return
	}
	var tr *templateRequest
	if !a.readJSON(w, r, &tr) {
		return
	}
	if tr == nil {
		WriteError(w, http.StatusBadRequest, "invalid_json", "", "body must be a JSON object")
		return
	}
	if tr.TemplateData != nil {
		WriteError(w, http.StatusBadRequest, "unknown_field", "TemplateData", `unknown field "TemplateData" (a template has Subject, Html and Text)`)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.cfg.RedisTimeout)
	defer cancel()
	v, created, err := a.tpl.Put(ctx, a.owner(key), name, tr.source(), a.now())
	if parseFault(w, err) {
		return
	}
	if errors.Is(err, templates.ErrTooMany) {
		WriteError(w, http.StatusConflict, "too_many_templates", "name",
			fmt.Sprintf("this API key (or tenant) has %d templates, the most it may keep: delete one first", templates.MaxTemplates))
		return
	}
	if err != nil {
		a.unavailable(w, err)
		return
	}
	code := http.StatusOK
	if created {
		code = http.StatusCreated
	}
	WriteJSON(w, code, TemplateSaved{Name: name, Version: v.Version, CreatedAt: v.CreatedAt})
}

func (tr *templateRequest) source() templates.Source {
	return templates.Source{Subject: deref(tr.Subject), Html: deref(tr.Html), Text: deref(tr.Text)}
}

func (a *API) listTemplates(w http.ResponseWriter, r *http.Request, key *APIKey) {
	ctx, cancel := context.WithTimeout(r.Context(), a.cfg.RedisTimeout)
	defer cancel()
	list, err := a.tpl.List(ctx, a.owner(key))
	if err != nil {
		a.unavailable(w, err)
		return
	}
	out := TemplateList{Templates: make([]TemplateSaved, len(list))}
	for i, s := range list {
		out.Templates[i] = TemplateSaved{Name: s.Name, Version: s.Version, CreatedAt: s.CreatedAt}
	}
	WriteJSON(w, http.StatusOK, out)
}

// getTemplate answers GET /v1/templates/{name} and
// GET /v1/templates/{name}/versions/{n}.
func (a *API) getTemplate(w http.ResponseWriter, r *http.Request, key *APIKey) {
	name, ok := templateName(w, r)
	if !ok {
		return
	}
	n := 0
	if s := r.PathValue("n"); s != "" {
		var err error
		if n, err = strconv.Atoi(s); err != nil || n < 1 {
			WriteError(w, http.StatusNotFound, "not_found", "n", "versions are numbered from 1")
			return
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.cfg.RedisTimeout)
	defer cancel()
	v, err := a.tpl.Get(ctx, a.owner(key), name, n)
	switch {
	case errors.Is(err, templates.ErrNotFound):
		WriteError(w, http.StatusNotFound, "not_found", "name", "no template with this name")
		return
	case errors.Is(err, templates.ErrVersionNotFound):
		WriteError(w, http.StatusNotFound, "not_found", "n", "the template has no such version")
		return
	case err != nil:
		a.unavailable(w, err)
		return
	}
	src := v.Source()
	WriteJSON(w, http.StatusOK, TemplateBody{Name: name, Version: v.Version, CreatedAt: v.CreatedAt,
		Subject: src.Subject, Html: src.Html, Text: src.Text})
}

func (a *API) deleteTemplate(w http.ResponseWriter, r *http.Request, key *APIKey) {
	name, ok := templateName(w, r)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.cfg.RedisTimeout)
	defer cancel()
	deleted, err := a.tpl.Delete(ctx, a.owner(key), name)
	if err != nil {
		a.unavailable(w, err)
		return
	}
	if !deleted {
		WriteError(w, http.StatusNotFound, "not_found", "name", "no template with this name")
		return
	}
	WriteJSON(w, http.StatusOK, TemplateDeleted{Name: name, Deleted: true})
}

// renderTemplate answers POST /v1/templates/{name}/render: what a send
// with this TemplateData would get, 200 or the same 400.
func (a *API) renderTemplate(w http.ResponseWriter, r *http.Request, key *APIKey) {
	name, ok := templateName(w, r)
	if !ok {
		return
	}
	var rr *renderRequest
	if !a.readJSON(w, r, &rr) {
		return
	}
	if rr == nil {
		rr = &renderRequest{}
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.cfg.RedisTimeout)
	defer cancel()
	req := &request{Template: &name, TemplateVersion: rr.TemplateVersion, TemplateData: rr.TemplateData}
	a.writeRendered(w, req, a.templateSource(ctx, key))
}

// renderDraft answers POST /v1/templates/render: a template given in the
// body, rendered with its TemplateData, stored nowhere.
func (a *API) renderDraft(w http.ResponseWriter, r *http.Request, _ *APIKey) {
	var tr *templateRequest
	if !a.readJSON(w, r, &tr) {
		return
	}
	if tr == nil {
		WriteError(w, http.StatusBadRequest, "invalid_json", "", "body must be a JSON object")
		return
	}
	p, err := templates.Parse(tr.source())
	if parseFault(w, err) {
		return
	}
	if err != nil {
		WriteError(w, http.StatusBadRequest, "invalid_template", "", err.Error())
		return
	}
	draft := "draft"
	req := &request{Template: &draft, TemplateData: tr.TemplateData}
	a.writeRendered(w, req, func(string, int) (*templates.Version, error) {
		return &templates.Version{Name: draft, Parsed: p}, nil
	})
}

// decodeFailed answers err, a decode or render error, if there is one: 503
// when the template store could not be read, else 400 naming the field.
func (a *API) decodeFailed(w http.ResponseWriter, err error) bool {
	var se *sourceError
	switch {
	case err == nil:
		return false
	case errors.As(err, &se):
		a.unavailable(w, se.err)
	default:
		fe := asFieldError(err)
		WriteError(w, http.StatusBadRequest, fe.Code, fe.Field, fe.Message)
	}
	return true
}

func (a *API) writeRendered(w http.ResponseWriter, req *request, src templateSource) {
	rr, v, text, err := req.render(src)
	if a.decodeFailed(w, err) {
		return
	}
	out := TemplateRendered{Version: v.Version, Subject: *rr.Subject}
	if bool(*rr.IsHtml) {
		out.Html, out.Text = *rr.Body, text
	} else {
		out.Text = *rr.Body
	}
	WriteJSON(w, http.StatusOK, out)
}
