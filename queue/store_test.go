package queue_test

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/queue"
)

// The record round-trips through Save and Load on a plain client and on
// the deferred face of an automatic pipeliner, which Save drives with
// separate commands instead of a pipeline.
func TestStoreSaveLoad(t *testing.T) {
	rs := redistest.Start(t)
	for _, tt := range []struct {
		name string
		rdb  func(t *testing.T) redis.UniversalClient
	}{
		{"client", func(t *testing.T) redis.UniversalClient { return rs.Client(t) }},
		{"autopipeliner", func(t *testing.T) redis.UniversalClient {
			ap, err := rs.Client(t).AsyncAutoPipeline()
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = ap.Close() })
			return ap
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rdb := tt.rdb(t)
			ctx := context.Background()
			store := queue.NewStore(rdb, time.Hour)
			e := benchEmail()
			e.ID = tt.name + "-" + e.ID
			rec, err := store.Load(ctx, e)
			if err != nil || rec.Stale || len(rec.Recipients) != 0 || rec.Attempts != 0 {
				t.Fatalf("Load of a new email = %+v, %v; want an empty record", rec, err)
			}
			now := time.Now().UTC().Truncate(time.Millisecond)
			sent := queue.RecipientResult{Status: queue.RecipientSent, UpdatedAt: now, Reply: queue.Reply{Code: 250, EnhancedCode: "2.0.0", Message: "queued"}}
			deferred := queue.RecipientResult{Status: queue.RecipientDeferred, UpdatedAt: now, Reply: queue.Reply{Code: 451, Message: "later"}}
			if err := store.Save(ctx, e.ID, queue.Update{State: queue.StatusRetrying, Attempts: 1, CreatedAt: e.CreatedAt, LastError: "451 later",
				Recipients: map[string]queue.RecipientResult{"recipient1@contoso.example": sent, "recipient2@contoso.example": deferred}}); err != nil {
				t.Fatal(err)
			}
			rec, err = store.Load(ctx, e)
			if err != nil {
				t.Fatal(err)
			}
			if rec.State != queue.StatusRetrying || rec.Attempts != 1 || rec.LastError != "451 later" || !rec.CreatedAt.Equal(e.CreatedAt) {
				t.Errorf("record = %+v; want retrying, 1 attempt, 451 later, created_at %v", rec, e.CreatedAt)
			}
			if got := rec.Recipients["recipient1@contoso.example"]; got.Status != queue.RecipientSent || got.Reply.Code != 250 || !got.UpdatedAt.Equal(now) {
				t.Errorf("recipient1 = %+v; want sent 250 at %v", got, now)
			}
			if got := rec.Recipients["recipient2@contoso.example"]; got.Status != queue.RecipientDeferred {
				t.Errorf("recipient2 = %+v; want deferred", got)
			}
			key := "sendq:email:{" + e.ID + "}"
			if ttl := rs.Client(t).TTL(ctx, key).Val(); ttl <= 0 || ttl > time.Hour {
				t.Errorf("TTL = %v; want up to 1h", ttl)
			}

			// An earlier email with the same id: Load says stale, and a
			// Save with Reset drops its fields before writing.
			later := *e
			later.CreatedAt = e.CreatedAt.Add(time.Minute)
			rec, err = store.Load(ctx, &later)
			if err != nil || !rec.Stale || len(rec.Recipients) != 0 {
				t.Fatalf("Load of a reused id = %+v, %v; want an empty stale record", rec, err)
			}
			if err := store.Save(ctx, e.ID, queue.Update{State: queue.StatusSent, Attempts: 1, CreatedAt: later.CreatedAt, Reset: true,
				Recipients: map[string]queue.RecipientResult{"other@contoso.example": sent}}); err != nil {
				t.Fatal(err)
			}
			rec, err = store.Load(ctx, &later)
			if err != nil || rec.Stale || len(rec.Recipients) != 1 || rec.LastError != "" || rec.State != queue.StatusSent {
				t.Errorf("after a reset = %+v, %v; want only the new email's fields", rec, err)
			}
		})
	}
}

// The DKIM signature an attempt sent is kept for the next one, and a later
// write without one leaves it alone.
func TestStoreKeepsTheDKIMSignature(t *testing.T) {
	ctx := context.Background()
	store := queue.NewStore(redistest.Start(t).Client(t), time.Hour)
	e := benchEmail()
	const sig = "DKIM-Signature: a=ed25519-sha256; bh=AAAA;\r\n c=relaxed/relaxed; d=contoso.example; s=ed2026; t=1; v=1;\r\n b=BBBB\r\n"
	if err := store.Save(ctx, e.ID, queue.Update{State: queue.StatusRetrying, Attempts: 1, CreatedAt: e.CreatedAt, DKIMSignature: sig}); err != nil {
		t.Fatal(err)
	}
	if err := store.Save(ctx, e.ID, queue.Update{State: queue.StatusSent, Attempts: 2}); err != nil {
		t.Fatal(err)
	}
	rec, err := store.Load(ctx, e)
	if err != nil || rec.DKIMSignature != sig || rec.State != queue.StatusSent {
		t.Errorf("Load = %+v, %v; want state sent and DKIM signature %q", rec, err, sig)
	}
}
