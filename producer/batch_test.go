package producer_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/sendq/sendq/internal/apitest"
	"github.com/sendq/sendq/producer"
	"github.com/sendq/sendq/queue"
)

// doBatch is b.do, each request and answer validated against openapi.yaml.
func (b *apiBundle) doChecked(t *testing.T, v *apitest.Validator, method, path, body string, header map[string]string) response {
	t.Helper()
	req, resp, raw := b.exchange(t, method, path, body, header)
	check, _ := http.NewRequest(method, b.srv.URL+path, strings.NewReader(body))
	check.Header = req.Header.Clone()
	v.Check(t, check, []byte(body), resp, raw)
	r := response{code: resp.StatusCode, header: resp.Header, raw: raw}
	if err := json.Unmarshal(raw, &r.body); err != nil {
		t.Fatalf("%s %s: response is not JSON: %q", method, path, raw)
	}
	return r
}

func results(t *testing.T, r response) []map[string]any {
	t.Helper()
	list, _ := r.body["results"].([]any)
	out := make([]map[string]any, len(list))
	for i, x := range list {
		out[i], _ = x.(map[string]any)
		if idx, _ := out[i]["index"].(float64); int(idx) != i {
			t.Errorf("results[%d].index = %v; want %d", i, out[i]["index"], i)
		}
	}
	return out
}

func resultField(m map[string]any) string {
	e, _ := m["error"].(map[string]any)
	f, _ := e["field"].(string)
	return f
}

const partialBatch = `{"Defaults": {"From": "Acme <no-reply@acme.example>", "Subject": "Your order shipped", "Priority": "bulk"},
 "Messages": [
   {"To": "ada@example.com", "Body": "<p>Hi Ada</p>", "IdempotencyKey": "ship/A-1"},
   {"To": "not an address", "Body": "<p>Hi</p>"},
   {"to": "bob@example.com;carol@example.com", "subject": "Override", "Body": "<p>Hi</p>"},
   {"To": "dan@example.com", "Attachments": [{"ContentData": "!!", "FileName": "a.txt"}]},
   {"To": "eve@example.com", "Nope": 1},
   {"To": "fay@example.com", "Priority": "urgent"}],
 "Validation": "permissive"}`

func TestBatchReportsEveryInvalidMessage(t *testing.T) {
	t.Parallel()
	v := apitest.NewValidator(t)
	b := setupAPI(t, nil)
	r := b.doChecked(t, v, "POST", "/v1/emails/batch", partialBatch, nil)
	if r.code != http.StatusAccepted {
		t.Fatalf("POST batch = %d %s; want 202", r.code, r.raw)
	}
	batchID, _ := r.body["batch_id"].(string)
	if r.header.Get("Location") != "/v1/batches/"+batchID || r.body["accepted"] != 2.0 || r.body["rejected"] != 4.0 {
		t.Fatalf("answer = %s, Location %q", r.raw, r.header.Get("Location"))
	}
	res := results(t, r)
	if len(res) != 6 {
		t.Fatalf("%d results; want 6", len(res))
	}
	wantField := map[int]string{1: "Messages[1].To", 3: "Messages[3].Attachments[0].ContentData", 4: "Messages[4].Nope", 5: "Messages[5].Priority"}
	for i, m := range res {
		if f, bad := wantField[i]; bad {
			if resultField(m) != f || m["id"] != nil {
				t.Errorf("results[%d] = %v; want an error naming %s", i, m, f)
			}
			continue
		}
		if m["status"] != "queued" || m["id"] == nil {
			t.Errorf("results[%d] = %v; want queued with an id", i, m)
		}
	}
	// The override and the defaults reach the email, with the batch id.
	st := b.do(t, "GET", "/v1/emails/"+res[2]["id"].(string), "", nil)
	if st.body["subject"] != "Override" || st.body["batch_id"] != batchID || st.body["priority"] != "bulk" {
		t.Errorf("status of message 2 = %s; want subject Override, batch_id %s, priority bulk", st.raw, batchID)
	}
	st = b.do(t, "GET", "/v1/emails/"+res[0]["id"].(string), "", nil)
	if st.body["subject"] != "Your order shipped" {
		t.Errorf("status of message 0 = %s; want the default subject", st.raw)
	}
	if res[0]["id"] != producer.IdempotentID("anonymous", "ship/A-1") {
		t.Errorf("message 0 id = %v; want the id of Idempotency-Key ship/A-1", res[0]["id"])
	}
}

