package worker_test

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sendq/sendq/internal/smtptest"
	"github.com/sendq/sendq/queue"
	"github.com/sendq/sendq/worker"
)

// With a long bulk backlog keeping every general slot busy on a slow
// relay, high email goes out on its own fetcher and the reserved
// connections, long before the backlog drains; bulk never holds more than
// the pool minus the reserved connections.
func TestHighOvertakesBulkBacklog(t *testing.T) {
	t.Parallel()
	var inData, maxBulk atomic.Int32
	var mu sync.Mutex
	var order []string
	hooks := smtptest.Hooks{Data: func(s *smtptest.Session, _ []byte) error {
		bulk := strings.HasPrefix(s.To[0], "bulk")
		if bulk {
			n := inData.Add(1)
			defer inData.Add(-1)
			for {
				m := maxBulk.Load()
				if n <= m || maxBulk.CompareAndSwap(m, n) {
					break
				}
			}
			time.Sleep(40 * time.Millisecond)
		}
		mu.Lock()
		order = append(order, s.To[0])
		mu.Unlock()
		return nil
	}}
	b := setup(t, setupOpts{smtpOpts: []smtptest.Option{smtptest.WithHooks(hooks)}, cfg: func(c *worker.Config) {
		c.Pool.Size, c.ReservedConns, c.Concurrency, c.Fetchers = 4, 1, 12, 2
	}})
	const nBulk = 300
	for i := range nBulk {
		e := newEmail(fmt.Sprintf("bulk%d@example.com", i))
		e.Priority = queue.PriorityBulk
		b.enqueue(t, e, 3)
	}
	// The worker is busy with the backlog.
	deadline := time.Now().Add(10 * time.Second)
	for len(b.smtp.Messages()) < 10 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	var high []string
	for i := range 3 {
		e := newEmail(fmt.Sprintf("high%d@example.com", i))
		e.Priority = queue.PriorityHigh
		b.enqueue(t, e, 3)
		high = append(high, e.ID)
	}
	for _, id := range high {
		st := b.waitFinal(t, id)
		if st.Status != queue.StatusSent || st.Priority != queue.PriorityHigh {
			t.Fatalf("high email %s: %s (priority %q); want sent, high", id, st.Status, st.Priority)
		}
	}
	mu.Lock()
	bulkBefore := 0
	for _, to := range order {
		if strings.HasPrefix(to, "bulk") {
			bulkBefore++
		}
	}
	mu.Unlock()
	if bulkBefore > nBulk/2 {
		t.Errorf("%d of %d bulk emails went out before the 3 high ones were sent; want high to overtake the backlog", bulkBefore, nBulk)
	}
	if m := maxBulk.Load(); m > 3 {
		t.Errorf("bulk held %d connections at once; want at most 3 (pool 4, 1 reserved)", m)
	}
	if m := maxBulk.Load(); m < 2 {
		t.Errorf("bulk held at most %d connection at once; the test did not keep the pool busy", m)
	}
}

// Tasks of the release before priorities (no priority in the payload, in
// the queue "emails") are still served, as normal.
func TestEmailWithoutPriorityIsNormal(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	e := newEmail("a@example.com")
	task, err := queue.NewTask(e)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(task.Payload()), "priority") {
		t.Fatalf("payload %s has a priority", task.Payload())
	}
	b.enqueue(t, e, 3)
	st := b.waitFinal(t, e.ID)
	if st.Status != queue.StatusSent || st.Priority != queue.PriorityNormal {
		t.Fatalf("status %s, priority %q; want sent, normal", st.Status, st.Priority)
	}
}
