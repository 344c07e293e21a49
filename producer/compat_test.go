package producer_test

import (
	"bytes"
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

	"github.com/sendq/sendq/deploy"
	"github.com/sendq/sendq/internal/apitest"
	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/metrics"
	"github.com/sendq/sendq/producer"
	"github.com/sendq/sendq/queue"
)

// Bodies as each of the connector's operations takes them.
const (
	v1Body = `{"From":"sender@example.com","To":"a@example.com;b@example.com","CC":"Boss <boss@example.com>",
"Bcc":"audit@example.com","Subject":"New lead","Body":"plain words","IsHtml":false,"Importance":"Low",
"ReadReceipt":"sender@example.com","DeliveryReceipt":"sender@example.com",
"Attachments":[{"ContentData":"as is","ContentType":"text/plain","ContentTransferEncoding":"none","FileName":"a.txt"}]}`
	v2Body = `{"From":"sender@example.com","To":"a@example.com","Subject":"New lead","Body":"<p>hi</p>","IsHtml":true,
"Attachments":[{"ContentData":"aGVsbG8=","ContentType":"text/plain","FileName":"hello.txt","ContentId":"hello"}]}`
	v3Body = `{"From":"sender@example.com","To":"a@example.com;b@example.com","CC":"boss@example.com","Bcc":"audit@example.com",
"Subject":"New lead","Body":"<p>hi</p>","Importance":"High","ReadReceipt":"sender@example.com","DeliveryReceipt":"sender@example.com",
"Attachments":[{"ContentData":"aGVsbG8=","ContentType":"text/plain","FileName":"hello.txt"}]}`
)

// setupConnector serves the intake as `sendq serve` does: the mux behind
// ConnectorPaths and the metrics middleware, beside a /ui/ subtree (which
// a /{connectionId}/SendEmailV3 pattern would conflict with).
func setupConnector(t *testing.T, mutate func(*producer.Config)) *apiBundle {
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
	cfg := producer.Config{Metrics: b.m, MaxBodyBytes: 64 << 10, RedisTimeout: time.Second}
	if mutate != nil {
		mutate(&cfg)
	}
	api, err := producer.New(rdb, asynq.NewClientFromRedisClient(rdb), b.insp, b.store, cfg)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	api.Register(mux)
	mux.HandleFunc("/ui/", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "the web view") })
	b.srv = httptest.NewServer(b.m.Instrument(producer.ConnectorPaths(mux)))
	t.Cleanup(b.srv.Close)
	return b
}

// validators checks exchanges against openapi.yaml and, for the
// connector's routes, against the custom connector definition.
type validators struct{ api, connector *apitest.Validator }

func newValidators(t *testing.T) *validators {
	return &validators{apitest.NewValidator(t), apitest.NewConnectorValidator(t, deploy.LogicAppsDefinition)}
}

func (v *validators) Check(t testing.TB, req *http.Request, reqBody []byte, resp *http.Response, respBody []byte) {
	t.Helper()
	v.api.Check(t, req, reqBody, resp, respBody)
	if !strings.HasPrefix(req.URL.Path, "/v1/") || req.Method != "POST" {
		v.connector.Check(t, req, reqBody, resp, respBody)
	}
}

