package worker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	gomail "github.com/wneessen/go-mail"
	"github.com/wneessen/go-mail/smtp"

	"github.com/sendq/sendq/metrics"
	"github.com/sendq/sendq/queue"
)

// PoolConfig configures a Pool. Zero values take the documented defaults.
type PoolConfig struct {
	// Size is the most connections open at once. If zero, 10.
	Size int
	// IdleTimeout: a connection idle longer is closed, not reused. If zero, 30s.
	IdleTimeout time.Duration
	// MaxConnAge: a connection older than this is retired, like Postfix's
	// connection reuse time limit. If zero, 5m.
	MaxConnAge time.Duration
	// CommandTimeout bounds one SMTP transaction on a connection and the
	// dial (connect, EHLO, STARTTLS, AUTH). If zero, 20s.
	CommandTimeout time.Duration

	noPipelining bool // from the relay URL
}

func (c *PoolConfig) setDefaults() {
	if c.Size <= 0 {
		c.Size = 10
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = 30 * time.Second
	}
	if c.MaxConnAge <= 0 {
		c.MaxConnAge = 5 * time.Minute
	}
	if c.CommandTimeout <= 0 {
		c.CommandTimeout = 20 * time.Second
	}
}

// Pool keeps SMTP connections to one relay open between messages. It is the
// smtppool shape: a channel of idle connections plus a token per open
// connection, capped at Size. Each connection is one go-mail *smtp.Client
// owned by one goroutine at a time, between Get and Put.
type Pool struct {
	cfg    PoolConfig
	dialer *gomail.Client
	m      *metrics.Metrics
	now    func() time.Time

	slots chan struct{} // a token per open (or dialing) connection
	idle  chan *Conn

	mu     sync.Mutex
	closed bool
	done   chan struct{}
	wg     sync.WaitGroup
}

// Conn is one pooled SMTP connection.
type Conn struct {
	c        *smtp.Client
	created  time.Time
	lastUsed time.Time
	// Reused is true when the connection carried a message before; a
	// failure before the first RCPT on a reused connection may just mean
	// the server closed it while idle.
	Reused bool
	// What the server announced in its EHLO reply.
	dsn, pipelining, eightBit, utf8, size bool
	// maxSize is the limit of the SIZE keyword (RFC 1870), 0 for none.
	maxSize int64
}

// NewPool returns a pool of connections to relay. It starts an idle
// sweeper that exits on Close.
func NewPool(relay *Relay, cfg PoolConfig, m *metrics.Metrics) (*Pool, error) {
	cfg.setDefaults()
	cfg.noPipelining = relay.NoPipelining
	dialer, err := relay.client(cfg.CommandTimeout)
	if err != nil {
		return nil, err
	}
	p := &Pool{
		cfg: cfg, dialer: dialer, m: m, now: time.Now,
		slots: make(chan struct{}, cfg.Size),
		idle:  make(chan *Conn, cfg.Size),
		done:  make(chan struct{}),
	}
	p.wg.Add(1)
	go p.sweep()
	return p, nil
}

// Get returns an idle connection, or dials a new one while fewer than Size
// are open, or waits for one to be put back until ctx is done.
func (p *Pool) Get(ctx context.Context) (*Conn, error) {
	start := p.now()
	defer func() { p.m.PoolWait.Observe(p.now().Sub(start).Seconds()) }()
	for {
		if p.isClosed() {
			return nil, errPoolClosed
		}
		select {
		case c := <-p.idle:
			if c = p.checkout(c); c != nil {
				return c, nil
			}
			continue
		default:
		}
		select {
		case c := <-p.idle:
			if c = p.checkout(c); c != nil {
				return c, nil
			}
		case p.slots <- struct{}{}:
			p.m.PoolOpen.Inc()
			c, err := p.dial(ctx)
			if err != nil {
				p.release()
				return nil, err
			}
			p.m.PoolInUse.Inc()
			return c, nil
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for smtp connection: %w", ctx.Err())
		}
	}
}

var errPoolClosed = errors.New("smtp pool closed")

// checkout takes c out of the idle set, or closes it and returns nil if it
// was idle too long or is too old.
func (p *Pool) checkout(c *Conn) *Conn {
	p.m.PoolIdle.Dec()
	now := p.now()
	if now.Sub(c.lastUsed) > p.cfg.IdleTimeout || now.Sub(c.created) > p.cfg.MaxConnAge {
		p.discard(c, true)
		return nil
	}
	p.m.PoolInUse.Inc()
	return c
}

