// Package outbox is the SMTP server sendq starts when no relay is
// configured: it accepts every message on a loopback port and writes it as
// an .eml file, so a newcomer can see exactly what sendq would have sent.
package outbox

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/mail"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
)

// Outbox is a running capture server.
type Outbox struct {
	Addr string
	Dir  string
	srv  *smtp.Server
	log  *slog.Logger
	seq  atomic.Int64
}

// Start listens on 127.0.0.1 (a free port) and writes messages under dir.
func Start(dir string, log *slog.Logger) (*Outbox, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("outbox dir: %w", err)
	}
	o := &Outbox{Dir: dir, log: log}
	o.srv = smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) { return &session{o: o}, nil }))
	o.srv.Domain = "sendq-outbox.local"
	o.srv.MaxMessageBytes = 64 << 20
	o.srv.MaxRecipients = 10000
	o.srv.ReadTimeout = 5 * time.Minute
	o.srv.WriteTimeout = time.Minute
	o.srv.EnableSMTPUTF8 = true
	o.srv.EnableDSN = true
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("outbox listen: %w", err)
	}
	o.Addr = ln.Addr().String()
	go func() { _ = o.srv.Serve(ln) }() // ends when Shutdown closes the listener
	return o, nil
}

// URL is the SMTP URL sendq uses to reach the outbox.
func (o *Outbox) URL() string { return "smtp://" + o.Addr + "?tls=none" }

// Shutdown stops the server, waiting for open sessions until ctx is done.
func (o *Outbox) Shutdown(ctx context.Context) error { return o.srv.Shutdown(ctx) }

type session struct {
	o    *Outbox
	from string
	to   []string
}

func (s *session) Reset()        { s.from, s.to = "", nil }
func (s *session) Logout() error { return nil }
func (s *session) Mail(from string, _ *smtp.MailOptions) error {
	s.from, s.to = from, nil
	return nil
}
func (s *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.to = append(s.to, to)
	return nil
}

func (s *session) Data(r io.Reader) error {
	var buf bytes.Buffer
	// The envelope is not in the message (Bcc recipients are only there),
	// so it goes first, as a Return-Path and X-Envelope-To header pair the
	// way a local delivery agent would write them.
	fmt.Fprintf(&buf, "Return-Path: <%s>\r\n", s.from)
	fmt.Fprintf(&buf, "X-Envelope-To: %s\r\n", strings.Join(s.to, ", "))
	if _, err := io.Copy(&buf, r); err != nil {
		return err
	}
	name := fmt.Sprintf("%s-%04d", time.Now().UTC().Format("20060102T150405.000000"), s.o.seq.Add(1)%10000)
	if m, err := mail.ReadMessage(bytes.NewReader(buf.Bytes())); err == nil {
		if id := strings.Trim(m.Header.Get("Message-Id"), "<>"); id != "" {
			name += "-" + sanitize(id)
		}
	}
	path := filepath.Join(s.o.Dir, name+".eml")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		s.o.log.Error("outbox write", "err", err)
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "could not write the message"}
	}
	s.o.log.Info("outbox: message written", "path", path, "recipients", len(s.to))
	return nil
}

func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '-' || r == '.' || r == '@' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' {
			return r
		}
		return '_'
	}, s)
}
