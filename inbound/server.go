package inbound

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/sendq/sendq/metrics"
	"github.com/sendq/sendq/queue"
	"github.com/sendq/sendq/suppression"
	"github.com/sendq/sendq/token"
)

// Config configures the listener. Zero values take the documented
// defaults.
type Config struct {
	// Domain is the bounce domain (SENDQ_BOUNCE_DOMAIN). Required.
	Domain string
	// Signer verifies the tokens. Required.
	Signer *token.Signer
	// Store holds the delivery records reports change. Required.
	Store *queue.Store
	// Suppression is the list bounces and complaints add to. Nil: none.
	Suppression *suppression.List
	// Notifier hears of bounces, delays, deliveries and complaints. Nil:
	// nobody.
	Notifier suppression.Notifier
	// MaxMessageBytes caps one message; a larger one is refused with 552.
	// If zero, 10 MiB.
	MaxMessageBytes int64
	// Timeout bounds each SMTP command and the handling of a report. If
	// zero, 60s.
	Timeout time.Duration
	// Logger; if nil, slog.Default().
	Logger *slog.Logger
	// Metrics; required.
	Metrics *metrics.Metrics
}

func (c *Config) validate() error {
	var errs []string
	if c.Domain == "" {
		errs = append(errs, "Domain is required")
	}
	if c.Signer == nil {
		errs = append(errs, "Signer is required")
	}
	if c.Store == nil {
		errs = append(errs, "Store is required")
	}
	if c.Metrics == nil {
		errs = append(errs, "Metrics is required")
	}
	if c.MaxMessageBytes <= 0 {
		c.MaxMessageBytes = 10 << 20
	}
	if c.Timeout <= 0 {
		c.Timeout = 60 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if len(errs) > 0 {
		return errors.New("inbound config: " + strings.Join(errs, "; "))
	}
	return nil
}

// Server is the bounce listener.
type Server struct {
	cfg Config
	srv *smtp.Server
	log *slog.Logger
	m   *metrics.Metrics
}

// maxRcpts bounds the recipients of one message: a report goes to one
// envelope sender.
const maxRcpts = 10

// New returns a listener; Serve starts it.
func New(cfg Config) (*Server, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: cfg.Logger, m: cfg.Metrics}
	srv := smtp.NewServer(s)
	srv.Domain = cfg.Domain
	srv.MaxMessageBytes = cfg.MaxMessageBytes
	srv.MaxRecipients = maxRcpts
	srv.ReadTimeout, srv.WriteTimeout = cfg.Timeout, cfg.Timeout
	srv.EnableSMTPUTF8 = true
	srv.ErrorLog = slogLogger{cfg.Logger}
	s.srv = srv
	return s, nil
}