func TestBatchErrorsInDefaultsAreNamedSo(t *testing.T) {
	t.Parallel()
	b := setupAPI(t, nil)
	for _, tc := range []struct{ body, field string }{
		{`{"Defaults": {"Fromm": "a@example.com"}, "Messages": [{"To": "a@example.com"}]}`, "Defaults.Fromm"},
		{`{"Defaults": {"IsHtml": 3}, "Messages": [{"To": "a@example.com"}]}`, "Defaults.IsHtml"},
		{`{"Messages": {"To": "a@example.com"}}`, "Messages"},
		{`{"Messages": []}`, "Messages"},
		{`{"Messages": [{"To": "a@example.com"}], "Validation": "lenient"}`, "Validation"},
		{`{"Messages": [{"To": "a@example.com"}], "Extra": 1}`, "Extra"},
	} {
		r := b.do(t, "POST", "/v1/emails/batch", tc.body, nil)
		if _, f := errField(r); r.code != 400 || f != tc.field {
			t.Errorf("POST %s = %d %s; want 400 naming %s", tc.body, r.code, r.raw, tc.field)
		}
	}
	// A bad From in the defaults is every message's fault, named Defaults.From.
	r := b.do(t, "POST", "/v1/emails/batch", `{"Defaults": {"From": "nope"}, "Messages": [{"To": "a@example.com"}, {"To": "b@example.com", "From": "ok@example.com"}]}`, nil)
	res := results(t, r)
	if r.code != 202 || len(res) != 2 || resultField(res[0]) != "Defaults.From" || res[1]["status"] != "queued" {
		t.Errorf("bad default From = %d %s; want message 0 naming Defaults.From, message 1 queued", r.code, r.raw)
	}
}

func TestBatchStrictQueuesNothing(t *testing.T) {
	t.Parallel()
	v := apitest.NewValidator(t)
	b := setupAPI(t, nil)
	body := strings.Replace(partialBatch, `"permissive"`, `"strict"`, 1)
	r := b.doChecked(t, v, "POST", "/v1/emails/batch", body, nil)
	res := results(t, r)
	if r.code != 400 || r.body["accepted"] != 0.0 || r.body["rejected"] != 6.0 || len(res) != 6 {
		t.Fatalf("strict = %d %s; want 400, 0 accepted, 6 results", r.code, r.raw)
	}
	if resultField(res[1]) != "Messages[1].To" || resultField(res[0]) != "Validation" {
		t.Errorf("strict results = %s", r.raw)
	}
	if n := b.queued(t); n != 0 {
		t.Errorf("strict batch queued %d tasks; want none", n)
	}
	// All invalid: 400 with the same body.
	r = b.doChecked(t, v, "POST", "/v1/emails/batch", `{"Defaults": {"From": "a@example.com"}, "Messages": [{"To": "x"}, {"Body": "no recipient"}]}`, nil)
	res = results(t, r)
	if r.code != 400 || len(res) != 2 || resultField(res[0]) != "Messages[0].To" || resultField(res[1]) != "Messages[1].To" {
		t.Errorf("all invalid = %d %s; want 400 naming Messages[0].To and Messages[1].To", r.code, r.raw)
	}
}

