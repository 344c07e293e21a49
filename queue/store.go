package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Recipient states.
const (
	RecipientPending  = "pending"  // not tried yet
	RecipientSent     = "sent"     // the server accepted the message for it (250 after DATA)
	RecipientDeferred = "deferred" // a transient failure; it will be tried again
	RecipientFailed   = "failed"   // a permanent failure, or retries ran out
	// RecipientSuppressed: on the suppression list; never sent to.
	RecipientSuppressed = "suppressed"
	// RecipientBounced: the relay accepted it (it was sent), then a
	// delivery status report said it failed for good.
	RecipientBounced = "bounced"
)

// Settled reports whether a recipient in status st is done with: never
// tried again (sent, failed, suppressed, bounced).
func Settled(st string) bool {
	switch st {
	case RecipientSent, RecipientFailed, RecipientSuppressed, RecipientBounced:
		return true
	}
	return false
}

// Failure reasons: the bounded set used in the status body and in metrics.
const (
	ReasonPermanent = "permanent" // the server answered 5xx
	ReasonTransient = "transient" // still failing transiently when attempts ran out
	ReasonExpired   = "expired"   // older than the maximum age
	ReasonCanceled  = "canceled"  // canceled through the API
	ReasonInvalid   = "invalid"   // the task could not be decoded or built
	// ReasonTooLarge: the message is larger than the relay's advertised
	// SIZE (RFC 1870); it was not uploaded.
	ReasonTooLarge = "too_large"
	// ReasonUnsupported: the relay does not offer an extension the message
	// needs (SMTPUTF8 for a non-ASCII address or header, 8BITMIME for 8-bit
	// content); it was not offered to the relay.
	ReasonUnsupported = "unsupported"
	// ReasonArchived: the task was archived from outside sendq (asynq's
	// CLI or web UI) before sendq's worker finished it.
	ReasonArchived = "archived"
	// ReasonSuppressed: every recipient was on the suppression list.
	ReasonSuppressed = "suppressed"
)

// Reasons lists every failure reason, for initialising metric labels.
var Reasons = []string{ReasonPermanent, ReasonTransient, ReasonExpired, ReasonCanceled, ReasonInvalid,
	ReasonTooLarge, ReasonUnsupported, ReasonArchived, ReasonSuppressed}

// Reply is what an SMTP server last said about a recipient.
type Reply struct {
	Code         int    `json:"code,omitempty"`
	EnhancedCode string `json:"enhanced_code,omitempty"`
	Message      string `json:"message,omitempty"`
}

// RecipientResult is the recorded outcome for one recipient.
type RecipientResult struct {
	Status    string    `json:"status"`
	Reply     Reply     `json:"reply"`
	UpdatedAt time.Time `json:"updated_at"`
	// Relay names the relay (SENDQ_SMTP_URL's name=) that gave the reply:
	// for a sent recipient, the one that accepted the message.
	Relay string `json:"relay,omitempty"`
	// Reason is why a suppressed recipient is on the suppression list.
	Reason string `json:"reason,omitempty"`
}

// Record is what sendq keeps of an email beside asynq's task: attempts and
// per-recipient results. It is written by the worker only.
type Record struct {
	Attempts   int
	CreatedAt  time.Time
	State      string // last state the worker or the API wrote
	Reason     string
	LastError  string
	SentAt     time.Time
	Recipients map[string]RecipientResult
	// Owner is the email's owner (Email.Owner), so that the status of an
	// email asynq has forgotten stays private to it.
	Owner string
	// DKIMSignature holds the DKIM-Signature header fields an earlier
	// attempt sent, for the next attempt to send again.
	DKIMSignature string
	// Priority and BatchID are the email's (Email.Priority, BatchID).
	Priority, BatchID string
	// Stale marks a record of an earlier email with the same id.
	Stale bool
	// Held: a chunk held the email (Store.Hold). Chunk is the chunk
	// that holds it still, if one does; Payload its payload (nil once a
	// sent one's expired), and MaxAttempts, Retention and AttemptTimeout
	// its task options.
	Held                      bool
	Chunk                     string
	Payload                   []byte
	MaxAttempts               int
	Retention, AttemptTimeout time.Duration
}

// Store keeps delivery records in Redis, one hash per email. Every key of an
// email carries the email id as a hash tag, so in Redis Cluster they share a
// slot.
type Store struct {
	rdb redis.UniversalClient
	ttl time.Duration
}

