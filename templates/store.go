package templates

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/redis/go-redis/v9"
)

// ErrNotFound is a template that is not there (or was deleted).
var ErrNotFound = errors.New("templates: not found")

// ErrVersionNotFound is a template that is there without the version
// asked for.
var ErrVersionNotFound = errors.New("templates: no such version")

// validName is a template name: [a-z0-9][a-z0-9._-]{0,63}.
var validName = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)

// ValidName reports whether name may name a template.
func ValidName(name string) bool { return validName.MatchString(name) }

// Redis keys. Every key of one owner carries the hash tag {t:<owner
// hash>} (a hash of the owner: an owner string may hold braces), so on a
// Redis Cluster they share a slot: a new version, the owner's index of
// names and the version counter change in one script, and GET
// /v1/templates reads one hash on one node instead of scanning every node.
//
//	sendq:tpl:{t:H}:names    hash name -> current version
//	sendq:tpl:{t:H}:seq      hash name -> last version number given (kept
//	                         after a delete, so a number never means two
//	                         templates and a cached version never goes stale)
//	sendq:tpl:{t:H}:t:<name> hash "v<n>" -> the version (JSON)
func ownerTag(owner string) string {
	sum := sha256.Sum256([]byte(owner))
	return "sendq:tpl:{t:" + hex.EncodeToString(sum[:8]) + "}"
}

// NamesKey is the Redis key of owner's index of template names.
func NamesKey(owner string) string { return ownerTag(owner) + ":names" }

// SeqKey is the Redis key of owner's version counters.
func SeqKey(owner string) string { return ownerTag(owner) + ":seq" }

// TemplateKey is the Redis key of the versions of owner's template name.
func TemplateKey(owner, name string) string { return ownerTag(owner) + ":t:" + name }

// Version is one immutable version of a template.
type Version struct {
	Name      string
	Version   int
	CreatedAt time.Time
	*Parsed
}

// stored is a version as Redis keeps it.
type stored struct {
	CreatedAt time.Time `json:"created_at"`
	Source
}

// Summary is one template of a listing: its name and current version.
type Summary struct {
	Name      string
	Version   int
	CreatedAt time.Time
}

// Store keeps templates in Redis and the versions it has parsed in
// memory (a version never changes, so a cached one is never stale).
type Store struct {
	rdb redis.UniversalClient

	mu     sync.Mutex
	parsed map[string]*Version // owner NUL name NUL version
}

// maxCached bounds the parsed versions kept in memory; past it the cache
// starts over.
const maxCached = 4096

// NewStore returns the templates kept in rdb.
func NewStore(rdb redis.UniversalClient) *Store {
	return &Store{rdb: rdb, parsed: map[string]*Version{}}
}

// Limits of one owner's templates. An email carries what its template
// rendered at acceptance, so no queued email needs an old version: a
// template keeps its last KeptVersions (a deploy script that PUTs its
// templates every time does not grow Redis for ever), and an owner has at
// most MaxTemplates names (a loop that invents names is refused, not
// stored).
const (
	KeptVersions = 100
	MaxTemplates = 1000
)

// ErrTooMany is a new template name for an owner who has MaxTemplates.
var ErrTooMany = fmt.Errorf("templates: an owner has at most %d templates", MaxTemplates)

// putScript gives name its next version number, stores the version and
// makes it current, in one step, and drops the version KeptVersions
// before it; {-1} if name is new and the owner has ARGV[3] names.
var putScript = redis.NewScript(`
local prev = redis.call('HGET', KEYS[2], ARGV[1])
if not prev and redis.call('HLEN', KEYS[2]) >= tonumber(ARGV[3]) then return {-1, 0} end
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('HSET', KEYS[3], 'v' .. n, ARGV[2])
redis.call('HDEL', KEYS[3], 'v' .. (n - tonumber(ARGV[4])))
redis.call('HSET', KEYS[2], ARGV[1], n)
if prev then return {n, 1} end
return {n, 0}
`)

// Put parses src and, if it parses, stores it as the new current version
// of owner's template name, unless src is the current version's source:
// then that version is returned and nothing is stored. created is true
// when name had no current version. A *ParseError is src's fault.
func (s *Store) Put(ctx context.Context, owner, name string, src Source, now time.Time) (v *Version, created bool, err error) {
	if !ValidName(name) {
		return nil, false, fmt.Errorf("templates: invalid name %q", name)
	}
	p, err := Parse(src)
	if err != nil {
		return nil, false, err
	}
	// The current version's own source again (a retried PUT, a deploy
	// script that PUTs every run) is that version: nothing is stored.
	switch cur, err := s.Get(ctx, owner, name, 0); {
	case err == nil && cur.Source() == src:
		return cur, false, nil
	case err != nil && !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrVersionNotFound):
		return nil, false, err
	}
	now = now.UTC().Truncate(time.Millisecond)
	b, err := json.Marshal(stored{CreatedAt: now, Source: src})
	if err != nil {
		return nil, false, fmt.Errorf("templates: encode: %w", err)
	}
	res, err := putScript.Run(ctx, s.rdb, []string{SeqKey(owner), NamesKey(owner), TemplateKey(owner, name)},
		name, b, MaxTemplates, KeptVersions).Int64Slice()
	if err != nil {
		return nil, false, fmt.Errorf("templates: put %s: %w", name, err)
	}
	if res[0] < 0 {
		return nil, false, ErrTooMany
	}
	v = &Version{Name: name, Version: int(res[0]), CreatedAt: now, Parsed: p}
	s.remember(owner, v)
	return v, res[1] == 0, nil
}

