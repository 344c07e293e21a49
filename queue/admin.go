package queue

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
)

// ErrWrongState is returned by Retry and Cancel when the email is not in a
// state that allows the operation.
type ErrWrongState struct {
	Op     string
	Status string // the email's status now
}

func (e *ErrWrongState) Error() string {
	switch e.Op {
	case "retry":
		return fmt.Sprintf("only a failed or canceled email can be retried; this one is %s", e.Status)
	default:
		return fmt.Sprintf("only a queued, scheduled or retrying email can be canceled; this one is %s", e.Status)
	}
}

// Admin changes an email's course: retry a failed one, cancel a queued one.
// The API and the CLI share it.
type Admin struct {
	Inspector *asynq.Inspector
	Store     *Store
	// Topology names the queues; nil is DefaultTopology.
	Topology *Topology
	// Enqueuer queues the task of its own that a retried email of a
	// batch (held by a chunk) gets. *asynq.Client implements it. If nil,
	// such an email cannot be retried.
	Enqueuer Enqueuer
}

// Enqueuer stores a task in the queue. *asynq.Client implements it.
type Enqueuer interface {
	EnqueueContext(ctx context.Context, task *asynq.Task, opts ...asynq.Option) (*asynq.TaskInfo, error)
}

// held returns the record of email id if a chunk holds it (Store.Hold)
// and owner may change it; nil, nil if no chunk holds it.
func (a *Admin) held(ctx context.Context, id, owner string) (*Record, error) {
	rec, err := a.Store.Get(ctx, id)
	if errors.Is(err, ErrNoRecord) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if rec.Chunk == "" || rec.Payload == nil {
		return nil, nil
	}
	if !Owns(owner, rec.Owner) {
		return nil, ErrNotFound
	}
	return rec, nil
}

// info returns the task of email id if owner may change it (Owns), else
// ErrNotFound.
func (a *Admin) info(id, owner string) (*asynq.TaskInfo, error) {
	info, err := FindTask(a.Inspector, a.Topology, id)
	if errors.Is(err, asynq.ErrTaskNotFound) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("get task: %w", err)
	}
	if owner != "" {
		e, err := DecodeEmail(info.Payload)
		if err != nil || !Owns(owner, e.Owner) {
			return nil, ErrNotFound
		}
	}
	return info, nil
}

// Retry puts a failed or canceled email back in the queue for one more
// attempt: recipients already sent are skipped, failed ones are tried again.
func (a *Admin) Retry(ctx context.Context, id string) error {
	return a.RetryFor(ctx, id, "")
}

// RetryFor is Retry for one owner: another owner's email is ErrNotFound.
// An empty owner is every owner.
func (a *Admin) RetryFor(ctx context.Context, id, owner string) error {
	if rec, err := a.held(ctx, id, owner); err != nil || rec != nil {
		if err != nil {
			return err
		}
		return a.retryHeld(ctx, id, rec)
	}
	info, err := a.info(id, owner)
	if err != nil {
		return err
	}
	if info.State != asynq.TaskStateArchived {
		return &ErrWrongState{Op: "retry", Status: StateName(info.State)}
	}
	if err := a.Store.ResetFailed(ctx, id); err != nil {
		return err
	}
	// RunTask is atomic in Redis: it fails if the task left the archive.
	if err := a.Inspector.RunTask(info.Queue, id); err != nil {
		return &ErrWrongState{Op: "retry", Status: "changing"}
	}
	return nil
}

// Cancel stops a queued, scheduled or retrying email. It stays visible as
// canceled and can be retried. Each extra, given the email before anything
// changes, returns commands to write with the canceled record (the events
// package's email.canceled events); an error from one cancels nothing.
func (a *Admin) Cancel(ctx context.Context, id string, extra ...func(*Email) (Extra, error)) error {
	return a.CancelFor(ctx, id, "", extra...)
}

// CancelFor is Cancel for one owner: another owner's email is ErrNotFound.
// An empty owner is every owner.
func (a *Admin) CancelFor(ctx context.Context, id, owner string, extra ...func(*Email) (Extra, error)) error {
	if rec, err := a.held(ctx, id, owner); err != nil || rec != nil {
		if err != nil {
			return err
		}
		return a.cancelHeld(ctx, id, rec, extra)
	}
	info, err := a.info(id, owner)
	if err != nil {
		return err
	}
	switch info.State {
	case asynq.TaskStatePending, asynq.TaskStateScheduled, asynq.TaskStateRetry:
	default:
		return &ErrWrongState{Op: "cancel", Status: StateName(info.State)}
	}
	var e *Email
	var extras []Extra
	if e, err = DecodeEmail(info.Payload); err == nil {
		for _, f := range extra {
			x, err := f(e)
			if err != nil {
				return err
			}
			if x != nil {
				extras = append(extras, x)
			}
		}
	}
	// ArchiveTask is atomic in Redis: if a worker took the task since
	// GetTaskInfo, it fails and the email is delivered, not canceled.
	if err := a.Inspector.ArchiveTask(info.Queue, id); err != nil {
		return &ErrWrongState{Op: "cancel", Status: StatusSending}
	}
	u := Update{State: StatusCanceled, Reason: ReasonCanceled}
	if e != nil {
		u.CreatedAt, u.Owner, u.Priority, u.BatchID = e.CreatedAt, e.Owner, e.Priority, e.BatchID
	}
	if len(extras) > 0 {
		u.Extra = func(ctx context.Context, c redis.Cmdable) []redis.Cmder {
			var cmds []redis.Cmder
			for _, x := range extras {
				cmds = append(cmds, x(ctx, c)...)
			}
			return cmds
		}
	}
	return a.Store.Save(ctx, id, u)
}