// Serve accepts connections on ln until Shutdown or Close.
func (s *Server) Serve(ln net.Listener) error {
	err := s.srv.Serve(ln)
	if errors.Is(err, smtp.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting, waits for open sessions to end within ctx,
// then closes them.
func (s *Server) Shutdown(ctx context.Context) error { return s.srv.Shutdown(ctx) }

// Close closes the listener and every connection at once.
func (s *Server) Close() error { return s.srv.Close() }

// NewSession implements smtp.Backend.
func (s *Server) NewSession(_ *smtp.Conn) (smtp.Session, error) {
	return &session{s: s}, nil
}

type session struct {
	s   *Server
	ids []string // email ids the RCPT tokens name
}

var errNoSuchUser = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}

func (se *session) Reset()        { se.ids = nil }
func (se *session) Logout() error { return nil }

// Mail accepts every sender: reports come from the null sender <>.
func (se *session) Mail(string, *smtp.MailOptions) error { return nil }

// Rcpt accepts b+TOKEN@domain with a valid token only.
func (se *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	tok, ok := token.ParseBounceAddress(to, se.s.cfg.Domain)
	var id string
	if ok {
		id, ok = se.s.cfg.Signer.VerifyBounce(tok)
	}
	if !ok {
		se.s.m.InboundRejected.WithLabelValues(metrics.InboundForgedToken).Inc()
		return errNoSuchUser
	}
	for _, have := range se.ids {
		if have == id {
			return nil
		}
	}
	se.ids = append(se.ids, id)
	return nil
}

// Data reads the report and applies it to every email the recipients name.
func (se *session) Data(r io.Reader) error {
	rep, err := Parse(r)
	// Parse may stop early; the rest of the message must still be read
	// (and a message over the cap is refused only once that is known).
	if _, cerr := io.Copy(io.Discard, r); cerr != nil {
		reason := metrics.InboundUnparseable // a line over the limit, a cut connection
		if errors.Is(cerr, smtp.ErrDataTooLarge) {
			reason = metrics.InboundTooLarge
		}
		se.s.m.InboundRejected.WithLabelValues(reason).Inc()
		return cerr
	}
	if err != nil {
		if errors.Is(err, smtp.ErrDataTooLarge) {
			se.s.m.InboundRejected.WithLabelValues(metrics.InboundTooLarge).Inc()
			return err
		}
		reason := metrics.InboundUnparseable
		if errors.Is(err, ErrNotReport) {
			reason = metrics.InboundNotReport
		}
		se.s.m.InboundRejected.WithLabelValues(reason).Inc()
		se.s.log.Info("inbound message ignored", "reason", reason, "err", err)
		return nil // taken and dropped: a sender must not retry it
	}
	ctx, cancel := context.WithTimeout(context.Background(), se.s.cfg.Timeout)
	defer cancel()
	for _, id := range se.ids {
		if err := se.s.apply(ctx, id, rep); err != nil {
			se.s.log.Warn("inbound report not applied: asking the sender to retry", "email_id", id, "err", err)
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try again later"}
		}
	}
	return nil
}

// apply changes email id as rep says. Only an error of Redis is returned.
func (s *Server) apply(ctx context.Context, id string, rep *Report) error {
	if rep.Ref != "" {
		refID, ok := s.cfg.Signer.VerifyBounce(rep.Ref)
		if !ok || refID != id {
			s.m.InboundRejected.WithLabelValues(metrics.InboundMismatch).Inc()
			s.log.Info("inbound report ignored", "reason", metrics.InboundMismatch, "email_id", id)
			return nil
		}
	}
	rec, err := s.cfg.Store.Get(ctx, id)
	if errors.Is(err, queue.ErrNoRecord) {
		rec = &queue.Record{Recipients: map[string]queue.RecipientResult{}}
	} else if err != nil {
		return err
	}
	if rep.Kind == KindComplaint {
		return s.complaint(ctx, id, rec, rep.Complaint)
	}
	for _, rr := range rep.Recipients {
		if err := s.recipient(ctx, id, rec, rr); err != nil {
			return err
		}
	}
	return nil
}

// match returns the recipient of rec that addr names (compared
// case-insensitively) if sendq sent the email to it: only a recipient the
// relay accepted can bounce, be delayed, delivered or complain.
func match(rec *queue.Record, addr string) (string, queue.RecipientResult, bool) {
	if addr == "" {
		return "", queue.RecipientResult{}, false
	}
	if r, ok := rec.Recipients[addr]; ok {
		return addr, r, true
	}
	for a, r := range rec.Recipients {
		if strings.EqualFold(a, addr) {
			return a, r, true
		}
	}
	return "", queue.RecipientResult{}, false
}

func sent(st string) bool { return st == queue.RecipientSent || st == queue.RecipientBounced }

func (s *Server) recipient(ctx context.Context, id string, rec *queue.Record, rr RecipientReport) error {
	typ := metrics.ReportOther
	switch {
	case rr.Action == "failed" && strings.HasPrefix(rr.Status, "5."):
		typ = metrics.ReportBounce
	case rr.Action == "delayed":
		typ = metrics.ReportDelay
	case rr.Action == "delivered" || rr.Action == "relayed" || rr.Action == "expanded":
		typ = metrics.ReportDelivery
	}
	addr, cur, ok := match(rec, rr.Address())
	if !ok && rr.OriginalRecipient != "" {
		addr, cur, ok = match(rec, rr.FinalRecipient)
	}
	if !ok || !sent(cur.Status) {
		s.m.InboundReports.WithLabelValues(typ, metrics.ReportUnknownRecipient).Inc()
		s.log.Info("inbound report about no recipient sendq sent to", "email_id", id, "action", rr.Action)
		return nil
	}
	n := suppression.Notice{EmailID: id, Recipient: addr, Code: rr.Code, EnhancedCode: rr.Status, Message: rr.Diagnostic}
	switch typ {
	case metrics.ReportBounce:
		res := queue.RecipientResult{Reply: queue.Reply{Code: rr.Code, EnhancedCode: rr.Status, Message: rr.Diagnostic},
			UpdatedAt: time.Now()}
		if res.Reply.Message == "" {
			res.Reply.Message = "bounced: " + rr.Status
		}
		got, err := s.cfg.Store.Bounce(ctx, id, addr, res)
		if err != nil {
			return err
		}
		if got != queue.BounceApplied {
			s.m.InboundReports.WithLabelValues(typ, metrics.ReportUnchanged).Inc()
			return nil
		}
		if s.cfg.Suppression != nil && suppression.HardBounce(rr.Code, rr.Status) {
			added, err := s.cfg.Suppression.Add(ctx, suppression.Entry{Address: addr, Reason: suppression.ReasonHardBounce,
				EmailID: id, Code: rr.Code, EnhancedCode: rr.Status})
			if err != nil {
				return err
			}
			if added {
				s.m.SuppressionsAdded.WithLabelValues(suppression.ReasonHardBounce).Inc()
			}
		}
		n.Type = suppression.NoticeBounced
	case metrics.ReportDelay:
		n.Type = suppression.NoticeDeferred
	case metrics.ReportDelivery:
		n.Type = suppression.NoticeDelivered
	default:
		s.m.InboundReports.WithLabelValues(typ, metrics.ReportUnchanged).Inc()
		return nil
	}
	s.m.InboundReports.WithLabelValues(typ, metrics.ReportApplied).Inc()
	s.notify(ctx, n)
	return nil
}

func (s *Server) complaint(ctx context.Context, id string, rec *queue.Record, c *Complaint) error {
	typ := metrics.ReportComplaint
	addr := c.OriginalRcptTo
	if addr == "" && len(rec.Recipients) == 1 {
		// Many feedback loops redact the recipient: an email with one
		// recipient names it anyway.
		for a := range rec.Recipients {
			addr = a
		}
	}
	addr, cur, ok := match(rec, addr)
	if !ok || !sent(cur.Status) {
		s.m.InboundReports.WithLabelValues(typ, metrics.ReportUnknownRecipient).Inc()
		s.log.Info("complaint about no recipient sendq sent to", "email_id", id)
		return nil
	}
	added := true
	if s.cfg.Suppression != nil {
		var err error
		added, err = s.cfg.Suppression.Add(ctx, suppression.Entry{Address: addr, Reason: suppression.ReasonComplaint, EmailID: id})
		if err != nil {
			return err
		}
	}
	if !added {
		s.m.InboundReports.WithLabelValues(typ, metrics.ReportUnchanged).Inc()
		return nil
	}
	if s.cfg.Suppression != nil {
		s.m.SuppressionsAdded.WithLabelValues(suppression.ReasonComplaint).Inc()
	}
	s.m.InboundReports.WithLabelValues(typ, metrics.ReportApplied).Inc()
	s.notify(ctx, suppression.Notice{Type: suppression.NoticeComplained, EmailID: id, Recipient: addr,
		Message: "feedback report: " + c.FeedbackType})
	return nil
}

func (s *Server) notify(ctx context.Context, n suppression.Notice) {
	if s.cfg.Notifier == nil {
		return
	}
	if err := s.cfg.Notifier.Notify(ctx, n); err != nil {
		s.log.Warn("notify", "type", n.Type, "email_id", n.EmailID, "err", err)
	}
}

// slogLogger adapts slog to go-smtp's logger.
type slogLogger struct{ l *slog.Logger }

func (l slogLogger) Printf(format string, v ...any) { l.l.Warn(fmt.Sprintf(format, v...)) }
func (l slogLogger) Println(v ...any)               { l.l.Warn(strings.TrimSpace(fmt.Sprintln(v...))) }