func (p *Pool) dial(ctx context.Context) (*Conn, error) {
	p.m.PoolDials.Inc()
	ctx, cancel := context.WithTimeout(ctx, p.cfg.CommandTimeout)
	defer cancel()
	c, err := p.dialer.DialToSMTPClientWithContext(ctx)
	if err != nil {
		p.m.PoolDialFailures.Inc()
		return nil, &DialError{Err: err}
	}
	now := p.now()
	conn := &Conn{c: c, created: now, lastUsed: now}
	conn.dsn, _ = c.Extension("DSN")
	conn.pipelining, _ = c.Extension("PIPELINING")
	conn.pipelining = conn.pipelining && !p.cfg.noPipelining
	conn.eightBit, _ = c.Extension("8BITMIME")
	conn.utf8, _ = c.Extension("SMTPUTF8")
	var limit string
	if conn.size, limit = c.Extension("SIZE"); conn.size {
		if n, err := strconv.ParseInt(strings.TrimSpace(limit), 10, 64); err == nil && n > 0 {
			conn.maxSize = n
		}
	}
	return conn, nil
}

// DropIdle closes every idle connection. The worker calls it when a reused
// connection turns out dead: the others were opened before the same event
// (a relay restart, a network change) and are most likely dead too, so the
// next Get dials instead of finding them one by one.
func (p *Pool) DropIdle() {
	for {
		select {
		case c := <-p.idle:
			p.m.PoolIdle.Dec()
			p.discard(c, false)
		default:
			return
		}
	}
}

// Put returns c to the pool after use. A connection whose last error left it
// unusable (no reply, 421) is closed, never reused; so is every connection
// once the pool is closed or the connection is too old.
func (p *Pool) Put(c *Conn, broken bool) {
	p.m.PoolInUse.Dec()
	now := p.now()
	if broken || p.isClosed() || now.Sub(c.created) > p.cfg.MaxConnAge {
		p.discard(c, !broken)
		return
	}
	c.lastUsed = now
	c.Reused = true
	p.m.PoolIdle.Inc()
	p.idle <- c // never blocks: at most Size connections exist
}

// discard closes c (with QUIT if polite) and frees its slot.
func (p *Pool) discard(c *Conn, polite bool) {
	if polite {
		_ = c.c.UpdateDeadline(2 * time.Second)
		if err := c.c.Quit(); err != nil {
			_ = c.c.Close()
		}
	} else {
		_ = c.c.Close()
	}
	p.release()
}

func (p *Pool) release() {
	<-p.slots
	p.m.PoolOpen.Dec()
}

func (p *Pool) isClosed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closed
}

// sweep closes idle connections that outlived IdleTimeout, so a quiet
// worker does not hold sessions the server will drop anyway. It exits when
// the pool is closed.
func (p *Pool) sweep() {
	defer p.wg.Done()
	t := time.NewTicker(p.cfg.IdleTimeout / 2)
	defer t.Stop()
	for {
		select {
		case <-p.done:
			return
		case <-t.C:
			for n := len(p.idle); n > 0; n-- {
				select {
				case c := <-p.idle:
					now := p.now()
					if now.Sub(c.lastUsed) > p.cfg.IdleTimeout || now.Sub(c.created) > p.cfg.MaxConnAge {
						p.m.PoolIdle.Dec()
						p.discard(c, true)
					} else {
						p.idle <- c
					}
				default:
				}
			}
		}
	}
}

// Close says QUIT on every idle connection and stops the sweeper.
// Connections in use are closed when they are put back.
func (p *Pool) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	close(p.done)
	p.mu.Unlock()
	p.wg.Wait()
	for {
		select {
		case c := <-p.idle:
			p.m.PoolIdle.Dec()
			p.discard(c, true)
		default:
			return
		}
	}
}

// Envelope is one SMTP transaction's sender and recipients, and what the
// transaction must declare about the message.
type Envelope struct {
	From string
	To   []string
	// DSN asks for delivery status notifications (RFC 3461) where the
	// server offers the extension.
	DSN bool
	// EnvID goes with DSN as ENVID= (RFC 3461): a DSN then names the
	// email it is about. The worker sets the email id.
	EnvID string
	// Size is the message's size in octets, with CRLF line ends and
	// before dot-stuffing (RFC 1870). Where the server offers SIZE it is
	// declared on MAIL FROM, and a message over the server's limit is
	// not sent at all. Zero: not declared.
	Size int64
	// UTF8Header says the message's header holds raw UTF-8 (RFC 6532):
	// like a non-ASCII address, it needs SMTPUTF8 (RFC 6531).
	UTF8Header bool
	// EightBit says the message holds octets above 127: it needs
	// 8BITMIME (RFC 6152).
	EightBit bool
}