// cancelHeld cancels email id, held by a chunk (rec): atomically, in a
// script on its record, so that the chunk's worker either claims it
// first (not canceled: sending) or skips it. The extras' commands follow
// the change in a second round trip.
func (a *Admin) cancelHeld(ctx context.Context, id string, rec *Record, extra []func(*Email) (Extra, error)) error {
	var extras []Extra
	if e, err := DecodeEmail(rec.Payload); err == nil {
		for _, f := range extra {
			x, err := f(e)
			if err != nil {
				return err
			}
			if x != nil {
				extras = append(extras, x)
			}
		}
	}
	err := a.Store.cancelHeld(ctx, id)
	if errors.Is(err, errNotHeld) {
		// It left the chunk since: its own task holds it now.
		return a.CancelFor(ctx, id, rec.Owner, extra...)
	}
	if err != nil || len(extras) == 0 {
		return err
	}
	return a.Store.Save(ctx, id, Update{Extra: func(ctx context.Context, c redis.Cmdable) []redis.Cmder {
		var cmds []redis.Cmder
		for _, x := range extras {
			cmds = append(cmds, x(ctx, c)...)
		}
		return cmds
	}})
}

// retryHeld gives a failed or canceled email held by a chunk (rec) one
// more attempt: a task of its own, as a single send's.
func (a *Admin) retryHeld(ctx context.Context, id string, rec *Record) error {
	switch rec.State {
	case StatusFailed, StatusCanceled:
	default:
		return &ErrWrongState{Op: "retry", Status: rec.State}
	}
	if a.Enqueuer == nil {
		return errors.New("retry: no enqueuer for an email of a batch")
	}
	e, err := DecodeEmail(rec.Payload)
	if err != nil {
		return fmt.Errorf("retry: %w", err)
	}
	task, err := a.Topology.NewTask(e, rec.TaskOptions()...)
	if err != nil {
		return fmt.Errorf("retry: %w", err)
	}
	if err := a.Store.ResetFailed(ctx, id); err != nil {
		return err
	}
	// The chunk lets go of it first: a redelivered chunk must not claim
	// it beside its task.
	if err := a.Store.Save(ctx, id, Update{Unchunk: true}); err != nil {
		return err
	}
	if _, err := a.Enqueuer.EnqueueContext(ctx, task); err != nil && !errors.Is(err, asynq.ErrTaskIDConflict) {
		return fmt.Errorf("retry: %w", err)
	}
	return nil
}

// StateName maps an asynq task state to the email status it shows as.
func StateName(s asynq.TaskState) string {
	switch s {
	case asynq.TaskStatePending:
		return StatusQueued
	case asynq.TaskStateActive:
		return StatusSending
	case asynq.TaskStateScheduled:
		return StatusScheduled
	case asynq.TaskStateRetry:
		return StatusRetrying
	case asynq.TaskStateCompleted:
		return StatusSent
	case asynq.TaskStateArchived:
		return StatusFailed
	default:
		return strings.ToLower(s.String())
	}
}

// QueueInfo returns the counts of every email queue of DefaultTopology,
// summed (QueueInfos has them one by one).
func QueueInfo(insp *asynq.Inspector) (*asynq.QueueInfo, error) {
	return DefaultTopology.QueueInfo(insp)
}

// QueueInfo returns the counts of every queue of t, summed, named Name.
func (t *Topology) QueueInfo(insp *asynq.Inspector) (*asynq.QueueInfo, error) {
	infos, err := t.QueueInfos(insp, t.All())
	if err != nil {
		return nil, err
	}
	return SumQueueInfo(Name, infos), nil
}

// QueueInfos returns the counts of each of queues, in order. A queue nobody
// has used yet is empty, not an error (asynq reports it with an internal
// error type that does not match asynq.ErrQueueNotFound).
func (t *Topology) QueueInfos(insp *asynq.Inspector, queues []string) ([]*asynq.QueueInfo, error) {
	qs, err := insp.Queues()
	if err != nil {
		return nil, fmt.Errorf("list queues: %w", err)
	}
	known := make(map[string]bool, len(qs))
	for _, q := range qs {
		known[q] = true
	}
	out := make([]*asynq.QueueInfo, 0, len(queues))
	for _, q := range queues {
		if !known[q] {
			out = append(out, &asynq.QueueInfo{Queue: q})
			continue
		}
		qi, err := insp.GetQueueInfo(q)
		if err != nil {
			return nil, fmt.Errorf("queue %s: %w", q, err)
		}
		out = append(out, qi)
	}
	return out, nil
}

// SumQueueInfo adds up infos under name: counts summed, the oldest
// pending latency, paused if any is.
func SumQueueInfo(name string, infos []*asynq.QueueInfo) *asynq.QueueInfo {
	s := &asynq.QueueInfo{Queue: name}
	for _, qi := range infos {
		s.Size += qi.Size
		s.MemoryUsage += qi.MemoryUsage
		s.Pending += qi.Pending
		s.Active += qi.Active
		s.Scheduled += qi.Scheduled
		s.Retry += qi.Retry
		s.Archived += qi.Archived
		s.Completed += qi.Completed
		s.Aggregating += qi.Aggregating
		s.Processed += qi.Processed
		s.Failed += qi.Failed
		s.ProcessedTotal += qi.ProcessedTotal
		s.FailedTotal += qi.FailedTotal
		s.Latency = max(s.Latency, qi.Latency)
		s.Paused = s.Paused || qi.Paused
		s.Timestamp = qi.Timestamp
	}
	return s
}