func TestBatchReplayAndConflict(t *testing.T) {
	t.Parallel()
	b := setupAPI(t, nil)
	h := map[string]string{"Idempotency-Key": "nightly-2026-12-01"}
	first := b.do(t, "POST", "/v1/emails/batch", partialBatch, h)
	if first.code != 202 {
		t.Fatalf("first = %d %s", first.code, first.raw)
	}
	again := b.do(t, "POST", "/v1/emails/batch", partialBatch, h)
	if again.code != 202 || !bytes.Equal(again.raw, first.raw) || again.header.Get("Location") != first.header.Get("Location") {
		t.Errorf("replay = %d %s; want the first answer %s", again.code, again.raw, first.raw)
	}
	if n := b.queued(t); n != 2 {
		t.Errorf("%d tasks queued after the replay; want 2", n)
	}
	other := b.do(t, "POST", "/v1/emails/batch", `{"Messages": [{"From": "a@example.com", "To": "b@example.com"}]}`, h)
	if code, f := errField(other); other.code != 409 || code != "idempotency_key_reused" || f != "Idempotency-Key" {
		t.Errorf("other body = %d %s; want 409 idempotency_key_reused", other.code, other.raw)
	}
}

func TestBatchItemKeyDedupesALaterSingleSend(t *testing.T) {
	t.Parallel()
	b := setupAPI(t, nil)
	r := b.do(t, "POST", "/v1/emails/batch", `{"Messages": [{"From": "a@example.com", "To": "b@example.com", "IdempotencyKey": "order-7"}]}`, nil)
	id, _ := results(t, r)[0]["id"].(string)
	if r.code != 202 || id == "" {
		t.Fatalf("batch = %d %s", r.code, r.raw)
	}
	// The single send (normal priority: another queue) finds the batch's email.
	s := b.do(t, "POST", "/v1/emails", `{"From": "a@example.com", "To": "b@example.com", "Subject": "retry"}`, map[string]string{"Idempotency-Key": "order-7"})
	if s.code != 202 || s.body["id"] != id {
		t.Errorf("single send = %d %s; want 202 with the batch email's id %s", s.code, s.raw, id)
	}
	if total := b.queued(t); total != 1 {
		t.Errorf("%d tasks queued; want 1", total)
	}
	// Two messages of one batch with the same key: the second is refused.
	r = b.do(t, "POST", "/v1/emails/batch", `{"Defaults": {"From": "a@example.com", "To": "b@example.com"}, "Messages": [{"IdempotencyKey": "k"}, {"IdempotencyKey": "k"}]}`, nil)
	if res := results(t, r); r.code != 202 || len(res) != 2 || resultField(res[1]) != "Messages[1].IdempotencyKey" {
		t.Errorf("duplicate item keys = %d %s; want Messages[1].IdempotencyKey refused", r.code, r.raw)
	}
}

