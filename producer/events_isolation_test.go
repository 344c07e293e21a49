package producer_test

import (
	"testing"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/sendq/sendq/events"
	"github.com/sendq/sendq/producer"
)

// The events of an email are its owner's, as its status is: another key
// gets the 404 of an unknown id from GET /v1/emails/{id}/events and none of
// its events in GET /v1/events; an admin key sees them all.
func TestAnotherKeyCannotSeeAnEmailsEvents(t *testing.T) {
	t.Parallel()
	b := setupAPIRedis(t, func(rdb redis.UniversalClient, c *producer.Config) {
		c.Keys = mustKeys(t, isoKeys)
		c.AdminKeys = mustKeys(t, isoAdmin)
		client := asynq.NewClientFromRedisClient(rdb)
		t.Cleanup(func() { _ = client.Close() })
		log, err := events.NewLog(rdb, client, events.LogConfig{})
		if err != nil {
			t.Fatal(err)
		}
		c.Events = log
	})
	id := b.send(t, alpha)
	if r := b.do(t, "DELETE", "/v1/emails/"+id, "", alpha); r.code != 200 {
		t.Fatalf("DELETE with alpha = %d %s", r.code, r.raw)
	}
	notFound(t, "events with beta", b.do(t, "GET", "/v1/emails/"+id+"/events", "", beta))
	for name, h := range map[string]map[string]string{"alpha": alpha, "admin": admin} {
		r := b.do(t, "GET", "/v1/emails/"+id+"/events", "", h)
		if evs, _ := r.body["events"].([]any); r.code != 200 || len(evs) == 0 {
			t.Errorf("events with %s = %d %s; want 200 with the email.canceled events", name, r.code, r.raw)
		}
	}
	count := func(h map[string]string) int {
		r := b.do(t, "GET", "/v1/events", "", h)
		if r.code != 200 {
			t.Fatalf("GET /v1/events = %d %s", r.code, r.raw)
		}
		evs, _ := r.body["events"].([]any)
		return len(evs)
	}
	if n := count(beta); n != 0 {
		t.Errorf("beta's event log holds %d events of alpha's email; want 0", n)
	}
	if n := count(alpha); n == 0 {
		t.Errorf("alpha's event log is empty; want its email's events")
	}
	if n := count(admin); n == 0 {
		t.Errorf("the admin key's event log is empty; want every event")
	}
}
