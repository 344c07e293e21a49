package bench

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync/atomic"
	"time"
)

// progress draws a one-line progress bar on a terminal: "\r" and the line
// again every 200ms. It draws nothing when the writer is not a terminal
// (a file, a pipe, a test's buffer).
type progress struct {
	w  io.Writer
	on bool
}

func newProgress(w io.Writer) *progress {
	f, ok := w.(*os.File)
	if !ok {
		return &progress{w: w}
	}
	st, err := f.Stat()
	return &progress{w: w, on: err == nil && st.Mode()&os.ModeCharDevice != 0}
}

// track draws the bar of one phase while count goes to total; the returned
// function stops it and clears the line.
func (p *progress) track(name string, total int, count *atomic.Int64) (stop func()) {
	if !p.on || total <= 0 {
		return func() {}
	}
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
				fmt.Fprintf(p.w, "\r\033[K%-16s [%s%s] %7d/%d %5.1fs", name,
					strings.Repeat("=", fill), strings.Repeat(" ", width-fill), n, total, time.Since(start).Seconds())
			}
		}
	}()
	return func() {
		close(done)
		<-finished
	}
}