// DefaultRecordTTL is how long a record is kept after its last write when
// NewStore is given zero: longer than the maximum age of an email plus the
// retention of a finished one.
const DefaultRecordTTL = 7 * 24 * time.Hour

// NewStore returns a Store on rdb whose records expire ttl after their last
// write (DefaultRecordTTL if ttl is zero). rdb may be the deferred face of
// an automatic pipeliner (NewPipeliner): the records of
// concurrent deliveries are then read and written in shared batches.
func NewStore(rdb redis.UniversalClient, ttl time.Duration) *Store {
	if ttl <= 0 {
		ttl = DefaultRecordTTL
	}
	return &Store{rdb: rdb, ttl: ttl}
}

func recordKey(id string) string { return "sendq:email:{" + id + "}" }

// PayloadKey holds the payload of an email a chunk holds (Store.Hold), in
// the slot of its record: apart from the record, so that the record stays
// a small hash (Redis' compact encoding; a 1 KB member would make it a
// hash table) and the payload can expire on its own.
func PayloadKey(id string) string { return "sendq:email:{" + id + "}:p" }

const rcptPrefix = "r:"

// Load returns the record of email e for a new attempt: the results of
// earlier attempts. A record written for an earlier email with the same id
// (an Idempotency-Key reused after the first email was forgotten) has
// another created_at: Load returns an empty record marked Stale, and the
// next Save with Reset drops the old one.
func (s *Store) Load(ctx context.Context, e *Email) (*Record, error) {
	rec, err := s.Get(ctx, e.ID)
	if errors.Is(err, ErrNoRecord) {
		return &Record{Recipients: map[string]RecipientResult{}}, nil
	}
	if err != nil {
		return nil, err
	}
	if !rec.CreatedAt.IsZero() && !rec.CreatedAt.Equal(e.CreatedAt) {
		return &Record{Recipients: map[string]RecipientResult{}, Stale: true}, nil
	}
	return rec, nil
}

// Update is what one attempt learned.
type Update struct {
	State      string // sending, retrying, sent, failed or canceled
	Reason     string // with failed: one of the Reason constants
	LastError  string
	SentAt     time.Time
	CreatedAt  time.Time // written only when set
	Owner      string    // written only when set
	Priority   string    // written only when set
	BatchID    string    // written only when set
	Attempts   int       // written only when set
	Recipients map[string]RecipientResult
	// DKIMSignature is written only when set.
	DKIMSignature string
	// Reset drops the record before writing (it was Stale).
	Reset bool
	// Unchunk: the email leaves its chunk for a task of its own (a
	// retry), which holds it from now on.
	Unchunk bool
	// PayloadTTL, if set, makes the payload of a held email expire then
	// (a sent email's, after Retention, as asynq forgets a single send's
	// task).
	PayloadTTL time.Duration
	// Extra, if set, adds commands to the same round trip, before the
	// record's: another package's keys under the email's hash tag (the
	// events of the attempt), so that the record is never written
	// without them. Its commands must be safe to repeat.
	Extra Extra
}

// Extra adds commands to a record's write (Update.Extra) on c, a pipeline
// or an automatic pipeliner, and returns them so that Save checks them.
type Extra func(ctx context.Context, c redis.Cmdable) []redis.Cmder

