package bench

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"log"
	"net"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
)

// sink is the in-process SMTP server every delivery phase sends to. It is
// cheap on purpose, so that it measures the sender: it accepts every
// command, reads each message once (only the headers are looked at, for
// the Message-ID), discards it, waits the configured latency at the end of
// DATA (imitating a remote relay), and counts.
type sink struct {
	addr    string
	latency time.Duration
	srv     *smtp.Server

	phase atomic.Pointer[sinkPhase]
}

// countdown counts events until a target and remembers when the last one
// happened.
type countdown struct {
	target int64
	count  atomic.Int64
	done   chan struct{} // closed when count reaches target
	last   time.Time     // when the target-th event happened; read after done
}

func newCountdown(n int) *countdown {
	return &countdown{target: int64(n), done: make(chan struct{})}
}

func (c *countdown) add(at time.Time) {
	if c.count.Add(1) == c.target {
		c.last = at
		close(c.done)
	}
}

// sinkPhase counts the messages of one phase.
type sinkPhase struct {
	*countdown
	record bool
	mu     sync.Mutex
	recv   []receipt
}

// receipt is one received message: its Message-ID's local part and when
// the sink received its final dot.
type receipt struct {
	id string
	at time.Time
}

func startSink(latency time.Duration) (*sink, error) {
	s := &sink{latency: latency}
	s.phase.Store(&sinkPhase{countdown: newCountdown(-1)})
	s.srv = smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) { return &sinkSession{s: s}, nil }))
	s.srv.Domain = "sink.bench.invalid"
	s.srv.AllowInsecureAuth = true
	s.srv.MaxMessageBytes = 64 << 20
	s.srv.MaxRecipients = 1000
	s.srv.ReadTimeout = time.Minute
	s.srv.WriteTimeout = time.Minute
	s.srv.ErrorLog = log.New(io.Discard, "", 0)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s.addr = ln.Addr().String()
	// The connection goroutines inherit the label, so a CPU profile shows
	// the sink apart from the sender. Serve returns when close is called.
	go pprof.Do(context.Background(), pprof.Labels("component", "smtp-sink"), func(context.Context) {
		_ = s.srv.Serve(ln)
	})
	return s, nil
}

// expect starts a new phase that is done after n messages; with record,
// every message's id and arrival time is kept.
func (s *sink) expect(n int, record bool) *sinkPhase {
	p := &sinkPhase{countdown: newCountdown(n), record: record}
	if record {
		p.recv = make([]receipt, 0, n)
	}
	s.phase.Store(p)
	return p
}

func (s *sink) close() { _ = s.srv.Close() }

func (p *sinkPhase) received(id string, at time.Time) {
	if p.record {
		p.mu.Lock()
		p.recv = append(p.recv, receipt{id: id, at: at})
		p.mu.Unlock()
	}
	p.add(at)
}

// receipts returns what was recorded so far.
func (p *sinkPhase) receipts() []receipt {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]receipt(nil), p.recv...)
}

type sinkSession struct{ s *sink }

func (*sinkSession) Mail(string, *smtp.MailOptions) error { return nil }
func (*sinkSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (*sinkSession) Reset()                               {}
func (*sinkSession) Logout() error                        { return nil }

// Data reads the headers for the Message-ID, discards the rest, waits the
// relay latency and counts the message.
func (ss *sinkSession) Data(r io.Reader) error {
	br := bufio.NewReaderSize(r, 4096)
	id := ""
	for {
		line, err := br.ReadSlice('\n')
		if len(bytes.TrimRight(line, "\r\n")) == 0 || err != nil {
			break // end of the headers
		}
		if id == "" && len(line) > 11 && bytes.EqualFold(line[:11], []byte("message-id:")) {
			id = messageIDLocal(line[11:])
		}
	}
	if _, err := io.Copy(io.Discard, br); err != nil {
		return err
	}
	if ss.s.latency > 0 {
		time.Sleep(ss.s.latency)
	}
	ss.s.phase.Load().received(id, time.Now())
	return nil
}

// messageIDLocal returns the part of "<local@domain>" before the @.
func messageIDLocal(v []byte) string {
	v = bytes.TrimSpace(v)
	v = bytes.TrimPrefix(v, []byte("<"))
	if i := bytes.IndexByte(v, '@'); i >= 0 {
		v = v[:i]
	}
	return string(v)
}
