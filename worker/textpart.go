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
	headers []preformatted
	cache   *textCache
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

// textPart returns the text alternative of e's body, if e gets one.
func (o messageOptions) textPart(e *queue.Email) (string, bool) {
	if !o.text || !e.IsHTML {
		return "", false
	}
	if o.cache != nil {
		return o.cache.get(e.Body)
	}
	return deriveText(e.Body)
}

// deriveText is the text alternative of an HTML body, and whether it has
// one.
func deriveText(body string) (string, bool) {
	text, err := html2text.FromString(body, html2text.Options{})
	if err != nil || strings.TrimSpace(text) == "" {
		// The HTML parser accepts any input; an error would be a bug in
		// the converter, not a reason to fail the email.
		return "", false
	}
	return text + "\n", true
}

// textCache keeps the text parts derived from the HTML bodies of a
// chunk's emails: a batch whose body comes from its Defaults has one body
// for all of them, and html2text is the larger part of rendering a 1 KB
// email. The body itself is the key (equal bodies, equal text), so no
// email gets another's text. It keeps textCacheEntries bodies of at most
// textCacheMaxBody bytes; others are derived each time.
type textCache struct {
	mu sync.Mutex
	m  map[string]cachedText
}

type cachedText struct {
	text string
	ok   bool
}

const (
	textCacheEntries = 8
	textCacheMaxBody = 256 << 10
)

func newTextCache() *textCache { return &textCache{m: map[string]cachedText{}} }

func (c *textCache) get(body string) (string, bool) {
	if len(body) > textCacheMaxBody {
		return deriveText(body)
	}
	c.mu.Lock()
	t, hit := c.m[body]
	c.mu.Unlock()
	if hit {
		return t.text, t.ok
	}
	t.text, t.ok = deriveText(body)
	c.mu.Lock()
	if len(c.m) < textCacheEntries {
		c.m[body] = t
	}
	c.mu.Unlock()
	return t.text, t.ok
}
