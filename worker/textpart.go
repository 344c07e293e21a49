package worker

import (
	"strings"

	"github.com/inbucket/html2text"
	gomail "github.com/wneessen/go-mail"

	"github.com/sendq/sendq/queue"
)

// MessageOption changes what BuildMessage makes beyond what the email says.
type MessageOption func(*messageOptions)

type messageOptions struct {
	text    bool
	headers []preformatted
}

// preformatted is a header field written as it is.
type preformatted struct {
	name  gomail.Header
	value string
}

// withHeader adds a header field written as it is (ASCII, no folding
// needed): the references the worker adds (bounce reference,
// List-Unsubscribe), before the message is signed.
func withHeader(name gomail.Header, value string) MessageOption {
	return func(o *messageOptions) { o.headers = append(o.headers, preformatted{name, value}) }
}

// WithTextPart gives an HTML body a text/plain alternative derived from it
// (multipart/alternative): an HTML-only message is a spam signal, and a
// reader that shows text gets something readable. Links read as
// "text ( URL )"; headings and lists keep their shape; tables, which email
// HTML uses for layout, are read as running text. A body whose
// HTML yields no text (an image alone) stays HTML-only.
func WithTextPart() MessageOption { return func(o *messageOptions) { o.text = true } }

// textPart returns the text alternative of e's body, if e gets one: the
// text the email carries (Email.Text), else one derived from the HTML
// when WithTextPart asked for it.
func (o messageOptions) textPart(e *queue.Email) (string, bool) {
	if e.IsHTML && e.Text != "" {
		return e.Text, true // the sender's own, always
	}
	if !o.text || !e.IsHTML {
		return "", false
	}
	text, err := html2text.FromString(e.Body, html2text.Options{})
	if err != nil || strings.TrimSpace(text) == "" {
		// The HTML parser accepts any input; an error would be a bug in
		// the converter, not a reason to fail the email.
		return "", false
	}
	return text + "\n", true
}
