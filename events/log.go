package events

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/sendq/sendq/queue"
)

// EmailKey is the Redis hash of one email's events. It carries the email
// id as a hash tag, like the email's record (queue), so both can be written
// in one round trip on one Redis Cluster slot. Fields: n (the last
// sequence), e:SEQ (the event), i:ID (the sequence of event ID, so a
// repeated store is a no-op), u:SEQ (present until the event was handed
// to delivery).
func EmailKey(emailID string) string { return "sendq:events:{" + emailID + "}" }

// LogKey is the Redis stream of recent events of every email (GET
// /v1/events), trimmed to the retention. One key: on Redis Cluster the
// whole log lives on one slot.
const LogKey = "sendq:events:log"

// OutboxKey is the Redis sorted set of emails with events stored and not
// yet handed to delivery, scored by when (Unix microseconds). The sweeper
// hands off the entries that stay too long.
const OutboxKey = "sendq:events:outbox"

// Enqueuer stores a task. *asynq.Client implements it.
type Enqueuer interface {
	EnqueueContext(ctx context.Context, task *asynq.Task, opts ...asynq.Option) (*asynq.TaskInfo, error)
}

// LogConfig configures a Log. Zero values take the documented defaults.
type LogConfig struct {
	// Endpoints receive every event (SENDQ_WEBHOOK_URLS). If empty, events
	// are stored and readable through the API, and delivered nowhere.
	Endpoints []Endpoint
	// Retention is how long the event log (GET /v1/events) keeps an event
	// (SENDQ_RETENTION). If zero, 24h.
	Retention time.Duration
	// TTL is how long an email's events outlive their last write. If zero,
	// queue.DefaultRecordTTL; sendq passes the record's TTL.
	TTL time.Duration
	// Metrics; if nil, none are counted.
	Metrics *Metrics
	// Logger; if nil, slog.Default().
	Logger *slog.Logger
}

// Log stores events, hands them to webhook delivery and reads them back.
type Log struct {
	rdb redis.UniversalClient
	enq Enqueuer
	cfg LogConfig
	log *slog.Logger
	now func() time.Time
}

