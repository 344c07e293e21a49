package producer_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/metrics"
	"github.com/sendq/sendq/producer"
	"github.com/sendq/sendq/queue"
)

const seedBody = `{"From":"sender@example.com","To":"a@example.com;b@example.com","CC":"Boss <boss@example.com>",
"Bcc":"audit@example.com","Subject":"New lead","Body":"<p>hi</p>","IsHtml":true,"Importance":"High",
"Attachments":[{"ContentData":"aGVsbG8=","ContentType":"text/plain","FileName":"hello.txt"}]}`

type apiBundle struct {
	srv   *httptest.Server
	redis *redistest.Server
	insp  *asynq.Inspector
	store *queue.Store
	m     *metrics.Metrics
}

func setupAPI(t *testing.T, mutate func(*producer.Config)) *apiBundle {
	t.Helper()
	return setupAPIRedis(t, func(_ redis.UniversalClient, c *producer.Config) {
		if mutate != nil {
			mutate(c)
		}
	})
}

// setupAPIRedis is setupAPI for a mutate that needs the API's Redis client.
func setupAPIRedis(t *testing.T, mutate func(redis.UniversalClient, *producer.Config)) *apiBundle {
	t.Helper()
	rs := redistest.Start(t)
	rdb, err := queue.NewRedisClient(rs.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rdb.Close() })
	reg := prometheus.NewRegistry()
	b := &apiBundle{redis: rs, m: metrics.New(reg, reg)}
	b.insp = asynq.NewInspectorFromRedisClient(rdb)
	b.store = queue.NewStore(rdb, time.Hour)
	client := asynq.NewClientFromRedisClient(rdb)
	cfg := producer.Config{Metrics: b.m, MaxBodyBytes: 64 << 10}
	mutate(rdb, &cfg)
	api, err := producer.New(rdb, client, b.insp, b.store, cfg)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	api.Register(mux)
	b.srv = httptest.NewServer(b.m.Instrument(mux))
	t.Cleanup(b.srv.Close)
	return b
}

type response struct {
	code   int
	header http.Header
	body   map[string]any
	raw    []byte
}

// exchange makes one request to the API (a JSON body when body is set,
// the given headers) and returns it with its answer and the answer's body.
func (b *apiBundle) exchange(t *testing.T, method, path, body string, header map[string]string) (*http.Request, *http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, b.srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return req, resp, raw
}

func (b *apiBundle) do(t *testing.T, method, path, body string, header map[string]string) response {
	t.Helper()
	_, resp, raw := b.exchange(t, method, path, body, header)
	r := response{code: resp.StatusCode, header: resp.Header, raw: raw}
	if err := json.Unmarshal(raw, &r.body); err != nil {
		t.Fatalf("%s %s: response is not JSON: %q", method, path, raw)
	}
	return r
}

func errField(r response) (code, field string) {
	e, _ := r.body["error"].(map[string]any)
	code, _ = e["code"].(string)
	field, _ = e["field"].(string)
	return
}

func TestAcceptQueuesTheTask(t *testing.T) {
	t.Parallel()
	b := setupAPI(t, nil)
	r := b.do(t, "POST", "/v1/emails", seedBody, nil)
	if r.code != http.StatusAccepted {
		t.Fatalf("POST = %d %s; want 202", r.code, r.raw)
	}
	id, _ := r.body["id"].(string)
	if r.body["status"] != "queued" || r.header.Get("Location") != "/v1/emails/"+id {
		t.Errorf("body %s Location %q; want queued and /v1/emails/%s", r.raw, r.header.Get("Location"), id)
	}
	info, err := b.insp.GetTaskInfo(queue.Name, id)
	if err != nil {
		t.Fatalf("the task is not in Redis: %v", err)
	}
	if info.MaxRetry != 19 || info.Retention != 24*time.Hour {
		t.Errorf("MaxRetry %d Retention %s; want 19 (20 attempts) and 24h", info.MaxRetry, info.Retention)
	}
	st := b.do(t, "GET", "/v1/emails/"+id, "", nil)
	if st.code != 200 || st.body["status"] != "queued" || st.body["attempts"] != float64(0) {
		t.Errorf("GET = %d %s; want 200 queued with 0 attempts", st.code, st.raw)
	}
	if got := len(st.body["recipients"].([]any)); got != 4 {
		t.Errorf("status lists %d recipients; want 4", got)
	}
	if got := testutil.ToFloat64(b.m.EmailsAccepted); got != 1 {
		t.Errorf("emails_accepted_total = %v; want 1", got)
	}
	if got := testutil.ToFloat64(b.m.HTTPRequests.WithLabelValues("POST /v1/emails", "202")); got != 1 {
		t.Errorf(`http_requests_total{route="POST /v1/emails",code="202"} = %v; want 1`, got)
	}
}

