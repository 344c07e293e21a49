// Package bulk sends a file of rows through sendq's batch API: the engine
// of `sendq send`.
//
// It owns what happens between a file and POST /v1/emails/batch: reading
// the rows (a CSV file with a header, or JSONL), streamed so a file of
// any size needs a few batches in memory; grouping them into batches whose
// Idempotency-Keys derive from the file's content, the options and the
// batch's position, so that the same command run again after a kill
// queues nothing twice and finishes the rest; sending several batches at
// a time and retrying a batch with its key after a lost answer, a 503 or
// a 429; mapping every rejected message back to its line; and the
// progress a person watches. It speaks to sendq through package client.
package bulk

import (
	"context"
	"crypto/sha256"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sendq/sendq/client"
)

// Config is one run of Run.
type Config struct {
	// Client is the sendq to send to. Required.
	Client *client.Client
	// File is the path of the rows. Required.
	File string
	// Format of File. If FormatAuto (unset), FormatOf(File).
	Format Format
	// Template names the template of every row (a CSV file's rows need
	// one: their columns are its TemplateData); TemplateVersion pins its
	// version, 0 for the current one.
	Template        string
	TemplateVersion int
	// From and Priority are the batches' Defaults; empty: the server's
	// SENDQ_DEFAULT_FROM and bulk.
	From     string
	Priority string
	// BatchSize is the number of rows of one batch. If zero, 500.
	BatchSize int
	// Parallel is the number of batches in flight. If zero, 4.
	Parallel int
	// Run is mixed into every Idempotency-Key: the same file sent with a
	// new Run is a new send. Empty for the usual case, where running the
	// same command again must not send anything twice.
	Run string
	// Rejects, if set, is the path of a CSV file written with each
	// rejected row: line, field, code, message.
	Rejects string
	// Progress receives a progress bar (Terminal set) or a progress line
	// every ProgressEvery (2 s if zero); nil: no progress.
	Progress      io.Writer
	Terminal      bool
	ProgressEvery time.Duration
	// RateLimitWait is the pause before a batch refused with 429 is tried
	// again once the client's own retries are spent. If zero, 1 s.
	RateLimitWait time.Duration
	// RateLimitPatience is how long one batch is refused with 429 before
	// the run stops. If zero, 2 minutes. (A batch larger than the API
	// key's rate limit allows at once is never admitted.)
	RateLimitPatience time.Duration
}

// Summary is what became of a file's rows.
type Summary struct {
	Rows     int // rows in the file
	Accepted int // queued by sendq
	Rejected int // refused, each written to Config.Rejects
	NotSent  int // not sent: the run stopped first (Err says why)
	Batches  int
	Elapsed  time.Duration
	// FirstRejects are the first rejects in line order, at most 10.
	FirstRejects []Reject
	// Err is why the run stopped before every row was sent, or nil.
	// Running the same command again sends the rest.
	Err error
}

// OK reports whether every row was accepted.
func (s *Summary) OK() bool { return s.Err == nil && s.Accepted == s.Rows }

// maxFirstRejects is how many rejects a Summary keeps.
const maxFirstRejects = 10

func (c *Config) validate() error {
	var errs []string
	if c.Client == nil {
		errs = append(errs, "no client")
	}
	if c.File == "" {
		errs = append(errs, "no file of rows")
	}
	if c.Format == FormatAuto {
		c.Format = FormatOf(c.File)
	}
	if c.Format == FormatCSV && c.Template == "" {
		errs = append(errs, "a CSV file needs a template: its columns are the template's data")
	}
	if c.Rejects != "" && c.File != "" && sameFile(c.Rejects, c.File) {
		errs = append(errs, "the rejects file is the file of rows")
	}
	if c.BatchSize < 0 || c.Parallel < 0 || c.TemplateVersion < 0 {
		errs = append(errs, "the batch size, parallel batches and template version may not be negative")
	}
	switch c.Priority {
	case "", "high", "normal", "bulk":
	default:
		errs = append(errs, fmt.Sprintf("priority %q: want high, normal or bulk", c.Priority))
	}
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "; "))
	}
	if c.BatchSize == 0 {
		c.BatchSize = 500
	}
	if c.Parallel == 0 {
		c.Parallel = 4
	}
	if c.ProgressEvery <= 0 {
		c.ProgressEvery = 2 * time.Second
	}
	if c.RateLimitWait <= 0 {
		c.RateLimitWait = time.Second
	}
	if c.RateLimitPatience <= 0 {
		c.RateLimitPatience = 2 * time.Minute
	}
	return nil
}

