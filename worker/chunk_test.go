package worker_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/google/uuid"
	"github.com/hibiken/asynq"

	"github.com/sendq/sendq/internal/smtptest"
	"github.com/sendq/sendq/queue"
	"github.com/sendq/sendq/worker"
)

// hold writes the records of emails as the intake does for a batch, in
// chunks of queue.ChunkSize, and returns the chunk tasks (not queued).
func (b *testBundle) hold(t *testing.T, batchID string, emails []*queue.Email, maxAttempts int) []*asynq.Task {
	t.Helper()
	var tasks []*asynq.Task
	for start := 0; start < len(emails); start += queue.ChunkSize {
		part := emails[start:min(start+queue.ChunkSize, len(emails))]
		ids := make([]string, len(part))
		for i, e := range part {
			e.BatchID, e.Priority = batchID, queue.PriorityBulk
			ids[i] = e.ID
		}
		c := &queue.Chunk{ID: queue.ChunkID(batchID, ids), BatchID: batchID, IDs: ids}
		held := make([]queue.Held, len(part))
		for i, e := range part {
			// Counted on its queue as the intake counts it (sendq_queue_held_emails).
			held[i] = queue.Held{Email: e, Chunk: c.ID, Queue: queue.DefaultTopology.Pick(queue.PriorityBulk, c.ID),
				MaxAttempts: maxAttempts, Retention: 10 * time.Minute, AttemptTimeout: 10 * time.Second}
		}
		if err := b.store.Hold(context.Background(), held, time.Hour); err != nil {
			t.Fatalf("Hold: %v", err)
		}
		task, err := queue.DefaultTopology.NewChunkTask(c, queue.PriorityBulk, asynq.MaxRetry(5))
		if err != nil {
			t.Fatal(err)
		}
		tasks = append(tasks, task)
	}
	return tasks
}

func (b *testBundle) queueTasks(t *testing.T, tasks []*asynq.Task) {
	t.Helper()
	for _, task := range tasks {
		if _, err := b.client.Enqueue(task); err != nil {
			t.Fatalf("Enqueue chunk: %v", err)
		}
	}
}

func newEmails(n int, prefix string) []*queue.Email {
	out := make([]*queue.Email, n)
	for i := range out {
		out[i] = newEmail(fmt.Sprintf("%s%d@example.com", prefix, i))
	}
	return out
}

