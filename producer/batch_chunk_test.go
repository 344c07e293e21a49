package producer_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sendq/sendq/metrics"
	"github.com/sendq/sendq/producer"
	"github.com/sendq/sendq/queue"
	"github.com/sendq/sendq/suppression"
)

// A batch's emails go into chunk tasks of at most queue.ChunkSize that
// share a priority and a time to send; each email has its own record and
// status, with its batch_id.
func TestBatchEmailsInChunks(t *testing.T) {
	t.Parallel()
	b := setupAPI(t, nil)
	var msgs []string
	for i := range 250 {
		switch {
		case i%50 == 7:
			msgs = append(msgs, fmt.Sprintf(`{"To": "r%d@example.com", "Priority": "high"}`, i))
		case i%50 == 9:
			msgs = append(msgs, fmt.Sprintf(`{"To": "r%d@example.com", "SendAt": %q}`, i, time.Now().Add(time.Hour).UTC().Format(time.RFC3339)))
		default:
			msgs = append(msgs, fmt.Sprintf(`{"To": "r%d@example.com"}`, i))
		}
	}
	r := b.do(t, "POST", "/v1/emails/batch", `{"Defaults": {"From": "a@example.com", "Subject": "s"}, "Messages": [`+strings.Join(msgs, ",")+`]}`, nil)
	if r.code != 202 || r.body["accepted"] != 250.0 {
		t.Fatalf("batch = %d %s", r.code, r.raw)
	}
	batch := r.body["batch_id"].(string)
	// 240 bulk now: 3 chunks; 5 high: 1; 5 scheduled bulk: 1.
	var chunks []*queue.Chunk
	held, high, scheduled := 0, 0, 0
	for _, q := range queue.DefaultTopology.All() {
		for _, list := range []func(string, ...asynq.ListOption) ([]*asynq.TaskInfo, error){b.insp.ListPendingTasks, b.insp.ListScheduledTasks} {
			infos, _ := list(q, asynq.PageSize(1000))
			for _, info := range infos {
				if info.Type != queue.TypeSendChunk {
					t.Errorf("task %s of type %s; want chunks only", info.ID, info.Type)
					continue
				}
				c, err := queue.DecodeChunk(info.Payload)
				if err != nil || c.BatchID != batch || c.ID != info.ID || len(c.IDs) > queue.ChunkSize {
					t.Fatalf("chunk %+v, %v", c, err)
				}
				p, _ := queue.DefaultTopology.Priority(q)
				switch {
				case p == queue.PriorityHigh:
					high++
				case info.State == asynq.TaskStateScheduled:
					scheduled++
				}
				if (p == queue.PriorityHigh || info.State == asynq.TaskStateScheduled) != (len(c.IDs) == 5) {
					t.Errorf("chunk of %d on %s (%s); want the 5 high and the 5 scheduled apart", len(c.IDs), q, info.State)
				}
				chunks = append(chunks, c)
				held += len(c.IDs)
			}
		}
	}
	if len(chunks) != 5 || held != 250 || high != 1 || scheduled != 1 {
		t.Errorf("%d chunks holding %d emails, %d high, %d scheduled; want 5 holding 250, 1 high, 1 scheduled", len(chunks), held, high, scheduled)
	}
	// The emails the chunks hold are counted per priority
	// (sendq_queue_held_emails): a chunk is one task of many emails.
	for p, want := range map[string]int{queue.PriorityBulk: 245, queue.PriorityHigh: 5, queue.PriorityNormal: 0} {
		if n, err := b.store.HeldEmails(context.Background(), queue.DefaultTopology.Queues(p)); err != nil || n != want {
			t.Errorf("HeldEmails(%s) = %d, %v; want %d", p, n, err, want)
		}
	}
	for i, res := range results(t, r) {
		st := b.do(t, "GET", "/v1/emails/"+res["id"].(string), "", nil)
		want := "queued"
		if i%50 == 9 {
			want = "scheduled"
		}
		if st.code != 200 || st.body["status"] != want || st.body["batch_id"] != batch || st.body["subject"] != "s" || res["status"] != want {
			t.Fatalf("message %d: %d %s; want %s with the batch id", i, st.code, st.raw, want)
		}
	}
}

