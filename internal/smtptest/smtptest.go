// Package smtptest runs a real, scriptable SMTP server (emersion/go-smtp) on
// a loopback port for tests. It records every message it accepts, counts
// sessions and concurrent connections, and lets a test decide, command by
// command, what the server answers: a reply code, a delay, or a dropped
// connection.
package smtptest

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// DropConnection, returned by a hook, closes the connection without a
// reply. Returned by Data, the message counts as received first: the
// server took it, and the client never heard so.
var DropConnection = errors.New("smtptest: drop connection")

// Message is one message the server accepted.
type Message struct {
	From    string
	To      []string
	Data    []byte
	Session int
	Opts    *smtp.MailOptions
	Notify  map[string][]smtp.DSNNotify
}

// Session is the state a hook sees.
type Session struct {
	ID   int
	Conn *smtp.Conn
	From string
	To   []string
}

// Hooks script the server. A nil hook accepts. A hook may sleep to play a
// slow server, return an *smtp.SMTPError for a reply, or DropConnection.
// Data may also return an *smtp.SMTPError with a 2xx code: the message is
// accepted with that reply (a relay's "250 2.0.0 Ok: queued as 034D2DE4CF").
type Hooks struct {
	Mail func(s *Session, from string) error
	Rcpt func(s *Session, to string) error
	Data func(s *Session, data []byte) error
	// Reset runs when the transaction ends: after the reply to DATA, on
	// RSET, on a new MAIL. Closing s.Conn here makes the next command fail.
	Reset func(s *Session)
}

// Server is a running SMTP server.
type Server struct {
	Addr string

	srv      *smtp.Server
	ln       net.Listener
	implicit *tls.Config

	mu       sync.Mutex
	hooks    Hooks
	user     string
	pass     string
	msgs     []Message
	sessions int
	open     int
	maxOpen  int
	auths    int
}

// Option configures a Server before it starts.
type Option func(*Server)

// WithHooks sets the server's hooks.
func WithHooks(h Hooks) Option { return func(s *Server) { s.hooks = h } }

// WithAuth requires AUTH PLAIN with these credentials.
func WithAuth(user, pass string) Option {
	return func(s *Server) { s.user, s.pass = user, pass }
}

// WithTLS offers STARTTLS with cfg.
func WithTLS(cfg *tls.Config) Option { return func(s *Server) { s.srv.TLSConfig = cfg } }

// WithImplicitTLS makes the server speak TLS from the first byte (smtps).
func WithImplicitTLS(cfg *tls.Config) Option {
	return func(s *Server) { s.implicit = cfg }
}

// WithReadTimeout closes connections idle for longer than d.
func WithReadTimeout(d time.Duration) Option { return func(s *Server) { s.srv.ReadTimeout = d } }

// WithDSN advertises the DSN extension.
func WithDSN() Option { return func(s *Server) { s.srv.EnableDSN = true } }

// WithoutSMTPUTF8 stops the server offering SMTPUTF8 (RFC 6531), as a relay
// that takes ASCII mail only; a MAIL FROM with SMTPUTF8 then gets a 504.
func WithoutSMTPUTF8() Option { return func(s *Server) { s.srv.EnableSMTPUTF8 = false } }

// WithMaxMessageBytes makes the server advertise SIZE n (RFC 1870) and
// refuse a larger message: 552 to a MAIL FROM whose SIZE= is over n, or
// after DATA.
func WithMaxMessageBytes(n int64) Option { return func(s *Server) { s.srv.MaxMessageBytes = n } }

