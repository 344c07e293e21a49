package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/sendq/sendq/internal/proctest"
	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/internal/smtptest"
)

// A SendAt further ahead than SENDQ_MAX_AGE is delivered: the delivery
// window opens at SendAt, not at acceptance. (Before, an email scheduled
// 35 s ahead with SENDQ_MAX_AGE=20s was accepted and then failed as
// expired without an SMTP attempt.) A SendAt past SENDQ_MAX_SCHEDULE is a
// 400 naming SendAt.
func TestScheduledBeyondMaxAgeIsDelivered(t *testing.T) {
	t.Parallel() // it mostly waits for its SendAt
	rs := redistest.Start(t)
	sink := smtptest.Start(t)
	p := proctest.Start(t, binary, "serve", "REDIS_URL="+rs.URL(), "SENDQ_SMTP_URL=smtp://"+sink.Addr+"?tls=none",
		"SENDQ_MAX_AGE=20s")
	base := "http://" + p.Addr
	var seen []httpResult

	// Whole seconds, rounded up: RFC 3339 in the request has no fraction.
	sendAt := time.Now().Add(35 * time.Second).Truncate(time.Second).Add(time.Second).UTC()
	r := call(t, "POST", base+"/v1/emails", []byte(`{"From":"s@contoso.example","To":"later@contoso.example","Subject":"later",
		"SendAt":"`+sendAt.Format(time.RFC3339)+`"}`), nil)
	seen = append(seen, r)
	var acc struct{ ID, Status string }
	if err := json.Unmarshal(r.Body, &acc); err != nil || r.Resp.StatusCode != 202 || acc.Status != "scheduled" {
		t.Fatalf("POST = %d %s; want 202 scheduled", r.Resp.StatusCode, r.Body)
	}
	far := call(t, "POST", base+"/v1/emails", []byte(`{"From":"s@contoso.example","To":"never@contoso.example","SendAt":"9999-12-31T23:59:59Z"}`), nil)
	seen = append(seen, far)
	var e struct{ Error struct{ Code, Field string } }
	if err := json.Unmarshal(far.Body, &e); err != nil || far.Resp.StatusCode != 400 || e.Error.Field != "SendAt" {
		t.Errorf("POST with SendAt 9999-12-31 = %d %s; want 400 naming SendAt", far.Resp.StatusCode, far.Body)
	}

	var st map[string]any
	deadline := sendAt.Add(30 * time.Second)
	for {
		got := call(t, "GET", base+"/v1/emails/"+acc.ID, nil, nil)
		st = nil
		_ = json.Unmarshal(got.Body, &st)
		if s := st["status"]; s == "sent" || s == "failed" {
			seen = append(seen, got)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("email %s is %s at SendAt+30s; want sent", acc.ID, got.Body)
		}
		time.Sleep(250 * time.Millisecond)
	}
	if st["status"] != "sent" {
		t.Fatalf("status = %v; want sent (the window is SENDQ_MAX_AGE from SendAt)", st)
	}
	msgs := sink.Messages()
	if len(msgs) != 1 || strings.Join(msgs[0].To, ",") != "later@contoso.example" {
		t.Fatalf("the relay got %d messages %+v; want the scheduled one only", len(msgs), msgs)
	}
	if sentAt, err := time.Parse(time.RFC3339Nano, st["sent_at"].(string)); err != nil || sentAt.Before(sendAt) {
		t.Errorf("sent_at %v (%v); want at or after SendAt %s", st["sent_at"], err, sendAt)
	}
	checkOpenAPI(t, base, seen)
	p.Stop(t, 30*time.Second)
}

// The keys of the issue (with secrets long enough to be accepted): beta
// cannot read, cancel, retry or list alpha's email, through the binary;
// the admin key can, and the web view is behind the admin keys only.
func TestKeysAreIsolatedEndToEnd(t *testing.T) {
	rs := redistest.Start(t)
	sink := smtptest.Start(t)
	p := proctest.Start(t, binary, "serve", "REDIS_URL="+rs.URL(), "SENDQ_SMTP_URL=smtp://"+sink.Addr+"?tls=none",
		"SENDQ_API_KEYS=k-alpha-0001:@contoso.example,k-beta-0002", "SENDQ_ADMIN_KEYS=k-admin-0003")
	base := "http://" + p.Addr
	alpha := map[string]string{"Authorization": "Bearer k-alpha-0001"}
	beta := map[string]string{"Authorization": "Bearer k-beta-0002"}
	admin := map[string]string{"Authorization": "Bearer k-admin-0003"}
	var seen []httpResult
	check := func(what string, r httpResult, want int) httpResult {
		t.Helper()
		seen = append(seen, r)
		if r.Resp.StatusCode != want {
			t.Errorf("%s = %d %s; want %d", what, r.Resp.StatusCode, r.Body, want)
		}
		return r
	}

	// Scheduled an hour ahead, so that it waits to be canceled.
	body := []byte(`{"From":"sales@contoso.example","To":"a@contoso.example","Bcc":"audit@contoso.example","Subject":"Q3",
		"SendAt":"` + time.Now().Add(time.Hour).UTC().Format(time.RFC3339) + `"}`)
	r := check("POST with alpha", call(t, "POST", base+"/v1/emails", body, alpha), 202)
	var acc struct{ ID string }
	_ = json.Unmarshal(r.Body, &acc)
	url := base + "/v1/emails/" + acc.ID

	check("GET with beta", call(t, "GET", url, nil, beta), 404)
	check("DELETE with beta", call(t, "DELETE", url, nil, beta), 404)
	check("GET with alpha after beta's DELETE", call(t, "GET", url, nil, alpha), 200)
	check("DELETE with alpha", call(t, "DELETE", url, nil, alpha), 200)
	check("retry with beta", call(t, "POST", url+"/retry", nil, beta), 404)
	for _, c := range []struct {
		name   string
		header map[string]string
		total  float64
	}{{"beta", beta, 0}, {"alpha", alpha, 1}, {"admin", admin, 1}} {
		l := check("list with "+c.name, call(t, "GET", base+"/v1/emails?status=failed", nil, c.header), 200)
		var list struct{ Total float64 }
		if err := json.Unmarshal(l.Body, &list); err != nil || list.Total != c.total {
			t.Errorf("list of failed with %s = %s; want total %v", c.name, l.Body, c.total)
		}
	}
	rt := check("retry with the admin key", call(t, "POST", url+"/retry", nil, admin), 200)
	if strings.Contains(string(rt.Body), "k-alpha") || strings.Contains(p.Logs(), "k-alpha-0001") {
		t.Errorf("a key leaked into a body or the log")
	}
	check("GET with beta after the retry", call(t, "GET", url, nil, beta), 404)

	// The web view shows every key's emails: only the admin key opens it.
	if r := call(t, "GET", base+"/ui/", nil, beta); r.Resp.StatusCode != 401 {
		t.Errorf("GET /ui/ with beta = %d; want 401 (SENDQ_ADMIN_KEYS is set)", r.Resp.StatusCode)
	}
	if r := call(t, "GET", base+"/ui/", nil, admin); r.Resp.StatusCode != 200 {
		t.Errorf("GET /ui/ with the admin key = %d; want 200", r.Resp.StatusCode)
	}
	checkOpenAPI(t, base, seen)
	p.Stop(t, 30*time.Second)
}
