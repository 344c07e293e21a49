// Package noticetest records the notices sendq's packages emit
// (suppression.Notifier), for tests that check which were sent.
package noticetest

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/sendq/sendq/suppression"
)

// Recorder is a suppression.Notifier that keeps every notice.
type Recorder struct {
	mu      sync.Mutex
	notices []suppression.Notice
}

// Notify records n.
func (r *Recorder) Notify(_ context.Context, n suppression.Notice) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.notices = append(r.notices, n)
	return nil
}

// All returns a copy of the notices so far.
func (r *Recorder) All() []suppression.Notice {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]suppression.Notice(nil), r.notices...)
}

// Of returns the notices of one type.
func (r *Recorder) Of(typ string) []suppression.Notice {
	var out []suppression.Notice
	for _, n := range r.All() {
		if n.Type == typ {
			out = append(out, n)
		}
	}
	return out
}

// Wait waits up to d for n notices of typ and returns those there are.
func (r *Recorder) Wait(t testing.TB, typ string, n int, d time.Duration) []suppression.Notice {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		got := r.Of(typ)
		if len(got) >= n || time.Now().After(deadline) {
			return got
		}
		time.Sleep(10 * time.Millisecond)
	}
}
