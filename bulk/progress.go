package bulk

import (
	"fmt"
	"io"
	"time"

	"github.com/schollz/progressbar/v3"
)

// progress shows rows done, rows/s and the time left. Only the accounting
// goroutine calls it.
type progress interface {
	add(rows int64)
	finish()
}

func newProgress(w io.Writer, terminal bool, total int64, every time.Duration) progress {
	switch {
	case w == nil:
		return noProgress{}
	case terminal:
		return &barProgress{w: w, bar: progressbar.NewOptions64(total,
			progressbar.OptionSetWriter(w),
			progressbar.OptionSetDescription("sending"),
			progressbar.OptionShowCount(),
			progressbar.OptionShowIts(),
			progressbar.OptionSetItsString("rows"),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionSetElapsedTime(true),
			progressbar.OptionSetWidth(30),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionSetRenderBlankState(true),
			progressbar.OptionOnCompletion(func() { fmt.Fprintln(w) }),
		)}
	default:
		return &lineProgress{w: w, total: total, every: every, start: time.Now(), last: time.Now()}
	}
}

type noProgress struct{}

func (noProgress) add(int64) {}
func (noProgress) finish()   {}

// barProgress is a terminal's progress bar (github.com/schollz/progressbar).
type barProgress struct {
	w   io.Writer
	bar *progressbar.ProgressBar
}

func (b *barProgress) add(n int64) { _ = b.bar.Add64(n) }
func (b *barProgress) finish() {
	if !b.bar.IsFinished() {
		// Stopped short: end the bar's line where it is.
		_ = b.bar.Exit()
		fmt.Fprintln(b.w)
	}
}

// lineProgress writes a line every so often, for a log or a pipe.
type lineProgress struct {
	w           io.Writer
	total, done int64
	every       time.Duration
	start, last time.Time
}

func (l *lineProgress) add(n int64) {
	l.done += n
	if now := time.Now(); now.Sub(l.last) >= l.every && l.done < l.total {
		l.last = now
		l.line(now)
	}
}

func (l *lineProgress) finish() { l.line(time.Now()) }

func (l *lineProgress) line(now time.Time) {
	el := now.Sub(l.start).Seconds()
	rate := 0.0
	if el > 0 {
		rate = float64(l.done) / el
	}
	pct := 100.0
	if l.total > 0 {
		pct = 100 * float64(l.done) / float64(l.total)
	}
	eta := "-"
	if rate > 0 {
		eta = (time.Duration(float64(l.total-l.done) / rate * float64(time.Second))).Round(time.Second).String()
	}
	fmt.Fprintf(l.w, "sendq send: %d/%d rows (%.0f%%), %.0f rows/s, ETA %s\n", l.done, l.total, pct, rate, eta)
}
