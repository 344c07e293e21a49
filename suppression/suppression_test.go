package suppression_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/queue"
	"github.com/sendq/sendq/suppression"
)

func TestHardBounce(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		code     int
		enhanced string
		want     bool
	}{
		{550, "5.1.1", true}, {550, "5.1.2", true}, {550, "5.1.10", true}, {550, "5.2.1", true},
		{0, "5.1.1", true}, // a DSN: no reply code, the status says it
		{551, "5.1.1", true},
		{550, "5.7.1", false}, {554, "5.7.26", false}, {550, "5.7.0", false}, // policy, DMARC, content
		{452, "4.2.2", false}, {450, "4.1.1", false}, {421, "4.7.0", false}, // transient, throttling
		{550, "4.1.1", false}, {250, "5.1.1", false},
		{552, "5.2.2", false}, // mailbox full
		{550, "", false}, {550, "5.1.100", false}, {550, "5.1.11", false}, {550, " 5.1.1 ", true},
	} {
		if got := suppression.HardBounce(tc.code, tc.enhanced); got != tc.want {
			t.Errorf("HardBounce(%d, %q) = %v; want %v", tc.code, tc.enhanced, got, tc.want)
		}
	}
}

func TestReasonsMatchFailureReasonOfTheQueue(t *testing.T) {
	t.Parallel()
	// The email-level reason is "suppressed" whatever the entry's reason.
	found := false
	for _, r := range queue.Reasons {
		found = found || r == queue.ReasonSuppressed
	}
	if !found {
		t.Errorf("queue.Reasons = %v; want it to hold %q", queue.Reasons, queue.ReasonSuppressed)
	}
}

func newList(t *testing.T) (*suppression.List, *redis.Client) {
	t.Helper()
	rdb := redistest.Start(t).Client(t)
	return suppression.New(rdb), rdb
}