// post sends body with a Content-Type and returns the response; the
// exchange is checked by v.
func (b *apiBundle) post(t *testing.T, v *validators, path, contentType, body string, header map[string]string) response {
	t.Helper()
	req, err := http.NewRequest("POST", b.srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", contentType)
	for k, val := range header {
		req.Header.Set(k, val)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if v != nil {
		v.Check(t, req, []byte(body), resp, raw)
	}
	r := response{code: resp.StatusCode, header: resp.Header, raw: raw}
	_ = json.Unmarshal(raw, &r.body)
	return r
}

func TestConnectorRoutesQueueTheirVersion(t *testing.T) {
	t.Parallel()
	b := setupConnector(t, nil)
	v := newValidators(t)
	for _, tc := range []struct {
		path, contentType, body string
		html                    bool
		att                     []byte // the first attachment's content as queued
	}{
		{"/SendEmail", "application/json", v1Body, false, []byte("as is")},
		{"/SendEmailV2", "text/json", v2Body, true, []byte("hello")},
		{"/SendEmailV3", "text/json; charset=utf-8", v3Body, true, []byte("hello")},
		{"/shared-smtp-1/SendEmailV3", "text/json", v3Body, true, []byte("hello")},
		{"/0f8fad5b-d9cb-469f-a165-70867728950e/SendEmail", "application/json", v1Body, false, []byte("as is")},
		{"/ui/SendEmailV2", "application/json", v2Body, true, []byte("hello")},
		{"/v1/emails", "text/json", v1Body, false, []byte("as is")},
	} {
		t.Run(tc.path, func(t *testing.T) {
			r := b.post(t, v, tc.path, tc.contentType, tc.body, nil)
			if r.code != http.StatusAccepted {
				t.Fatalf("POST %s = %d %s; want 202", tc.path, r.code, r.raw)
			}
			id, _ := r.body["id"].(string)
			if r.body["status"] != "queued" || r.header.Get("Location") != "/v1/emails/"+id {
				t.Errorf("202 body %s Location %q; want queued and /v1/emails/%s", r.raw, r.header.Get("Location"), id)
			}
			info, err := b.insp.GetTaskInfo(queue.Name, id)
			if err != nil {
				t.Fatalf("the task is not in Redis: %v", err)
			}
			e, err := queue.DecodeEmail(info.Payload)
			if err != nil {
				t.Fatal(err)
			}
			if e.IsHTML != tc.html || len(e.Attachments) != 1 || !bytes.Equal(e.Attachments[0].Data, tc.att) {
				t.Errorf("queued IsHTML=%v attachment %q; want IsHTML=%v and %q", e.IsHTML, e.Attachments, tc.html, tc.att)
			}
		})
	}
	// The connector's routes count under their own pattern, prefixed or not.
	if got := testutil.ToFloat64(b.m.HTTPRequests.WithLabelValues("POST /SendEmailV3", "202")); got != 2 {
		t.Errorf(`http_requests_total{route="POST /SendEmailV3",code="202"} = %v; want 2`, got)
	}
	// And the subtree beside them is still served.
	resp, err := http.Get(b.srv.URL + "/ui/queues")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "the web view" {
		t.Errorf("GET /ui/queues = %q; want the /ui/ handler", body)
	}
}

func TestConnectorRoutesRefuseWhatTheirVersionLacks(t *testing.T) {
	t.Parallel()
	b := setupConnector(t, nil)
	v := newValidators(t)
	att := func(fields string) string {
		return `{"From":"s@example.com","To":"a@example.com","Attachments":[` + fields + `]}`
	}
	for _, tc := range []struct {
		name, path, body string
		code             int
		errCode, field   string
	}{
		{"V3 has no IsHtml", "/SendEmailV3", `{"To":"a@example.com","IsHtml":false}`, 400, "unknown_field", "IsHtml"},
		{"names match case-insensitively", "/c/SendEmailV3", `{"To":"a@example.com","ishtml":true}`, 400, "unknown_field", "ishtml"},
		{"V2 attachments have no ContentTransferEncoding", "/SendEmailV2",
			att(`{"ContentData":"aGk=","ContentType":"text/plain","FileName":"a.txt","ContentTransferEncoding":"base64"}`),
			400, "unknown_field", "Attachments[0].ContentTransferEncoding"},
		{"V3 attachments neither", "/SendEmailV3",
			att(`{"ContentData":"aGk=","ContentType":"text/plain","FileName":"a.txt"},{"ContentData":"aGk=","ContentType":"text/plain","FileName":"b.txt","contenttransferencoding":"none"}`),
			400, "unknown_field", "Attachments[1].contenttransferencoding"},
		{"V2 ContentData is base64", "/SendEmailV2", att(`{"ContentData":"not base64!","ContentType":"text/plain","FileName":"a.txt"}`),
			400, "invalid_field", "Attachments[0].ContentData"},
		{"V1 requires ContentTransferEncoding", "/SendEmail", att(`{"ContentData":"aGk=","ContentType":"text/plain","FileName":"a.txt"}`),
			400, "missing_field", "Attachments[0].ContentTransferEncoding"},
		{"V1 requires ContentType", "/SendEmail", att(`{"ContentData":"aGk=","ContentTransferEncoding":"base64","FileName":"a.txt"}`),
			400, "missing_field", "Attachments[0].ContentType"},
		{"V3 requires ContentType, null is absent", "/SendEmailV3", att(`{"ContentData":"aGk=","ContentType":null,"FileName":"a.txt"}`),
			400, "missing_field", "Attachments[0].ContentType"},
		{"V2 requires ContentData", "/SendEmailV2", att(`{"ContentType":"text/plain","FileName":"a.txt"}`),
			400, "missing_field", "Attachments[0].ContentData"},
		{"an unknown attachment field", "/SendEmailV3", att(`{"ContentData":"aGk=","ContentType":"text/plain","FileName":"a.txt","Size":2}`),
			400, "unknown_field", "Attachments[0].Size"},
		{"SendAt is a sendq extension", "/SendEmail", `{"To":"a@example.com","SendAt":"2099-01-01T00:00:00Z"}`, 400, "unknown_field", "SendAt"},
		{"an unknown field", "/SendEmailV2", `{"To":"a@example.com","Priority":"High"}`, 400, "unknown_field", "Priority"},
		{"DeliveryReceipt is an address, not a boolean", "/SendEmailV3", `{"To":"a@example.com","DeliveryReceipt":true}`, 400, "invalid_field", "DeliveryReceipt"},
		{"nor the string true", "/SendEmail", `{"To":"a@example.com","DeliveryReceipt":"True"}`, 400, "invalid_field", "DeliveryReceipt"},
		{"the decoder's checks still run", "/SendEmailV3", `{"From":"s@example.com","To":"bob@"}`, 400, "invalid_field", "To"},
		{"duplicates are still refused", "/SendEmailV3", `{"From":"s@example.com","To":"a@example.com","to":"b@example.com"}`, 400, "duplicate_field", "to"},
		{"not an object", "/SendEmailV3", `["To"]`, 400, "invalid_json", ""},
		{"Attachments not an array", "/SendEmailV3", `{"From":"s@example.com","To":"a@example.com","Attachments":{"FileName":"a"}}`, 400, "invalid_field", "Attachments"},
		// /v1/emails keeps the union and sendq's extensions.
		{"the union on /v1/emails", "/v1/emails",
			`{"From":"s@example.com","To":"a@example.com","IsHtml":false,"DeliveryReceipt":true,"SendAt":"",
			"Attachments":[{"ContentData":"hi","ContentTransferEncoding":"none","FileName":"a.txt"}]}`, 202, "", ""},
		{"an empty DeliveryReceipt is none", "/SendEmailV3", `{"From":"s@example.com","To":"a@example.com","DeliveryReceipt":""}`, 202, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := b.post(t, v, tc.path, "application/json", tc.body, nil)
			code, field := errField(r)
			if r.code != tc.code || code != tc.errCode || field != tc.field {
				t.Errorf("POST %s %s = %d %s; want %d %s naming %q", tc.path, tc.body, r.code, r.raw, tc.code, tc.errCode, tc.field)
			}
		})
	}
}

func TestConnectorRoutesShareTheIntakesChecks(t *testing.T) {
	t.Parallel()
	b := setupConnector(t, func(c *producer.Config) {
		c.Keys = mustKeys(t, "compat-key-1:@example.com")
	})
	v := newValidators(t)
	auth := map[string]string{"Authorization": "Bearer compat-key-1"}
	for _, tc := range []struct {
		name, path, contentType, body string
		header                        map[string]string
		code                          int
		errCode                       string
	}{
		{"no key", "/SendEmailV3", "application/json", v3Body, nil, 401, "unauthorized"},
		{"not JSON", "/conn/SendEmailV3", "text/plain", v3Body, auth, 415, "unsupported_media_type"},
		{"too large", "/SendEmailV3", "application/json", `{"Body":"` + strings.Repeat("x", 65<<10) + `"}`, auth, 413, "body_too_large"},
		{"sender not allowed", "/SendEmailV2", "application/json", strings.ReplaceAll(v2Body, "sender@example.com", "x@elsewhere.example"), auth, 403, "sender_not_allowed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := b.post(t, v, tc.path, tc.contentType, tc.body, tc.header)
			if code, _ := errField(r); r.code != tc.code || code != tc.errCode {
				t.Errorf("POST %s = %d %s; want %d %s", tc.path, r.code, r.raw, tc.code, tc.errCode)
			}
		})
	}

	// The same Idempotency-Key and body on another route of the same
	// email answers the first 202 (the key, not the route, names it).
	idem := map[string]string{"Authorization": "Bearer compat-key-1", "Idempotency-Key": "run-42"}
	first := b.post(t, v, "/SendEmailV3", "text/json", v3Body, idem)
	again := b.post(t, v, "/conn-9/SendEmailV3", "application/json", v3Body, idem)
	if first.code != 202 || again.code != 202 || first.body["id"] != again.body["id"] {
		t.Errorf("repeat = %d %s then %d %s; want 202 twice with one id", first.code, first.raw, again.code, again.raw)
	}
	if got := testutil.ToFloat64(b.m.EmailsAccepted); got != 1 {
		t.Errorf("emails_accepted_total = %v; want 1", got)
	}
}

