package templates_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/queue"
	"github.com/sendq/sendq/templates"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func client(t *testing.T, url string) redis.UniversalClient {
	t.Helper()
	rdb, err := queue.NewRedisClient(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

// exercise runs the store's contract on rdb: versions, owners apart,
// listing, delete, numbers not reused.
func exercise(t *testing.T, rdb redis.UniversalClient) {
	t.Helper()
	ctx := context.Background()
	s := templates.NewStore(rdb)
	now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	src := func(n int) templates.Source {
		return templates.Source{Subject: fmt.Sprintf("v%d {{.A}}", n), Text: "t"}
	}
	for _, owner := range []string{"key:k1", "tenant:acme}{", ""} {
		for i := range 12 {
			name := fmt.Sprintf("tpl-%02d", i)
			v, created, err := s.Put(ctx, owner, name, src(1), now)
			if err != nil || !created || v.Version != 1 {
				t.Fatalf("Put(%q, %s) = %+v, %v, %v; want version 1 created", owner, name, v, created, err)
			}
		}
		v, created, err := s.Put(ctx, owner, "tpl-00", src(2), now.Add(time.Minute))
		if err != nil || created || v.Version != 2 {
			t.Fatalf("second Put = %+v, %v, %v; want version 2", v, created, err)
		}
	}
	if _, _, err := s.Put(ctx, "key:k1", "x", templates.Source{Subject: "{{"}, now); !errors.As(err, new(*templates.ParseError)) {
		t.Errorf("Put of a bad template = %v; want a ParseError", err)
	}
	list, err := s.List(ctx, "key:k1")
	if err != nil || len(list) != 12 || list[0].Name != "tpl-00" || list[0].Version != 2 || !list[0].CreatedAt.Equal(now.Add(time.Minute)) {
		t.Fatalf("List = %+v, %v; want 12 templates, tpl-00 at version 2", list, err)
	}
	// A fresh store (another API process) reads what this one wrote.
	other := templates.NewStore(rdb)
	for _, c := range []struct {
		n       int
		subject string
	}{{0, "v2 {{.A}}"}, {1, "v1 {{.A}}"}, {2, "v2 {{.A}}"}} {
		v, err := other.Get(ctx, "key:k1", "tpl-00", c.n)
		if err != nil || v.Source().Subject != c.subject {
			t.Errorf("Get(tpl-00, %d) = %+v, %v; want %q", c.n, v, err, c.subject)
		}
	}
	if _, err := other.Get(ctx, "key:k1", "tpl-00", 3); !errors.Is(err, templates.ErrVersionNotFound) {
		t.Errorf("Get(version 3) = %v; want ErrVersionNotFound", err)
	}
	if _, err := other.Get(ctx, "key:k2", "tpl-00", 0); !errors.Is(err, templates.ErrNotFound) {
		t.Errorf("another owner's Get = %v; want ErrNotFound", err)
	}
	if ok, err := s.Delete(ctx, "key:k1", "tpl-00"); !ok || err != nil {
		t.Fatalf("Delete = %v, %v", ok, err)
	}
	// Gone for every version, also from the store that had it cached.
	for _, st := range []*templates.Store{s, other} {
		if _, err := st.Get(ctx, "key:k1", "tpl-00", 1); !errors.Is(err, templates.ErrNotFound) {
			t.Errorf("Get after Delete = %v; want ErrNotFound", err)
		}
	}
	if ok, _ := s.Delete(ctx, "key:k1", "tpl-00"); ok {
		t.Error("second Delete = true")
	}
	if v, created, err := s.Put(ctx, "key:k1", "tpl-00", src(9), now); err != nil || !created || v.Version != 3 {
		t.Errorf("Put after Delete = %+v, %v, %v; want version 3, created", v, created, err)
	}
	if v, err := other.Get(ctx, "key:k1", "tpl-00", 0); err != nil || v.Source().Subject != "v9 {{.A}}" {
		t.Errorf("Get after re-create = %+v, %v", v, err)
	}
	if list, _ := s.List(ctx, "tenant:acme}{"); len(list) != 12 {
		t.Errorf("tenant's List = %d templates; want 12", len(list))
	}
}

func TestStore(t *testing.T) {
	t.Parallel()
	exercise(t, client(t, redistest.Start(t).URL()))
}

// On a Redis Cluster every key of an owner is in one slot (the scripts
// would fail with CROSSSLOT otherwise) and owners spread over the nodes.
func TestStoreOnACluster(t *testing.T) {
	t.Parallel()
	c := redistest.StartCluster(t, 3)
	rdb := client(t, c.URL())
	exercise(t, rdb)
	ctx := context.Background()
	slots := map[int64]bool{}
	for i := range 30 {
		owner := fmt.Sprintf("key:k%d", i)
		keys := []string{templates.NamesKey(owner), templates.SeqKey(owner), templates.TemplateKey(owner, "a")}
		var slot int64 = -1
		for _, k := range keys {
			n, err := rdb.ClusterKeySlot(ctx, k).Result()
			if err != nil {
				t.Fatal(err)
			}
			if slot >= 0 && n != slot {
				t.Fatalf("keys of %s in slots %d and %d", owner, slot, n)
			}
			slot = n
		}
		slots[slot] = true
	}
	if len(slots) < 10 {
		t.Errorf("30 owners in %d slots; want them spread", len(slots))
	}
}

// A template keeps its last KeptVersions (an email carries its render, so
// none needs an older one), and an owner has at most MaxTemplates names.
func TestStoreLimits(t *testing.T) {
	t.Parallel()
	rdb := client(t, redistest.Start(t).URL())
	s := templates.NewStore(rdb)
	ctx := context.Background()
	src := templates.Source{Subject: "s", Text: "t"}
	for i := range templates.KeptVersions + 5 {
		if _, _, err := s.Put(ctx, "key:a", "often", templates.Source{Subject: fmt.Sprintf("s%d", i), Text: "t"}, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	last := templates.KeptVersions + 5
	for n, want := range map[int]error{1: templates.ErrVersionNotFound, 5: templates.ErrVersionNotFound, 6: nil, last: nil} {
		if _, err := s.Get(ctx, "key:a", "often", n); !errors.Is(err, want) && !(want == nil && err == nil) {
			t.Errorf("Get version %d = %v; want %v", n, err, want)
		}
	}
	// Another process (no cache) agrees.
	if _, err := templates.NewStore(rdb).Get(ctx, "key:a", "often", 5); !errors.Is(err, templates.ErrVersionNotFound) {
		t.Errorf("Get version 5 from another store = %v; want ErrVersionNotFound", err)
	}
	if n, _ := rdb.HLen(ctx, templates.TemplateKey("key:a", "often")).Result(); n != templates.KeptVersions {
		t.Errorf("%d versions kept in Redis; want %d", n, templates.KeptVersions)
	}
	for i := range templates.MaxTemplates - 1 {
		if _, _, err := s.Put(ctx, "key:a", fmt.Sprintf("t%d", i), src, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := s.Put(ctx, "key:a", "one-more", src, time.Now()); !errors.Is(err, templates.ErrTooMany) {
		t.Errorf("template %d = %v; want ErrTooMany", templates.MaxTemplates+1, err)
	}
	if v, _, err := s.Put(ctx, "key:a", "often", src, time.Now()); err != nil || v.Version != templates.KeptVersions+6 {
		t.Errorf("a new version of a kept template at the limit = %v, %v; want version %d", v, err, templates.KeptVersions+6)
	}
	if _, _, err := s.Put(ctx, "key:b", "one-more", src, time.Now()); err != nil {
		t.Errorf("another owner's template = %v; want nil (limits are per owner)", err)
	}
}

// A PUT of the current version's own source (a retried PUT, a deploy
// script that PUTs every run) stores nothing and answers that version; a
// change, or going back to an older source, is a new version.
func TestStorePutSameSourceIsTheCurrentVersion(t *testing.T) {
	t.Parallel()
	rdb := client(t, redistest.Start(t).URL())
	s := templates.NewStore(rdb)
	ctx := context.Background()
	a, b := templates.Source{Subject: "a", Text: "t"}, templates.Source{Subject: "b", Text: "t"}
	for i, step := range []struct {
		src     templates.Source
		version int
		created bool
	}{{a, 1, true}, {a, 1, false}, {b, 2, false}, {b, 2, false}, {a, 3, false}} {
		v, created, err := s.Put(ctx, "key:a", "n", step.src, time.Now())
		if err != nil || v.Version != step.version || created != step.created {
			t.Errorf("step %d: Put = %v, %v, %v; want version %d, created %v", i, v, created, err, step.version, step.created)
		}
	}
	if n, _ := rdb.HLen(ctx, templates.TemplateKey("key:a", "n")).Result(); n != 3 {
		t.Errorf("%d versions stored; want 3", n)
	}
}
