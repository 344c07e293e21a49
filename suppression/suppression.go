// Package suppression owns sendq's suppression list: the addresses sendq
// will not send to again, why (a hard bounce, a complaint, an
// unsubscribe, an operator's decision), and the Redis keys that hold them.
// The intake checks it when an email is accepted and the worker again just
// before RCPT; the worker, the inbound bounce listener and the unsubscribe
// endpoint add to it.
//
// It also defines Notifier, the small interface through which the packages
// that change a recipient's fate (worker, inbound, producer) report it.
//
// Keys. Each entry is one string key, sendq:supp:{address}, with the
// lower-cased address as its Redis Cluster hash tag, so entries spread over
// the cluster and a check of one recipient is one read on one node. Listing
// needs an index: one sorted set of every address by creation time and one
// per reason, all with the hash tag {supp}, so they live in one slot, on one
// node of a cluster (about 100 bytes per entry and index: a million entries
// cost that node some 200 MB). An entry and its index entries are written in
// one pipeline but not one transaction (they live in different slots): a
// crash between the two leaves an entry that is enforced but not listed;
// listing drops index members whose entry is gone.
package suppression

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Reasons an address is suppressed.
const (
	ReasonHardBounce  = "hard_bounce" // the address or its domain does not exist
	ReasonComplaint   = "complaint"   // the recipient reported a message as spam
	ReasonUnsubscribe = "unsubscribe" // the recipient used a one-click unsubscribe link
	ReasonManual      = "manual"      // added through the API
)

// Reasons lists every reason, for validation and metric labels.
var Reasons = []string{ReasonHardBounce, ReasonComplaint, ReasonUnsubscribe, ReasonManual}

// ValidReason reports whether r is one of Reasons.
func ValidReason(r string) bool {
	for _, v := range Reasons {
		if r == v {
			return true
		}
	}
	return false
}

// Entry is one suppressed address.
type Entry struct {
	Address      string    `json:"address"` // lower case
	Reason       string    `json:"reason"`
	EmailID      string    `json:"email_id"`      // the email that caused it; empty for manual entries
	Code         int       `json:"code"`          // the SMTP reply code, 0 when there was none
	EnhancedCode string    `json:"enhanced_code"` // the SMTP or DSN status code, such as 5.1.1
	CreatedAt    time.Time `json:"created_at"`
}

// HardBounce reports whether a permanent failure says the address or its
// domain does not exist, which is what suppresses it: a 5xx reply (or a
// failed DSN) whose enhanced code is 5.1.1 (bad mailbox), 5.1.2 (bad
// domain), 5.1.10 (null MX) or 5.2.1 (mailbox disabled). Policy and content
// blocks (5.7.x), full mailboxes, transient failures (4xx) and throttling
// never suppress: the address may well work tomorrow.
func HardBounce(code int, enhanced string) bool {
	if code != 0 && (code < 500 || code > 599) {
		return false
	}
	switch strings.TrimSpace(enhanced) {
	case "5.1.1", "5.1.2", "5.1.10", "5.2.1":
		return true
	}
	return false
}

// Normalize is the form an address is compared and stored in: trimmed and
// lower-cased (the list compares addresses case-insensitively, local part
// included, as receiving systems in practice do).
func Normalize(addr string) string { return strings.ToLower(strings.TrimSpace(addr)) }

// Key is the Redis key of addr's entry. Packages other than this one must
// not spell it.
func Key(addr string) string { return "sendq:supp:{" + Normalize(addr) + "}" }

const indexAll = "sendq:{supp}:index"

func indexKey(reason string) string {
	if reason == "" {
		return indexAll
	}
	return "sendq:{supp}:index:" + reason
}

// List is the suppression list in Redis. A nil *List is valid and empty:
// sendq with SENDQ_SUPPRESSION=false passes nil.
type List struct {
	rdb redis.UniversalClient
	now func() time.Time
}

// New returns the list on rdb. rdb may be the deferred face of an
// automatic pipeliner (queue.NewPipeliner): the checks of concurrent
// deliveries then share batches.
func New(rdb redis.UniversalClient) *List {
	return &List{rdb: rdb, now: time.Now}
}

// Enabled reports whether l is a list at all (not nil).
func (l *List) Enabled() bool { return l != nil }

// Add stores e unless its address is already suppressed; added is false
// then, and the first entry stays (the first reason wins, so a repeated
// unsubscribe or a second bounce changes nothing). CreatedAt defaults to
// now.
func (l *List) Add(ctx context.Context, e Entry) (added bool, err error) {
	if l == nil {
		return false, nil
	}
	e, b, err := l.prepare(e)
	if err != nil {
		return false, err
	}
	ok, err := l.rdb.SetNX(ctx, Key(e.Address), b, 0).Result()
	if err != nil {
		return false, fmt.Errorf("add suppression: %w", err)
	}
	if !ok {
		return false, nil
	}
	if err := l.index(ctx, e, ""); err != nil {
		return true, err
	}
	return true, nil
}

// Put stores e, replacing any entry for its address (the API's PUT);
// created is false when an entry was replaced.
func (l *List) Put(ctx context.Context, e Entry) (created bool, err error) {
	if l == nil {
		return false, errors.New("suppression is disabled")
	}
	e, b, err := l.prepare(e)
	if err != nil {
		return false, err
	}
	old, err := l.rdb.SetArgs(ctx, Key(e.Address), b, redis.SetArgs{Get: true}).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return false, fmt.Errorf("put suppression: %w", err)
	}
	var prev Entry
	if old != "" {
		_ = json.Unmarshal([]byte(old), &prev)
	}
	if err := l.index(ctx, e, prev.Reason); err != nil {
		return old == "", err
	}
	return old == "", nil
}