func TestAddIsCaseInsensitiveAndFirstReasonWins(t *testing.T) {
	t.Parallel()
	l, _ := newList(t)
	ctx := context.Background()
	added, err := l.Add(ctx, suppression.Entry{Address: "Alice@Example.COM", Reason: suppression.ReasonHardBounce,
		EmailID: "e1", Code: 550, EnhancedCode: "5.1.1"})
	if err != nil || !added {
		t.Fatalf("Add = %v, %v; want true, nil", added, err)
	}
	added, err = l.Add(ctx, suppression.Entry{Address: "alice@example.com", Reason: suppression.ReasonComplaint, EmailID: "e2"})
	if err != nil || added {
		t.Fatalf("second Add = %v, %v; want false, nil (already suppressed)", added, err)
	}
	e, err := l.Get(ctx, "ALICE@example.com")
	if err != nil {
		t.Fatal(err)
	}
	if e.Address != "alice@example.com" || e.Reason != suppression.ReasonHardBounce || e.EmailID != "e1" ||
		e.Code != 550 || e.EnhancedCode != "5.1.1" || e.CreatedAt.IsZero() {
		t.Errorf("Get = %+v; want the first entry, lower-cased", e)
	}
	got, err := l.Check(ctx, []string{"bob@example.com", "aLiCe@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got["aLiCe@example.com"] == nil {
		t.Errorf("Check = %v; want only aLiCe@example.com, by the address as given", got)
	}
	if _, err := l.Add(ctx, suppression.Entry{Address: "x@y.z", Reason: "spam"}); err == nil {
		t.Errorf("Add with reason spam: no error")
	}
}

func TestPutListDelete(t *testing.T) {
	t.Parallel()
	l, rdb := newList(t)
	ctx := context.Background()
	base := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for i, r := range []string{"hard_bounce", "complaint", "unsubscribe", "manual", "hard_bounce"} {
		e := suppression.Entry{Address: fmt.Sprintf("u%d@example.com", i), Reason: r, CreatedAt: base.Add(time.Duration(i) * time.Minute)}
		if _, err := l.Add(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	p, err := l.List(ctx, "", 1, 2)
	if err != nil {
		t.Fatal(err)
	}
	if p.Total != 5 || len(p.Entries) != 2 || p.Entries[0].Address != "u4@example.com" || p.Entries[1].Address != "u3@example.com" {
		t.Errorf("List(all, 1, 2) = %+v; want total 5, u4 then u3 (newest first)", p)
	}
	p, _ = l.List(ctx, "", 3, 2)
	if len(p.Entries) != 1 || p.Entries[0].Address != "u0@example.com" {
		t.Errorf("List(all, 3, 2) = %+v; want u0", p)
	}
	p, _ = l.List(ctx, "", 9, 2)
	if len(p.Entries) != 0 || p.Total != 5 {
		t.Errorf("List past the end = %+v; want no entries, total 5", p)
	}
	p, _ = l.List(ctx, suppression.ReasonHardBounce, 1, 10)
	if p.Total != 2 || len(p.Entries) != 2 {
		t.Errorf("List(hard_bounce) = %+v; want 2", p)
	}

	// PUT replaces, and moves the address to its new reason's index.
	created, err := l.Put(ctx, suppression.Entry{Address: "U0@example.com", Reason: suppression.ReasonManual})
	if err != nil || created {
		t.Fatalf("Put over an entry = %v, %v; want false (replaced)", created, err)
	}
	p, _ = l.List(ctx, suppression.ReasonHardBounce, 1, 10)
	if p.Total != 1 || p.Entries[0].Address != "u4@example.com" {
		t.Errorf("after Put, List(hard_bounce) = %+v; want only u4", p)
	}
	p, _ = l.List(ctx, suppression.ReasonManual, 1, 10)
	if p.Total != 2 {
		t.Errorf("after Put, List(manual) total %d; want 2", p.Total)
	}
	created, err = l.Put(ctx, suppression.Entry{Address: "new@example.com", Reason: suppression.ReasonManual})
	if err != nil || !created {
		t.Fatalf("Put of a new address = %v, %v; want true", created, err)
	}

	e, err := l.Delete(ctx, "U4@EXAMPLE.com")
	if err != nil || e.Address != "u4@example.com" {
		t.Fatalf("Delete = %+v, %v", e, err)
	}
	if _, err := l.Delete(ctx, "u4@example.com"); !errors.Is(err, suppression.ErrNotFound) {
		t.Errorf("second Delete = %v; want ErrNotFound", err)
	}
	if _, err := l.Get(ctx, "u4@example.com"); !errors.Is(err, suppression.ErrNotFound) {
		t.Errorf("Get after Delete = %v; want ErrNotFound", err)
	}
	p, _ = l.List(ctx, suppression.ReasonHardBounce, 1, 10)
	if p.Total != 0 {
		t.Errorf("after Delete, List(hard_bounce) = %+v; want empty", p)
	}

	// An index member whose entry is gone (a crash between the two
	// writes, or an entry deleted by hand) is not listed, and is dropped.
	rdb.Del(ctx, suppression.Key("u1@example.com"))
	p, _ = l.List(ctx, "", 1, 100)
	for _, e := range p.Entries {
		if e.Address == "u1@example.com" {
			t.Errorf("List shows u1, whose entry is gone")
		}
	}
	p, _ = l.List(ctx, "", 1, 100)
	if p.Total != 4 {
		t.Errorf("total after the stale member was dropped = %d; want 4", p.Total)
	}
}

func TestNilListIsEmpty(t *testing.T) {
	t.Parallel()
	var l *suppression.List
	ctx := context.Background()
	if added, err := l.Add(ctx, suppression.Entry{Address: "a@b.c", Reason: "manual"}); added || err != nil {
		t.Errorf("nil Add = %v, %v", added, err)
	}
	if got, err := l.Check(ctx, []string{"a@b.c"}); len(got) != 0 || err != nil {
		t.Errorf("nil Check = %v, %v", got, err)
	}
	if _, err := l.Get(ctx, "a@b.c"); !errors.Is(err, suppression.ErrNotFound) {
		t.Errorf("nil Get = %v", err)
	}
}

// TestOnACluster runs the list on a real three-master Redis Cluster:
// entries spread over slots, the check of many addresses is one pipeline
// split by node, and the index keys share one slot.
func TestOnACluster(t *testing.T) {
	t.Parallel()
	c := redistest.StartCluster(t, 3)
	rdb, err := queue.NewRedisClient(c.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rdb.Close() })
	l := suppression.New(rdb)
	ctx := context.Background()
	var addrs []string
	for i := range 40 {
		a := fmt.Sprintf("user%d@example%d.com", i, i%7)
		addrs = append(addrs, a)
		if i%2 == 0 {
			if _, err := l.Add(ctx, suppression.Entry{Address: a, Reason: suppression.ReasonHardBounce}); err != nil {
				t.Fatalf("Add on a cluster: %v", err)
			}
		}
	}
	got, err := l.Check(ctx, addrs)
	if err != nil {
		t.Fatalf("Check on a cluster: %v", err)
	}
	if len(got) != 20 {
		t.Errorf("Check found %d; want 20", len(got))
	}
	p, err := l.List(ctx, "", 1, 100)
	if err != nil || p.Total != 20 || len(p.Entries) != 20 {
		t.Fatalf("List on a cluster = %d entries, total %d, %v; want 20", len(p.Entries), p.Total, err)
	}
	if _, err := l.Delete(ctx, addrs[0]); err != nil {
		t.Fatalf("Delete on a cluster: %v", err)
	}
	slots := map[int64]bool{}
	for _, a := range addrs {
		s, err := rdb.ClusterKeySlot(ctx, suppression.Key(a)).Result()
		if err != nil {
			t.Fatal(err)
		}
		slots[s] = true
	}
	if len(slots) < 10 {
		t.Errorf("40 addresses fall in %d slots; want them spread", len(slots))
	}
}

// BenchmarkCheck is the worker's extra round trip per email: three
// recipients, one suppressed.
func BenchmarkCheck(b *testing.B) {
	rdb := redistest.Start(b).Client(b)
	l := suppression.New(rdb)
	ctx := context.Background()
	if _, err := l.Add(ctx, suppression.Entry{Address: "b@example.com", Reason: suppression.ReasonManual}); err != nil {
		b.Fatal(err)
	}
	addrs := []string{"a@example.com", "b@example.com", "c@example.com"}
	b.ReportAllocs()
	for b.Loop() {
		if got, err := l.Check(ctx, addrs); err != nil || len(got) != 1 {
			b.Fatal(got, err)
		}
	}
}