// Run sends the rows of cfg.File. It reads the file once first, to check
// every row and take the digest the Idempotency-Keys derive from: a
// missing or malformed file is an *InputError and nothing is sent. Then
// it reads the file again and sends it, Parallel batches at a time, until
// the end or until a batch fails in a way a retry cannot mend (an API key
// refused, sendq unreachable after the client's retries), or ctx ends; the
// Summary says how far it got. Run the same Config again to send the rest.
func Run(ctx context.Context, cfg Config) (*Summary, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	start := time.Now()
	digest, rows, err := scan(cfg.File, cfg.Format)
	if err != nil {
		return nil, err
	}
	if err := checkTemplate(ctx, cfg); err != nil {
		return nil, err
	}
	defaults := client.Email{From: cfg.From, Priority: cfg.Priority, Template: cfg.Template, TemplateVersion: cfg.TemplateVersion}
	s := &sender{cfg: cfg, defaults: defaults, rows: rows, sum: &Summary{Rows: rows}}
	s.keyBase = keyBase(digest, cfg.Format, defaults, cfg.BatchSize, cfg.Run)
	if cfg.Rejects != "" {
		f, err := os.Create(cfg.Rejects)
		if err != nil {
			return nil, fmt.Errorf("rejects file: %w", err)
		}
		defer f.Close()
		s.rejects = csv.NewWriter(f)
		_ = s.rejects.Write([]string{"line", "field", "code", "message"})
	}
	s.progress = newProgress(cfg.Progress, cfg.Terminal, int64(rows), cfg.ProgressEvery)
	s.run(ctx)
	s.progress.finish()
	if s.rejects != nil {
		s.rejects.Flush()
		if err := s.rejects.Error(); err != nil && s.sum.Err == nil {
			s.sum.Err = fmt.Errorf("rejects file: %w", err)
		}
	}
	s.sum.Elapsed = time.Since(start)
	return s.sum, nil
}

// scan reads the whole file once: its SHA-256 and its number of rows, or
// the first malformed row.
func scan(name string, f Format) (digest []byte, rows int, err error) {
	file, err := os.Open(name)
	if err != nil {
		return nil, 0, &InputError{File: name, Err: openError(err)}
	}
	defer file.Close()
	h := sha256.New()
	rr, err := newRowReader(f, io.TeeReader(file, h), name)
	if err != nil {
		return nil, 0, err
	}
	for {
		_, err := rr.next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, 0, err
		}
		rows++
	}
	// What the row reader left unread (nothing, but for a reader's
	// buffering) belongs to the digest too.
	if _, err := io.Copy(h, file); err != nil {
		return nil, 0, &InputError{File: name, Err: fmt.Errorf("read: %w", err)}
	}
	return h.Sum(nil), rows, nil
}

// ErrUnknownTemplate is the template (or its version) that sendq does not
// have; Run returns it, wrapped, before sending anything.
var ErrUnknownTemplate = errors.New("unknown template")

// checkTemplate asks sendq for the run's template, so that a wrong name is
// one message rather than every row's reject.
func checkTemplate(ctx context.Context, cfg Config) error {
	if cfg.Template == "" {
		return nil
	}
	_, err := cfg.Client.GetTemplate(ctx, cfg.Template, cfg.TemplateVersion)
	var ae *client.APIError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ae) && ae.Status == http.StatusNotFound && cfg.TemplateVersion != 0 && ae.Field == "n":
		return fmt.Errorf("%w: template %q has no version %d", ErrUnknownTemplate, cfg.Template, cfg.TemplateVersion)
	case errors.As(err, &ae) && ae.Status == http.StatusNotFound:
		return fmt.Errorf("%w %q: sendq has no template of this name (PUT /v1/templates/%s stores one)", ErrUnknownTemplate, cfg.Template, cfg.Template)
	}
	return fmt.Errorf("look up template %q: %w", cfg.Template, describe(err))
}

// sameFile reports whether paths a and b name one file.
func sameFile(a, b string) bool {
	ai, aerr := os.Stat(a)
	bi, berr := os.Stat(b)
	if aerr == nil && berr == nil {
		return os.SameFile(ai, bi)
	}
	aa, _ := filepath.Abs(a)
	ba, _ := filepath.Abs(b)
	return aa == ba
}

func openError(err error) error {
	switch {
	case errors.Is(err, os.ErrNotExist):
		return errors.New("no such file")
	case errors.Is(err, os.ErrPermission):
		return errors.New("permission denied")
	}
	return err
}

// keyBase is what every batch key of a run derives from: the file's
// digest, its format, the Defaults every batch carries (template, From,
// priority), the batch size (which rows make batch n) and the run label.
// Whatever changes a batch's body changes its key, so a changed file or
// option is a new send, never the replay of an old answer.
func keyBase(digest []byte, f Format, defaults client.Email, batchSize int, run string) []byte {
	d, _ := json.Marshal(defaults)
	h := sha256.New()
	fmt.Fprintf(h, "sendq send v1\x00%x\x00%s\x00%s\x00%d\x00%q\x00", digest, f, d, batchSize, run)
	return h.Sum(nil)
}