func TestBatchStatusAndCancel(t *testing.T) {
	t.Parallel()
	v := apitest.NewValidator(t)
	b := setupIsolated(t)
	var msgs []string
	for i := range 5 {
		msgs = append(msgs, fmt.Sprintf(`{"To": "r%d@contoso.example"}`, i))
	}
	body := `{"Defaults": {"From": "sales@contoso.example", "SendAt": "2099-01-01T00:00:00Z"}, "Messages": [` + strings.Join(msgs, ",") + `]}`
	// Far future: refused by the schedule limit.
	r := b.do(t, "POST", "/v1/emails/batch", body, alpha)
	if r.code != 400 || resultField(results(t, r)[0]) != "Defaults.SendAt" {
		t.Fatalf("SendAt 2099 = %d %s; want 400 naming Defaults.SendAt", r.code, r.raw)
	}
	body = `{"Defaults": {"From": "sales@contoso.example"}, "Messages": [` + strings.Join(msgs, ",") + `]}`
	r = b.doChecked(t, v, "POST", "/v1/emails/batch", body, alpha)
	if r.code != 202 {
		t.Fatalf("batch = %d %s", r.code, r.raw)
	}
	loc := r.header.Get("Location")
	st := b.doChecked(t, v, "GET", loc+"?page=2&page_size=2", "", alpha)
	counts, _ := st.body["counts"].(map[string]any)
	emails, _ := st.body["emails"].([]any)
	if st.code != 200 || st.body["total"] != 5.0 || counts["queued"] != 5.0 || counts["sent"] != 0.0 || len(emails) != 2 {
		t.Fatalf("GET batch = %d %s; want total 5, 5 queued, a page of 2", st.code, st.raw)
	}
	if e0, _ := emails[0].(map[string]any); e0["id"] != results(t, r)[2]["id"] {
		t.Errorf("page 2 starts with %v; want message 2", e0)
	}
	notFound(t, "GET batch with beta", b.do(t, "GET", loc, "", beta))
	notFound(t, "DELETE batch with beta", b.do(t, "DELETE", loc, "", beta))
	notFound(t, "GET unknown batch", b.do(t, "GET", "/v1/batches/nope", "", alpha))
	if a := b.do(t, "GET", loc, "", admin); a.code != 200 {
		t.Errorf("GET batch with admin = %d %s; want 200", a.code, a.raw)
	}
	// One email is taken out first: the batch cancel reports it not canceled.
	first, _ := results(t, r)[0]["id"].(string)
	if c := b.do(t, "DELETE", "/v1/emails/"+first, "", alpha); c.code != 200 {
		t.Fatalf("DELETE email = %d %s", c.code, c.raw)
	}
	c := b.doChecked(t, v, "DELETE", loc, "", alpha)
	if c.code != 200 || c.body["canceled"] != 4.0 || c.body["not_canceled"] != 1.0 {
		t.Errorf("DELETE batch = %d %s; want 4 canceled, 1 not", c.code, c.raw)
	}
	st = b.do(t, "GET", loc, "", alpha)
	if counts, _ := st.body["counts"].(map[string]any); counts["canceled"] != 5.0 || counts["queued"] != 0.0 {
		t.Errorf("after cancel = %s; want 5 canceled", st.raw)
	}
}

func TestBatchLimits(t *testing.T) {
	t.Parallel()
	v := apitest.NewValidator(t)
	b := setupAPI(t, func(c *producer.Config) { c.MaxBatch = 3; c.MaxBatchBytes = 2048 })
	msg := `{"From": "a@example.com", "To": "b@example.com"}`
	four := `{"Messages": [` + strings.Repeat(msg+",", 3) + msg + `]}`
	r := b.doChecked(t, v, "POST", "/v1/emails/batch", four, nil)
	if code, f := errField(r); r.code != 400 || code != "too_many_messages" || f != "Messages" || !strings.Contains(r.raw2(), "SENDQ_MAX_BATCH") {
		t.Errorf("4 messages, limit 3 = %d %s; want 400 too_many_messages naming SENDQ_MAX_BATCH", r.code, r.raw)
	}
	big := `{"Messages": [{"From": "a@example.com", "To": "b@example.com", "Body": "` + strings.Repeat("x", 3000) + `"}]}`
	r = b.doChecked(t, v, "POST", "/v1/emails/batch", big, nil)
	if r.code != 413 {
		t.Errorf("3 KB batch, limit 2 KB = %d %s; want 413", r.code, r.raw)
	}
}

// A batch larger than the key's rate burst could never be admitted: it is
// a 400 that says how large a batch may be, not a 429 retried for ever.
func TestBatchOverTheRateBurst(t *testing.T) {
	t.Parallel()
	v := apitest.NewValidator(t)
	b := setupAPI(t, func(c *producer.Config) { c.RatePerKey, _ = queue.ParseRate("3/s") })
	msg := `{"From": "a@example.com", "To": "b@example.com"}`
	four := `{"Messages": [` + strings.Repeat(msg+",", 3) + msg + `]}`
	r := b.doChecked(t, v, "POST", "/v1/emails/batch", four, nil)
	if code, f := errField(r); r.code != 400 || code != "batch_over_rate" || f != "Messages" || !strings.Contains(r.raw2(), "at most 3") {
		t.Errorf("4 messages, rate 3/s = %d %s; want 400 batch_over_rate saying at most 3", r.code, r.raw)
	}
	three := `{"Messages": [` + strings.Repeat(msg+",", 2) + msg + `]}`
	if r := b.doChecked(t, v, "POST", "/v1/emails/batch", three, nil); r.code != 202 {
		t.Errorf("3 messages, rate 3/s = %d %s; want 202", r.code, r.raw)
	}
	if n := b.queued(t); n != 3 {
		t.Errorf("%d emails queued; want 3", n)
	}
}

