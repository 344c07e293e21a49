package bench

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// progress draws a one-line progress bar on a terminal: "\r" and the line
// again every 200ms. It draws nothing when the writer is not a terminal
// (a file, a pipe, a test's buffer). With more than one round, the phase's
// name is preceded by the round: "round 2/3 · sendq intake".
type progress struct {
	w     io.Writer
	on    bool
	round string // "round 2/3", or "" in a run of one round
}

func newProgress(w io.Writer) *progress {
	f, ok := w.(*os.File)
	if !ok {
		return &progress{w: w}
	}
	st, err := f.Stat()
	return &progress{w: w, on: err == nil && st.Mode()&os.ModeCharDevice != 0}
}

// setRound names the round that the next phases belong to. Call it
// between phases, not while one is tracked.
func (p *progress) setRound(i, n int) {
	p.round = ""
	if n > 1 {
		p.round = fmt.Sprintf("round %d/%d", i, n)
	}
}

// label is what the bar of phase name is headed with.
func (p *progress) label(name string) string {
	if p.round == "" {
		return name
	}
	return p.round + " · " + name
}

// track draws the bar of one phase while count goes to total; the returned
// function stops it and clears the line.
func (p *progress) track(name string, total int, count *atomic.Int64) (stop func()) {
	if !p.on || total <= 0 {
		return func() {}
	}
	// Names are padded to 16 runes, after the round's prefix if any.
	label := p.label(name)
	pad := utf8.RuneCountInString(label) - utf8.RuneCountInString(name) + 16
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() { // exits when stop is called
		defer close(finished)
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		start := time.Now()
		for {
			select {
			case <-done:
				fmt.Fprint(p.w, "\r\033[K")
				return
			case <-t.C:
				n := min(count.Load(), int64(total))
				const width = 30
				fill := int(n * width / int64(total))
				fmt.Fprintf(p.w, "\r\033[K%-*s [%s%s] %7d/%d %5.1fs", pad, label,
					strings.Repeat("=", fill), strings.Repeat(" ", width-fill), n, total, time.Since(start).Seconds())
			}
		}
	}()
	return func() {
		close(done)
		<-finished
	}
}