// TxResult is what one SMTP transaction yielded.
type TxResult struct {
	// Rcpt holds every recipient's error: nil means the server accepted
	// the message for it (a 250 to RCPT and then to DATA).
	Rcpt map[string]error
	// Delivered is true once the server answered 250 to the end of DATA.
	Delivered bool
	// Reply is that 250 reply once Delivered, its text included: a relay
	// names its queue id there (Postfix: "2.0.0 Ok: queued as 034D2DE4CF").
	Reply queue.Reply
	// Broken is true when the connection must not be reused.
	Broken bool
	// BeforeRcpt is true when the transaction failed before any RCPT was
	// answered (at MAIL FROM, or the connection was already gone).
	BeforeRcpt bool
}

// Send runs one transaction on c: MAIL, one RCPT per recipient, DATA, and
// RSET after a transaction that did not complete. Recipients are judged one
// by one: a rejected RCPT does not stop the others. Nothing after the 250 to
// the final dot can undo delivery.
//
// What the server lacks is judged before any command: a message over its
// SIZE, 8-bit content without 8BITMIME, or UTF-8 without SMTPUTF8 fails
// with a *RefusedError and is never uploaded; without SMTPUTF8 a recipient
// with a non-ASCII address fails alone, unless the sender or the header
// needs UTF-8 too. SMTPUTF8 is asked for only when the envelope or the
// header needs it: a server then may write its bounces as
// message/global-delivery-status, which few bounce parsers read.
//
// When the server offers PIPELINING (RFC 2920; Postfix, Exchange, SES and
// the other large relays do), MAIL, every RCPT and DATA go out in one write
// and their replies are read together: two round trips per message instead
// of three plus one per recipient.
func (c *Conn) Send(ctx context.Context, timeout time.Duration, env Envelope, msg io.WriterTo) *TxResult {
	res := &TxResult{Rcpt: make(map[string]error, len(env.To))}
	if strings.ContainsAny(env.From, "\r\n") || slices.ContainsFunc(env.To, func(a string) bool { return strings.ContainsAny(a, "\r\n") }) {
		// The intake refuses these; never let one split a command.
		return res.failAll(env.To, errors.New("send MAIL FROM: an address contains CR or LF"), false)
	}
	to, needUTF8 := c.refuse(env, res)
	if len(to) == 0 {
		return res
	}
	if d, ok := ctx.Deadline(); ok && time.Until(d) < timeout {
		timeout = time.Until(d)
	}
	if err := c.c.UpdateDeadline(timeout); err != nil {
		return res.failAll(to, err, true)
	}
	mail := c.mailCommand(env, needUTF8)
	if c.pipelining {
		return c.sendPipelined(env, to, mail, msg, res)
	}
	if _, _, err := c.cmd(mail, 250); err != nil {
		res.BeforeRcpt = true
		return res.failAll(to, fmt.Errorf("send MAIL FROM: %w", err), closesConn(err)).reset(c)
	}
	accepted, ok := res.judgeRcpts(to, func(rcpt string) error {
		_, _, err := c.cmd(c.rcptCommand(env, rcpt), 25)
		return err
	})
	if !ok {
		return res
	}
	if len(accepted) == 0 {
		return res.reset(c)
	}
	if _, _, err := c.cmd("DATA", 354); err != nil {
		return res.failAll(accepted, fmt.Errorf("send DATA: %w", err), closesConn(err)).reset(c)
	}
	// The 250 to the final dot ends the transaction (RFC 5321 4.1.1.4):
	// the next MAIL starts a new one without an RSET round trip. A
	// connection that died meanwhile shows at that MAIL, before any RCPT,
	// and the worker redials at once.
	return c.writeData(msg, accepted, res)
}