// batchKey is batch n's Idempotency-Key.
func batchKey(base []byte, n int) string {
	h := sha256.New()
	h.Write(base)
	h.Write([]byte(strconv.Itoa(n)))
	return "sendq-send-" + hex.EncodeToString(h.Sum(nil))
}

// batch is a run of consecutive rows, sent as one request.
type batch struct {
	seq   int
	key   string
	msgs  []client.BatchMessage
	lines []int    // lines[i] is msgs[i]'s line
	local []Reject // rows among them refused before sending

	// set by the sender
	accepted int
	rejects  []Reject
	err      error
}

type sender struct {
	cfg      Config
	defaults client.Email
	keyBase  []byte
	rows     int
	sum      *Summary
	rejects  *csv.Writer
	progress progress
}

// run reads the file again and sends its batches: one goroutine reads,
// cfg.Parallel send, and this one takes the answers in file order and
// accounts for them. The reader may be at most 2 x Parallel batches ahead
// of the accounting, which bounds the memory a stalled batch can hold.
// Every goroutine ends once the reader is done (or ctx or a failed batch
// stopped it) and the senders have answered what they took.
func (s *sender) run(parent context.Context) {
	ctx, stop := context.WithCancelCause(parent)
	defer stop(nil)
	window := make(chan struct{}, 2*s.cfg.Parallel)
	todo := make(chan *batch)
	done := make(chan *batch, 2*s.cfg.Parallel)
	go func() { // ends at the end of the file, or when ctx ends
		defer close(todo)
		if err := s.read(ctx, window, todo); err != nil {
			stop(err)
		}
	}()
	var wg sync.WaitGroup
	for range s.cfg.Parallel {
		wg.Go(func() { // ends when todo is closed
			for b := range todo {
				if err := context.Cause(ctx); err != nil {
					b.err = err
				} else if s.send(ctx, b); b.err != nil {
					stop(b.err)
				}
				done <- b
			}
		})
	}
	go func() { wg.Wait(); close(done) }() // ends when the senders have

	pending := map[int]*batch{}
	next := 0
	for b := range done {
		pending[b.seq] = b
		for pb := pending[next]; pb != nil; pb = pending[next] {
			delete(pending, next)
			s.account(pb)
			next++
			<-window
		}
	}
	// The first reason to stop: a failed batch, a read error, or the
	// parent's end (an interrupt).
	s.sum.Err = context.Cause(ctx)
	s.sum.NotSent = s.rows - s.sum.Accepted - s.sum.Rejected
	if s.sum.Err == nil && s.sum.NotSent != 0 {
		s.sum.Err = fmt.Errorf("%d rows were not sent: the file changed while it was sent", s.sum.NotSent)
	}
}

// read cuts the file into batches and hands them to the senders, taking a
// window slot for each.
func (s *sender) read(ctx context.Context, window chan struct{}, todo chan<- *batch) error {
	file, err := os.Open(s.cfg.File)
	if err != nil {
		return &InputError{File: s.cfg.File, Err: openError(err)}
	}
	defer file.Close()
	rr, err := newRowReader(s.cfg.Format, file, s.cfg.File)
	if err != nil {
		return err
	}
	seq := 0
	b := &batch{seq: seq}
	flush := func() error {
		select {
		case window <- struct{}{}:
		case <-ctx.Done():
			return nil
		}
		b.key = batchKey(s.keyBase, b.seq)
		select {
		case todo <- b:
		case <-ctx.Done():
			<-window
			return nil
		}
		seq++
		b = &batch{seq: seq}
		return nil
	}
	for {
		r, err := rr.next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		if r.rej != nil {
			b.local = append(b.local, *r.rej)
			continue
		}
		b.msgs = append(b.msgs, r.msg)
		b.lines = append(b.lines, r.line)
		if len(b.msgs) == s.cfg.BatchSize {
			if err := flush(); err != nil || ctx.Err() != nil {
				return err
			}
		}
	}
	if len(b.msgs) > 0 || len(b.local) > 0 {
		return flush()
	}
	return nil
}

