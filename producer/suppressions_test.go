package producer_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sendq/sendq/internal/apitest"
	"github.com/sendq/sendq/internal/noticetest"
	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/metrics"
	"github.com/sendq/sendq/producer"
	"github.com/sendq/sendq/queue"
	"github.com/sendq/sendq/suppression"
	"github.com/sendq/sendq/token"
)

const suppKey = "suppression-test-key-1"

type suppBundle struct {
	srv    *httptest.Server
	v      *apitest.Validator
	list   *suppression.List
	signer *token.Signer
	look   *queue.Lookup
	insp   *asynq.Inspector
	notes  *noticetest.Recorder
	m      *metrics.Metrics
}

func setupSuppression(t *testing.T, mutate func(*producer.Config)) *suppBundle {
	t.Helper()
	rs := redistest.Start(t)
	rdb, err := queue.NewRedisClient(rs.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rdb.Close() })
	signer, err := token.NewSigner("producer-test-signing-key-0123456789")
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	b := &suppBundle{v: apitest.NewValidator(t), list: suppression.New(rdb), signer: signer,
		notes: &noticetest.Recorder{}, m: metrics.New(reg, reg)}
	b.insp = asynq.NewInspectorFromRedisClient(rdb)
	store := queue.NewStore(rdb, time.Hour)
	b.look = &queue.Lookup{Inspector: b.insp, Store: store}
	cfg := producer.Config{Metrics: b.m, Keys: mustKeys(t, suppKey), Suppression: b.list, Signer: signer,
		PublicURL: "https://mail.example.com", Notifier: b.notes}
	if mutate != nil {
		mutate(&cfg)
	}
	api, err := producer.New(rdb, asynq.NewClientFromRedisClient(rdb), b.insp, store, cfg)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	api.Register(mux)
	b.srv = httptest.NewServer(b.m.Instrument(mux))
	t.Cleanup(b.srv.Close)
	return b
}

// do sends a request (with the API key unless noKey) and checks the
// exchange against the OpenAPI document.
func (b *suppBundle) do(t *testing.T, method, path, contentType, body string, noKey bool, want int) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, b.srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if !noKey {
		req.Header.Set("Authorization", "Bearer "+suppKey)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	respBody, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		t.Fatalf("%s %s = %d %s; want %d", method, path, resp.StatusCode, respBody, want)
	}
	b.v.Check(t, req, []byte(body), resp, respBody)
	return resp, respBody
}

func TestSuppressionAPI(t *testing.T) {
	t.Parallel()
	b := setupSuppression(t, nil)
	ctx := context.Background()
	if _, err := b.list.Add(ctx, suppression.Entry{Address: "bounced@example.com", Reason: suppression.ReasonHardBounce,
		EmailID: "0190-e1", Code: 550, EnhancedCode: "5.1.1"}); err != nil {
		t.Fatal(err)
	}
	_, body := b.do(t, "GET", "/v1/suppressions/Bounced@Example.com", "", "", false, 200)
	var e map[string]any
	if err := json.Unmarshal(body, &e); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]any{"address": "bounced@example.com", "reason": "hard_bounce", "email_id": "0190-e1",
		"code": 550.0, "enhanced_code": "5.1.1"} {
		if e[k] != want {
			t.Errorf("entry %s = %v; want %v (body %s)", k, e[k], want, body)
		}
	}
	if _, ok := e["created_at"]; !ok || len(e) != 6 {
		t.Errorf("entry %s: want exactly address, reason, email_id, code, enhanced_code, created_at", body)
	}

	b.do(t, "PUT", "/v1/suppressions/ops%40example.com", "", "", false, 201)
	b.do(t, "PUT", "/v1/suppressions/ops@example.com", "application/json", `{"reason":"complaint"}`, false, 200)
	b.do(t, "PUT", "/v1/suppressions/ops@example.com", "application/json", `{"reason":"spam"}`, false, 400)
	b.do(t, "PUT", "/v1/suppressions/ops@example.com", "application/json", `{"why":"x"}`, false, 400)
	b.do(t, "PUT", "/v1/suppressions/ops@example.com", "text/plain", `reason`, false, 415)
	b.do(t, "PUT", "/v1/suppressions/not-an-address", "", "", false, 400)
	b.do(t, "GET", "/v1/suppressions/Bob%20%3Cbob@example.com%3E", "", "", false, 400)
	b.do(t, "GET", "/v1/suppressions/nobody@example.com", "", "", false, 404)
	b.do(t, "GET", "/v1/suppressions", "", "", true, 401)

	_, body = b.do(t, "GET", "/v1/suppressions?page_size=1", "", "", false, 200)
	var page producer.SuppressionList
	if err := json.Unmarshal(body, &page); err != nil {
		t.Fatal(err)
	}
	if page.Total != 2 || len(page.Suppressions) != 1 || page.Suppressions[0].Address != "ops@example.com" {
		t.Errorf("first page = %s; want total 2, ops@example.com (newest) first", body)
	}
	_, body = b.do(t, "GET", "/v1/suppressions?reason=complaint", "", "", false, 200)
	_ = json.Unmarshal(body, &page)
	if page.Total != 1 || page.Suppressions[0].Reason != "complaint" {
		t.Errorf("reason=complaint: %s; want the PUT entry", body)
	}
	b.do(t, "GET", "/v1/suppressions?reason=bogus", "", "", false, 400)
	b.do(t, "GET", "/v1/suppressions?page=0", "", "", false, 400)

	b.do(t, "DELETE", "/v1/suppressions/OPS@example.com", "", "", false, 200)
	b.do(t, "DELETE", "/v1/suppressions/ops@example.com", "", "", false, 404)
	if got := testutil.ToFloat64(b.m.SuppressionsAdded.WithLabelValues("manual")); got != 1 {
		t.Errorf("suppressions_added_total{reason=manual} = %v; want 1", got)
	}
}