// NewLog returns the event log on rdb; enq queues webhook deliveries
// (needed only with Endpoints). rdb may be an automatic pipeliner.
func NewLog(rdb redis.UniversalClient, enq Enqueuer, cfg LogConfig) (*Log, error) {
	if rdb == nil {
		return nil, errors.New("events: a Redis client is required")
	}
	if len(cfg.Endpoints) > 0 && enq == nil {
		return nil, errors.New("events: webhook endpoints need an Enqueuer")
	}
	if cfg.Retention <= 0 {
		cfg.Retention = 24 * time.Hour
	}
	if cfg.TTL <= 0 {
		cfg.TTL = queue.DefaultRecordTTL
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Log{rdb: rdb, enq: enq, cfg: cfg, log: cfg.Logger, now: time.Now}, nil
}

// storeScript stores an email's events under the next sequence numbers
// and returns each event's sequence. An event already stored (the same id:
// a write that is repeated after an error) keeps its sequence and is not
// stored twice.
//
// KEYS[1] the email's events hash; ARGV[1] its TTL in milliseconds, then
// an id and an encoded event for each event.
const storeScript = `
local out = {}
for i = 2, #ARGV, 2 do
  local seq = redis.call('HGET', KEYS[1], 'i:' .. ARGV[i])
  if not seq then
    seq = redis.call('HINCRBY', KEYS[1], 'n', 1)
    redis.call('HSET', KEYS[1], 'i:' .. ARGV[i], seq, 'e:' .. seq, ARGV[i+1], 'u:' .. seq, ARGV[i])
  end
  out[#out+1] = tonumber(seq)
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return out
`

// outboxScript removes an email from the outbox (ARGV[3] empty), or
// claims it by moving its score to ARGV[3], but only while its score is
// still ARGV[2]: an emitter that added newer events since has moved it.
var outboxScript = redis.NewScript(`
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not s or tonumber(s) ~= tonumber(ARGV[2]) then return 0 end
if ARGV[3] == '' then
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
end
return 1
`)

// Pending is a set of events of one email about to be stored with the
// email's record: Commands goes into the record's write (queue.Update's
// Extra), Dispatch follows once it succeeded.
type Pending struct {
	l       *Log
	emailID string
	events  []*Event
	score   float64
	args    []any
	seqs    *redis.Cmd // the store's reply, set by Commands
}

// Prepare returns the write of events of email emailID. Nil when there are
// none: a nil *Pending's Commands and Dispatch do nothing.
func (l *Log) Prepare(emailID string, events []*Event) (*Pending, error) {
	if len(events) == 0 {
		return nil, nil
	}
	p := &Pending{l: l, emailID: emailID, events: events, score: float64(l.now().UnixMicro())}
	p.args = append(make([]any, 0, 1+2*len(events)), l.cfg.TTL.Milliseconds())
	for _, ev := range events {
		ev.Data.EmailID = emailID
		b, err := json.Marshal(ev)
		if err != nil {
			return nil, fmt.Errorf("encode event: %w", err)
		}
		p.args = append(p.args, ev.ID, b)
	}
	return p, nil
}

// Commands adds the events' write to c, a pipeline or an automatic
// pipeliner, in this order: the outbox entry, then the events. Whatever
// prefix of the round trip Redis runs, an event it stored is in the outbox,
// so the sweeper delivers it if Dispatch never runs. The caller writes the
// email's record after these, in the same round trip. Safe to repeat: the
// events keep their ids and sequences.
func (p *Pending) Commands(ctx context.Context, c redis.Cmdable) []redis.Cmder {
	if p == nil {
		return nil
	}
	z := c.ZAdd(ctx, OutboxKey, redis.Z{Score: p.score, Member: p.emailID})
	p.seqs = c.Eval(ctx, storeScript, []string{EmailKey(p.emailID)}, p.args...)
	return []redis.Cmder{z, p.seqs}
}

// Extra is Commands as the hook queue.Update takes.
func (p *Pending) Extra() queue.Extra {
	if p == nil {
		return nil
	}
	return p.Commands
}

// Dispatch hands the stored events to delivery: a webhook task for every
// endpoint, the event log, then the outbox entry is cleared. Call it once
// the round trip with Commands succeeded. An error leaves the events in
// the outbox, for the sweeper.
func (p *Pending) Dispatch(ctx context.Context) error {
	if p == nil {
		return nil
	}
	seqs, err := p.seqs.Int64Slice()
	if err != nil {
		return fmt.Errorf("store events: %w", err)
	}
	if len(seqs) != len(p.events) {
		return fmt.Errorf("store events: %d sequences for %d events", len(seqs), len(p.events))
	}
	for i, ev := range p.events {
		ev.Data.Sequence = seqs[i]
	}
	return p.l.handOff(ctx, p.emailID, p.events, p.score)
}

// Emit stores events of email emailID and hands them to delivery. It is
// for events that change nothing else in Redis; an emitter that also
// writes the email's record uses Prepare and puts Commands in that write.
func (l *Log) Emit(ctx context.Context, emailID string, events ...*Event) error {
	p, err := l.Prepare(emailID, events)
	if err != nil || p == nil {
		return err
	}
	cmds, err := l.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		p.Commands(ctx, pipe)
		return nil
	})
	if err != nil {
		return fmt.Errorf("store events: %w", err)
	}
	for _, c := range cmds {
		if err := c.Err(); err != nil {
			return fmt.Errorf("store events: %w", err)
		}
	}
	if err := p.Dispatch(ctx); err != nil {
		// Stored: the sweeper delivers them.
		l.log.Warn("events stored, hand-off left to the sweeper", "email_id", emailID, "err", err)
	}
	return nil
}

