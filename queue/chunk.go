package queue

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
)

// TypeSendChunk is the asynq task type of a chunk: up to ChunkSize emails
// of one batch that share a priority and a time to send, delivered by one
// task. Each email of a chunk has its own record (Store.Hold), which holds
// its state, with its payload beside it (PayloadKey); the chunk names them. An email of a chunk
// that must be tried again leaves it: it becomes a task of its own
// (TypeSendEmail, task id its id), as a single send is from the start.
//
// One asynq task per email costs asynq a dequeue and a completion, a round
// trip and a Lua script each, whatever the email: for a batch of 1,000
// that is most of the delivery's work (README: Performance). A chunk pays
// them once for up to ChunkSize emails, and its emails are claimed (marked
// sending) in one round trip per group.
const TypeSendChunk = "email:chunk"

// ChunkPayloadVersion is the version of the Chunk payload this build
// writes; DecodeChunk accepts this version only.
const ChunkPayloadVersion = 1

// ChunkSize is the most emails a chunk holds. 100 makes a 1,000-message
// batch ten tasks: enough to spread over fetchers, shards and worker
// processes, few enough that asynq's per-task cost vanishes.
const ChunkSize = 100

// Chunk is the payload of a TypeSendChunk task.
type Chunk struct {
	V       int      `json:"v"`
	ID      string   `json:"id"`
	BatchID string   `json:"batch_id,omitempty"`
	IDs     []string `json:"ids"`
}

// ChunkID is the task id of the chunk of batch batchID that holds the
// emails ids: derived from them, so that a retry of the batch (its
// Idempotency-Key) that makes the same chunk makes the same task, which
// asynq keeps once, and one that makes another (the first try had queued
// only some of the emails) makes another task, whose claims skip the
// emails the first one holds.
func ChunkID(batchID string, ids []string) string {
	h := sha256.New()
	for _, id := range ids {
		h.Write([]byte(id))
		h.Write([]byte{0})
	}
	return batchID + "." + hex.EncodeToString(h.Sum(nil)[:12])
}

// NewChunkTask returns the task of chunk c, whose emails have priority
// p, on its queue in t: a shard picked by the chunk's id, so that the
// chunks of a batch spread over the shards.
func (t *Topology) NewChunkTask(c *Chunk, p string, opts ...asynq.Option) (*asynq.Task, error) {
	if c.ID == "" || len(c.IDs) == 0 {
		return nil, errors.New("queue: chunk has no id or no emails")
	}
	c.V = ChunkPayloadVersion
	b, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("queue: encode chunk: %w", err)
	}
	opts = append([]asynq.Option{asynq.TaskID(c.ID), asynq.Queue(t.Pick(p, c.ID))}, opts...)
	return asynq.NewTask(TypeSendChunk, b, opts...), nil
}

// DecodeChunk decodes a chunk payload written by NewChunkTask.
func DecodeChunk(payload []byte) (*Chunk, error) {
	var c Chunk
	if err := json.Unmarshal(payload, &c); err != nil {
		return nil, fmt.Errorf("queue: decode chunk: %w", err)
	}
	if c.V != ChunkPayloadVersion {
		return nil, fmt.Errorf("queue: unsupported chunk payload version %d", c.V)
	}
	if c.ID == "" || len(c.IDs) == 0 {
		return nil, errors.New("queue: chunk payload has no id or no emails")
	}
	return &c, nil
}

// Held is an email to be held by a chunk (Store.Hold).
type Held struct {
	Email *Email
	// Chunk is the id of the chunk that delivers it, and Queue the queue
	// that chunk goes to: the chunk's emails are counted there
	// (HeldEmails) when Queue is set.
	Chunk, Queue string
	// MaxAttempts, Retention and AttemptTimeout are what a single send's
	// task options say (asynq.MaxRetry, Retention, Timeout): the email's
	// own task, should it leave the chunk, gets them (Record.TaskOptions).
	MaxAttempts    int
	Retention      time.Duration
	AttemptTimeout time.Duration
	// IfAbsent writes the record only if the email has none: its id is
	// derived (from an Idempotency-Key), and a record under it is the same
	// email, queued by an earlier try of the same request, whose state
	// must not go back to queued.
	IfAbsent bool
}