// An attachment the emails of a batch share (from its Defaults) is kept
// once, under the batch, not in every email's record.
func TestBatchDefaultsAttachmentKeptOnce(t *testing.T) {
	t.Parallel()
	b := setupAPI(t, nil)
	data := strings.Repeat("0123456789abcdef", 2048) // 32 KB
	att := fmt.Sprintf(`[{"FileName": "terms.txt", "ContentType": "text/plain", "ContentData": %q}]`, base64.StdEncoding.EncodeToString([]byte(data)))
	var msgs []string
	for i := range 50 {
		msgs = append(msgs, fmt.Sprintf(`{"To": "r%d@example.com"}`, i))
	}
	msgs = append(msgs, `{"To": "own@example.com", "Attachments": [{"FileName": "own.txt", "ContentData": "b3du"}]}`)
	r := b.do(t, "POST", "/v1/emails/batch", `{"Defaults": {"From": "a@example.com", "Attachments": `+att+`}, "Messages": [`+strings.Join(msgs, ",")+`]}`, nil)
	if r.code != 202 || r.body["accepted"] != 51.0 {
		t.Fatalf("batch = %d %s", r.code, r.raw)
	}
	ctx := context.Background()
	rdb := b.redis.Client(t)
	keys, err := rdb.Keys(ctx, "sendq:batch:{"+r.body["batch_id"].(string)+"}:att:*").Result()
	if err != nil || len(keys) != 1 {
		t.Fatalf("shared attachment keys %v, %v; want 1", keys, err)
	}
	shared, _ := rdb.StrLen(ctx, keys[0]).Result()
	var payloads int
	for i, res := range results(t, r) {
		rec, err := b.store.Get(ctx, res["id"].(string))
		if err != nil {
			t.Fatal(err)
		}
		payloads += len(rec.Payload)
		e, err := queue.DecodeEmail(rec.Payload)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case i < 50 && (e.SharedAttachments != keys[0] || len(e.Attachments) != 0):
			t.Errorf("message %d: shared %q, %d attachments of its own; want the shared key and none", i, e.SharedAttachments, len(e.Attachments))
		case i == 50 && (e.SharedAttachments != "" || len(e.Attachments) != 1):
			t.Errorf("message 50: shared %q, %d attachments; want its own one", e.SharedAttachments, len(e.Attachments))
		}
	}
	if shared < int64(len(data)) || payloads > len(data) {
		t.Errorf("shared key %d bytes, the records' payloads %d bytes in all; want the 32 KB once", shared, payloads)
	}
	// The worker's view: the email loads them back whole.
	rec, _ := b.store.Get(ctx, results(t, r)[3]["id"].(string))
	e, _ := queue.DecodeEmail(rec.Payload)
	if err := b.store.LoadShared(ctx, e, nil); err != nil || len(e.Attachments) != 1 || string(e.Attachments[0].Data) != data || e.Attachments[0].FileName != "terms.txt" {
		t.Errorf("LoadShared: %v, %d attachments", err, len(e.Attachments))
	}
}

// The batch intake looks up every recipient of the batch at once and
// marks the suppressed ones, as a single send's intake does.
func TestBatchMarksSuppressedRecipients(t *testing.T) {
	t.Parallel()
	b := setupSuppression(t, nil)
	ctx := context.Background()
	if _, err := b.list.Add(ctx, suppression.Entry{Address: "gone@example.com", Reason: suppression.ReasonUnsubscribe}); err != nil {
		t.Fatal(err)
	}
	_, body := b.do(t, "POST", "/v1/emails/batch", "application/json",
		`{"Defaults": {"From": "s@example.com"}, "Messages": [{"To": "ok@example.com;GONE@example.com"}, {"To": "gone@example.com"}, {"To": "fine@example.com"}]}`, false, 202)
	var ans producer.BatchAnswer
	if err := json.Unmarshal(body, &ans); err != nil || len(ans.Results) != 3 {
		t.Fatalf("answer %s: %v", body, err)
	}
	want := []map[string]string{
		{"ok@example.com": "pending/", "GONE@example.com": "suppressed/unsubscribe"},
		{"gone@example.com": "suppressed/unsubscribe"},
		{"fine@example.com": "pending/"},
	}
	for i, res := range ans.Results {
		st, err := b.look.Status(ctx, res.ID)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]string{}
		for _, r := range st.Recipients {
			got[r.Address] = r.Status + "/" + r.Reason
		}
		if fmt.Sprint(got) != fmt.Sprint(want[i]) {
			t.Errorf("message %d: recipients %v; want %v", i, got, want[i])
		}
	}
	if n := testutil.ToFloat64(b.m.RecipientsSuppressed.WithLabelValues(metrics.StageIntake)); n != 2 {
		t.Errorf("suppressed at intake = %v; want 2", n)
	}
}
