package worker

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"strconv"
	"strings"

	"github.com/sendq/sendq/queue"
)

// RenderMessage returns the bytes sendq sends for e: BuildMessage's
// message, written out, with its MIME boundaries derived from the email id
// instead of drawn at random by go-mail. Every attempt of an email, on any
// worker, then sends the same bytes (Date and Message-ID come from the
// email too), so a DKIM signature made for the first attempt holds for the
// next ones and a receiver sees a retry as the same message.
func RenderMessage(e *queue.Email, options ...MessageOption) ([]byte, error) {
	m, err := BuildMessage(e, options...)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if _, err := m.WriteTo(&buf); err != nil {
		return nil, fmt.Errorf("write message: %w", err)
	}
	return stableBoundaries(buf.Bytes(), e.ID)
}

// stableBoundaries replaces every boundary the multipart tree of raw
// declares with one derived from seed (and the boundary's place in the
// tree), chosen so that it occurs nowhere in raw: the result depends on
// seed and the content only.
func stableBoundaries(raw []byte, seed string) ([]byte, error) {
	msg, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("read rendered message: %w", err)
	}
	var found []string
	if err := boundaries(msg.Header.Get("Content-Type"), msg.Body, &found); err != nil {
		return nil, fmt.Errorf("read rendered message: %w", err)
	}
	for i, old := range found {
		var b string
		for try := 0; ; try++ {
			sum := sha256.Sum256([]byte(seed + "\x00" + strconv.Itoa(i) + "\x00" + strconv.Itoa(try)))
			b = "sendq-" + hex.EncodeToString(sum[:16])
			if !bytes.Contains(raw, []byte(b)) {
				break
			}
		}
		raw = bytes.ReplaceAll(raw, []byte(old), []byte(b))
	}
	return raw, nil
}

// boundaries appends the boundary of a part with Content-Type ct and body
// r, and those of the multiparts nested in it, outermost first.
func boundaries(ct string, r io.Reader, out *[]string) error {
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil || !strings.HasPrefix(mt, "multipart/") || params["boundary"] == "" {
		return nil //nolint:nilerr // not a multipart: no boundary here
	}
	*out = append(*out, params["boundary"])
	mr := multipart.NewReader(r, params["boundary"])
	for {
		p, err := mr.NextRawPart()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if p.Header.Get("Content-Disposition") != "" {
			// An attachment's own boundaries (a multipart/* or
			// message/rfc822 attachment sent unencoded) are its
			// content: left as the sender wrote them.
			continue
		}
		if err := boundaries(p.Header.Get("Content-Type"), p, out); err != nil {
			return err
		}
	}
}

// outgoing is a message ready to send: the DKIM-Signature fields, if any,
// then the rendered message.
type outgoing struct {
	sig string
	raw []byte
	// envFrom is the envelope sender: a bounce address with
	// SENDQ_BOUNCE_DOMAIN, else the email's.
	envFrom string
}

// WriteTo writes the signature fields and the message.
func (o *outgoing) WriteTo(w io.Writer) (int64, error) {
	n, err := io.WriteString(w, o.sig)
	if err != nil {
		return int64(n), err
	}
	m, err := w.Write(o.raw)
	return int64(n + m), err
}

// message renders e and signs it. prior is the signature an earlier attempt
// sent (kept in the delivery record): it is sent again while it holds.
// The text parts derived from HTML bodies are the worker's (w.texts),
// shared by every email the process renders, single sends and chunks.
func (w *Worker) message(e *queue.Email, prior string) (*outgoing, error) {
	envFrom, opts, err := w.references(e)
	if err != nil {
		return nil, fmt.Errorf("build message: %w", err)
	}
	if !w.cfg.NoTextPart {
		opts = append(opts, WithTextParts(&w.texts))
	}
	raw, err := RenderMessage(e, opts...)
	if err != nil {
		return nil, fmt.Errorf("build message: %w", err)
	}
	if !bytes.HasSuffix(raw, []byte("\r\n")) {
		// The DATA dot-writer would add it; SIZE= counts it, and the
		// signature covers it.
		raw = append(raw, '\r', '\n')
	}
	out := &outgoing{raw: raw, envFrom: envFrom}
	if w.cfg.DKIM != nil {
		if out.sig, err = w.cfg.DKIM.Sign(raw, e.From.Address, prior); err != nil {
			return nil, err // "dkim: …"
		}
	}
	return out, nil
}
