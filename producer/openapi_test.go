package producer_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sendq/sendq/internal/apitest"
	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/metrics"
	"github.com/sendq/sendq/producer"
	"github.com/sendq/sendq/queue"
)

// openAPISeed is a Send Email body as the connector sends it.
const openAPISeed = `{"From":"sender@example.com","To":"a@example.com;b@example.com","CC":"Boss <boss@example.com>",
"Bcc":"audit@example.com","Subject":"New lead","Body":"<p>hi</p>","IsHtml":true,"Importance":"High",
"Attachments":[{"ContentData":"aGVsbG8=","ContentType":"text/plain","FileName":"hello.txt"}]}`

func TestOpenAPIDocumentLoads(t *testing.T) {
	t.Parallel()
	doc, err := openapi3.NewLoader().LoadFromData(producer.OpenAPI)
	if err != nil {
		t.Fatalf("LoadFromData(openapi.yaml) = %v", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("openapi.yaml does not validate: %v", err)
	}
	for _, op := range []struct{ method, path string }{
		{"POST", "/v1/emails"}, {"GET", "/v1/emails"}, {"GET", "/v1/emails/{id}"},
		{"DELETE", "/v1/emails/{id}"}, {"POST", "/v1/emails/{id}/retry"},
		{"POST", "/v1/emails/batch"}, {"GET", "/v1/batches/{id}"}, {"DELETE", "/v1/batches/{id}"},
		{"PUT", "/v1/templates/{name}"}, {"GET", "/v1/templates"}, {"GET", "/v1/templates/{name}"},
		{"GET", "/v1/templates/{name}/versions/{n}"}, {"DELETE", "/v1/templates/{name}"},
		{"POST", "/v1/templates/{name}/render"}, {"POST", "/v1/templates/render"},
		{"GET", "/healthz"}, {"GET", "/readyz"}, {"GET", "/metrics"}, {"GET", "/openapi.yaml"},
	} {
		item := doc.Paths.Find(op.path)
		if item == nil || item.GetOperation(op.method) == nil {
			t.Errorf("openapi.yaml has no operation %s %s", op.method, op.path)
		}
	}
}

// openAPIEnqueuer accepts every task without Redis.
type openAPIEnqueuer struct {
	mu sync.Mutex
	n  int
}

func (e *openAPIEnqueuer) EnqueueContext(_ context.Context, _ *asynq.Task, _ ...asynq.Option) (*asynq.TaskInfo, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.n++
	return &asynq.TaskInfo{}, nil
}

// openAPIIntake serves the real intake on 127.0.0.1:<random port>. Only
// POST /v1/emails without an Idempotency-Key works: nothing else has Redis.
func openAPIIntake(t *testing.T) *httptest.Server {
	t.Helper()
	reg := prometheus.NewRegistry()
	api, err := producer.New(nil, &openAPIEnqueuer{}, nil, nil, producer.Config{
		Metrics: metrics.New(reg, reg), MaxBodyBytes: 64 << 10,
	})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	api.Register(mux)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

// openAPIExchange sends a request and returns everything Check needs.
func openAPIExchange(t *testing.T, srv *httptest.Server, method, path, contentType, body string) (*http.Request, []byte, *http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	respBody, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return req, []byte(body), resp, respBody
}

// recorded builds an exchange from a handler's output, for responses that
// need Redis to produce for real.
func recorded(method, target, reqBody string, write func(http.ResponseWriter)) (*http.Request, []byte, *http.Response, []byte) {
	req := httptest.NewRequest(method, "http://127.0.0.1:8080"+target, strings.NewReader(reqBody))
	if reqBody != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	rec := httptest.NewRecorder()
	write(rec)
	resp := rec.Result()
	body, _ := io.ReadAll(resp.Body)
	return req, []byte(reqBody), resp, body
}

func sampleStatus() *queue.EmailStatus {
	created := time.Date(2026, 1, 2, 15, 4, 5, 0, time.UTC)
	next := created.Add(30 * time.Second)
	return &queue.EmailStatus{
		ID: "01936f5e-6b7a-7c3d-9e2f-1a2b3c4d5e6f", Status: queue.StatusRetrying,
		Attempts: 1, MaxAttempts: 20, LastError: "451 4.7.1 try again later",
		CreatedAt: created, NextAttemptAt: &next, Subject: "New lead",
		Recipients: []queue.RecipientStatus{
			{Address: "a@example.com", Kind: "to", Status: queue.RecipientSent, Code: 250, EnhancedCode: "2.0.0", Message: "ok", UpdatedAt: created},
			{Address: "boss@example.com", Kind: "cc", Status: queue.RecipientDeferred, Code: 451, EnhancedCode: "4.7.1", Message: "try again later", UpdatedAt: created},
			{Address: "audit@example.com", Kind: "bcc", Status: queue.RecipientPending},
		},
	}
}

func TestOpenAPICheckAcceptsRealExchanges(t *testing.T) {
	t.Parallel()
	v := apitest.NewValidator(t)
	srv := openAPIIntake(t)

	for _, tc := range []struct {
		name, contentType, body string
		want                    int
	}{
		{"seed", "application/json", openAPISeed, http.StatusAccepted},
		{"lower-case names, array recipients, string booleans", "application/json; charset=utf-8",
			`{"from":"Sender <sender@example.com>","to":["a@example.com","b@example.com;c@example.com"],"cc":null,
			"ishtml":"False","importance":"low","deliveryreceipt":"true","sendat":"",
			"attachments":[{"contentdata":"hi","contenttransferencoding":"NONE","filename":"a.txt","contentid":"<a@x>"}]}`,
			http.StatusAccepted},
		{"scheduled", "application/json", `{"From":"s@example.com","To":"a@example.com","SendAt":"` + time.Now().Add(24*time.Hour).In(time.FixedZone("", 3600)).Format(time.RFC3339) + `"}`, http.StatusAccepted},
		{"unknown field", "application/json", `{"From":"s@example.com","To":"a@example.com","Priority":"High"}`, http.StatusBadRequest},
		{"bad address", "application/json", `{"From":"s@example.com","To":"bob@"}`, http.StatusBadRequest},
		{"not json", "text/plain", openAPISeed, http.StatusUnsupportedMediaType},
		{"too large", "application/json", `{"Body":"` + strings.Repeat("x", 65<<10) + `"}`, http.StatusRequestEntityTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, reqBody, resp, respBody := openAPIExchange(t, srv, "POST", "/v1/emails", tc.contentType, tc.body)
			if resp.StatusCode != tc.want {
				t.Fatalf("POST /v1/emails = %d %s; want %d", resp.StatusCode, respBody, tc.want)
			}
			v.Check(t, req, reqBody, resp, respBody)
		})
	}

	// Responses that need Redis, written by the same code the handlers use.
	st := sampleStatus()
	sent := st.CreatedAt.Add(time.Minute)
	done := &queue.EmailStatus{ID: st.ID, Status: queue.StatusSent, Attempts: 2, MaxAttempts: 20,
		CreatedAt: st.CreatedAt, SentAt: &sent, Subject: "x",
		Recipients: []queue.RecipientStatus{{Address: "a@example.com", Status: queue.RecipientSent}}}
	for _, tc := range []struct {
		name, method, target string
		write                func(http.ResponseWriter)
	}{
		{"status", "GET", "/v1/emails/" + st.ID, func(w http.ResponseWriter) { producer.WriteJSON(w, 200, st) }},
		{"status without the task", "GET", "/v1/emails/" + st.ID, func(w http.ResponseWriter) { producer.WriteJSON(w, 200, done) }},
		{"not found", "GET", "/v1/emails/nope", func(w http.ResponseWriter) {
			producer.WriteError(w, 404, "not_found", "id", "no email with this id")
		}},
		{"list", "GET", "/v1/emails?status=retrying&page=2&page_size=10", func(w http.ResponseWriter) {
			producer.WriteJSON(w, 200, producer.List{Emails: []*queue.EmailStatus{st}, Status: "retrying", Page: 2, PageSize: 10, Total: 11})
		}},
		{"empty list", "GET", "/v1/emails", func(w http.ResponseWriter) {
			producer.WriteJSON(w, 200, producer.List{Emails: []*queue.EmailStatus{}, Status: "failed", Page: 1, PageSize: 50})
		}},
		{"cancel", "DELETE", "/v1/emails/" + st.ID, func(w http.ResponseWriter) {
			c := *st
			c.Status, c.FailureReason, c.NextAttemptAt = queue.StatusCanceled, queue.ReasonCanceled, nil
			producer.WriteJSON(w, 200, &c)
		}},
		{"retry conflict", "POST", "/v1/emails/" + st.ID + "/retry", func(w http.ResponseWriter) {
			producer.WriteError(w, 409, "not_failed", "id", "only a failed or canceled email can be retried; this one is sent")
		}},
		{"queue down", "GET", "/v1/emails/" + st.ID, func(w http.ResponseWriter) {
			w.Header().Set("Retry-After", "5")
			producer.WriteError(w, 503, "queue_unavailable", "", "the queue is unavailable; nothing was accepted, retry later")
		}},
		{"unauthorized", "GET", "/v1/emails", func(w http.ResponseWriter) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="sendq"`)
			producer.WriteError(w, 401, "unauthorized", "Authorization", "missing or unknown API key (send Authorization: Bearer KEY)")
		}},
		{"openapi", "GET", "/openapi.yaml", func(w http.ResponseWriter) {
			w.Header().Set("Content-Type", "application/yaml")
			_, _ = w.Write(producer.OpenAPI)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, reqBody, resp, respBody := recorded(tc.method, tc.target, "", tc.write)
			v.Check(t, req, reqBody, resp, respBody)
		})
	}
}

func TestOpenAPICheckAcceptsTheLifecycle(t *testing.T) {
	t.Parallel()
	v := apitest.NewValidator(t)
	rs := redistest.Start(t)
	rdb, err := queue.NewRedisClient(rs.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rdb.Close() })
	reg := prometheus.NewRegistry()
	insp := asynq.NewInspectorFromRedisClient(rdb)
	api, err := producer.New(rdb, asynq.NewClientFromRedisClient(rdb), insp, queue.NewStore(rdb, time.Hour),
		producer.Config{Metrics: metrics.New(reg, reg), Keys: mustKeys(t, "lifecycle-key-1")})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	api.Register(mux)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)

	do := func(method, path, body string, header map[string]string, want int) []byte {
		t.Helper()
		req, err := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer lifecycle-key-1")
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		for k, v := range header {
			req.Header.Set(k, v)
		}
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		respBody, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != want {
			t.Fatalf("%s %s = %d %s; want %d", method, path, resp.StatusCode, respBody, want)
		}
		v.Check(t, req, []byte(body), resp, respBody)
		return respBody
	}

	var acc producer.Accepted
	if err := json.Unmarshal(do("POST", "/v1/emails", openAPISeed, map[string]string{"Idempotency-Key": "lifecycle-1"}, 202), &acc); err != nil {
		t.Fatal(err)
	}
	do("POST", "/v1/emails", openAPISeed, map[string]string{"Idempotency-Key": "lifecycle-1"}, 202)
	do("POST", "/v1/emails", `{"From":"s@example.com","To":"a@example.com"}`, map[string]string{"Idempotency-Key": "lifecycle-1"}, 409)
	do("POST", "/v1/emails", openAPISeed, map[string]string{"Authorization": "Bearer wrong-key-123"}, 401)
	do("GET", "/v1/emails/"+acc.ID, "", nil, 200)
	do("GET", "/v1/emails?status=queued", "", nil, 200)
	do("GET", "/v1/emails?status=canceled", "", nil, 400)
	do("DELETE", "/v1/emails/"+acc.ID, "", nil, 200)
	do("DELETE", "/v1/emails/"+acc.ID, "", nil, 409)
	do("GET", "/v1/emails", "", nil, 200)
	do("POST", "/v1/emails/"+acc.ID+"/retry", "", nil, 200)
	do("POST", "/v1/emails/"+acc.ID+"/retry", "", nil, 409)
	do("GET", "/v1/emails/01936f5e-0000-7000-8000-000000000000", "", nil, 404)
	do("GET", "/v1/emails/not!an!id", "", nil, 404)
}

func mustKeys(t *testing.T, s string) []producer.APIKey {
	t.Helper()
	keys, err := producer.ParseAPIKeys(s)
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

// failures is a testing.TB that records what Check reports instead of
// failing the test.
type failures struct {
	testing.TB
	msgs []string
}

func (f *failures) Helper() {}

func (f *failures) Errorf(format string, args ...any) {
	f.msgs = append(f.msgs, fmt.Sprintf(format, args...))
}

func TestOpenAPICheckRejectsMismatches(t *testing.T) {
	t.Parallel()
	v := apitest.NewValidator(t)

	accepted := func(body string) func(http.ResponseWriter) {
		return func(w http.ResponseWriter) {
			w.Header().Set("Location", "/v1/emails/x")
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusAccepted)
			_, _ = io.WriteString(w, body)
		}
	}
	for _, tc := range []struct {
		name, method, target, reqBody string
		write                         func(http.ResponseWriter)
		want                          string // in the report, after the route
	}{
		{"202 without id", "POST", "/v1/emails", openAPISeed, accepted(`{"status":"queued"}`), "POST /v1/emails: response 202"},
		{"202 with an unknown status", "POST", "/v1/emails", openAPISeed, accepted(`{"id":"x","status":"sent"}`), "POST /v1/emails: response 202"},
		{"202 without Location", "POST", "/v1/emails", openAPISeed, func(w http.ResponseWriter) {
			producer.WriteJSON(w, 202, producer.Accepted{ID: "x", Status: "queued"})
		}, "POST /v1/emails: response 202"},
		{"202 to a body the document rejects", "POST", "/v1/emails", `{"To":"a@example.com","Importance":"Urgent"}`,
			accepted(`{"id":"x","status":"queued"}`), "POST /v1/emails: the server answered 202"},
		{"undocumented status", "POST", "/v1/emails", openAPISeed, func(w http.ResponseWriter) {
			producer.WriteError(w, 500, "internal", "", "boom")
		}, "POST /v1/emails: response 500"},
		{"error body without message", "GET", "/v1/emails/x", "", func(w http.ResponseWriter) {
			producer.WriteJSON(w, 404, map[string]any{"error": map[string]string{"code": "not_found"}})
		}, "GET /v1/emails/{id}: response 404"},
		{"status with an unknown state", "GET", "/v1/emails/x", "", func(w http.ResponseWriter) {
			st := sampleStatus()
			st.Status = "delivered"
			producer.WriteJSON(w, 200, st)
		}, "GET /v1/emails/{id}: response 200"},
		{"route the document does not have", "GET", "/v2/emails", "", func(w http.ResponseWriter) {
			producer.WriteJSON(w, 200, map[string]string{})
		}, "GET /v2/emails (status 200)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, reqBody, resp, respBody := recorded(tc.method, tc.target, tc.reqBody, tc.write)
			f := &failures{TB: t}
			v.Check(f, req, reqBody, resp, respBody)
			if len(f.msgs) == 0 {
				t.Fatalf("Check(%s %s, %d %s) reported nothing; want a mismatch", tc.method, tc.target, resp.StatusCode, respBody)
			}
			if got := strings.Join(f.msgs, "\n"); !strings.Contains(got, tc.want) {
				t.Errorf("Check reported %q; want it to contain %q", got, tc.want)
			}
		})
	}

	// The request body is read from reqBody, not from req, so Check works
	// after the server consumed the body.
	req, _, resp, respBody := recorded("POST", "/v1/emails", `{"To":"a@example.com","Importance":"Urgent"}`, accepted(`{"id":"x","status":"queued"}`))
	_, _ = io.Copy(io.Discard, req.Body)
	f := &failures{TB: t}
	v.Check(f, req, []byte(`{"To":"a@example.com"}`), resp, respBody)
	if len(f.msgs) != 0 {
		t.Errorf("Check with a valid reqBody reported %q; want nothing", f.msgs)
	}
}