// queued is the number of emails queued in every queue of every
// priority: a single send's task counts one, a chunk task (batches) each
// of its emails whose record says this chunk holds it (a chunk of a
// retried batch may list emails an earlier chunk holds).
func (b *apiBundle) queued(t *testing.T) int {
	t.Helper()
	n := 0
	for _, q := range queue.DefaultTopology.All() {
		var infos []*asynq.TaskInfo
		for _, list := range []func(string, ...asynq.ListOption) ([]*asynq.TaskInfo, error){b.insp.ListPendingTasks, b.insp.ListScheduledTasks} {
			got, err := list(q, asynq.PageSize(10000))
			if err == nil {
				infos = append(infos, got...)
			}
		}
		for _, info := range infos {
			if info.Type != queue.TypeSendChunk {
				n++
				continue
			}
			c, err := queue.DecodeChunk(info.Payload)
			if err != nil {
				t.Fatal(err)
			}
			for _, id := range c.IDs {
				if rec, err := b.store.Get(context.Background(), id); err == nil && rec.Chunk == c.ID {
					n++
				}
			}
		}
	}
	return n
}

func (r response) raw2() string { return string(r.raw) }

func TestBatchRedisDownIs503(t *testing.T) {
	t.Parallel()
	v := apitest.NewValidator(t)
	b := setupAPI(t, func(c *producer.Config) { c.RedisTimeout = time.Second })
	b.redis.Stop()
	r := b.doChecked(t, v, "POST", "/v1/emails/batch", `{"Messages": [{"From": "a@example.com", "To": "b@example.com"}]}`, map[string]string{"Idempotency-Key": "k1"})
	if code, _ := errField(r); r.code != 503 || code != "queue_unavailable" {
		t.Errorf("POST batch with Redis down = %d %s; want 503 queue_unavailable", r.code, r.raw)
	}
}

// A batch answered 503 because Redis froze mid-request (it runs what it
// was sent when it wakes) and retried with its Idempotency-Key ends with
// every message queued exactly once.
func TestBatchRetriedAfter503QueuesEachOnce(t *testing.T) {
	t.Parallel()
	b := setupAPI(t, func(c *producer.Config) { c.RedisTimeout = 300 * time.Millisecond })
	var msgs []string
	for i := range 20 {
		msgs = append(msgs, fmt.Sprintf(`{"To": "r%d@example.com"}`, i))
	}
	body := `{"Defaults": {"From": "a@example.com"}, "Messages": [` + strings.Join(msgs, ",") + `]}`
	h := map[string]string{"Idempotency-Key": "retry-me"}
	resume := b.redis.Pause(t)
	r := b.do(t, "POST", "/v1/emails/batch", body, h)
	resume()
	if r.code != 503 {
		t.Fatalf("POST with Redis frozen = %d %s; want 503", r.code, r.raw)
	}
	time.Sleep(100 * time.Millisecond) // what Redis got, it has run
	r = b.do(t, "POST", "/v1/emails/batch", body, h)
	if r.code != 202 || r.body["accepted"] != 20.0 {
		t.Fatalf("retry = %d %s; want 202 with 20 accepted", r.code, r.raw)
	}
	if n := b.queued(t); n != 20 {
		t.Errorf("%d tasks queued after the retry; want 20", n)
	}
	again := b.do(t, "POST", "/v1/emails/batch", body, h)
	if !bytes.Equal(again.raw, r.raw) || b.queued(t) != 20 {
		t.Errorf("replay = %s; want the retry's answer, still 20 tasks", again.raw)
	}
	// Held emails are counted once, however often the chunk was offered.
	if n, err := b.store.HeldEmails(context.Background(), queue.DefaultTopology.Queues(queue.PriorityBulk)); err != nil || n != 20 {
		t.Errorf("HeldEmails = %d, %v; want 20", n, err)
	}
}