// handOff queues a webhook delivery of every event to every endpoint,
// appends the events to the log, marks them handed off and, if score is
// still the email's outbox score, removes it from the outbox. A delivery
// task's id is the event's id and the endpoint's key: a second hand-off of
// the same event (the sweeper after a crash) queues nothing new while the
// first task is kept.
func (l *Log) handOff(ctx context.Context, emailID string, evs []*Event, score float64) error {
	for _, ev := range evs {
		if len(l.cfg.Endpoints) == 0 {
			break
		}
		b, err := ev.Body()
		if err != nil {
			return err
		}
		for _, ep := range l.cfg.Endpoints {
			task, err := newDelivery(ev.ID, ep.Key, b)
			if err != nil {
				return err
			}
			_, err = l.enq.EnqueueContext(ctx, task)
			if err != nil && !errors.Is(err, asynq.ErrTaskIDConflict) {
				return fmt.Errorf("queue webhook: %w", err)
			}
		}
	}
	minID := strconv.FormatInt(l.now().Add(-l.cfg.Retention).UnixMilli(), 10)
	cmds, err := l.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		fields := make([]string, 0, len(evs))
		for _, ev := range evs {
			b, err := json.Marshal(ev)
			if err != nil {
				return fmt.Errorf("encode event: %w", err)
			}
			// Exact trimming: what is older than the retention goes now.
			pipe.XAdd(ctx, &redis.XAddArgs{Stream: LogKey, MinID: minID, Values: []any{"e", b}})
			fields = append(fields, "u:"+strconv.FormatInt(ev.Data.Sequence, 10))
		}
		if len(fields) > 0 {
			pipe.HDel(ctx, EmailKey(emailID), fields...)
		}
		outboxScript.Eval(ctx, pipe, []string{OutboxKey}, emailID, strconv.FormatFloat(score, 'f', -1, 64), "")
		return nil
	})
	if err == nil {
		for _, c := range cmds {
			if err = c.Err(); err != nil {
				break
			}
		}
	}
	if err != nil {
		return fmt.Errorf("log events: %w", err)
	}
	if m := l.cfg.Metrics; m != nil {
		for _, ev := range evs {
			m.Events.WithLabelValues(ev.Type).Inc()
		}
	}
	return nil
}

// Sweep hands off the events of emails that stayed in the outbox longer
// than olderThan (their emitter died between storing and handing off, or
// Redis failed in between), at most limit emails. It claims each email
// first, so concurrent sweepers in several processes do not both hand it
// off. It returns how many events it handed off.
func (l *Log) Sweep(ctx context.Context, olderThan time.Duration, limit int) (int, error) {
	now := l.now()
	zs, err := l.rdb.ZRangeArgsWithScores(ctx, redis.ZRangeArgs{Key: OutboxKey, ByScore: true,
		Start: "-inf", Stop: strconv.FormatInt(now.Add(-olderThan).UnixMicro(), 10), Count: int64(limit)}).Result()
	if err != nil {
		return 0, fmt.Errorf("sweep outbox: %w", err)
	}
	n := 0
	for i, z := range zs {
		id, _ := z.Member.(string)
		claim := float64(now.UnixMicro() + int64(i)) // distinct per claim
		ok, err := outboxScript.Run(ctx, l.rdb, []string{OutboxKey}, id,
			strconv.FormatFloat(z.Score, 'f', -1, 64), strconv.FormatFloat(claim, 'f', -1, 64)).Int()
		if err != nil {
			return n, fmt.Errorf("claim outbox entry: %w", err)
		}
		if ok == 0 {
			continue // another sweeper, or a new emitter, has it
		}
		evs, err := l.undelivered(ctx, id)
		if err != nil {
			return n, err
		}
		if err := l.handOff(ctx, id, evs, claim); err != nil {
			return n, err
		}
		n += len(evs)
		if len(evs) > 0 {
			l.log.Warn("events handed off by the sweeper", "email_id", id, "events", len(evs))
			if m := l.cfg.Metrics; m != nil {
				m.Swept.Add(float64(len(evs)))
			}
		}
	}
	return n, nil
}

// undelivered returns the events of an email not yet handed off.
func (l *Log) undelivered(ctx context.Context, emailID string) ([]*Event, error) {
	m, err := l.rdb.HGetAll(ctx, EmailKey(emailID)).Result()
	if err != nil {
		return nil, fmt.Errorf("read events: %w", err)
	}
	var out []*Event
	for k := range m {
		seq, ok := strings.CutPrefix(k, "u:")
		if !ok {
			continue
		}
		ev, err := parseStored(seq, m["e:"+seq])
		if err != nil {
			return nil, err
		}
		out = append(out, ev)
	}
	slices.SortFunc(out, func(a, b *Event) int { return int(a.Data.Sequence - b.Data.Sequence) })
	return out, nil
}