// refuse fails, in res, the recipients the server cannot take this message
// for, and returns the others and whether the transaction needs SMTPUTF8.
func (c *Conn) refuse(env Envelope, res *TxResult) (to []string, needUTF8 bool) {
	switch {
	case c.maxSize > 0 && env.Size > c.maxSize:
		res.failAll(env.To, &RefusedError{Reason: queue.ReasonTooLarge, EnhancedCode: "5.3.4",
			Msg: fmt.Sprintf("the message is %d bytes, over the relay's SIZE limit of %d bytes (RFC 1870): not uploaded", env.Size, c.maxSize)}, false)
		return nil, false
	case env.EightBit && !c.eightBit:
		res.failAll(env.To, &RefusedError{Reason: queue.ReasonUnsupported, EnhancedCode: "5.6.3",
			Msg: "the message holds 8-bit content and the relay does not offer 8BITMIME (RFC 6152)"}, false)
		return nil, false
	}
	needUTF8 = env.UTF8Header || !isASCII(env.From) || slices.ContainsFunc(env.To, func(a string) bool { return !isASCII(a) })
	if !needUTF8 || c.utf8 {
		return env.To, needUTF8
	}
	switch {
	case !isASCII(env.From):
		res.failAll(env.To, &RefusedError{Reason: queue.ReasonUnsupported, EnhancedCode: "5.6.7",
			Msg: "the sender address is not ASCII and the relay does not offer SMTPUTF8 (RFC 6531)"}, false)
		return nil, false
	case env.UTF8Header:
		res.failAll(env.To, &RefusedError{Reason: queue.ReasonUnsupported, EnhancedCode: "5.6.9",
			Msg: "the message header holds a non-ASCII address and the relay does not offer SMTPUTF8 (RFC 6531)"}, false)
		return nil, false
	}
	for _, a := range env.To {
		if isASCII(a) {
			to = append(to, a)
			continue
		}
		res.Rcpt[a] = &RefusedError{Reason: queue.ReasonUnsupported, EnhancedCode: "5.6.7",
			Msg: "the address is not ASCII and the relay does not offer SMTPUTF8 (RFC 6531)"}
	}
	return to, false
}

// mailCommand is the MAIL FROM line of env, with the parameters the server
// offers and the message needs.
func (c *Conn) mailCommand(env Envelope, needUTF8 bool) string {
	var b strings.Builder
	b.WriteString("MAIL FROM:<" + env.From + ">")
	if c.eightBit {
		b.WriteString(" BODY=8BITMIME")
	}
	if needUTF8 {
		b.WriteString(" SMTPUTF8")
	}
	if c.size && env.Size > 0 {
		b.WriteString(" SIZE=" + strconv.FormatInt(env.Size, 10))
	}
	if env.DSN && c.dsn {
		b.WriteString(" RET=HDRS")
		if env.EnvID != "" {
			b.WriteString(" ENVID=" + xtext(env.EnvID))
		}
	}
	return b.String()
}

// rcptCommand is the RCPT TO line of one recipient of env.
func (c *Conn) rcptCommand(env Envelope, rcpt string) string {
	if env.DSN && c.dsn {
		return "RCPT TO:<" + rcpt + "> NOTIFY=SUCCESS,FAILURE,DELAY"
	}
	return "RCPT TO:<" + rcpt + ">"
}

// cmd sends one command line and reads its reply.
func (c *Conn) cmd(line string, expect int) (int, string, error) {
	text := c.c.Text
	text.W.WriteString(line + "\r\n") // buffered: any error shows at the Flush
	if err := text.W.Flush(); err != nil {
		return 0, "", err
	}
	return text.ReadResponse(expect)
}

// sendPipelined is Send's transaction as one command group: MAIL, the
// RCPTs and DATA in one write, then their replies in order, then the
// message (after a 354) and its reply. The outcomes are judged exactly as
// Send judges the replies one by one.
func (c *Conn) sendPipelined(env Envelope, to []string, mail string, msg io.WriterTo, res *TxResult) *TxResult {
	text := c.c.Text
	cw := text.W // buffered: one write at the Flush
	cw.WriteString(mail)
	cw.WriteString("\r\n")
	for _, rcpt := range to {
		cw.WriteString(c.rcptCommand(env, rcpt))
		cw.WriteString("\r\n")
	}
	cw.WriteString("DATA\r\n")
	if err := cw.Flush(); err != nil { // a bufio.Writer keeps the first write error
		res.BeforeRcpt = true
		return res.failAll(to, fmt.Errorf("send MAIL FROM: %w", err), true)
	}

	// The replies, in order. A reply that closes the connection (none,
	// or 421) leaves the rest unread and the connection broken.
	if _, _, err := text.ReadResponse(250); err != nil {
		res.BeforeRcpt = true
		res.failAll(to, fmt.Errorf("send MAIL FROM: %w", err), closesConn(err))
		if res.Broken {
			return res
		}
		// The server still answers each RCPT (503, no sender) and DATA.
		for range to {
			if _, _, err := text.ReadResponse(25); closesConn(err) {
				res.Broken = true
				return res
			}
		}
		return c.endUnwantedData(res)
	}
	accepted, ok := res.judgeRcpts(to, func(string) error { _, _, err := text.ReadResponse(25); return err })
	if !ok {
		return res
	}
	if len(accepted) == 0 {
		// DATA should have been refused (no valid recipient); a server
		// that said 354 anyway gets an empty message ended at once.
		return c.endUnwantedData(res)
	}
	if _, _, err := text.ReadResponse(354); err != nil {
		return res.failAll(accepted, fmt.Errorf("send DATA: %w", err), closesConn(err)).reset(c)
	}
	return c.writeData(msg, accepted, res)
}

