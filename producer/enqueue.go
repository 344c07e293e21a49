package producer

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/sendq/sendq/queue"
)

// errInvalidTask: the email could not be made into a task (a time
// encoding/json refuses); the client's fault.
var errInvalidTask = errors.New("invalid email")

// idemConflict: the email's id (from an Idempotency-Key) belongs to an
// email still kept with another body.
type idemConflict struct{ id string }

func (c *idemConflict) Error() string { return "idempotency key reused with another body: " + c.id }

// taskOptions are the asynq options of e's task.
func (a *API) taskOptions(e *queue.Email) []asynq.Option {
	opts := []asynq.Option{
		asynq.MaxRetry(a.cfg.MaxAttempts - 1),
		asynq.Retention(a.cfg.Retention),
		asynq.Timeout(a.cfg.AttemptTimeout),
	}
	if initialStatus(e) == queue.StatusScheduled {
		opts = append(opts, asynq.ProcessAt(processAt(e.SendAt)))
	}
	return opts
}

// processAt is the time asynq is told for a SendAt. asynq scores a
// scheduled task by whole seconds (ProcessAt's Unix()) and forwards every
// task whose second has begun, so a SendAt of 10.9 s would be sent at 10.0 s:
// rounding up to the next whole second means never early, and at most a
// second plus the forwarder's interval (worker: 250 ms) late.
func processAt(t time.Time) time.Time {
	if t.Equal(t.Truncate(time.Second)) {
		return t
	}
	return t.Truncate(time.Second).Add(time.Second)
}

// claimKey holds the queue of an email whose id comes from an
// Idempotency-Key. asynq refuses a second task with the same id only
// within one queue; an email's queue depends on its priority (and the
// shard), so the claim is what makes the key unique across queues.
func claimKey(id string) string { return "sendq:idem:{" + id + "}" }

// claimScript is SET key queue NX GET PX ttl as a script: the claim then
// runs through Config.Scripts, whose EvalSha concurrent claims share
// pipelines on, instead of costing each keyed send a round trip of its own
// on the plain client (README: Performance, BenchmarkKeyedSendRedis).
// It returns the queue claimed before, or nil if the key was free.
var claimScript = redis.NewScript(`
local prev = redis.call('GET', KEYS[1])
if not prev then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return prev
`)

// claimTTL is how long a claim is kept: as long as the email may be
// kept (scheduled, retried, then retained), with an hour to spare.
func (a *API) claimTTL() time.Duration {
	lim := a.cfg.Limits
	sched, age := lim.MaxSchedule, lim.MaxAge
	if sched <= 0 {
		sched = DefaultMaxSchedule
	}
	if age <= 0 {
		age = DefaultMaxAge
	}
	return sched + age + a.cfg.Retention + time.Hour
}

// enqueue stores e's task. With idem (e.ID derived from an
// Idempotency-Key) an email already kept under the id is found instead:
// first is that email when its body hash is e's (or it came in a batch:
// the key names the same email), and an *idemConflict when not. first is
// nil when e itself was queued.
func (a *API) enqueue(ctx context.Context, e *queue.Email, idem bool) (first *queue.Email, err error) {
	task, err := a.topo.NewTask(e)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errInvalidTask, err)
	}
	q := a.topo.Pick(e.PriorityOrNormal(), e.ID)
	if idem {
		prev, err := claimScript.Run(ctx, a.cfg.Scripts, []string{claimKey(e.ID)}, q, a.claimTTL().Milliseconds()).Text()
		if err != nil && !errors.Is(err, redis.Nil) {
			return nil, fmt.Errorf("claim idempotency key: %w", err)
		}
		if prev != "" && prev != q {
			// The key was used for an email in another queue (another
			// priority): answer with that one while it is kept.
			f, ferr := a.kept(ctx, prev, e)
			if ferr != nil || f != nil {
				return f, ferr
			}
			// Forgotten: this is a new email, in its own queue.
			if err := a.rdb.Set(ctx, claimKey(e.ID), q, a.claimTTL()).Err(); err != nil {
				return nil, fmt.Errorf("claim idempotency key: %w", err)
			}
		}
	}
	opts := a.taskOptions(e)
	for try := 0; ; try++ {
		_, err = a.enq.EnqueueContext(ctx, task, opts...)
		if err == nil || !idem || !errors.Is(err, asynq.ErrTaskIDConflict) {
			return nil, err
		}
		// The key was used before: answer as the first request was
		// answered if the body is the same.
		f, ferr := a.kept(ctx, q, e)
		if ferr == nil && f == nil && try == 0 {
			continue // gone in between (retention over): this is a new email
		}
		if ferr == nil && f == nil {
			ferr = errors.New("task id conflict on a task that is gone")
		}
		return f, ferr
	}
}

// kept returns the email kept under e.ID in queue q if e repeats it (same
// body hash, or q's email came in a batch), an *idemConflict if not, and
// nil, nil if q holds no such task.
//
// q may name a batch instead (batchClaimPrefix): the email's record,
// which holds its payload, is then the one looked up.
func (a *API) kept(ctx context.Context, q string, e *queue.Email) (*queue.Email, error) {
	if strings.HasPrefix(q, batchClaimPrefix) {
		rec, err := a.store.Get(ctx, e.ID)
		if errors.Is(err, queue.ErrNoRecord) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		if rec.Payload == nil {
			return nil, nil
		}
		first, err := queue.DecodeEmail(rec.Payload)
		if err != nil {
			return nil, &idemConflict{id: e.ID}
		}
		return first, nil
	}
	info, err := a.insp.GetTaskInfo(q, e.ID)
	if errors.Is(err, asynq.ErrTaskNotFound) || errors.Is(err, asynq.ErrQueueNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get task: %w", err)
	}
	first, err := queue.DecodeEmail(info.Payload)
	if err != nil {
		return nil, &idemConflict{id: e.ID}
	}
	if first.BodyHash == e.BodyHash || first.BatchID != "" || e.BatchID != "" {
		return first, nil
	}
	return nil, &idemConflict{id: e.ID}
}
