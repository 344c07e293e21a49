package producer

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/sendq/sendq/queue"
	"github.com/sendq/sendq/templates"
)

// templateSource finds version n (0: the current one) of the named
// template of the caller: templates.ErrNotFound or
// templates.ErrVersionNotFound when it is not there, any other error
// Redis's.
type templateSource func(name string, n int) (*templates.Version, error)

// sourceError is a templateSource's failure that is not the template's
// absence: the request cannot be answered (503), it is not at fault.
type sourceError struct{ err error }

func (e *sourceError) Error() string { return "template store: " + e.err.Error() }
func (e *sourceError) Unwrap() error { return e.err }

// templateSource reads key's templates within ctx.
func (a *API) templateSource(ctx context.Context, key *APIKey) templateSource {
	owner := a.owner(key)
	return func(name string, n int) (*templates.Version, error) {
		return a.tpl.Get(ctx, owner, name, n)
	}
}

// once is src reading each name and version once: a batch's messages
// share what the first found, the same version for all of them. It is
// safe for concurrent use.
func (src templateSource) once() templateSource {
	if src == nil {
		return nil
	}
	type result struct {
		once sync.Once
		v    *templates.Version
		err  error
	}
	var mu sync.Mutex
	seen := map[string]*result{}
	return func(name string, n int) (*templates.Version, error) {
		k := name + "\x00" + strconv.Itoa(n)
		mu.Lock()
		r, ok := seen[k]
		if !ok {
			r = &result{}
			seen[k] = r
		}
		mu.Unlock()
		r.once.Do(func() { r.v, r.err = src(name, n) })
		return r.v, r.err
	}
}

// emailFrom is r.email with its template, if it names one, rendered
// first: Subject and Body (and IsHtml) come from it, and a text part when
// it has both Html and Text.
func (r *request) emailFrom(lim Limits, src templateSource) (*queue.Email, error) {
	rr, v, text, err := r.render(src)
	if err != nil {
		return nil, err
	}
	e, err := rr.email(lim)
	var fe *FieldError
	if v != nil && errors.As(err, &fe) && (fe.Field == "Subject" || fe.Field == "Body") {
		// The caller gave neither: what was rendered from TemplateData is
		// at fault.
		return nil, &FieldError{Field: "TemplateData", Code: fe.Code, Message: "the rendered " + fe.Field + " " + fe.Message}
	}
	if err != nil {
		return nil, err
	}
	if v != nil {
		if text != "" && strings.ContainsRune(text, 0) {
			return nil, fieldErr("TemplateData", "the rendered Text contains a NUL character")
		}
		e.Text, e.Template, e.TemplateVersion = text, v.Name, v.Version
	}
	return e, nil
}

// render returns r with the Subject and Body its template makes from its
// TemplateData, the version used and the text alternative (with Html
// and Text), or r itself when it names no template.
func (r *request) render(src templateSource) (*request, *templates.Version, string, error) {
	if r.Template == nil {
		if r.TemplateVersion != nil {
			return nil, nil, "", fieldErr("TemplateVersion", "needs Template")
		}
		if len(r.TemplateData) > 0 && string(r.TemplateData) != "null" {
			return nil, nil, "", fieldErr("TemplateData", "needs Template")
		}
		return r, nil, "", nil
	}
	for _, f := range []struct {
		name  string
		given bool
	}{{"Subject", r.Subject != nil}, {"Body", r.Body != nil}, {"IsHtml", r.IsHtml != nil}} {
		if f.given {
			return nil, nil, "", fieldErr(f.name, "must not be given beside Template: the template makes the subject and the body")
		}
	}
	name := *r.Template
	if !templates.ValidName(name) {
		return nil, nil, "", &FieldError{Field: "Template", Code: "unknown_template",
			Message: fmt.Sprintf("%q is not a template name ([a-z0-9][a-z0-9._-]{0,63})", name)}
	}
	n := 0
	if r.TemplateVersion != nil {
		if n = *r.TemplateVersion; n < 1 {
			return nil, nil, "", fieldErr("TemplateVersion", "must be a version number, 1 or more")
		}
	}
	data, err := templates.DecodeData(r.TemplateData)
	if err != nil {
		return nil, nil, "", fieldErr("TemplateData", "%v", err)
	}
	if src == nil {
		return nil, nil, "", &FieldError{Field: "Template", Code: "unknown_template", Message: "templates cannot be used here"}
	}
	v, err := src(name, n)
	switch {
	case errors.Is(err, templates.ErrNotFound):
		return nil, nil, "", &FieldError{Field: "Template", Code: "unknown_template", Message: fmt.Sprintf("there is no template %q", name)}
	case errors.Is(err, templates.ErrVersionNotFound):
		return nil, nil, "", &FieldError{Field: "TemplateVersion", Code: "unknown_template", Message: fmt.Sprintf("template %q has no version %d", name, n)}
	case err != nil:
		return nil, nil, "", &sourceError{err}
	}
	out, err := v.Render(data)
	if err != nil {
		return nil, nil, "", renderError(err)
	}
	rr := *r
	rr.Subject = &out.Subject
	isHTML := flexBool(v.Source().Html != "")
	rr.IsHtml = &isHTML
	text := ""
	if isHTML {
		rr.Body = &out.Html
		text = out.Text
	} else {
		rr.Body = &out.Text
	}
	return &rr, v, text, nil
}

// renderError is the *FieldError of a template that did not render.
func renderError(err error) *FieldError {
	var me *templates.MissingError
	var de *templates.DataError
	switch {
	case errors.As(err, &me) && me.Name != "":
		return &FieldError{Field: "TemplateData." + me.Name, Code: "missing_variable",
			Message: fmt.Sprintf("the template's %s uses %s, which TemplateData does not have (or gives as null)", me.Part, me.Name)}
	case errors.As(err, &me):
		return &FieldError{Field: "TemplateData", Code: "missing_variable",
			Message: fmt.Sprintf("the template's %s uses a value TemplateData does not have (or gives as null)", me.Part)}
	case errors.As(err, &de):
		return fieldErr("TemplateData", "the template's %s: %s", de.Part, de.Message)
	}
	return fieldErr("TemplateData", "%v", err)
}

// countTemplated counts a message that named a template (e its email,
// or fe the 400 it got) in sendq_templated_emails_total.
func (a *API) countTemplated(e *queue.Email, fe *FieldError) {
	switch {
	case e != nil && e.Template != "":
		a.m.TemplatedEmails.WithLabelValues("rendered").Inc()
	case fe == nil || e != nil:
	case fe.Code == "missing_variable" || fe.Code == "unknown_template":
		a.m.TemplatedEmails.WithLabelValues(fe.Code).Inc()
	case strings.Contains(fe.Field, "TemplateData"):
		a.m.TemplatedEmails.WithLabelValues("invalid_data").Inc()
	}
}