// Save writes u into the record of email id in one round trip. The worker
// calls it before it acknowledges the task, so a recipient recorded as sent
// is never sent to again, even if the task is delivered twice.
func (s *Store) Save(ctx context.Context, id string, u Update) error {
	key := recordKey(id)
	fields := make([]any, 0, 2*len(u.Recipients)+18)
	if u.State != "" {
		fields = append(fields, "state", u.State)
	}
	if u.Reason != "" {
		fields = append(fields, "reason", u.Reason)
	}
	if u.LastError != "" {
		fields = append(fields, "last_error", u.LastError)
	}
	if !u.CreatedAt.IsZero() {
		fields = append(fields, "created_at", u.CreatedAt.UTC().Format(time.RFC3339Nano))
	}
	if u.Owner != "" {
		fields = append(fields, "owner", u.Owner)
	}
	if u.Priority != "" {
		fields = append(fields, "priority", u.Priority)
	}
	if u.BatchID != "" {
		fields = append(fields, "batch_id", u.BatchID)
	}
	if u.Attempts > 0 {
		fields = append(fields, "attempts", u.Attempts)
	}
	if !u.SentAt.IsZero() {
		fields = append(fields, "sent_at", u.SentAt.UTC().Format(time.RFC3339Nano))
	}
	if u.DKIMSignature != "" {
		fields = append(fields, "dkim", u.DKIMSignature)
	}
	for addr, r := range u.Recipients {
		b, err := json.Marshal(r)
		if err != nil {
			return fmt.Errorf("save record: %w", err)
		}
		fields = append(fields, rcptPrefix+addr, b)
	}
	if len(fields) == 0 && u.Extra == nil && !u.Unchunk && u.PayloadTTL <= 0 {
		return nil
	}
	// The commands run in order, in one round trip. A MULTI would cost
	// Redis more and buys nothing here: every field is written whole, and
	// the expiry is refreshed by the next write anyway.
	if ap, ok := s.rdb.(*redis.AutoPipeliner); ok && !ap.IsBlocking() {
		// The deferred face of an automatic pipeliner: the commands join
		// the ordered stream that other goroutines' commands share, and
		// go out in one batch with them.
		cmds := make([]redis.Cmder, 0, 5)
		if u.Extra != nil {
			cmds = append(cmds, u.Extra(ctx, ap)...)
		}
		if u.Reset {
			cmds = append(cmds, ap.Del(ctx, key))
		}
		if len(fields) > 0 {
			cmds = append(cmds, ap.HSet(ctx, key, fields...), ap.Expire(ctx, key, s.ttl))
		}
		if u.Unchunk {
			cmds = append(cmds, ap.HDel(ctx, key, "chunk"))
		}
		if u.PayloadTTL > 0 {
			cmds = append(cmds, ap.PExpire(ctx, PayloadKey(id), u.PayloadTTL))
		}
		for _, c := range cmds {
			if err := c.Err(); err != nil {
				return fmt.Errorf("save record: %w", err)
			}
		}
		return nil
	}
	pipe := s.rdb.Pipeline()
	if u.Extra != nil {
		u.Extra(ctx, pipe)
	}
	if u.Reset {
		pipe.Del(ctx, key)
	}
	if len(fields) > 0 {
		pipe.HSet(ctx, key, fields...)
		pipe.Expire(ctx, key, s.ttl)
	}
	if u.Unchunk {
		pipe.HDel(ctx, key, "chunk")
	}
	if u.PayloadTTL > 0 {
		pipe.PExpire(ctx, PayloadKey(id), u.PayloadTTL)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("save record: %w", err)
	}
	return nil
}

// ErrNoRecord is returned by Get when sendq keeps no record of the email.
var ErrNoRecord = errors.New("no record")

// Get returns the record of email id, or ErrNoRecord.
//
// The record of an email a chunk held (Store.Hold) comes with its payload,
// which is kept under a key of its own (PayloadKey), read in a second
// round trip.
func (s *Store) Get(ctx context.Context, id string) (*Record, error) {
	m, err := s.rdb.HGetAll(ctx, recordKey(id)).Result()
	if err != nil {
		return nil, fmt.Errorf("get record: %w", err)
	}
	if len(m) == 0 {
		return nil, ErrNoRecord
	}
	rec, err := parseRecord(m)
	if err != nil || !rec.Held {
		return rec, err
	}
	p, err := s.rdb.Get(ctx, PayloadKey(id)).Bytes()
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("get record: %w", err)
	}
	rec.Payload = p // nil once it expired (a sent email, after Retention)
	return rec, nil
}