func TestTestConnection(t *testing.T) {
	t.Parallel()
	b := setupConnector(t, func(c *producer.Config) {
		c.Keys = mustKeys(t, "compat-key-1")
	})
	v := newValidators(t)
	get := func(path, key string) response {
		t.Helper()
		req, err := http.NewRequest("GET", b.srv.URL+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		v.Check(t, req, nil, resp, raw)
		r := response{code: resp.StatusCode, header: resp.Header, raw: raw}
		_ = json.Unmarshal(raw, &r.body)
		return r
	}
	for _, tc := range []struct {
		path, key string
		code      int
	}{
		{"/TestConnection", "compat-key-1", 200},
		{"/c0nnection/TestConnection", "compat-key-1", 200},
		{"/TestConnection", "", 401},
		{"/c0nnection/TestConnection", "wrong-key-123", 401},
	} {
		if r := get(tc.path, tc.key); r.code != tc.code || (tc.code == 200 && r.body["status"] != "ok") {
			t.Errorf("GET %s with key %q = %d %s; want %d", tc.path, tc.key, r.code, r.raw, tc.code)
		}
	}
	b.redis.Stop()
	start := time.Now()
	r := get("/TestConnection", "compat-key-1")
	if code, _ := errField(r); r.code != 503 || code != "queue_unavailable" || r.header.Get("Retry-After") == "" {
		t.Errorf("GET /TestConnection with Redis down = %d %s; want 503 queue_unavailable with Retry-After", r.code, r.raw)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("the 503 took %s; want it within the Redis timeout", d)
	}
}

func TestConnectorPathsLeaveOtherPathsAlone(t *testing.T) {
	t.Parallel()
	var got []string
	h := producer.ConnectorPaths(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		got = append(got, r.URL.Path)
	}))
	for _, tc := range []struct{ in, want string }{
		{"/abc/SendEmailV3", "/SendEmailV3"},
		{"/abc/SendEmail", "/SendEmail"},
		{"/abc/SendEmailV2", "/SendEmailV2"},
		{"/abc/TestConnection", "/TestConnection"},
		{"/SendEmailV3", "/SendEmailV3"},
		{"/a/b/SendEmailV3", "/a/b/SendEmailV3"},   // one segment only
		{"//SendEmailV3", "//SendEmailV3"},         // an empty segment is none
		{"/abc/SendEmailV4", "/abc/SendEmailV4"},   // not an operation
		{"/abc/sendemailv3", "/abc/sendemailv3"},   // paths are case-sensitive
		{"/abc/SendEmailV3/", "/abc/SendEmailV3/"}, // nor a subtree
		{"/v1/emails", "/v1/emails"},
	} {
		got = got[:0]
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("POST", tc.in, nil))
		if len(got) != 1 || got[0] != tc.want {
			t.Errorf("ConnectorPaths(%q) served %q; want %q", tc.in, got, tc.want)
		}
	}
}

