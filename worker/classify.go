package worker

import (
	"errors"
	"net/textproto"
	"regexp"
	"strconv"
	"strings"

	"github.com/sendq/sendq/metrics"
	"github.com/sendq/sendq/queue"
)

// Verdict is how sendq treats an SMTP outcome.
type Verdict int

// Verdicts.
const (
	Accepted  Verdict = iota // 2xx
	Transient                // 4xx, network error, timeout: try again later
	Permanent                // 5xx: do not try again
)

func (v Verdict) String() string {
	switch v {
	case Accepted:
		return "accepted"
	case Transient:
		return "transient"
	default:
		return "permanent"
	}
}

var enhancedRe = regexp.MustCompile(`^([245])\.(\d{1,3})\.(\d{1,3})\b`)

// Classify is the one place where sendq decides what an SMTP outcome means.
// A nil error is a 250. An error carrying an SMTP reply is judged by its
// reply code and enhanced status code (RFC 3463): 4xx is transient, 5xx is
// permanent, except that an enhanced code of class 4 (4.x.x) on a 5xx reply
// and 552 to RCPT (RFC 5321 4.5.3.1.10) are treated as transient. Anything
// without a reply (refused, reset, EOF, timeout) is transient: the server
// never judged the message. A *RefusedError (sendq did not offer the
// message: the relay lacks what it needs) is permanent.
func Classify(err error) (Verdict, queue.Reply) {
	if err == nil {
		return Accepted, queue.Reply{Code: 250}
	}
	var de *DialError
	if errors.As(err, &de) {
		// The relay refused the session (greeting, STARTTLS, AUTH): that
		// is about sendq's connection, not the message. Keep the reply
		// for the status, retry later.
		_, r := Classify(de.Err)
		if r.Code == 0 {
			r.Message = errorText(err)
		}
		return Transient, r
	}
	var re *RefusedError
	if errors.As(err, &re) {
		return Permanent, queue.Reply{EnhancedCode: re.EnhancedCode, Message: re.Msg}
	}
	var tp *textproto.Error
	if !errors.As(err, &tp) {
		return Transient, queue.Reply{Message: errorText(err)}
	}
	r := parseReply(tp.Code, tp.Msg)
	switch {
	case tp.Code >= 200 && tp.Code < 300:
		return Accepted, r
	case tp.Code >= 400 && tp.Code < 500:
		return Transient, r
	case tp.Code == 552 && strings.HasPrefix(r.EnhancedCode, "4."):
		return Transient, r
	case tp.Code >= 500 && strings.HasPrefix(r.EnhancedCode, "4."):
		return Transient, r
	case tp.Code >= 500 && tp.Code < 600:
		return Permanent, r
	default:
		return Transient, r
	}
}

// parseReply splits an SMTP reply's text into its enhanced status code
// (RFC 3463), when it starts with one, and the rest, on one line.
func parseReply(code int, text string) queue.Reply {
	r := queue.Reply{Code: code, Message: oneLine(text)}
	if m := enhancedRe.FindStringSubmatch(r.Message); m != nil {
		r.EnhancedCode = m[0]
		r.Message = strings.TrimSpace(strings.TrimPrefix(r.Message, m[0]))
	}
	return r
}

// RefusedError is a recipient sendq did not offer to the relay because the
// relay lacks what the message needs (room for its size, 8BITMIME,
// SMTPUTF8) or because its address has no form SMTP can carry (a domain
// with no IDNA form, which the intake refuses). It is permanent: every
// retry would meet the same relay. It carries the enhanced status code (RFC
// 3463) a server would give, and no reply code: the relay never answered.
type RefusedError struct {
	Reason       string // queue.ReasonTooLarge, ReasonUnsupported or ReasonInvalid
	EnhancedCode string
	Msg          string
}

func (e *RefusedError) Error() string { return e.EnhancedCode + " " + e.Msg }

// DialError is a failure to open an SMTP session: connect, greeting, EHLO,
// STARTTLS or AUTH. Whatever the server said, it is transient.
type DialError struct{ Err error }

func (e *DialError) Error() string { return "dial smtp: " + e.Err.Error() }

func (e *DialError) Unwrap() error { return e.Err }

// replyClass is the metrics label of a reply.
func replyClass(r queue.Reply) string {
	switch {
	case r.Code >= 200 && r.Code < 300:
		return metrics.Class2xx
	case r.Code >= 400 && r.Code < 500:
		return metrics.Class4xx
	case r.Code >= 500 && r.Code < 600:
		return metrics.Class5xx
	default:
		return metrics.ClassNetwork
	}
}

// throttled reports whether a reply asks the client to slow down: 421, or
// 450/451/452 with an enhanced code of 4.7.x (policy, rate).
func throttled(r queue.Reply) bool {
	return r.Code == 421 || (r.Code >= 450 && r.Code <= 452 && strings.HasPrefix(r.EnhancedCode, "4.7."))
}

// closesConn reports whether the connection cannot carry another message
// after err: no reply at all (network error), or 421 (the server is closing).
func closesConn(err error) bool {
	if err == nil {
		return false
	}
	var tp *textproto.Error
	if !errors.As(err, &tp) {
		return true
	}
	return tp.Code == 421
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\r", " ")
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 300 {
		s = s[:300]
	}
	return strings.TrimSpace(s)
}

func errorText(err error) string { return oneLine(err.Error()) }

// formatReply renders a reply for last_error.
func formatReply(r queue.Reply) string {
	var b strings.Builder
	if r.Code != 0 {
		b.WriteString(strconv.Itoa(r.Code))
		b.WriteByte(' ')
	}
	if r.EnhancedCode != "" {
		b.WriteString(r.EnhancedCode)
		b.WriteByte(' ')
	}
	b.WriteString(r.Message)
	return strings.TrimSpace(b.String())
}
