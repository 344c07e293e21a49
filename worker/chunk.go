package worker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hibiken/asynq"

	"github.com/sendq/sendq/metrics"
	"github.com/sendq/sendq/queue"
)

// claimGroup is the most emails of a chunk claimed in one round trip.
const claimGroup = 32

// chunkRun is one run of a chunk task: what its emails share.
type chunkRun struct {
	w      *Worker
	shared queue.SharedCache
	slots  chan struct{}
}

// sharedCache is the run's cache of shared attachments; nil without a
// run.
func (r *chunkRun) sharedCache() *queue.SharedCache {
	if r == nil {
		return nil
	}
	return &r.shared
}

// leave gives e, an email of the chunk to be tried again after delay, a
// task of its own, as a single send has: from then on its retries,
// cancel and status are a single send's. A task already there (a run
// that died after queuing it) is the same task.
func (r *chunkRun) leave(ctx context.Context, e *queue.Email, rec *queue.Record, delay time.Duration) error {
	if e.SharedAttachments != "" {
		// The task refers to them too, as the record's payload does.
		c := *e
		c.Attachments, e = nil, &c
	}
	task, err := r.w.cfg.Topology.NewTask(e, append(rec.TaskOptions(), asynq.ProcessIn(delay))...)
	if err != nil {
		return err
	}
	_, err = r.w.enq.EnqueueContext(context.WithoutCancel(ctx), task)
	if err != nil && !errors.Is(err, asynq.ErrTaskIDConflict) {
		return fmt.Errorf("enqueue retry: %w", err)
	}
	return nil
}

// ProcessChunk delivers the emails of a chunk (queue.TypeSendChunk). It
// claims them a group at a time, as many as there are free delivery slots
// (Concurrency across every chunk of the process), and delivers each as
// ProcessTask delivers a single send: the same rendering, relays,
// suppression, record and events, each email's record written as it
// finishes. An email to be tried again leaves the chunk for a task of its
// own (chunkRun.leave).
//
// It returns nil once every email was delivered, failed or left the
// chunk; an error (Redis, a shutdown) makes asynq run the chunk again,
// and that run skips what the records say is settled, canceled or gone
// to its own task. An email the first run had claimed (sending) but not
// recorded is delivered again: its recorded recipients are skipped, the
// others may get a second copy if the first run had sent to them (the
// same window as a single send's between the relay's 250 and the record).
func (w *Worker) ProcessChunk(ctx context.Context, t *asynq.Task) error {
	c, err := queue.DecodeChunk(t.Payload())
	if err != nil {
		w.m.EmailsFailed.WithLabelValues(queue.ReasonInvalid).Inc()
		w.m.Attempts.WithLabelValues(metrics.OutcomeFailed).Inc()
		w.log.Error("undecodable chunk", "err", err)
		return fmt.Errorf("%w: %w", err, asynq.SkipRetry)
	}
	run := &chunkRun{w: w, slots: w.slots}
	q, _ := asynq.GetQueueName(ctx)
	if q != "" {
		if p, _ := w.cfg.Topology.Priority(q); p == queue.PriorityHigh {
			run.slots = w.highSlots // never behind a bulk chunk's emails
		}
	}
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	fail := func(err error) {
		mu.Lock()
		if firstErr == nil {
			firstErr = err
		}
		mu.Unlock()
	}
	for next := 0; next < len(c.IDs); {
		// At least one free slot, then as many more as are free now, up to
		// a group: the emails claimed start at once.
		if !run.takeSlot(ctx) {
			fail(ctx.Err())
			break
		}
		n := 1
	more:
		for n < claimGroup && next+n < len(c.IDs) {
			select {
			case run.slots <- struct{}{}:
				n++
			default:
				break more
			}
		}
		ids := c.IDs[next : next+n]
		next += n
		claimed, err := w.cfg.Store.Claim(ctx, c.ID, ids)
		for range n - len(claimed) {
			<-run.slots
		}
		if err != nil {
			fail(err)
			break
		}
		for _, cl := range claimed {
			wg.Go(func() {
				defer func() { <-run.slots }()
				if err := w.deliverHeld(ctx, run, cl); err != nil {
					fail(err)
				}
			})
		}
	}
	wg.Wait()
	if firstErr == nil && q != "" {
		// Every email is settled or has left: the chunk no longer holds
		// any (sendq_queue_held_emails).
		firstErr = w.cfg.Store.DoneHeld(context.WithoutCancel(ctx), q, c.ID)
	}
	if firstErr != nil {
		w.log.Warn("chunk to run again", "chunk", c.ID, "err", firstErr)
	}
	return firstErr
}

// takeSlot waits for a free delivery slot; false if ctx ended first.
func (r *chunkRun) takeSlot(ctx context.Context) bool {
	if ctx.Err() != nil {
		return false
	}
	select {
	case r.slots <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

// deliverHeld makes one delivery attempt of a claimed email of a chunk;
// an error is one asynq must hear (the chunk runs again), not the
// email's outcome.
func (w *Worker) deliverHeld(ctx context.Context, run *chunkRun, cl queue.Claimed) error {
	if cl.Err != nil {
		// Nothing will make it readable: failed, as an undecodable task.
		w.m.EmailsFailed.WithLabelValues(queue.ReasonInvalid).Inc()
		w.m.Attempts.WithLabelValues(metrics.OutcomeFailed).Inc()
		w.log.Error("unreadable email of a chunk", "email_id", cl.ID, "err", cl.Err)
		return w.save(ctx, cl.ID, queue.Update{State: queue.StatusFailed, Reason: queue.ReasonInvalid, LastError: oneLine(cl.Err.Error())})
	}
	if cl.Record.AttemptTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cl.Record.AttemptTimeout)
		defer cancel()
	}
	err := w.attempt(ctx, w.now(), cl.Email, cl.Record, cl.Record.Attempts, max(cl.Record.MaxAttempts-1, 0), run)
	var de *deferredError
	if err == nil || errors.As(err, &de) || errors.Is(err, asynq.SkipRetry) {
		return nil // delivered, failed, or gone to a task of its own
	}
	return err
}
