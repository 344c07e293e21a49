package main

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/sendq/sendq/internal/proctest"
	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/internal/smtptest"
)

// The full intake-to-SMTP path, idempotency and status on a real
// three-master Redis Cluster.
func TestRedisCluster(t *testing.T) {
	cl := redistest.StartCluster(t, 3)
	sink := smtptest.Start(t)
	p := proctest.Start(t, binary, "serve", "REDIS_URL="+cl.URL(), "SENDQ_SMTP_URL=smtp://"+sink.Addr+"?tls=none")
	base := "http://" + p.Addr
	idem := map[string]string{"Idempotency-Key": "cluster-1"}
	var ids []string
	for i := 0; i < 20; i++ {
		h := map[string]string{}
		if i == 0 {
			h = idem
		}
		r := call(t, "POST", base+"/v1/emails", seedJSON, h)
		var acc struct{ ID string }
		if r.Resp.StatusCode != 202 || json.Unmarshal(r.Body, &acc) != nil {
			t.Fatalf("POST = %d %s", r.Resp.StatusCode, r.Body)
		}
		ids = append(ids, acc.ID)
	}
	replay := call(t, "POST", base+"/v1/emails", seedJSON, idem)
	var acc struct{ ID string }
	_ = json.Unmarshal(replay.Body, &acc)
	if replay.Resp.StatusCode != 202 || acc.ID != ids[0] {
		t.Errorf("idempotent replay = %d %s; want 202 with %s", replay.Resp.StatusCode, replay.Body, ids[0])
	}
	conflict := call(t, "POST", base+"/v1/emails", []byte(`{"From":"a@contoso.example","To":"b@contoso.example"}`), idem)
	if conflict.Resp.StatusCode != 409 {
		t.Errorf("same key, other body = %d; want 409", conflict.Resp.StatusCode)
	}
	for _, id := range ids {
		st := waitStatus(t, base, id, nil, "sent", "failed")
		if st["status"] != "sent" {
			t.Errorf("email %s: %v", id, st)
		}
	}
	time.Sleep(200 * time.Millisecond)
	if got := len(sink.Messages()); got != len(ids) {
		t.Errorf("SMTP server got %d messages; want %d", got, len(ids))
	}
	if r := call(t, "GET", base+"/ui/", nil, nil); r.Resp.StatusCode != 200 {
		t.Errorf("GET /ui/ with no keys configured = %d; want 200 (open, like the API)", r.Resp.StatusCode)
	}
	m := call(t, "GET", base+"/metrics", nil, nil)
	if !containsLine(string(m.Body), `sendq_queue_tasks{queue="emails",state="completed"} 20`) {
		t.Errorf("queue depth from the cluster is missing or wrong")
	}
	p.Stop(t, 30*time.Second)
}

func containsLine(s, line string) bool {
	for _, l := range splitLines(s) {
		if l == line {
			return true
		}
	}
	return false
}

// The full path through a Redis found by asking a real Sentinel.
func TestRedisSentinel(t *testing.T) {
	sn := redistest.StartSentinel(t)
	sink := smtptest.Start(t)
	p := proctest.Start(t, binary, "serve", "REDIS_URL="+sn.URL(), "SENDQ_SMTP_URL=smtp://"+sink.Addr+"?tls=none")
	base := "http://" + p.Addr
	r := call(t, "POST", base+"/v1/emails", seedJSON, map[string]string{"Idempotency-Key": "sentinel-1"})
	var acc struct{ ID string }
	if r.Resp.StatusCode != 202 || json.Unmarshal(r.Body, &acc) != nil {
		t.Fatalf("POST = %d %s", r.Resp.StatusCode, r.Body)
	}
	if st := waitStatus(t, base, acc.ID, nil, "sent", "failed"); st["status"] != "sent" {
		t.Errorf("status = %v", st)
	}
	if rr := call(t, "GET", base+"/readyz", nil, nil); rr.Resp.StatusCode != 200 {
		t.Errorf("readyz = %d", rr.Resp.StatusCode)
	}
	p.Stop(t, 30*time.Second)
}
