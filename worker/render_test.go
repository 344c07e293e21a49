package worker_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/sendq/sendq/queue"
	"github.com/sendq/sendq/worker"
)

func render(t *testing.T, e *queue.Email, opts ...worker.MessageOption) []byte {
	t.Helper()
	raw, err := worker.RenderMessage(e, opts...)
	if err != nil {
		t.Fatalf("RenderMessage: %v", err)
	}
	return raw
}

// TestRenderMessageIsTheSameOnEveryAttempt: go-mail draws its MIME
// boundaries at random; RenderMessage derives them from the email id, so
// two renderings (two attempts, on any worker) are the same bytes, and the
// message a receiver reads is unchanged.
func TestRenderMessageIsTheSameOnEveryAttempt(t *testing.T) {
	t.Parallel()
	for _, opts := range [][]worker.MessageOption{nil, {worker.WithTextPart()}} {
		e := seedEmail()
		first := render(t, e, opts...)
		if second := render(t, seedEmail(), opts...); !bytes.Equal(first, second) {
			t.Fatalf("two renderings differ:\n%s\n----\n%s", first, second)
		}
		got, want := parse(t, first), build(t, e, opts...)
		if len(got.leaves) != len(want.leaves) {
			t.Fatalf("rendered %d parts; BuildMessage %d", len(got.leaves), len(want.leaves))
		}
		for i := range got.leaves {
			g, w := got.leaves[i], want.leaves[i]
			if g.mediaType != w.mediaType || !bytes.Equal(g.data, w.data) || !slices.Equal(g.parents, w.parents) {
				t.Errorf("part %d: %s in %v, %q; BuildMessage: %s in %v, %q", i, g.mediaType, g.parents, g.data, w.mediaType, w.parents, w.data)
			}
		}
		if n := strings.Count(string(first), "boundary=sendq-"); n != len(want.boundaries()) {
			t.Errorf("%d boundaries are sendq's; want all %d", n, len(want.boundaries()))
		}
		// Another email gets other boundaries.
		other := seedEmail()
		other.ID = "0190b6a4-7e2c-7c3a-9d1e-000000000000"
		if o := parse(t, render(t, other, opts...)); slices.Equal(o.boundaries(), got.boundaries()) {
			t.Errorf("emails %s and %s share boundaries %q", e.ID, other.ID, got.boundaries())
		}
	}
}

// TestRenderMessageBoundaryNotInTheContent: a body that holds the boundary
// sendq would derive (anyone who knows the email id can compute it) gets
// another one, and the message still parses into the same parts.
func TestRenderMessageBoundaryNotInTheContent(t *testing.T) {
	t.Parallel()
	e := seedEmail()
	sum := sha256.Sum256([]byte(e.ID + "\x00" + "0" + "\x00" + "0"))
	b := "sendq-" + hex.EncodeToString(sum[:16])
	if p := parse(t, render(t, e)); p.boundaries()[0] != b {
		t.Fatalf("outer boundary %q; the test expects %q", p.boundaries()[0], b)
	}
	e.Body = "<p>\r\n--" + b + "\r\nContent-Type: text/plain\r\n\r\ninjected</p>"
	raw := render(t, e)
	p := parse(t, raw)
	if slices.Contains(p.boundaries(), b) {
		t.Fatalf("boundary %q used although the body holds it", b)
	}
	var html []string
	for _, l := range p.leaves {
		if l.mediaType == "text/html" {
			html = append(html, string(l.data))
		}
	}
	if len(p.leaves) != len(e.Attachments)+1 || len(html) != 1 || html[0] != e.Body {
		t.Errorf("parts %d, HTML %q; want %d parts and the body whole", len(p.leaves), html, len(e.Attachments)+1)
	}
}

// boundaries lists the boundary of each multipart of the message,
// outermost first, as the Content-Type headers declare them.
func (p *parsed) boundaries() []string {
	var out []string
	for _, line := range strings.Split(string(p.raw), "\r\n") {
		if v, ok := strings.CutPrefix(line, " boundary="); ok {
			out = append(out, v)
		}
	}
	return out
}