// holdScript writes the record KEYS[1] (fields ARGV[3]…) and the payload
// KEYS[2] (ARGV[2]), both expiring in ARGV[1] ms, unless the record
// exists; 1 if written.
var holdScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[1])
return 1
`)

// Hold writes the records of emails held by chunks, in one round trip
// (a pipeline: in a Cluster, one per master), each expiring after ttl
// unless the worker writes it again. The record has what a status, a
// cancel and the worker need: the state (queued or scheduled), the chunk,
// the task options; the payload is beside it (PayloadKey), with the same
// expiry. A record must exist before its chunk is queued: the chunk's
// worker finds its emails by their records.
func (s *Store) Hold(ctx context.Context, hs []Held, ttl time.Duration) error {
	if len(hs) == 0 {
		return nil
	}
	pipe := s.rdb.Pipeline()
	cmds := make([]redis.Cmder, 0, 2*len(hs))
	var scripted []int // indexes in cmds of holdScript calls
	for _, h := range hs {
		e := h.Email
		e.V = PayloadVersion
		payload, err := json.Marshal(e)
		if err != nil {
			return fmt.Errorf("hold email %s: %w", e.ID, err)
		}
		state := StatusQueued
		if !e.SendAt.IsZero() && e.SendAt.After(e.CreatedAt) {
			state = StatusScheduled
		}
		fields := []any{"state", state, "created_at", e.CreatedAt.UTC().Format(time.RFC3339Nano),
			"held", 1, "chunk", h.Chunk, "max_attempts", h.MaxAttempts,
			"retention_ms", h.Retention.Milliseconds(), "timeout_ms", h.AttemptTimeout.Milliseconds()}
		if e.Owner != "" {
			fields = append(fields, "owner", e.Owner)
		}
		if e.Priority != "" {
			fields = append(fields, "priority", e.Priority)
		}
		if e.BatchID != "" {
			fields = append(fields, "batch_id", e.BatchID)
		}
		key, pkey := recordKey(e.ID), PayloadKey(e.ID)
		if h.IfAbsent {
			args := append([]any{ttl.Milliseconds(), payload}, fields...)
			scripted = append(scripted, len(cmds))
			cmds = append(cmds, pipe.EvalSha(ctx, holdScript.Hash(), []string{key, pkey}, args...))
			continue
		}
		cmds = append(cmds, pipe.HSet(ctx, key, fields...), pipe.PExpire(ctx, key, ttl), pipe.Set(ctx, pkey, payload, ttl))
	}
	// The chunks' counts, in the same round trip: before the chunks are
	// queued, so that a worker's DoneHeld comes after.
	type chunk struct{ q, id string }
	var order []chunk
	counts := map[chunk]int{}
	for _, h := range hs {
		if h.Queue == "" {
			continue
		}
		c := chunk{h.Queue, h.Chunk}
		if counts[c] == 0 {
			order = append(order, c)
		}
		counts[c]++
	}
	for _, c := range order {
		scripted = append(scripted, len(cmds))
		cmds = append(cmds, heldAdd(ctx, pipe, c.q, c.id, counts[c], ttl))
	}
	_, err := pipe.Exec(ctx)
	if err != nil && len(scripted) > 0 && isNoScript(err) {
		// A Redis that does not know the scripts yet (first use, or a
		// restart): load them and write again. Holding twice is the same.
		for _, sc := range []*redis.Script{holdScript, heldAddScript} {
			if lerr := sc.Load(ctx, s.rdb).Err(); lerr != nil {
				return fmt.Errorf("hold emails: %w", lerr)
			}
		}
		return s.Hold(ctx, hs, ttl)
	}
	if err != nil {
		return fmt.Errorf("hold emails: %w", err)
	}
	return nil
}

func isNoScript(err error) bool { return err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT") }

// claimScript claims the record KEYS[1] for chunk ARGV[1]: if the chunk
// holds it (its chunk field) and it is queued or scheduled, it becomes
// sending and the script returns 1; if it is sending already (an earlier
// run of the chunk died with it), 2; otherwise (settled, canceled, left
// the chunk for a task of its own, or no record) 0. The record itself is
// read by an HGETALL after it in the same pipeline: cheaper for Redis
// than returning it from Lua.
var claimScript = redis.NewScript(`
local h = redis.call('HMGET', KEYS[1], 'state', 'chunk')
if h[2] ~= ARGV[1] then return 0 end
if h[1] == 'queued' or h[1] == 'scheduled' then
  redis.call('HSET', KEYS[1], 'state', 'sending')
  return 1
