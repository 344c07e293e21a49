package worker

import (
	"strings"
	"sync"

	"github.com/inbucket/html2text"
	gomail "github.com/wneessen/go-mail"

	"github.com/sendq/sendq/queue"
)

// MessageOption changes what BuildMessage makes beyond what the email says.
type MessageOption func(*messageOptions)

type messageOptions struct {
	text    bool
	texts   *TextParts // with text: where derived parts are kept, if set
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

// WithTextParts is WithTextPart with the derived parts kept in c: the
// emails of a batch usually share their HTML (the body in its Defaults), and
// deriving the text costs more than the rest of the message together
// (BenchmarkRenderMessage).
func WithTextParts(c *TextParts) MessageOption {
	return func(o *messageOptions) { o.text, o.texts = true, c }
}

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
	if o.texts == nil {
		return deriveText(e.Body)
	}
	return o.texts.get(e.Body)
}

// deriveText is the text alternative of an HTML body; false if it has no
// text.
func deriveText(body string) (string, bool) {
	text, err := html2text.FromString(body, html2text.Options{})
	if err != nil || strings.TrimSpace(text) == "" {
		// The HTML parser accepts any input; an error would be a bug in
		// the converter, not a reason to fail the email.
		return "", false
	}
	return text + "\n", true
}

// Bounds of a TextParts.
const (
	textPartsMax     = 128      // bodies kept
	textPartsMaxBody = 32 << 10 // a larger body is derived each time
)

// TextParts keeps the text alternatives derived from the last HTML bodies
// seen, at most 128 of them, each of a body up to 32 KiB (a few MiB at
// worst). It is safe for concurrent use; the zero value is ready.
type TextParts struct {
	mu sync.Mutex
	m  map[string]textPart
}

type textPart struct {
	text string
	ok   bool
}

func (c *TextParts) get(body string) (string, bool) {
	if len(body) > textPartsMaxBody {
		return deriveText(body)
	}
	c.mu.Lock()
	p, hit := c.m[body]
	c.mu.Unlock()
	if hit {
		return p.text, p.ok
	}
	// Derived outside the lock: two workers on the same new body may
	// both derive it, and keep the same result.
	p.text, p.ok = deriveText(body)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = make(map[string]textPart, textPartsMax)
	}
	if len(c.m) >= textPartsMax {
		for k := range c.m { // any one: the map's order is random enough
			delete(c.m, k)
			break
		}
	}
	c.m[body] = p
	return p.text, p.ok
}

// Len is how many bodies c keeps.
func (c *TextParts) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}