// A batch whose first attempt queued only some of its emails and lost its
// answer (a 503 or a timeout in the middle of the enqueues: simulated by
// a first attempt with the first 5 messages whose stored answer is then
// removed) and is retried whole with its Idempotency-Key ends with every
// message queued exactly once, the first 5 under the ids they had.
func TestBatchPartlyQueuedRetryQueuesEachOnce(t *testing.T) {
	t.Parallel()
	b := setupAPI(t, nil)
	var msgs []string
	for i := range 20 {
		msgs = append(msgs, fmt.Sprintf(`{"To": "r%d@example.com"}`, i))
	}
	batch := func(m []string) string {
		return `{"Defaults": {"From": "a@example.com"}, "Messages": [` + strings.Join(m, ",") + `]}`
	}
	h := map[string]string{"Idempotency-Key": "partial"}
	first := b.do(t, "POST", "/v1/emails/batch", batch(msgs[:5]), h)
	if first.code != 202 {
		t.Fatalf("first = %d %s", first.code, first.raw)
	}
	rdb := b.redis.Client(t)
	if err := rdb.HDel(context.Background(), "sendq:batch:{"+first.body["batch_id"].(string)+"}:meta", "answer").Err(); err != nil {
		t.Fatal(err)
	}
	r := b.do(t, "POST", "/v1/emails/batch", batch(msgs), h)
	if r.code != 202 || r.body["accepted"] != 20.0 || r.body["batch_id"] != first.body["batch_id"] {
		t.Fatalf("retry = %d %s; want 202, 20 accepted, the same batch id", r.code, r.raw)
	}
	for i, m := range results(t, first) {
		if results(t, r)[i]["id"] != m["id"] {
			t.Errorf("message %d: id %v on retry; want %v", i, results(t, r)[i]["id"], m["id"])
		}
	}
	if n := b.queued(t); n != 20 {
		t.Errorf("%d tasks queued; want 20", n)
	}
}

// 300 mutated batch bodies over HTTP: no 5xx, and every error names its
// field (the body's, or a message's) or is invalid_json.
func TestBatchMutatedBodies(t *testing.T) {
	t.Parallel()
	b := setupAPI(t, nil)
	rng := rand.New(rand.NewPCG(12, 300))
	bytesOf := []byte(partialBatch)
	const insert = `"Messages":[{"To":null}]`
	seen := map[int]int{}
	defer func() {
		t.Logf("answers: %v", seen)
		if seen[202] == 0 || seen[400] == 0 {
			t.Errorf("answers %v; want both 202 (some messages valid) and 400", seen)
		}
	}()
	for n := range 300 {
		m := bytes.Clone(bytesOf)
		for range 1 + rng.IntN(4) {
			i := rng.IntN(len(m))
			switch rng.IntN(3) {
			case 0:
				const junk = "{}[]\",:\\ \x00\xffa0"
				m[i] = junk[rng.IntN(len(junk))]
			case 1:
				m = append(m[:i], m[i+1:]...)
			default:
				m = append(m[:i], append([]byte(insert[:1+rng.IntN(len(insert))]), m[i:]...)...)
			}
		}
		r := b.do(t, "POST", "/v1/emails/batch", string(m), nil)
		seen[r.code]++
		if r.code >= 500 {
			t.Fatalf("mutation %d: %d %s for %q", n, r.code, r.raw, m)
		}
		if r.code == 400 {
			if code, field := errField(r); r.body["error"] != nil && field == "" && code != "invalid_json" {
				t.Errorf("mutation %d: %s names no field, for %q", n, r.raw, m)
			}
			for _, res := range results(t, r) {
				if res["error"] != nil && resultField(res) == "" {
					t.Errorf("mutation %d: result %v names no field", n, res)
				}
			}
		}
	}
}