// writeData sends the message after a 354, ends it and judges the reply
// for the accepted recipients.
func (c *Conn) writeData(msg io.WriterTo, accepted []string, res *TxResult) *TxResult {
	text := c.c.Text
	w := text.DotWriter()
	if _, err := msg.WriteTo(w); err != nil {
		// The message was cut off: the connection is in an unknown state.
		_ = w.Close()
		return res.failAll(accepted, fmt.Errorf("write message: %w", err), true)
	}
	if err := w.Close(); err != nil {
		// Flushing the message failed: no verdict was read.
		return res.failAll(accepted, fmt.Errorf("end DATA: %w", err), true)
	}
	code, reply, err := text.ReadResponse(250)
	if err != nil {
		// A reply after the final dot is the server's verdict on the
		// message; no reply leaves it unknown (it may have been
		// delivered): transient, and the retry carries the same
		// Message-ID so the receiver can drop a duplicate.
		return res.failAll(accepted, fmt.Errorf("end DATA: %w", err), closesConn(err)).reset(c)
	}
	res.Delivered, res.Reply = true, parseReply(code, reply)
	for _, r := range accepted {
		res.Rcpt[r] = nil
	}
	return res
}

// endUnwantedData reads the reply to a pipelined DATA that should not
// carry a message. A 354 is answered with an empty message (RFC 2920
// section 3.1: the client sends the lone dot); then RSET.
func (c *Conn) endUnwantedData(res *TxResult) *TxResult {
	text := c.c.Text
	code, _, err := text.ReadResponse(354)
	switch {
	case err == nil || code == 354:
		if _, err := text.W.WriteString(".\r\n"); err != nil {
			res.Broken = true
			return res
		}
		if err := text.W.Flush(); err != nil {
			res.Broken = true
			return res
		}
		if _, _, err := text.ReadResponse(250); closesConn(err) {
			res.Broken = true
			return res
		}
	case closesConn(err):
		res.Broken = true
		return res
	}
	return res.reset(c)
}

// judgeRcpts records the RCPT reply of each recipient in to, which reply
// gets in order, and returns those accepted. A reply that closes the
// connection (none, or 421) leaves the rest unasked: they and those already
// accepted fail with it, and ok is false.
func (r *TxResult) judgeRcpts(to []string, reply func(rcpt string) error) (accepted []string, ok bool) {
	for i, rcpt := range to {
		err := reply(rcpt)
		if err == nil {
			accepted = append(accepted, rcpt)
			continue
		}
		err = fmt.Errorf("send RCPT TO: %w", err)
		if closesConn(err) {
			r.failAll(to[i:], err, true).failAll(accepted, err, true)
			return nil, false
		}
		r.Rcpt[rcpt] = err
	}
	return accepted, true
}

func (r *TxResult) failAll(rcpts []string, err error, broken bool) *TxResult {
	for _, rc := range rcpts {
		r.Rcpt[rc] = err
	}
	r.Broken = r.Broken || broken
	return r
}

// reset sends RSET unless the connection is already broken, so the next
// transaction starts clean. A failed RSET breaks the connection but changes
// no recipient's outcome.
func (r *TxResult) reset(c *Conn) *TxResult {
	if r.Broken {
		return r
	}
	if err := c.c.Reset(); err != nil {
		r.Broken = true
	}
	return r
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// xtext encodes s as RFC 3461 xtext: "+" followed by two hex digits for
// "+", "=" and every octet outside "!" to "~".
func xtext(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < '!' || c > '~' || c == '+' || c == '=' {
			fmt.Fprintf(&b, "+%02X", c)
		} else {
			b.WriteByte(c)
		}
	}
	return b.String()
}