end
if h[1] == 'sending' then return 2 end
return 0
`)

// Claimed is an email a chunk's worker is to deliver.
type Claimed struct {
	ID     string
	Email  *Email
	Record *Record
	// Again: the email was sending already when claimed: an earlier run
	// of the chunk stopped (crashed) while delivering it.
	Again bool
	// Err: its record or payload could not be read (Email is nil): it
	// can never be delivered.
	Err error
}

// Claim marks the emails ids of chunk chunkID sending, atomically for
// each (a cancel either happens before, or finds it sending), in one round
// trip, and returns those it is to deliver with their records. The others
// are skipped: settled, canceled or delivered by a task of their own.
func (s *Store) Claim(ctx context.Context, chunkID string, ids []string) ([]Claimed, error) {
	codes := make([]*redis.Cmd, len(ids))
	recs := make([]*redis.MapStringStringCmd, len(ids))
	payloads := make([]*redis.StringCmd, len(ids))
	run := func() error {
		if ap, ok := s.rdb.(*redis.AutoPipeliner); ok && !ap.IsBlocking() {
			for i, id := range ids {
				codes[i] = ap.EvalSha(ctx, claimScript.Hash(), []string{recordKey(id)}, chunkID)
				recs[i] = ap.HGetAll(ctx, recordKey(id))
				payloads[i] = ap.Get(ctx, PayloadKey(id))
			}
			for i := range ids {
				for _, c := range []redis.Cmder{codes[i], recs[i], payloads[i]} {
					if err := c.Err(); err != nil && !errors.Is(err, redis.Nil) {
						return err
					}
				}
			}
			return nil
		}
		pipe := s.rdb.Pipeline()
		for i, id := range ids {
			codes[i] = pipe.EvalSha(ctx, claimScript.Hash(), []string{recordKey(id)}, chunkID)
			recs[i] = pipe.HGetAll(ctx, recordKey(id))
			payloads[i] = pipe.Get(ctx, PayloadKey(id))
		}
		_, err := pipe.Exec(ctx)
		if errors.Is(err, redis.Nil) {
			err = nil
		}
		return err
	}
	err := run()
	if isNoScript(err) {
		if err = claimScript.Load(ctx, s.rdb).Err(); err == nil {
			err = run()
		}
	}
	if err != nil {
		return nil, fmt.Errorf("claim chunk emails: %w", err)
	}
	var out []Claimed
	for i := range ids {
		code, _ := codes[i].Int64()
		if code == 0 {
			continue
		}
		cl := Claimed{ID: ids[i], Again: code == 2}
		cl.Record, cl.Err = parseRecord(recs[i].Val())
		if cl.Err == nil {
			cl.Record.Payload = []byte(payloads[i].Val())
			cl.Email, cl.Err = DecodeEmail(cl.Record.Payload)
		}
		if cl.Err != nil {
			cl.Email, cl.Err = nil, fmt.Errorf("claim %s: %w", ids[i], cl.Err)
		}
		out = append(out, cl)
	}
	return out, nil
}

// cancelHeldScript cancels the record KEYS[1] of an email held by a
// chunk: {1} if it was queued or scheduled (it is canceled now), {0,
// state} if not (sending or done: not canceled), {-1} if no chunk holds
// it (its own task does: cancel that).
var cancelHeldScript = redis.NewScript(`
local h = redis.call('HMGET', KEYS[1], 'state', 'chunk')
if not h[2] then return {-1} end
if h[1] == 'queued' or h[1] == 'scheduled' then
  redis.call('HSET', KEYS[1], 'state', 'canceled', 'reason', 'canceled')
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  return {1}
end
return {0, h[1]}
`)

// errNotHeld: no chunk holds the email.
var errNotHeld = errors.New("not held by a chunk")

// cancelHeld cancels email id if a chunk holds it and it is not sending
// yet: nil if canceled, *ErrWrongState if too late, errNotHeld if its own
// task holds it.
func (s *Store) cancelHeld(ctx context.Context, id string) error {
	v, err := claimRun(ctx, s.rdb, cancelHeldScript, recordKey(id), s.ttl.Milliseconds())
	if err != nil {
		return fmt.Errorf("cancel: %w", err)
	}
	code, _ := v[0].(int64)
	switch code {
	case 1:
		return nil
	case -1:
		return errNotHeld
	}
	st := ""
	if len(v) > 1 {
		st, _ = v[1].(string)
	}
	if st == StatusSending {
		return &ErrWrongState{Op: "cancel", Status: StatusSending}
	}
	return &ErrWrongState{Op: "cancel", Status: st}
}

func claimRun(ctx context.Context, rdb redis.Scripter, sc *redis.Script, key string, args ...any) ([]any, error) {
	v, err := sc.Run(ctx, rdb, []string{key}, args...).Slice()
	if err != nil {
		return nil, err
	}
	if len(v) == 0 {
		return nil, errors.New("empty script reply")
	}
	return v, nil
}

// TaskOptions are the asynq options of the task of its own an email held
// by a chunk gets when it leaves the chunk, attempts attempts made: what
// a single send's task is given (asynq.MaxRetry of the attempts left).
func (r *Record) TaskOptions() []asynq.Option {
	opts := []asynq.Option{asynq.MaxRetry(max(r.MaxAttempts-1, 0))}
	if r.Retention > 0 {
		opts = append(opts, asynq.Retention(r.Retention))
	}
	if r.AttemptTimeout > 0 {
		opts = append(opts, asynq.Timeout(r.AttemptTimeout))
	}
	return opts
}

// SharedAttachmentsKey is the key of attachments kept once for the emails
// of batch batchID that all have them (sum: their SHA-256, hex), under the
// batch's hash tag.
func SharedAttachmentsKey(batchID, sum string) string {
	return "sendq:batch:{" + batchID + "}:att:" + sum
}

// AttachmentsSum is the SHA-256 (hex) of an email's attachments: names,
// types, content ids and content. Equal sums, equal attachments.
func AttachmentsSum(as []Attachment) string {
	h := sha256.New()
	for _, a := range as {
		for _, s := range []string{a.FileName, a.ContentType, a.ContentID} {
			h.Write([]byte(strconv.Itoa(len(s))))
			h.Write([]byte{0})
			h.Write([]byte(s))
		}
		h.Write([]byte(strconv.Itoa(len(a.Data))))
		h.Write([]byte{0})
		h.Write(a.Data)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Share keeps attachments as under key for ttl (SharedAttachmentsKey),
// once for every email of a batch that has them.
func (s *Store) Share(ctx context.Context, key string, as []Attachment, ttl time.Duration) error {
	b, err := json.Marshal(as)
	if err != nil {
		return fmt.Errorf("share attachments: %w", err)
	}
	if err := s.rdb.Set(ctx, key, b, ttl).Err(); err != nil {
		return fmt.Errorf("share attachments: %w", err)
	}
	return nil
}

// ErrSharedGone: the attachments an email shared with its batch are no
// longer kept (they expire with the batch's records).
var ErrSharedGone = errors.New("shared attachments are gone")

// LoadShared fills e.Attachments from its shared attachments, if it has
// them; cache, if not nil, keeps what was loaded for the other emails of
// a chunk (the same key is the same attachments).
func (s *Store) LoadShared(ctx context.Context, e *Email, cache *SharedCache) error {
	if e.SharedAttachments == "" || len(e.Attachments) > 0 {
		return nil
	}
	if cache != nil {
		cache.mu.Lock()
		defer cache.mu.Unlock()
		if as, ok := cache.m[e.SharedAttachments]; ok {
			e.Attachments = as
			return nil
		}
	}
	b, err := s.rdb.Get(ctx, e.SharedAttachments).Bytes()
	if errors.Is(err, redis.Nil) {
		return ErrSharedGone
	}
	if err != nil {
		return fmt.Errorf("load shared attachments: %w", err)
	}
	var as []Attachment
	if err := json.Unmarshal(b, &as); err != nil {
		return fmt.Errorf("load shared attachments: %w", err)
	}
	if cache != nil {
		if cache.m == nil {
			cache.m = map[string][]Attachment{}
		}
		cache.m[e.SharedAttachments] = as
	}
	e.Attachments = as
	return nil
}

// SharedCache keeps the shared attachments loaded for the emails of one
// chunk. The zero value is ready; emails that share it share the slices,
// which nobody changes.
type SharedCache struct {
	mu sync.Mutex
	m  map[string][]Attachment
}

// HeldStates returns, for each of ids, its state if a chunk holds it
// (its record is then its whole status: StatusFor), or "" if not (its own
// task holds it, or nothing does): the states of a batch in one round trip.
func (s *Store) HeldStates(ctx context.Context, ids []string) ([]string, error) {
	out := make([]string, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.SliceCmd, len(ids))
	for i, id := range ids {
		cmds[i] = pipe.HMGet(ctx, recordKey(id), "state", "chunk")
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("read states: %w", err)
	}
	for i, c := range cmds {
		v := c.Val()
		if len(v) != 2 {
			continue
		}
		st, _ := v[0].(string)
		chunk, _ := v[1].(string)
		if chunk != "" {
			out[i] = st
		}
	}
	return out, nil
}

// HeldKey is the hash that counts the emails held by the unfinished chunks
// of queue q (one shard): a field per chunk (its id: how many emails it
// holds) and heldTotal, their sum. It shares the queue's hash tag, so in a
// Cluster it lives on the queue's master.
func HeldKey(q string) string { return "sendq:held:{" + q + "}" }

const heldTotal = "emails"

// heldAddScript counts chunk ARGV[1] of ARGV[2] emails in KEYS[1] once
// (a retried batch enqueues the same chunk again: counted once), and
// keeps the hash ARGV[3] ms.
var heldAddScript = redis.NewScript(`
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('HINCRBY', KEYS[1], 'emails', ARGV[2])
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
`)

// heldDoneScript uncounts chunk ARGV[1] from KEYS[1], once.
var heldDoneScript = redis.NewScript(`
local n = redis.call('HGET', KEYS[1], ARGV[1])
if n then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('HINCRBY', KEYS[1], 'emails', -tonumber(n))
end
return 1
`)

// heldAdd counts the n emails of chunk chunkID, queued on q, among the
// emails q's chunks hold (HeldEmails) until DoneHeld, on c, a pipeline
// (by its SHA: the caller loads it on NOSCRIPT); ttl bounds how long a
// chunk removed from outside sendq (asynq's CLI) stays counted.
func heldAdd(ctx context.Context, c redis.Scripter, q, chunkID string, n int, ttl time.Duration) *redis.Cmd {
	return c.EvalSha(ctx, heldAddScript.Hash(), []string{HeldKey(q)}, chunkID, n, ttl.Milliseconds())
}

// DoneHeld uncounts chunk chunkID of queue q: every email it held was
// delivered, failed, canceled or left for a task of its own. Safe to
// repeat.
func (s *Store) DoneHeld(ctx context.Context, q, chunkID string) error {
	if err := heldDoneScript.Run(ctx, s.rdb, []string{HeldKey(q)}, chunkID).Err(); err != nil {
		return fmt.Errorf("uncount held emails: %w", err)
	}
	return nil
}

// HeldEmails is how many emails the unfinished chunks of queues hold (the
// shards of one priority): pending, scheduled, or being delivered. Each
// chunk is one asynq task, however many emails it holds.
func (s *Store) HeldEmails(ctx context.Context, queues []string) (int, error) {
	total := 0
	for _, q := range queues {
		n, err := s.rdb.HGet(ctx, HeldKey(q), heldTotal).Int()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("read held emails: %w", err)
		}
		total += n
	}
	return total, nil
}