func parseStored(seq, v string) (*Event, error) {
	n, err := strconv.ParseInt(seq, 10, 64)
	if err != nil {
		return nil, fmt.Errorf("event sequence %q: %w", seq, err)
	}
	var ev Event
	if err := json.Unmarshal([]byte(v), &ev); err != nil {
		return nil, fmt.Errorf("decode event %d: %w", n, err)
	}
	ev.Data.Sequence = n
	return &ev, nil
}

// Email returns the events of email emailID, by sequence (nil if it has
// none, or they expired with its record).
func (l *Log) Email(ctx context.Context, emailID string) ([]*Event, error) {
	m, err := l.rdb.HGetAll(ctx, EmailKey(emailID)).Result()
	if err != nil {
		return nil, fmt.Errorf("read events: %w", err)
	}
	var out []*Event
	for k, v := range m {
		seq, ok := strings.CutPrefix(k, "e:")
		if !ok {
			continue
		}
		ev, err := parseStored(seq, v)
		if err != nil {
			return nil, err
		}
		out = append(out, ev)
	}
	slices.SortFunc(out, func(a, b *Event) int { return int(a.Data.Sequence - b.Data.Sequence) })
	return out, nil
}

// ErrBadCursor is returned by After for a cursor it did not hand out.
var ErrBadCursor = errors.New("not a cursor from next_cursor")

// After returns up to limit events of the log that came after cursor,
// oldest first, and the cursor to pass next time (cursor itself when there
// is nothing new). An empty cursor starts at the oldest event kept. A
// cursor older than the oldest kept event starts there too: what was
// trimmed is gone. Events appear in the order they were handed off, which
// follows each email's sequence except after a sweep.
func (l *Log) After(ctx context.Context, cursor string, limit int) ([]*Event, string, error) {
	start := "-"
	if cursor != "" {
		if !validCursor(cursor) {
			return nil, "", ErrBadCursor
		}
		start = "(" + cursor
	}
	msgs, err := l.rdb.XRangeN(ctx, LogKey, start, "+", int64(limit)).Result()
	if err != nil {
		return nil, "", fmt.Errorf("read event log: %w", err)
	}
	out := make([]*Event, 0, len(msgs))
	next := cursor
	for _, m := range msgs {
		next = m.ID
		s, _ := m.Values["e"].(string)
		var ev Event
		if err := json.Unmarshal([]byte(s), &ev); err != nil {
			continue // not written by sendq
		}
		out = append(out, &ev)
	}
	if next == "" {
		next = "0-0"
	}
	return out, next, nil
}

// validCursor reports whether s is a stream id: digits, a dash, digits.
func validCursor(s string) bool {
	ms, seq, ok := strings.Cut(s, "-")
	if !ok || len(ms) == 0 || len(seq) == 0 || len(ms) > 20 || len(seq) > 20 {
		return false
	}
	for _, c := range ms + seq {
		if c < '0' || c > '9' {
			return false
		}
	}
	_, err1 := strconv.ParseUint(ms, 10, 64)
	_, err2 := strconv.ParseUint(seq, 10, 64)
	return err1 == nil && err2 == nil
}

// Attempt returns what the worker writes for one delivery attempt of e
// (worker.Events): the commands that store the attempt's events in the
// record's write, and their hand-off. Both nil when the attempt changed no
// recipient.
func (l *Log) Attempt(e *queue.Email, attempt int, results map[string]queue.RecipientResult) (queue.Extra, func(context.Context) error, error) {
	p, err := l.Prepare(e.ID, FromAttempt(e, attempt, results))
	if err != nil || p == nil {
		return nil, nil, err
	}
	return p.Commands, p.Dispatch, nil
}

// Cancel returns the hook queue.Admin.Cancel takes, which stores an
// email.canceled event for every recipient not yet settled with the
// canceled record (read from store), and the hand-off to run once Cancel
// succeeded.
func (l *Log) Cancel(ctx context.Context, store *queue.Store) (func(*queue.Email) (queue.Extra, error), func(context.Context) error) {
	var p *Pending
	hook := func(e *queue.Email) (queue.Extra, error) {
		rec, err := store.Load(ctx, e)
		if err != nil {
			return nil, err
		}
		p, err = l.Prepare(e.ID, Canceled(e, rec, l.now()))
		return p.Extra(), err
	}
	return hook, func(ctx context.Context) error { return p.Dispatch(ctx) }
}