// send posts b, with its key, until sendq answers it: the client retries
// a lost answer, 502, 503 and 504 itself; a 429 is retried here, after
// the client's retries, for RateLimitPatience (a rate limit passes). It
// sets b's outcome.
func (s *sender) send(ctx context.Context, b *batch) {
	if len(b.msgs) == 0 {
		return
	}
	var limited time.Time // when the 429s began
	for {
		res, err := s.cfg.Client.SendBatch(ctx, client.Batch{Defaults: s.defaults, Messages: b.msgs}, client.IdempotencyKey(b.key))
		var ae *client.APIError
		if errors.As(err, &ae) && ae.Status == http.StatusTooManyRequests {
			if limited.IsZero() {
				limited = time.Now()
			} else if time.Since(limited) > s.cfg.RateLimitPatience {
				b.err = s.batchErr(b, fmt.Errorf("%w, for %s: the API key's rate limit admitted no batch (other senders on the same key, or a smaller -batch may pass)",
					err, s.cfg.RateLimitPatience))
				return
			}
			t := time.NewTimer(s.cfg.RateLimitWait)
			select {
			case <-t.C:
				continue
			case <-ctx.Done():
				t.Stop()
				b.err = s.batchErr(b, context.Cause(ctx))
				return
			}
		}
		if err != nil && !(errors.As(err, &ae) && ae.Code == "batch_rejected" && res != nil) {
			b.err = s.batchErr(b, describe(err))
			return
		}
		if len(res.Results) != len(b.msgs) {
			b.err = s.batchErr(b, fmt.Errorf("sendq answered %d results for %d messages", len(res.Results), len(b.msgs)))
			return
		}
		if f := defaultsFault(res); f != nil {
			// Every other batch carries the same Defaults: stop rather
			// than reject every row of the file for it.
			b.err = s.batchErr(b, fmt.Errorf("every message was refused for %s (%s): %s", f.Field, f.Code, f.Message))
			return
		}
		for i, r := range res.Results {
			if r.Error == nil {
				b.accepted++
				continue
			}
			line := 0
			if r.Index >= 0 && r.Index < len(b.lines) {
				line = b.lines[r.Index]
			} else {
				line = b.lines[i]
			}
			b.rejects = append(b.rejects, Reject{Line: line, Field: itemField(r.Error.Field), Code: r.Error.Code, Message: r.Error.Message})
		}
		return
	}
}

func (s *sender) batchErr(b *batch, err error) error {
	return fmt.Errorf("batch %d (lines %d-%d): %w", b.seq+1, b.lines[0], b.lines[len(b.lines)-1], err)
}

// defaultsFault returns the fault of the batch's Defaults when it is what
// refused every message, nil otherwise.
func defaultsFault(res *client.BatchResult) *client.ItemError {
	if res.Accepted != 0 || len(res.Results) == 0 {
		return nil
	}
	first := res.Results[0].Error
	for _, r := range res.Results {
		if r.Error == nil || !strings.HasPrefix(r.Error.Field, "Defaults.") || r.Error.Field != first.Field {
			return nil
		}
	}
	return first
}

// describe says what a batch's failure means for the person running it.
func describe(err error) error {
	var ae *client.APIError
	if errors.As(err, &ae) {
		switch {
		case ae.Status == http.StatusConflict && ae.Code == "idempotency_key_reused":
			return fmt.Errorf("%w; sendq keeps another batch under this batch's key: this file was sent before with a different content or options under the same key; use -run to send it as a new send", err)
		case ae.Status == http.StatusUnauthorized || ae.Status == http.StatusForbidden:
			return fmt.Errorf("%w (check -api-key)", err)
		}
	}
	return err
}

// itemField strips the "Messages[i]." of a batch item's field: the line
// names the row.
func itemField(f string) string {
	if rest, ok := strings.CutPrefix(f, "Messages["); ok {
		if i := strings.Index(rest, "]"); i >= 0 {
			return strings.TrimPrefix(rest[i+1:], ".")
		}
	}
	return f
}

// account adds b's outcome to the summary and the rejects file; the
// batches come in file order.
func (s *sender) account(b *batch) {
	if b.err != nil {
		return // run reports the cause
	}
	s.sum.Batches++
	s.sum.Accepted += b.accepted
	rej := mergeByLine(b.local, b.rejects)
	s.sum.Rejected += len(rej)
	for _, r := range rej {
		if len(s.sum.FirstRejects) < maxFirstRejects {
			s.sum.FirstRejects = append(s.sum.FirstRejects, r)
		}
		if s.rejects != nil {
			_ = s.rejects.Write([]string{strconv.Itoa(r.Line), r.Field, r.Code, r.Message})
		}
	}
	s.progress.add(int64(len(b.msgs) + len(b.local)))
}

// mergeByLine merges two lists of rejects, each in line order.
func mergeByLine(a, b []Reject) []Reject {
	out := make([]Reject, 0, len(a)+len(b))
	for len(a) > 0 && len(b) > 0 {
		if a[0].Line <= b[0].Line {
			out, a = append(out, a[0]), a[1:]
		} else {
			out, b = append(out, b[0]), b[1:]
		}
	}
	return append(append(out, a...), b...)
}
