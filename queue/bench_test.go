package queue_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/queue"
)

func benchEmail() *queue.Email {
	return &queue.Email{
		ID: "01a21a7f-c7f9-7166-8b55-540c1132fe89", CreatedAt: time.Now().UTC(),
		From:    queue.Address{Name: "Sales Bot", Address: "sales-bot@contoso.example"},
		To:      []queue.Address{{Address: "recipient1@contoso.example"}, {Address: "recipient2@contoso.example"}},
		Cc:      []queue.Address{{Address: "owner@contoso.example"}},
		Subject: "A new lead", IsHTML: true,
		Body: strings.Repeat("A new lead was created in Salesforce. ", 27), // 1 KB
	}
}

// BenchmarkStoreSave measures the worker's status write after an attempt:
// three recipients sent, in one round trip to a private Redis.
func BenchmarkStoreSave(b *testing.B) {
	rdb := redistest.Start(b).Client(b)
	store := queue.NewStore(rdb, 0)
	ctx := context.Background()
	now := time.Now()
	u := queue.Update{State: queue.StatusSent, SentAt: now, Recipients: map[string]queue.RecipientResult{}}
	for i := 1; i <= 3; i++ {
		u.Recipients["recipient"+strconv.Itoa(i)+"@contoso.example"] = queue.RecipientResult{
			Status: queue.RecipientSent, UpdatedAt: now,
			Reply: queue.Reply{Code: 250, EnhancedCode: "2.0.0", Message: "OK: queued as 4ZqPzL1k2Bz9"},
		}
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		if err := store.Save(ctx, "email-"+strconv.Itoa(i%1000), u); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkStoreLoad measures the worker's first Redis round trip of an
// attempt: read the earlier results.
func BenchmarkStoreLoad(b *testing.B) {
	rdb := redistest.Start(b).Client(b)
	store := queue.NewStore(rdb, 0)
	e := benchEmail()
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := store.Load(ctx, e); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkNewTask measures encoding an email into its task, as the
// intake does for every request.
func BenchmarkNewTask(b *testing.B) {
	e := benchEmail()
	// For this email (no <, > or &) JSON v2 writes exactly the bytes
	// encoding/json wrote: the payload of earlier releases.
	t, err := queue.NewTask(e)
	if err != nil {
		b.Fatal(err)
	}
	if want, _ := json.Marshal(e); !bytes.Equal(t.Payload(), want) {
		b.Fatalf("NewTask payload\n%s\nwant (json.Marshal)\n%s", t.Payload(), want)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := queue.NewTask(e); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecodeEmail measures decoding a task payload, as the worker
// does for every attempt.
func BenchmarkDecodeEmail(b *testing.B) {
	t, err := queue.NewTask(benchEmail())
	if err != nil {
		b.Fatal(err)
	}
	payload := t.Payload()
	b.ReportAllocs()
	b.SetBytes(int64(len(payload)))
	for b.Loop() {
		if _, err := queue.DecodeEmail(payload); err != nil {
			b.Fatal(err)
		}
	}
}