func (l *List) prepare(e Entry) (Entry, []byte, error) {
	e.Address = Normalize(e.Address)
	if e.Address == "" {
		return e, nil, errors.New("suppression entry has no address")
	}
	if !ValidReason(e.Reason) {
		return e, nil, fmt.Errorf("suppression reason %q is not one of %s", e.Reason, strings.Join(Reasons, ", "))
	}
	if e.CreatedAt.IsZero() {
		e.CreatedAt = l.now()
	}
	e.CreatedAt = e.CreatedAt.UTC()
	b, err := json.Marshal(e)
	if err != nil {
		return e, nil, fmt.Errorf("encode suppression: %w", err)
	}
	return e, b, nil
}

// index adds e to the indexes, and takes it out of the index of its old
// reason when that differs.
func (l *List) index(ctx context.Context, e Entry, oldReason string) error {
	score := float64(e.CreatedAt.UnixMilli())
	pipe := l.rdb.Pipeline()
	pipe.ZAdd(ctx, indexAll, redis.Z{Score: score, Member: e.Address})
	pipe.ZAdd(ctx, indexKey(e.Reason), redis.Z{Score: score, Member: e.Address})
	if oldReason != "" && oldReason != e.Reason {
		pipe.ZRem(ctx, indexKey(oldReason), e.Address)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("index suppression: %w", err)
	}
	return nil
}

// ErrNotFound is returned by Get and Delete for an address not suppressed.
var ErrNotFound = errors.New("address is not suppressed")

// Get returns addr's entry, or ErrNotFound.
func (l *List) Get(ctx context.Context, addr string) (*Entry, error) {
	if l == nil {
		return nil, ErrNotFound
	}
	v, err := l.rdb.Get(ctx, Key(addr)).Result()
	if errors.Is(err, redis.Nil) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("get suppression: %w", err)
	}
	return decode(v)
}

func decode(v string) (*Entry, error) {
	var e Entry
	if err := json.Unmarshal([]byte(v), &e); err != nil {
		return nil, fmt.Errorf("decode suppression: %w", err)
	}
	return &e, nil
}

// Delete removes addr's entry and returns it, or ErrNotFound.
func (l *List) Delete(ctx context.Context, addr string) (*Entry, error) {
	if l == nil {
		return nil, ErrNotFound
	}
	v, err := l.rdb.GetDel(ctx, Key(addr)).Result()
	if errors.Is(err, redis.Nil) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("delete suppression: %w", err)
	}
	e, derr := decode(v)
	pipe := l.rdb.Pipeline()
	for _, k := range append([]string{""}, Reasons...) {
		pipe.ZRem(ctx, indexKey(k), Normalize(addr))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return e, fmt.Errorf("unindex suppression: %w", err)
	}
	if derr != nil {
		return &Entry{Address: Normalize(addr)}, nil
	}
	return e, nil
}

// Check returns the entries of those of addrs that are suppressed, by
// the address as given. It reads every address in one round trip (a
// pipeline; on a cluster, one per node).
func (l *List) Check(ctx context.Context, addrs []string) (map[string]*Entry, error) {
	if l == nil || len(addrs) == 0 {
		return nil, nil
	}
	cmds := make([]*redis.StringCmd, len(addrs))
	if ap, ok := l.rdb.(*redis.AutoPipeliner); ok && !ap.IsBlocking() {
		// The deferred face of an automatic pipeliner: the reads join
		// the batches other goroutines' commands share.
		for i, a := range addrs {
			cmds[i] = ap.Get(ctx, Key(a))
		}
	} else if len(addrs) == 1 {
		cmds[0] = l.rdb.Get(ctx, Key(addrs[0]))
	} else {
		pipe := l.rdb.Pipeline()
		for i, a := range addrs {
			cmds[i] = pipe.Get(ctx, Key(a))
		}
		if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
			return nil, fmt.Errorf("check suppressions: %w", err)
		}
	}
	var out map[string]*Entry
	for i, c := range cmds {
		v, err := c.Result()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("check suppressions: %w", err)
		}
		e, err := decode(v)
		if err != nil {
			return nil, err
		}
		if out == nil {
			out = make(map[string]*Entry)
		}
		out[addrs[i]] = e
	}
	return out, nil
}

// Page is one page of the list, newest first.
type Page struct {
	Entries []Entry
	Total   int
}

// List returns entries newest first, page (from 1) of size entries,
// of one reason or of all when reason is empty.
func (l *List) List(ctx context.Context, reason string, page, size int) (*Page, error) {
	if l == nil {
		return &Page{Entries: []Entry{}}, nil
	}
	key := indexKey(reason)
	total, err := l.rdb.ZCard(ctx, key).Result()
	if err != nil {
		return nil, fmt.Errorf("list suppressions: %w", err)
	}
	out := &Page{Entries: []Entry{}, Total: int(total)}
	start := int64(page-1) * int64(size)
	if start >= total {
		return out, nil
	}
	addrs, err := l.rdb.ZRevRange(ctx, key, start, start+int64(size)-1).Result()
	if err != nil {
		return nil, fmt.Errorf("list suppressions: %w", err)
	}
	found, err := l.Check(ctx, addrs)
	if err != nil {
		return nil, err
	}
	var gone []any
	for _, a := range addrs {
		e, ok := found[a]
		if !ok {
			gone = append(gone, a) // deleted between the writes: not listed
			continue
		}
		out.Entries = append(out.Entries, *e)
	}
	if len(gone) > 0 {
		_ = l.rdb.ZRem(ctx, key, gone...).Err()
	}
	return out, nil
}