func TestClientErrors(t *testing.T) {
	t.Parallel()
	b := setupAPI(t, func(c *producer.Config) {
		keys, err := producer.ParseAPIKeys("good-key-123:@example.com,other-key-456")
		if err != nil {
			t.Fatal(err)
		}
		c.Keys = keys
		c.AllowedFrom = []string{"@example.com", "ops@corp.test"}
	})
	auth := map[string]string{"Authorization": "Bearer good-key-123"}
	tests := []struct {
		name, method, path, body string
		header                   map[string]string
		code                     int
		errCode, field           string
	}{
		{"no key", "POST", "/v1/emails", seedBody, nil, 401, "unauthorized", "Authorization"},
		{"unknown key", "POST", "/v1/emails", seedBody, map[string]string{"Authorization": "Bearer nope-nope-nope"}, 401, "unauthorized", "Authorization"},
		{"basic auth", "POST", "/v1/emails", seedBody, map[string]string{"Authorization": "Basic Z29vZC1rZXktMTIz"}, 401, "unauthorized", "Authorization"},
		{"not json", "POST", "/v1/emails", seedBody, map[string]string{"Authorization": "Bearer good-key-123", "Content-Type": "text/plain"}, 415, "unsupported_media_type", "Content-Type"},
		{"bad json", "POST", "/v1/emails", `{"From":`, auth, 400, "invalid_json", ""},
		{"missing to", "POST", "/v1/emails", `{"From":"a@example.com","Subject":"x"}`, auth, 400, "missing_field", "To"},
		{"bad importance", "POST", "/v1/emails", `{"From":"a@example.com","To":"b@example.com","Importance":"Urgent"}`, auth, 400, "invalid_field", "Importance"},
		{"bad base64", "POST", "/v1/emails", `{"From":"a@example.com","To":"b@example.com","Attachments":[{"ContentData":"%%%","FileName":"a.txt"}]}`, auth, 400, "invalid_field", "Attachments[0].ContentData"},
		{"crlf subject", "POST", "/v1/emails", `{"From":"a@example.com","To":"b@example.com","Subject":"hi\r\nBcc: x@evil.test"}`, auth, 400, "invalid_field", "Subject"},
		{"global allow-list", "POST", "/v1/emails", `{"From":"a@elsewhere.test","To":"b@example.com"}`, map[string]string{"Authorization": "Bearer other-key-456"}, 403, "sender_not_allowed", "From"},
		{"per-key allow-list", "POST", "/v1/emails", `{"From":"ops@corp.test","To":"b@example.com"}`, auth, 403, "sender_not_allowed", "From"},
		{"too large", "POST", "/v1/emails", `{"From":"a@example.com","To":"b@example.com","Body":"` + strings.Repeat("x", 70<<10) + `"}`, auth, 413, "body_too_large", ""},
		{"unknown id", "GET", "/v1/emails/00000000-0000-0000-0000-000000000000", "", auth, 404, "not_found", "id"},
		{"odd id", "GET", "/v1/emails/..%2f..%2fetc", "", auth, 404, "not_found", "id"},
		{"bad list status", "GET", "/v1/emails?status=lost", "", auth, 400, "invalid_parameter", "status"},
		{"bad page size", "GET", "/v1/emails?page_size=1000", "", auth, 400, "invalid_parameter", "page_size"},
		{"retry unknown", "POST", "/v1/emails/abc/retry", "", auth, 404, "not_found", "id"},
		{"cancel unknown", "DELETE", "/v1/emails/abc", "", auth, 404, "not_found", "id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := b.do(t, tt.method, tt.path, tt.body, tt.header)
			code, field := errField(r)
			if r.code != tt.code || code != tt.errCode || field != tt.field {
				t.Errorf("%s %s = %d %s field %q; want %d %s field %q (%s)", tt.method, tt.path, r.code, code, field, tt.code, tt.errCode, tt.field, r.raw)
			}
		})
	}
	// The other key, with no allow-list of its own, may use the global one.
	if r := b.do(t, "POST", "/v1/emails", `{"From":"ops@corp.test","To":"b@example.com"}`, map[string]string{"Authorization": "Bearer other-key-456"}); r.code != 202 {
		t.Errorf("allowed sender = %d %s; want 202", r.code, r.raw)
	}
	if n := testutil.ToFloat64(b.m.EmailsAccepted); n != 1 {
		t.Errorf("emails_accepted_total = %v; want 1 (no rejected request may be queued)", n)
	}
}