// TestConnectorRoutesMatchTheCustomConnector checks each versioned route
// against its body schema in the custom connector definition: a field of
// the schema is taken, any other of sendq's is refused as unknown.
func TestConnectorRoutesMatchTheCustomConnector(t *testing.T) {
	t.Parallel()
	b := setupConnector(t, nil)
	_, doc, err := apitest.LoadSwagger(deploy.LogicAppsDefinition)
	if err != nil {
		t.Fatal(err)
	}
	samples := map[string]string{
		"From": `"s@example.com"`, "To": `"a@example.com"`, "CC": `"c@example.com"`, "Bcc": `"d@example.com"`,
		"Subject": `"hi"`, "Body": `"<p>hi</p>"`, "IsHtml": `true`, "Importance": `"High"`,
		"ReadReceipt": `"s@example.com"`, "DeliveryReceipt": `"s@example.com"`, "SendAt": `""`, "Attachments": `[]`,
	}
	attSamples := map[string]string{
		"ContentData": `"aGk="`, "ContentType": `"text/plain"`, "FileName": `"a.txt"`, "ContentId": `"a1"`,
		"ContentTransferEncoding": `"base64"`,
	}
	for _, tc := range []struct{ op, email, attachment string }{
		{"SendEmail", "Email", "Attachment"}, {"SendEmailV2", "EmailV2", "AttachmentV2"}, {"SendEmailV3", "EmailV3", "AttachmentV2"},
	} {
		email := doc.Components.Schemas[tc.email].Value
		att := doc.Components.Schemas[tc.attachment].Value
		for name, sample := range samples {
			_, inSchema := email.Properties[name]
			body := `{"From":"s@example.com","To":"a@example.com","` + name + `":` + sample + `}`
			if name == "From" || name == "To" { // in every body; given once
				body = `{"From":"s@example.com","To":"a@example.com"}`
			}
			r := b.post(t, nil, "/"+tc.op, "application/json", body, nil)
			if code, _ := errField(r); inSchema != (r.code == 202) || !inSchema && code != "unknown_field" {
				t.Errorf("%s with %s = %d %s; the definition's %s has it: %v", tc.op, name, r.code, r.raw, tc.email, inSchema)
			}
		}
		for name, sample := range attSamples {
			_, inSchema := att.Properties[name]
			fields := []string{`"` + name + `":` + sample}
			for _, req := range att.Required {
				if req != name {
					fields = append(fields, `"`+req+`":`+attSamples[req])
				}
			}
			r := b.post(t, nil, "/"+tc.op, "application/json", `{"From":"s@example.com","To":"a@example.com","Attachments":[{`+strings.Join(fields, ",")+`}]}`, nil)
			if code, _ := errField(r); inSchema != (r.code == 202) || !inSchema && code != "unknown_field" {
				t.Errorf("%s with attachment field %s = %d %s; the definition's %s has it: %v", tc.op, name, r.code, r.raw, tc.attachment, inSchema)
			}
		}
	}
}