func TestSuppressionAPIWhenOff(t *testing.T) {
	t.Parallel()
	b := setupSuppression(t, func(c *producer.Config) { c.Suppression = nil })
	for _, m := range []string{"GET", "PUT", "DELETE"} {
		_, body := b.do(t, m, "/v1/suppressions/a@example.com", "", "", false, 404)
		if !bytes.Contains(body, []byte("suppression_disabled")) {
			t.Errorf("%s with the list off: %s; want suppression_disabled", m, body)
		}
	}
	b.do(t, "GET", "/v1/suppressions", "", "", false, 404)
}

func TestIntakeMarksSuppressedRecipients(t *testing.T) {
	t.Parallel()
	b := setupSuppression(t, nil)
	ctx := context.Background()
	if _, err := b.list.Add(ctx, suppression.Entry{Address: "gone@example.com", Reason: suppression.ReasonUnsubscribe}); err != nil {
		t.Fatal(err)
	}
	_, body := b.do(t, "POST", "/v1/emails", "application/json",
		`{"From":"s@example.com","To":"ok@example.com;GONE@example.com"}`, false, 202)
	var acc producer.Accepted
	_ = json.Unmarshal(body, &acc)
	st, err := b.look.Status(ctx, acc.ID)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, r := range st.Recipients {
		got[r.Address] = r.Status + "/" + r.Reason
	}
	if got["ok@example.com"] != "pending/" || got["GONE@example.com"] != "suppressed/unsubscribe" {
		t.Errorf("recipients = %v; want ok pending, GONE suppressed (unsubscribe)", got)
	}
	info, _ := b.insp.GetTaskInfo(queue.Name, acc.ID)
	e, _ := queue.DecodeEmail(info.Payload)
	if len(e.Suppressed) != 1 || e.Suppressed[0].Address != "GONE@example.com" {
		t.Errorf("payload Suppressed = %+v; want GONE@example.com", e.Suppressed)
	}
	if n := testutil.ToFloat64(b.m.RecipientsSuppressed.WithLabelValues(metrics.StageIntake)); n != 1 {
		t.Errorf("recipients_suppressed_total{stage=intake} = %v; want 1", n)
	}
	// Every recipient suppressed: still a 202 (the worker ends it failed).
	b.do(t, "POST", "/v1/emails", "application/json", `{"From":"s@example.com","To":"gone@example.com"}`, false, 202)
}

func TestListUnsubscribeOnASend(t *testing.T) {
	t.Parallel()
	b := setupSuppression(t, nil)
	_, body := b.do(t, "POST", "/v1/emails", "application/json",
		`{"From":"s@example.com","To":"reader@example.com","ListUnsubscribe":true}`, false, 202)
	var acc producer.Accepted
	_ = json.Unmarshal(body, &acc)
	info, _ := b.insp.GetTaskInfo(queue.Name, acc.ID)
	if e, _ := queue.DecodeEmail(info.Payload); e == nil || !e.ListUnsubscribe {
		t.Errorf("payload ListUnsubscribe not set")
	}
	for _, tc := range []struct{ body, field string }{
		{`{"From":"s@example.com","To":"a@example.com;b@example.com","listunsubscribe":"true"}`, "ListUnsubscribe"},
		{`{"From":"s@example.com","To":"a@example.com","Bcc":"c@example.com","ListUnsubscribe":true}`, "ListUnsubscribe"},
		{`{"From":"s@example.com","To":"a@example.com","ListUnsubscribe":"yes"}`, "ListUnsubscribe"},
	} {
		_, body := b.do(t, "POST", "/v1/emails", "application/json", tc.body, false, 400)
		if !bytes.Contains(body, []byte(`"field":"`+tc.field+`"`)) {
			t.Errorf("%s: %s; want a 400 naming %s", tc.body, body, tc.field)
		}
	}
	b.do(t, "POST", "/v1/emails", "application/json", `{"From":"s@example.com","To":"a@example.com;b@example.com","ListUnsubscribe":false}`, false, 202)

	off := setupSuppression(t, func(c *producer.Config) { c.PublicURL = "" })
	_, body = off.do(t, "POST", "/v1/emails", "application/json", `{"From":"s@example.com","To":"a@example.com","ListUnsubscribe":true}`, false, 400)
	if !bytes.Contains(body, []byte("SENDQ_PUBLIC_URL")) {
		t.Errorf("without SENDQ_PUBLIC_URL: %s; want a 400 saying so", body)
	}
}