func TestIdempotencyKey(t *testing.T) {
	t.Parallel()
	b := setupAPI(t, nil)
	h := map[string]string{"Idempotency-Key": "order-42"}
	first := b.do(t, "POST", "/v1/emails", seedBody, h)
	again := b.do(t, "POST", "/v1/emails", seedBody, h)
	if first.code != 202 || again.code != 202 || first.body["id"] != again.body["id"] {
		t.Fatalf("first %d %s, again %d %s; want the same 202", first.code, first.raw, again.code, again.raw)
	}
	other := b.do(t, "POST", "/v1/emails", strings.Replace(seedBody, "New lead", "Other", 1), h)
	if code, field := errField(other); other.code != 409 || code != "idempotency_key_reused" || field != "Idempotency-Key" {
		t.Errorf("different body = %d %s; want 409 idempotency_key_reused", other.code, other.raw)
	}
	qi, err := b.insp.GetQueueInfo(queue.Name)
	if err != nil {
		t.Fatal(err)
	}
	if qi.Pending != 1 {
		t.Errorf("pending tasks = %d; want 1", qi.Pending)
	}
	fresh := b.do(t, "POST", "/v1/emails", seedBody, map[string]string{"Idempotency-Key": "order-43"})
	if fresh.code != 202 || fresh.body["id"] == first.body["id"] {
		t.Errorf("another key = %d %s; want a new email", fresh.code, fresh.raw)
	}
}

// Many concurrent requests with one key: every one gets the same 202, and
// exactly one email is queued.
func TestIdempotencyKeyUnderConcurrency(t *testing.T) {
	t.Parallel()
	b := setupAPI(t, nil)
	const n = 20
	ids := make(chan string, n)
	for i := 0; i < n; i++ {
		go func() {
			r := b.do(t, "POST", "/v1/emails", seedBody, map[string]string{"Idempotency-Key": "burst"})
			if r.code != 202 {
				t.Errorf("request = %d %s; want 202", r.code, r.raw)
			}
			id, _ := r.body["id"].(string)
			ids <- id
		}()
	}
	first := <-ids
	for i := 1; i < n; i++ {
		if id := <-ids; id != first {
			t.Errorf("ids differ: %s vs %s", id, first)
		}
	}
	qi, err := queue.QueueInfo(b.insp)
	if err != nil || qi.Pending != 1 {
		t.Errorf("pending = %+v (%v); want exactly 1 email", qi, err)
	}
	if got := testutil.ToFloat64(b.m.EmailsAccepted); got != 1 {
		t.Errorf("emails_accepted_total = %v; want 1", got)
	}
}

func TestRedisDownIs503Quickly(t *testing.T) {
	t.Parallel()
	b := setupAPI(t, nil)
	b.redis.Stop()
	start := time.Now()
	r := b.do(t, "POST", "/v1/emails", seedBody, nil)
	took := time.Since(start)
	if code, _ := errField(r); r.code != 503 || code != "queue_unavailable" {
		t.Errorf("POST with Redis down = %d %s; want 503 queue_unavailable", r.code, r.raw)
	}
	if took > 5*time.Second {
		t.Errorf("503 took %s; want a few seconds at most", took)
	}
	if got := testutil.ToFloat64(b.m.EmailsAccepted); got != 0 {
		t.Errorf("emails_accepted_total = %v; want 0", got)
	}
}