// Start starts a server on 127.0.0.1 and closes it when t ends.
func Start(t testing.TB, opts ...Option) *Server {
	t.Helper()
	s, err := Listen("127.0.0.1:0", opts...)
	if err != nil {
		t.Fatalf("smtptest: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// Listen starts a server on addr; the caller must Close it.
func Listen(addr string, opts ...Option) (*Server, error) {
	s := &Server{}
	s.srv = smtp.NewServer(smtp.BackendFunc(s.newSession))
	s.srv.Domain = "smtptest.local"
	s.srv.AllowInsecureAuth = true
	s.srv.MaxMessageBytes = 64 << 20
	s.srv.MaxRecipients = 1000
	s.srv.EnableSMTPUTF8 = true
	for _, o := range opts {
		o(s)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	if s.implicit != nil {
		ln = tls.NewListener(ln, s.implicit)
	}
	s.ln = ln
	s.Addr = ln.Addr().String()
	go func() { _ = s.srv.Serve(ln) }() // exits when Close closes the listener
	return s, nil
}

// Close stops the server and closes every connection. It closes the
// listener itself too: go-smtp's Close closes only the listeners its Serve
// has registered, and Serve runs on its own goroutine, so a Close right
// after Listen could leave the port accepting.
func (s *Server) Close() error {
	err := s.srv.Close()
	_ = s.ln.Close()
	return err
}

// SetHooks replaces the hooks while the server runs.
func (s *Server) SetHooks(h Hooks) {
	s.mu.Lock()
	s.hooks = h
	s.mu.Unlock()
}

// Messages returns a copy of what the server accepted so far.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.msgs...)
}

// Copies counts the messages each recipient received.
func (s *Server) Copies() map[string]int {
	out := map[string]int{}
	for _, m := range s.Messages() {
		for _, r := range m.To {
			out[r]++
		}
	}
	return out
}

// Stats reports sessions started, the most connections open at once, and
// successful AUTHs.
func (s *Server) Stats() (sessions, maxOpen, auths int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sessions, s.maxOpen, s.auths
}

// OpenConns is the number of connections open now.
func (s *Server) OpenConns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.open
}

func (s *Server) newSession(c *smtp.Conn) (smtp.Session, error) {
	s.mu.Lock()
	s.sessions++
	s.open++
	if s.open > s.maxOpen {
		s.maxOpen = s.open
	}
	id := s.sessions
	s.mu.Unlock()
	return &session{srv: s, Session: Session{ID: id, Conn: c}}, nil
}

type session struct {
	Session
	srv    *Server
	opts   *smtp.MailOptions
	notify map[string][]smtp.DSNNotify
	authed bool
}

func (s *session) hooks() Hooks {
	s.srv.mu.Lock()
	defer s.srv.mu.Unlock()
	return s.srv.hooks
}

func (s *session) run(err error) error {
	if errors.Is(err, DropConnection) {
		_ = s.Conn.Conn().Close()
		return &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: "dropped"}
	}
	return err
}

func (s *session) AuthMechanisms() []string {
	if s.srv.user == "" {
		return nil
	}
	return []string{sasl.Plain}
}

func (s *session) Auth(mech string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(identity, user, pass string) error {
		if user != s.srv.user || pass != s.srv.pass {
			return &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "bad credentials"}
		}
		s.authed = true
		s.srv.mu.Lock()
		s.srv.auths++
		s.srv.mu.Unlock()
		return nil
	}), nil
}

func (s *session) Mail(from string, opts *smtp.MailOptions) error {
	if s.srv.user != "" && !s.authed {
		return smtp.ErrAuthRequired
	}
	s.From, s.To, s.opts, s.notify = from, nil, opts, map[string][]smtp.DSNNotify{}
	if h := s.hooks().Mail; h != nil {
		return s.run(h(&s.Session, from))
	}
	return nil
}

func (s *session) Rcpt(to string, opts *smtp.RcptOptions) error {
	if h := s.hooks().Rcpt; h != nil {
		if err := s.run(h(&s.Session, to)); err != nil {
			return err
		}
	}
	s.To = append(s.To, to)
	if opts != nil {
		s.notify[to] = opts.Notify
	}
	return nil
}

func (s *session) Data(r io.Reader) error {
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, r); err != nil {
		return err
	}
	var err error
	if h := s.hooks().Data; h != nil {
		err = h(&s.Session, buf.Bytes())
	}
	var reply *smtp.SMTPError
	if err == nil || errors.Is(err, DropConnection) || errors.As(err, &reply) && reply.Code/100 == 2 {
		s.srv.mu.Lock()
		s.srv.msgs = append(s.srv.msgs, Message{
			From: s.From, To: append([]string(nil), s.To...), Data: buf.Bytes(),
			Session: s.ID, Opts: s.opts, Notify: s.notify,
		})
		s.srv.mu.Unlock()
	}
	return s.run(err)
}

func (s *session) Reset() {
	if h := s.hooks().Reset; h != nil {
		h(&s.Session)
	}
	s.From, s.To = "", nil
}

func (s *session) Logout() error {
	s.srv.mu.Lock()
	s.srv.open--
	s.srv.mu.Unlock()
	return nil
}