func TestTextPart(t *testing.T) {
	t.Parallel()
	html := `<html><head><style>p{color:red}</style></head><body><h1>Your order shipped</h1>` +
		`<p>Hi Ana, order <b>#123</b> is on its way.&nbsp;<a href="https://shop.example/track?id=1&amp;x=2">Track it</a>.</p>` +
		`<ul><li>Socks</li><li>Hat</li></ul><img src="cid:logo" alt="Contoso"></body></html>`
	tests := []struct {
		name   string
		edit   func(e *queue.Email)
		opts   []worker.MessageOption
		want   []string // media type of each body part, in order
		parent []string // the multiparts around the text/plain part
	}{
		{"HTML with attachments and an inline image", nil, []worker.MessageOption{worker.WithTextPart()},
			[]string{"text/plain", "text/html"}, []string{"multipart/mixed", "multipart/related", "multipart/alternative"}},
		{"HTML alone", func(e *queue.Email) { e.Attachments = nil }, []worker.MessageOption{worker.WithTextPart()},
			[]string{"text/plain", "text/html"}, []string{"multipart/alternative"}},
		{"HTML with an attachment", func(e *queue.Email) { e.Attachments = e.Attachments[:1] }, []worker.MessageOption{worker.WithTextPart()},
			[]string{"text/plain", "text/html"}, []string{"multipart/mixed", "multipart/alternative"}},
		{"plain text stays as it is", func(e *queue.Email) { e.IsHTML, e.Body, e.Attachments = false, "Hello", nil }, []worker.MessageOption{worker.WithTextPart()},
			[]string{"text/plain"}, nil},
		{"without the option", func(e *queue.Email) { e.Attachments = nil }, nil,
			[]string{"text/html"}, nil},
		{"HTML without text stays HTML-only", func(e *queue.Email) { e.Body, e.Attachments = `<img src="https://x.example/a.png">`, nil },
			[]worker.MessageOption{worker.WithTextPart()}, []string{"text/html"}, nil},
	}
	for _, tc := range tests {
		e := seedEmail()
		e.Body = html
		if tc.edit != nil {
			tc.edit(e)
		}
		p := parse(t, render(t, e, tc.opts...))
		var types []string
		var text *leaf
		for i, l := range p.leaves {
			if strings.HasPrefix(l.mediaType, "text/") && l.header.Get("Content-Disposition") == "" {
				types = append(types, l.mediaType)
				if l.mediaType == "text/plain" {
					text = &p.leaves[i]
				}
			}
		}
		if !slices.Equal(types, tc.want) {
			t.Errorf("%s: body parts %q; want %q", tc.name, types, tc.want)
			continue
		}
		if tc.parent == nil {
			continue
		}
		if !slices.Equal(text.parents, tc.parent) {
			t.Errorf("%s: text/plain inside %q; want %q", tc.name, text.parents, tc.parent)
		}
		got := string(text.data)
		for _, want := range []string{"Your order shipped", "Hi Ana, order *#123* is on its way. Track it ( https://shop.example/track?id=1&x=2 ).",
			"* Socks\r\n* Hat"} {
			if !strings.Contains(got, want) {
				t.Errorf("%s: text part lacks %q:\n%s", tc.name, want, got)
			}
		}
		for _, not := range []string{"<", "color:red", "&amp;", "&nbsp;"} {
			if strings.Contains(got, not) {
				t.Errorf("%s: text part holds %q:\n%s", tc.name, not, got)
			}
		}
	}
}

// TestTextPartsKept: a message rendered with the text parts kept
// (WithTextParts, as the worker renders) is the same bytes as one whose
// text part is derived afresh, for a body seen before, a new one, one
// without text and one over the size kept; and the kept parts stay
// within their bound however many bodies go by.
func TestTextPartsKept(t *testing.T) {
	t.Parallel()
	var kept worker.TextParts
	bodies := []string{
		`<p>Hi <b>Ana</b>, <a href="https://shop.example/t?id=1">track</a></p>`,
		`<img src="https://x.example/a.png">`,
		"<p>" + strings.Repeat("big body ", 5000) + "</p>",
	}
	for i := range 300 {
		bodies = append(bodies, fmt.Sprintf("<p>order %d shipped</p>", i))
	}
	for round := range 2 {
		for i, body := range bodies {
			e := seedEmail()
			e.Body, e.Attachments = body, nil
			fresh := render(t, e, worker.WithTextPart())
			if got := render(t, e, worker.WithTextParts(&kept)); !bytes.Equal(got, fresh) {
				t.Fatalf("round %d body %d: kept text part renders\n%s\nwant\n%s", round, i, got, fresh)
			}
		}
	}
	if n := kept.Len(); n == 0 || n > 128 {
		t.Errorf("%d bodies kept after %d; want 1 to 128", n, len(bodies))
	}
}