func parseRecord(m map[string]string) (*Record, error) {
	r := &Record{Recipients: make(map[string]RecipientResult)}
	for k, v := range m {
		switch {
		case k == "attempts":
			n, err := strconv.Atoi(v)
			if err != nil {
				return nil, fmt.Errorf("record attempts %q: %w", v, err)
			}
			r.Attempts = n
		case k == "state":
			r.State = v
		case k == "reason":
			r.Reason = v
		case k == "last_error":
			r.LastError = v
		case k == "owner":
			r.Owner = v
		case k == "priority":
			r.Priority = v
		case k == "batch_id":
			r.BatchID = v
		case k == "created_at":
			t, err := time.Parse(time.RFC3339Nano, v)
			if err != nil {
				return nil, fmt.Errorf("record created_at %q: %w", v, err)
			}
			r.CreatedAt = t
		case k == "dkim":
			r.DKIMSignature = v
		case k == "chunk":
			r.Chunk = v
		case k == "held":
			r.Held = true
		case k == "max_attempts", k == "retention_ms", k == "timeout_ms":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("record %s %q: %w", k, v, err)
			}
			switch k {
			case "max_attempts":
				r.MaxAttempts = int(n)
			case "retention_ms":
				r.Retention = time.Duration(n) * time.Millisecond
			default:
				r.AttemptTimeout = time.Duration(n) * time.Millisecond
			}
		case k == "sent_at":
			t, err := time.Parse(time.RFC3339Nano, v)
			if err != nil {
				return nil, fmt.Errorf("record sent_at %q: %w", v, err)
			}
			r.SentAt = t
		case strings.HasPrefix(k, rcptPrefix):
			var rr RecipientResult
			if err := json.Unmarshal([]byte(v), &rr); err != nil {
				return nil, fmt.Errorf("record recipient: %w", err)
			}
			r.Recipients[strings.TrimPrefix(k, rcptPrefix)] = rr
		}
	}
	return r, nil
}

// ResetFailed forgets the failed recipients of email id, so that a manual
// retry tries them again. Sent recipients stay sent.
func (s *Store) ResetFailed(ctx context.Context, id string) error {
	rec, err := s.Get(ctx, id)
	if errors.Is(err, ErrNoRecord) {
		return nil
	}
	if err != nil {
		return err
	}
	fields := []string{"reason"}
	for addr, r := range rec.Recipients {
		if r.Status == RecipientFailed || r.Status == RecipientDeferred {
			fields = append(fields, rcptPrefix+addr)
		}
	}
	pipe := s.rdb.TxPipeline()
	pipe.HDel(ctx, recordKey(id), fields...)
	pipe.HSet(ctx, recordKey(id), "state", StatusQueued)
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("reset record: %w", err)
	}
	return nil
}

// Owners returns the owner recorded for each of ids (Email.Owner), in one
// round trip; an id with no record, or none recorded, maps to "".
func (s *Store) Owners(ctx context.Context, ids []string) (map[string]string, error) {
	out := make(map[string]string, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	pipe := s.rdb.Pipeline()
	cmds := make(map[string]*redis.StringCmd, len(ids))
	for _, id := range ids {
		if _, ok := cmds[id]; !ok {
			cmds[id] = pipe.HGet(ctx, recordKey(id), "owner")
		}
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("read owners: %w", err)
	}
	for id, c := range cmds {
		out[id] = c.Val()
	}
	return out, nil
}

// bounceScript turns recipient ARGV[1] of the record KEYS[1] into ARGV[2]
// (an encoded RecipientResult) if it is recorded as sent, and returns 1;
// otherwise it changes nothing and returns 0 (no such recipient, or not
// sent: a report cannot fail a recipient sendq never handed over), or 2 if
// it is bounced already (a repeated report).
var bounceScript = redis.NewScript(`
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return 0 end
local ok, r = pcall(cjson.decode, v)
if not ok or type(r) ~= 'table' then return 0 end
if r.status == 'bounced' then return 2 end
if r.status ~= 'sent' then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
`)

// Bounce outcomes.
const (
	BounceApplied  = 1 // the recipient was sent and is now bounced
	BounceNotSent  = 0 // no such recipient in the record, or it was not sent
	BounceRepeated = 2 // it was bounced already
)

// Bounce records that recipient addr of email id bounced after it was
// sent: an asynchronous bounce. It changes the record only if addr is one
// of its recipients and recorded as sent, atomically (a Lua script on the
// record's one key), and returns which of the Bounce outcomes applied.
func (s *Store) Bounce(ctx context.Context, id, addr string, r RecipientResult) (int, error) {
	r.Status = RecipientBounced
	b, err := json.Marshal(r)
	if err != nil {
		return 0, fmt.Errorf("bounce record: %w", err)
	}
	n, err := bounceScript.Run(ctx, s.rdb, []string{recordKey(id)}, rcptPrefix+addr, b, s.ttl.Milliseconds()).Int()
	if err != nil {
		return 0, fmt.Errorf("bounce record: %w", err)
	}
	return n, nil
}