func TestCancelRetryAndDeadLetterList(t *testing.T) {
	t.Parallel()
	b := setupAPI(t, nil)
	r := b.do(t, "POST", "/v1/emails", seedBody, nil)
	id := r.body["id"].(string)
	c := b.do(t, "DELETE", "/v1/emails/"+id, "", nil)
	if c.code != 200 || c.body["status"] != "canceled" {
		t.Fatalf("DELETE = %d %s; want 200 canceled", c.code, c.raw)
	}
	if again := b.do(t, "DELETE", "/v1/emails/"+id, "", nil); again.code != 409 {
		t.Errorf("second DELETE = %d; want 409", again.code)
	}
	l := b.do(t, "GET", "/v1/emails?status=failed&page_size=10", "", nil)
	emails, _ := l.body["emails"].([]any)
	if l.code != 200 || len(emails) != 1 || l.body["total"] != float64(1) {
		t.Fatalf("GET list = %d %s; want the canceled email", l.code, l.raw)
	}
	rt := b.do(t, "POST", "/v1/emails/"+id+"/retry", "", nil)
	if rt.code != 200 || rt.body["status"] != "queued" {
		t.Errorf("retry = %d %s; want 200 queued", rt.code, rt.raw)
	}
	if again := b.do(t, "POST", "/v1/emails/"+id+"/retry", "", nil); again.code != 409 {
		t.Errorf("retry of a queued email = %d; want 409", again.code)
	}
}

func TestScheduledSend(t *testing.T) {
	t.Parallel()
	b := setupAPI(t, nil)
	at := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	body := `{"From":"a@example.com","To":"b@example.com","SendAt":"` + at + `"}`
	r := b.do(t, "POST", "/v1/emails", body, nil)
	if r.code != 202 || r.body["status"] != "scheduled" {
		t.Fatalf("POST = %d %s; want 202 scheduled", r.code, r.raw)
	}
	st := b.do(t, "GET", "/v1/emails/"+r.body["id"].(string), "", nil)
	if st.body["status"] != "scheduled" || st.body["next_attempt_at"] == nil {
		t.Errorf("status %s; want scheduled with next_attempt_at", st.raw)
	}
}

// Requests from the same connector client arrive concurrently; none may
// see another's data or fail.
func TestConcurrentIntake(t *testing.T) {
	t.Parallel()
	b := setupAPI(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	errs := make(chan error, 50)
	for i := 0; i < 50; i++ {
		go func() {
			req, _ := http.NewRequestWithContext(ctx, "POST", b.srv.URL+"/v1/emails", bytes.NewBufferString(seedBody))
			req.Header.Set("Content-Type", "application/json")
			resp, err := http.DefaultClient.Do(req)
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode != 202 {
					err = io.ErrUnexpectedEOF
				}
			}
			errs <- err
		}()
	}
	for i := 0; i < 50; i++ {
		if err := <-errs; err != nil {
			t.Errorf("request %d: %v", i, err)
		}
	}
	qi, err := b.insp.GetQueueInfo(queue.Name)
	if err != nil || qi.Pending != 50 {
		t.Errorf("pending = %v (%v); want 50", qi, err)
	}
}

func TestRateLimitPerKey(t *testing.T) {
	t.Parallel()
	b := setupAPI(t, func(c *producer.Config) {
		keys, _ := producer.ParseAPIKeys("key-one-111,key-two-222")
		c.Keys = keys
		c.RatePerKey, _ = queue.ParseRate("2/m")
	})
	one := map[string]string{"Authorization": "Bearer key-one-111"}
	for i := 0; i < 2; i++ {
		if r := b.do(t, "POST", "/v1/emails", seedBody, one); r.code != 202 {
			t.Fatalf("request %d = %d; want 202", i, r.code)
		}
	}
	r := b.do(t, "POST", "/v1/emails", seedBody, one)
	if code, field := errField(r); r.code != 429 || code != "rate_limited" || field != "Authorization" || r.header.Get("Retry-After") == "" {
		t.Errorf("third request = %d %s Retry-After %q; want 429 rate_limited with Retry-After", r.code, r.raw, r.header.Get("Retry-After"))
	}
	if r := b.do(t, "POST", "/v1/emails", seedBody, map[string]string{"Authorization": "Bearer key-two-222"}); r.code != 202 {
		t.Errorf("another key = %d; want 202 (limits are per key)", r.code)
	}
	if got := testutil.ToFloat64(b.m.RateLimited.WithLabelValues("intake")); got != 1 {
		t.Errorf("rate_limited_total{scope=intake} = %v; want 1", got)
	}
}

func TestEmptyListOnAFreshRedis(t *testing.T) {
	t.Parallel()
	b := setupAPI(t, nil)
	r := b.do(t, "GET", "/v1/emails?status=failed", "", nil)
	if r.code != 200 || r.body["total"] != float64(0) {
		t.Errorf("GET list on a fresh Redis = %d %s; want 200 with total 0", r.code, r.raw)
	}
}
