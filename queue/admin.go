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
