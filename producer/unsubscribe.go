package producer

import (
	"context"
	"errors"
	"html/template"
	"mime"
	"net/http"
	"strings"

	"github.com/sendq/sendq/queue"
	"github.com/sendq/sendq/suppression"
)

// decodeListUnsubscribe reads ListUnsubscribe (true/false or the
// strings): true asks for RFC 8058 one-click unsubscribe headers, which
// name one recipient, so the email must have exactly one.
func decodeListUnsubscribe(v *flexBool, e *queue.Email) error {
	if v == nil {
		return nil
	}
	b := bool(*v)
	if n := countRecipients(e); b && n != 1 {
		return fieldErr("ListUnsubscribe", "needs exactly one recipient across To, CC and Bcc (the link unsubscribes that one); this email has %d", n)
	}
	e.ListUnsubscribe = b
	return nil
}

// maxUnsubscribeBody bounds the body of a one-click POST (RFC 8058: one
// form field).
const maxUnsubscribeBody = 16 << 10

// unsubscribeTarget returns the email id and recipient a token names, or
// answers 404 itself.
func (a *API) unsubscribeTarget(w http.ResponseWriter, r *http.Request) (id, rcpt string, ok bool) {
	if a.cfg.Signer != nil {
		id, rcpt, ok = a.cfg.Signer.VerifyUnsubscribe(r.PathValue("token"))
	}
	if !ok {
		WriteError(w, http.StatusNotFound, "not_found", "token", "no such unsubscribe link")
	}
	return id, rcpt, ok
}

// unsubscribePage answers GET: a page with a button that POSTs the
// one-click form. It never unsubscribes: mail scanners follow links.
func (a *API) unsubscribePage(w http.ResponseWriter, r *http.Request) {
	if _, rcpt, ok := a.unsubscribeTarget(w, r); ok {
		writePage(w, pageData{Title: "Unsubscribe", Address: maskAddress(rcpt), Confirm: true})
	}
}

// unsubscribe answers the RFC 8058 one-click POST: no API key, no cookie,
// no redirect. The address is suppressed (reason unsubscribe) and the
// notifier hears of it once; a repeat answers 200 and changes nothing.
func (a *API) unsubscribe(w http.ResponseWriter, r *http.Request) {
	id, rcpt, ok := a.unsubscribeTarget(w, r)
	if !ok {
		return
	}
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if mt != "application/x-www-form-urlencoded" && mt != "multipart/form-data" {
		WriteError(w, http.StatusUnsupportedMediaType, "unsupported_media_type", "Content-Type",
			"the body must be the form List-Unsubscribe=One-Click (application/x-www-form-urlencoded or multipart/form-data)")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxUnsubscribeBody)
	var err error
	if mt == "multipart/form-data" {
		err = r.ParseMultipartForm(maxUnsubscribeBody)
	} else {
		err = r.ParseForm() // ParseMultipartForm would drop its error
	}
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			WriteError(w, http.StatusRequestEntityTooLarge, "body_too_large", "", "the form is larger than 16 KiB")
			return
		}
		WriteError(w, http.StatusBadRequest, "invalid_body", "", "the body is not a readable form")
		return
	}
	if r.MultipartForm != nil {
		defer func() { _ = r.MultipartForm.RemoveAll() }()
	}
	if r.PostForm.Get("List-Unsubscribe") != "One-Click" {
		WriteError(w, http.StatusBadRequest, "invalid_field", "List-Unsubscribe", "the form must carry List-Unsubscribe=One-Click (RFC 8058)")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.cfg.RedisTimeout)
	defer cancel()
	added := true // with the list off, every POST is news to the notifier
	if a.cfg.Suppression != nil {
		added, err = a.cfg.Suppression.Add(ctx, suppression.Entry{Address: rcpt, Reason: suppression.ReasonUnsubscribe, EmailID: id})
		if err != nil {
			a.unavailable(w, err)
			return
		}
	}
	if added {
		if a.cfg.Suppression != nil {
			a.m.SuppressionsAdded.WithLabelValues(suppression.ReasonUnsubscribe).Inc()
		}
		if a.cfg.Notifier != nil {
			n := suppression.Notice{Type: suppression.NoticeUnsubscribed, EmailID: id, Recipient: rcpt, Message: "one-click unsubscribe"}
			if err := a.cfg.Notifier.Notify(context.WithoutCancel(ctx), n); err != nil {
				a.log.Warn("notify", "type", n.Type, "email_id", id, "err", err)
			}
		}
	}
	writePage(w, pageData{Title: "Unsubscribed", Address: maskAddress(rcpt)})
}

// maskAddress shows enough of an address for its owner to recognise it:
// the first character of the local part and the domain.
func maskAddress(addr string) string {
	local, domain, ok := strings.Cut(addr, "@")
	if !ok || local == "" {
		return "your address"
	}
	r := []rune(local)
	return string(r[0]) + "…@" + domain
}

type pageData struct {
	Title   string
	Address string
	Confirm bool
}

var page = template.Must(template.New("unsubscribe").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex"><title>{{.Title}}</title>
<style>body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem}button{font-size:1rem;padding:.5rem 1.5rem}</style>
</head><body>
{{if .Confirm}}<h1>Unsubscribe</h1>
<p>Stop sending email to {{.Address}}?</p>
<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click"><button type="submit">Unsubscribe</button></form>
{{else}}<h1>Unsubscribed</h1>
<p>{{.Address}} will get no more email from this sender.</p>
{{end}}</body></html>
`))

// writePage writes an unsubscribe page: no cookie, no script, not cached,
// not framed, no referrer.
func writePage(w http.ResponseWriter, d pageData) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'")
	w.WriteHeader(http.StatusOK)
	_ = page.Execute(w, d)
}