func TestChunkDeliversEachEmailOnce(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	batch := uuid.NewString()
	emails := newEmails(150, "r") // a chunk of 100 and one of 50
	tasks := b.hold(t, batch, emails, 5)
	bulk := queue.DefaultTopology.Queues(queue.PriorityBulk)
	if n, err := b.store.HeldEmails(context.Background(), bulk); err != nil || n != 150 {
		t.Fatalf("HeldEmails before = %d, %v; want 150", n, err)
	}
	b.queueTasks(t, tasks)
	for _, e := range emails {
		st := b.waitFinal(t, e.ID)
		if st.Status != queue.StatusSent || st.Attempts != 1 || st.BatchID != batch || st.Subject != "hello" || st.MaxAttempts != 5 {
			t.Fatalf("%s: status %s attempts %d batch %q subject %q max %d; want sent, 1, %s, hello, 5",
				e.ID, st.Status, st.Attempts, st.BatchID, st.Subject, st.MaxAttempts, batch)
		}
		if r := rcpt(st, e.To[0].Address); r.Status != queue.RecipientSent || r.Code != 250 {
			t.Fatalf("%s: recipient %+v; want sent 250", e.ID, r)
		}
	}
	// The text part derived once per chunk is every email's.
	for _, m := range b.smtp.Messages() {
		if !bytes.Contains(m.Data, []byte("Content-Type: text/plain")) || !bytes.Contains(m.Data, []byte("\r\nhi\r\n")) {
			t.Fatalf("message to %v lacks its text part:\n%s", m.To, m.Data)
		}
	}
	// Both chunks done: they hold no email (the chunk's ack follows its
	// last record, so wait for it).
	deadline := time.Now().Add(10 * time.Second)
	for {
		n, err := b.store.HeldEmails(context.Background(), bulk)
		if err == nil && n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("HeldEmails after = %d, %v; want 0", n, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	copies := b.smtp.Copies()
	for _, e := range emails {
		if n := copies[e.To[0].Address]; n != 1 {
			t.Errorf("%s got %d copies; want 1", e.To[0].Address, n)
		}
		// A sent email's payload goes after the retention (10 minutes
		// here), its record after the record TTL (an hour).
		if ttl := b.rdb.PTTL(context.Background(), queue.PayloadKey(e.ID)).Val(); ttl <= 0 || ttl > 10*time.Minute {
			t.Fatalf("payload TTL of a sent email = %s; want at most the 10m retention", ttl)
		}
	}
}

// A deferred email leaves its chunk for a task of its own: it alone is
// tried again, with a single send's retries, and its status shows it.
func TestChunkDeferredEmailIsRetriedAlone(t *testing.T) {
	t.Parallel()
	var flaky atomic.Int32
	b := setup(t, setupOpts{smtpOpts: []smtptest.Option{smtptest.WithHooks(smtptest.Hooks{
		Rcpt: func(_ *smtptest.Session, to string) error {
			if to == "r3@example.com" && flaky.Add(1) == 1 {
				return smtpErr(451, smtp.EnhancedCode{4, 3, 0}, "try again later")
			}
			return nil
		},
	})}})
	emails := newEmails(10, "r")
	b.queueTasks(t, b.hold(t, uuid.NewString(), emails, 5))
	for i, e := range emails {
		st := b.waitFinal(t, e.ID)
		want := 1
		if i == 3 {
			want = 2
		}
		if st.Status != queue.StatusSent || st.Attempts != want {
			t.Errorf("email %d: status %s attempts %d; want sent after %d", i, st.Status, st.Attempts, want)
		}
	}
	if n := flaky.Load(); n != 2 {
		t.Errorf("r3 was offered %d times; want 2", n)
	}
	for addr, n := range b.smtp.Copies() {
		if n != 1 {
			t.Errorf("%s got %d copies; want 1", addr, n)
		}
	}
	// Its own task holds it now: asynq says it is done, with 5 attempts
	// allowed in all.
	info, err := queue.FindTask(asynq.NewInspectorFromRedisClient(b.rdb), nil, emails[3].ID)
	if err != nil || info.Type != queue.TypeSendEmail {
		t.Fatalf("the deferred email's own task: %+v, %v", info, err)
	}
	if st, _ := b.look.Status(context.Background(), emails[3].ID); st.MaxAttempts != 5 || st.BatchID == "" {
		t.Errorf("status after the retry: max_attempts %d batch %q; want 5 and the batch", st.MaxAttempts, st.BatchID)
	}
}

// Canceling an email of a chunk: before the chunk runs it is skipped;
// while it is being delivered (sending) the cancel is refused.
func TestChunkCancel(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	b := setup(t, setupOpts{
		cfg: func(c *worker.Config) { c.Concurrency, c.Fetchers = 1, 1 },
		smtpOpts: []smtptest.Option{smtptest.WithHooks(smtptest.Hooks{
			Data: func(_ *smtptest.Session, _ []byte) error {
				select {
				case entered <- struct{}{}:
					<-release
				default:
				}
				return nil
			},
		})},
	})
	admin := &queue.Admin{Inspector: asynq.NewInspectorFromRedisClient(b.rdb), Store: b.store}
	ctx := context.Background()
	emails := newEmails(4, "c")
	tasks := b.hold(t, uuid.NewString(), emails, 3)
	if err := admin.Cancel(ctx, emails[3].ID); err != nil {
		t.Fatalf("cancel before the chunk runs: %v", err)
	}
	b.queueTasks(t, tasks)
	select {
	case <-entered: // emails[0] is in DATA: it is sending, the rest queued
	case <-time.After(10 * time.Second):
		t.Fatal("no delivery began")
	}
	var ws *queue.ErrWrongState
	if err := admin.Cancel(ctx, emails[0].ID); !errors.As(err, &ws) || ws.Status != queue.StatusSending {
		t.Errorf("cancel while sending = %v; want the wrong state sending", err)
	}
	if err := admin.Cancel(ctx, emails[2].ID); err != nil {
		t.Errorf("cancel of a queued email of a running chunk: %v", err)
	}
	close(release)
	for i, want := range []string{queue.StatusSent, queue.StatusSent, queue.StatusCanceled, queue.StatusCanceled} {
		var st *queue.EmailStatus
		deadline := time.Now().Add(10 * time.Second)
		for {
			var err error
			st, err = b.look.Status(ctx, emails[i].ID)
			if err == nil && (st.Status == want || time.Now().After(deadline)) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if st.Status != want {
			t.Errorf("email %d: %s; want %s", i, st.Status, want)
		}
	}
	time.Sleep(200 * time.Millisecond) // anything sent late would show
	copies := b.smtp.Copies()
	if copies["c2@example.com"] != 0 || copies["c3@example.com"] != 0 || copies["c0@example.com"] != 1 || copies["c1@example.com"] != 1 {
		t.Errorf("copies = %v; want c0 and c1 once, the canceled none", copies)
	}
	// A canceled email of a batch can be retried: it gets a task of its own.
	admin.Enqueuer = b.client
	if err := admin.Retry(ctx, emails[3].ID); err != nil {
		t.Fatalf("retry of a canceled chunk email: %v", err)
	}
	if st := b.waitFinal(t, emails[3].ID); st.Status != queue.StatusSent {
		t.Errorf("retried email: %s; want sent", st.Status)
	}
}

// A chunk run again (its worker died: asynq redelivers it after the
// lease) skips the emails already settled, and delivers the one the dead
// run had claimed but not recorded.
func TestChunkRunAgainSkipsSettled(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	ctx := context.Background()
	emails := newEmails(20, "s")
	tasks := b.hold(t, uuid.NewString(), emails, 3)
	// A run that died after claiming emails[5], before any SMTP.
	c, err := queue.DecodeChunk(tasks[0].Payload())
	if err != nil {
		t.Fatal(err)
	}
	if got, err := b.store.Claim(ctx, c.ID, c.IDs[5:6]); err != nil || len(got) != 1 {
		t.Fatalf("claim: %v, %v", got, err)
	}
	for run := range 2 {
		if err := b.w.ProcessChunk(ctx, tasks[0]); err != nil {
			t.Fatalf("run %d: %v", run, err)
		}
	}
	for _, e := range emails {
		if st, err := b.look.Status(ctx, e.ID); err != nil || st.Status != queue.StatusSent || st.Attempts != 1 {
			t.Errorf("%s: %+v, %v; want sent after 1 attempt", e.ID, st, err)
		}
	}
	for _, e := range emails {
		if n := b.smtp.Copies()[e.To[0].Address]; n != 1 {
			t.Errorf("%s: %d copies; want 1", e.To[0].Address, n)
		}
	}
}

// Emails that share their batch's attachments (kept once, under the
// batch) are sent with them.
func TestChunkSharedAttachments(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	ctx := context.Background()
	batch := uuid.NewString()
	atts := []queue.Attachment{{FileName: "terms.txt", ContentType: "text/plain", Data: []byte("the terms, in full\r\n")}}
	key := queue.SharedAttachmentsKey(batch, queue.AttachmentsSum(atts))
	if err := b.store.Share(ctx, key, atts, time.Hour); err != nil {
		t.Fatal(err)
	}
	emails := newEmails(3, "a")
	for _, e := range emails {
		e.SharedAttachments = key
	}
	b.queueTasks(t, b.hold(t, batch, emails, 3))
	for _, e := range emails {
		if st := b.waitFinal(t, e.ID); st.Status != queue.StatusSent {
			t.Fatalf("%s: %s; want sent", e.ID, st.Status)
		}
	}
	msgs := b.smtp.Messages()
	if len(msgs) != 3 {
		t.Fatalf("%d messages; want 3", len(msgs))
	}
	for _, m := range msgs {
		if !bytes.Contains(m.Data, []byte(`filename="terms.txt"`)) || !bytes.Contains(m.Data, []byte("dGhlIHRlcm1zLCBpbiBmdWxsDQo=")) {
			t.Errorf("message to %v lacks the shared attachment:\n%s", m.To, m.Data)
		}
	}
}

// Canceling every email of a chunk while it is being delivered: each one
// ends either canceled and never sent, or sent once (its cancel refused:
// the worker had claimed it).
func TestChunkCancelWhileDelivering(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{smtpOpts: []smtptest.Option{smtptest.WithHooks(smtptest.Hooks{
		Data: func(_ *smtptest.Session, _ []byte) error {
			time.Sleep(2 * time.Millisecond)
			return nil
		},
	})}})
	admin := &queue.Admin{Inspector: asynq.NewInspectorFromRedisClient(b.rdb), Store: b.store}
	ctx := context.Background()
	emails := newEmails(200, "w")
	b.queueTasks(t, b.hold(t, uuid.NewString(), emails, 3))
	for len(b.smtp.Messages()) < 10 {
		time.Sleep(time.Millisecond)
	}
	canceled := make([]bool, len(emails))
	errs := make(chan error, len(emails))
	var wg sync.WaitGroup
	for i, e := range emails {
		wg.Go(func() {
			err := admin.Cancel(ctx, e.ID)
			var ws *queue.ErrWrongState
			switch {
			case err == nil:
				canceled[i] = true
			case !errors.As(err, &ws):
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("cancel: %v", err)
	}
	n := 0
	for i, e := range emails {
		if canceled[i] {
			n++
			continue
		}
		if st := b.waitFinal(t, e.ID); st.Status != queue.StatusSent {
			t.Errorf("%s not canceled: %s; want sent", e.ID, st.Status)
		}
	}
	time.Sleep(300 * time.Millisecond) // a canceled email sent late would show
	copies := b.smtp.Copies()
	for i, e := range emails {
		want := 1
		if canceled[i] {
			want = 0
			if st, _ := b.look.Status(ctx, e.ID); st.Status != queue.StatusCanceled {
				t.Errorf("%s canceled: status %s", e.ID, st.Status)
			}
		}
		if got := copies[e.To[0].Address]; got != want {
			t.Errorf("%s (canceled %v): %d copies; want %d", e.To[0].Address, canceled[i], got, want)
		}
	}
	if n == 0 || n == len(emails) {
		t.Logf("%d of %d canceled: the race was not exercised both ways", n, len(emails))
	}
}

// An email of a chunk whose payload cannot be read fails (invalid); the
// others are delivered and the chunk is done, not run again and again.
func TestChunkUnreadableEmailFails(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	ctx := context.Background()
	emails := newEmails(3, "u")
	tasks := b.hold(t, uuid.NewString(), emails, 3)
	if err := b.rdb.Set(ctx, queue.PayloadKey(emails[1].ID), "{not json", time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	if err := b.w.ProcessChunk(ctx, tasks[0]); err != nil {
		t.Fatalf("ProcessChunk: %v", err)
	}
	for i, e := range emails {
		rec, err := b.store.Get(ctx, e.ID)
		want := queue.StatusSent
		if i == 1 {
			want = queue.StatusFailed
		}
		if err != nil || rec.State != want {
			t.Errorf("email %d: %+v, %v; want %s", i, rec, err, want)
		}
	}
	if rec, _ := b.store.Get(ctx, emails[1].ID); rec.Reason != queue.ReasonInvalid {
		t.Errorf("unreadable email: reason %q; want invalid", rec.Reason)
	}
	// Its status is the record's, not an error.
	if st, err := b.look.Status(ctx, emails[1].ID); err != nil || st.Status != queue.StatusFailed || st.FailureReason != queue.ReasonInvalid {
		t.Errorf("status of the unreadable email: %+v, %v; want failed, invalid", st, err)
	}
}