// Current returns the current version number of owner's template name.
func (s *Store) Current(ctx context.Context, owner, name string) (int, error) {
	if !ValidName(name) {
		return 0, ErrNotFound
	}
	n, err := s.rdb.HGet(ctx, NamesKey(owner), name).Int()
	if errors.Is(err, redis.Nil) {
		return 0, ErrNotFound
	}
	if err != nil {
		return 0, fmt.Errorf("templates: get %s: %w", name, err)
	}
	return n, nil
}

// Get returns version n of owner's template name, the current one when n
// is 0: ErrNotFound if there is no such template (or it was deleted),
// ErrVersionNotFound if it has no version n.
func (s *Store) Get(ctx context.Context, owner, name string, n int) (*Version, error) {
	if !ValidName(name) || n < 0 {
		return nil, ErrNotFound
	}
	if n == 0 {
		cur, err := s.Current(ctx, owner, name)
		if err != nil {
			return nil, err
		}
		n = cur
	} else if cur, err := s.Current(ctx, owner, name); err != nil {
		// A deleted template's versions are gone with it.
		return nil, err
	} else if n <= cur-KeptVersions {
		return nil, ErrVersionNotFound // dropped (KeptVersions), cached or not
	}
	if v := s.cached(owner, name, n); v != nil {
		return v, nil
	}
	raw, err := s.rdb.HGet(ctx, TemplateKey(owner, name), "v"+strconv.Itoa(n)).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, ErrVersionNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("templates: get %s version %d: %w", name, n, err)
	}
	var st stored
	if err := json.Unmarshal(raw, &st); err != nil {
		return nil, fmt.Errorf("templates: decode %s version %d: %w", name, n, err)
	}
	p, err := Parse(st.Source)
	if err != nil {
		return nil, fmt.Errorf("templates: stored %s version %d does not parse: %w", name, n, err)
	}
	v := &Version{Name: name, Version: n, CreatedAt: st.CreatedAt, Parsed: p}
	s.remember(owner, v)
	return v, nil
}

// List returns owner's templates, by name, with their current versions.
func (s *Store) List(ctx context.Context, owner string) ([]Summary, error) {
	names, err := s.rdb.HGetAll(ctx, NamesKey(owner)).Result()
	if err != nil {
		return nil, fmt.Errorf("templates: list: %w", err)
	}
	out := make([]Summary, 0, len(names))
	for name, n := range names {
		v, err := strconv.Atoi(n)
		if err != nil {
			continue
		}
		out = append(out, Summary{Name: name, Version: v})
	}
	slices.SortFunc(out, func(a, b Summary) int {
		if a.Name < b.Name {
			return -1
		}
		if a.Name > b.Name {
			return 1
		}
		return 0
	})
	// The creation times, in one pipeline (one node: one slot).
	cmds := make([]*redis.StringCmd, len(out))
	_, err = s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, sm := range out {
			cmds[i] = p.HGet(ctx, TemplateKey(owner, sm.Name), "v"+strconv.Itoa(sm.Version))
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("templates: list: %w", err)
	}
	for i := range out {
		var st stored
		if b, err := cmds[i].Bytes(); err == nil && json.Unmarshal(b, &st) == nil {
			out[i].CreatedAt = st.CreatedAt
		}
	}
	return out, nil
}

// deleteScript removes a template: its versions and its index entry (its
// version counter stays).
var deleteScript = redis.NewScript(`
local n = redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
return n
`)

// Delete removes owner's template name and every version of it. Emails
// already queued keep what they were accepted with: they carry it.
func (s *Store) Delete(ctx context.Context, owner, name string) (bool, error) {
	if !ValidName(name) {
		return false, nil
	}
	n, err := deleteScript.Run(ctx, s.rdb, []string{NamesKey(owner), TemplateKey(owner, name)}, name).Int()
	if err != nil {
		return false, fmt.Errorf("templates: delete %s: %w", name, err)
	}
	return n == 1, nil
}

func cacheKey(owner, name string, n int) string {
	return owner + "\x00" + name + "\x00" + strconv.Itoa(n)
}

func (s *Store) cached(owner, name string, n int) *Version {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.parsed[cacheKey(owner, name, n)]
}

func (s *Store) remember(owner string, v *Version) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.parsed) >= maxCached {
		clear(s.parsed)
	}
	s.parsed[cacheKey(owner, v.Name, v.Version)] = v
}
