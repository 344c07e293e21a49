//go:build chaos

package chaos

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
)

// hookSink is a webhook receiver on loopback: it verifies every delivery
// with the Standard Webhooks library and keeps what it accepted; it
// answers 503 while down.
type hookSink struct {
	srv *httptest.Server
	wh  *standardwebhooks.Webhook

	mu        sync.Mutex
	downUntil time.Time
	bodies    map[string]string // webhook-id -> body
	copies    map[string]int    // webhook-id -> deliveries accepted
	refused   int
	badSig    int
}

type hookBody struct {
	Type string `json:"type"`
	Data struct {
		EmailID   string `json:"email_id"`
		Recipient string `json:"recipient"`
		Sequence  int64  `json:"sequence"`
	} `json:"data"`
}

func startHookSink(t *testing.T) (*hookSink, string) {
	t.Helper()
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	secret := "whsec_" + base64.StdEncoding.EncodeToString(key)
	wh, err := standardwebhooks.NewWebhook(secret)
	if err != nil {
		t.Fatal(err)
	}
	h := &hookSink{wh: wh, bodies: map[string]string{}, copies: map[string]int{}}
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		h.mu.Lock()
		defer h.mu.Unlock()
		if time.Now().Before(h.downUntil) {
			h.refused++
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		if err := h.wh.Verify(body, r.Header); err != nil {
			h.badSig++
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		id := r.Header.Get("webhook-id")
		if prev, ok := h.bodies[id]; ok && prev != string(body) {
			h.badSig++ // the same id with another body: never
		}
		h.bodies[id] = string(body)
		h.copies[id]++
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(h.srv.Close)
	return h, secret
}

func (h *hookSink) down(d time.Duration) {
	h.mu.Lock()
	h.downUntil = time.Now().Add(d)
	h.mu.Unlock()
}

// sent returns, per email, the distinct email.sent events received, and
// counts deliveries of one id beyond the first.
func (h *hookSink) sent() (byEmail map[string]int, dupDeliveries, refused, badSig int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	byEmail = map[string]int{}
	for id, b := range h.bodies {
		var hb hookBody
		if json.Unmarshal([]byte(b), &hb) == nil && hb.Type == "email.sent" {
			byEmail[hb.Data.EmailID]++
		}
		dupDeliveries += h.copies[id] - 1
	}
	return byEmail, dupDeliveries, h.refused, h.badSig
}

// Scenario 8: webhooks configured; a worker is killed with SIGKILL while
// it sends, the receiver is down for 5 s at the same time, a new worker is
// started. Every email the API reports sent must have its email.sent
// webhook, signed; a kill between the record and the hand-off is the
// sweeper's to repair.
func TestWorkerKilledWebhooks(t *testing.T) {
	t.Parallel()
	s := newScenario(t, "8", "webhooks: worker kill -9 mid-run and the receiver down 5 s")
	hooks, secret := startHookSink(t)
	c := newCluster(t, clusterConfig{redisArgs: aof, hooks: slowServer(150*time.Millisecond, 20*time.Millisecond),
		env: []string{"SENDQ_WEBHOOK_URLS=" + hooks.srv.URL + "/events", "SENDQ_WEBHOOK_SECRET=" + secret, "SENDQ_WEBHOOK_RETRY_BASE=100ms"}})
	n := pick(200, 500)
	load := c.startLoad(loadSpec{N: n, Rate: 60})
	if !c.waitDelivered(n/4, time.Minute) {
		t.Fatalf("only %d of %d delivered after a minute", len(c.sink.messages()), n/4)
	}
	victim := c.workers[0]
	sending := c.waitSending(8, 10*time.Second)
	hooks.down(5 * time.Second)
	victim.Kill()
	killedAt := time.Now()
	c.startWorker()
	load.wait()
	ty, d := s.settle(c, recoveryDrain)

	var sentIDs []string
	for id, st := range d.terminal {
		if st == "sent" {
			sentIDs = append(sentIDs, id)
		}
	}
	// The sweeper waits 30 s for an abandoned hand-off, and asynq gives a
	// killed worker's deliveries back after their lease: allow for both.
	deadline := time.Now().Add(2 * time.Minute)
	var missing int
	for {
		got, _, _, _ := hooks.sent()
		missing = 0
		for _, id := range sentIDs {
			if got[id] == 0 {
				missing++
			}
		}
		if missing == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	got, dupDeliveries, refused, badSig := hooks.sent()
	twoEvents := 0
	for _, k := range got {
		if k > 1 {
			twoEvents++
		}
	}
	all := time.Since(killedAt).Round(time.Second)
	s.note("%d sending at the kill; %d emails sent, %d email.sent webhooks missing (lost) %s after the kill; %d attempts refused while the receiver was down; %d deliveries repeated an id (same body); %d emails with two email.sent (their message was sent twice: %d duplicate(s) in the ledger); %d bad signatures",
		sending, len(sentIDs), missing, all, refused, dupDeliveries, twoEvents, ty.dups, badSig)
	if missing > 0 {
		t.Errorf("%d of %d sent emails never got their email.sent webhook", missing, len(sentIDs))
	}
	if badSig > 0 {
		t.Errorf("%d deliveries failed the Standard Webhooks verification (or changed body under one id)", badSig)
	}
	if refused == 0 {
		t.Errorf("no delivery was refused: the receiver's outage caught nothing")
	}
}