func TestOneClickUnsubscribe(t *testing.T) {
	t.Parallel()
	b := setupSuppression(t, nil)
	ctx := context.Background()
	tok := b.signer.Unsubscribe("email-1", "Reader@example.com")
	path := "/v1/unsubscribe/" + tok

	// GET shows a page with a button and changes nothing.
	resp, page := b.do(t, "GET", path, "", "", true, 200)
	if !bytes.Contains(page, []byte(`<form method="post">`)) || !bytes.Contains(page, []byte(`value="One-Click"`)) {
		t.Errorf("GET page has no one-click form: %s", page)
	}
	if resp.Header.Get("Set-Cookie") != "" || resp.Header.Get("Cache-Control") != "no-store" {
		t.Errorf("GET headers %v; want no cookie, no-store", resp.Header)
	}
	if _, err := b.list.Get(ctx, "reader@example.com"); err == nil {
		t.Fatalf("GET unsubscribed the address")
	}
	if len(b.notes.All()) != 0 {
		t.Fatalf("GET sent notices: %+v", b.notes.All())
	}

	// A form that is not the one-click one changes nothing.
	b.do(t, "POST", path, "application/x-www-form-urlencoded", "List-Unsubscribe=Yes", true, 400)
	b.do(t, "POST", path, "application/json", `{"List-Unsubscribe":"One-Click"}`, true, 415)
	b.do(t, "POST", path+"?List-Unsubscribe=One-Click", "application/x-www-form-urlencoded", "", true, 400)
	b.do(t, "POST", path, "application/x-www-form-urlencoded", "List-Unsubscribe="+strings.Repeat("x", 20<<10), true, 413)

	// A forged, altered or shortened token: 404, nothing changes.
	altered := []byte(tok)
	altered[10] ^= 1
	forged, _ := token.NewSigner("another-signing-key-0123456789abcdef")
	for _, bad := range []string{string(altered), tok[:len(tok)-4], forged.Unsubscribe("email-1", "Reader@example.com"), "x"} {
		b.do(t, "POST", "/v1/unsubscribe/"+bad, "application/x-www-form-urlencoded", "List-Unsubscribe=One-Click", true, 404)
		b.do(t, "GET", "/v1/unsubscribe/"+bad, "", "", true, 404)
	}
	if p, _ := b.list.List(ctx, "", 1, 10); p.Total != 0 || len(b.notes.All()) != 0 {
		t.Fatalf("bad requests changed something: %d entries, notices %+v", p.Total, b.notes.All())
	}

	// The one-click POST, form-encoded: 200, no redirect, suppressed,
	// one notice.
	resp, _ = b.do(t, "POST", path, "application/x-www-form-urlencoded", url.Values{"List-Unsubscribe": {"One-Click"}}.Encode(), true, 200)
	if resp.Header.Get("Set-Cookie") != "" || resp.Header.Get("Location") != "" {
		t.Errorf("POST headers %v; want no cookie, no Location", resp.Header)
	}
	e, err := b.list.Get(ctx, "reader@example.com")
	if err != nil || e.Reason != suppression.ReasonUnsubscribe || e.EmailID != "email-1" {
		t.Fatalf("entry = %+v, %v; want unsubscribe from email-1", e, err)
	}
	ns := b.notes.Of(suppression.NoticeUnsubscribed)
	if len(ns) != 1 || ns[0].EmailID != "email-1" || ns[0].Recipient != "Reader@example.com" {
		t.Errorf("notices = %+v; want one email.unsubscribed", b.notes.All())
	}

	// Repeated, as multipart: 200, nothing new.
	var mp bytes.Buffer
	mw := multipart.NewWriter(&mp)
	_ = mw.WriteField("List-Unsubscribe", "One-Click")
	_ = mw.Close()
	b.do(t, "POST", path, mw.FormDataContentType(), mp.String(), true, 200)
	if n := len(b.notes.All()); n != 1 {
		t.Errorf("%d notices after a repeat; want still 1", n)
	}
	if p, _ := b.list.List(ctx, "", 1, 10); p.Total != 1 {
		t.Errorf("%d entries after a repeat; want 1", p.Total)
	}
	// A one-click POST for another recipient, as multipart first.
	mp.Reset()
	mw = multipart.NewWriter(&mp)
	_ = mw.WriteField("List-Unsubscribe", "One-Click")
	_ = mw.Close()
	b.do(t, "POST", "/v1/unsubscribe/"+b.signer.Unsubscribe("email-2", "other@example.com"), mw.FormDataContentType(), mp.String(), true, 200)
	if _, err := b.list.Get(ctx, "other@example.com"); err != nil {
		t.Errorf("multipart one-click did not suppress: %v", err)
	}
}
