package events_test

import (
	"crypto/rand"
	"encoding/base64"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/sendq/sendq/events"
	"github.com/sendq/sendq/internal/redistest"
)

// newSecret returns a fresh SENDQ_WEBHOOK_SECRET value.
func newSecret(t testing.TB) string {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "whsec_" + base64.StdEncoding.EncodeToString(b)
}

// hit is one request a receiver got.
type hit struct {
	ID, Timestamp, Signature string
	Body                     []byte
	At                       time.Time
	Code                     int // what the receiver answered
}

// receiver is a webhook endpoint on loopback. It checks every request with
// the Standard Webhooks library, for every secret it is given (all must
// verify: a rotation signs with each), and answers what answer says.
type receiver struct {
	srv       *httptest.Server
	verifiers []*standardwebhooks.Webhook

	mu     sync.Mutex
	hits   []hit
	errs   []string
	answer func(n int, r *http.Request) int // n counts from 0; nil: 200
}

func newReceiver(t *testing.T, secrets ...string) *receiver {
	t.Helper()
	rc := &receiver{}
	for _, s := range secrets {
		wh, err := standardwebhooks.NewWebhook(s)
		if err != nil {
			t.Fatalf("standardwebhooks.NewWebhook: %v", err)
		}
		rc.verifiers = append(rc.verifiers, wh)
	}
	rc.srv = httptest.NewServer(http.HandlerFunc(rc.serve))
	t.Cleanup(func() {
		rc.srv.Close()
		rc.mu.Lock()
		defer rc.mu.Unlock()
		for _, e := range rc.errs {
			t.Error(e)
		}
	})
	return rc
}

func (rc *receiver) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	h := hit{ID: r.Header.Get(events.HeaderID), Timestamp: r.Header.Get(events.HeaderTimestamp),
		Signature: r.Header.Get(events.HeaderSignature), Body: body, At: time.Now()}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" {
		rc.errs = append(rc.errs, "webhook "+r.Method+" with Content-Type "+r.Header.Get("Content-Type")+"; want POST application/json")
	}
	for i, v := range rc.verifiers {
		if err := v.Verify(body, r.Header); err != nil {
			rc.errs = append(rc.errs, "webhook "+h.ID+": signature does not verify with secret "+string(rune('1'+i))+": "+err.Error())
		}
	}
	h.Code = http.StatusOK
	if rc.answer != nil {
		h.Code = rc.answer(len(rc.hits), r)
	}
	rc.hits = append(rc.hits, h)
	w.WriteHeader(h.Code)
}

func (rc *receiver) setAnswer(f func(n int, r *http.Request) int) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.answer = f
}

func (rc *receiver) got() []hit {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]hit(nil), rc.hits...)
}

// delivered returns the hits answered 2xx.
func (rc *receiver) delivered() []hit {
	var out []hit
	for _, h := range rc.got() {
		if h.Code/100 == 2 {
			out = append(out, h)
		}
	}
	return out
}

func endpoints(t *testing.T, urls ...string) []events.Endpoint {
	t.Helper()
	var s string
	for i, u := range urls {
		if i > 0 {
			s += ","
		}
		s += u
	}
	eps, err := events.ParseEndpoints(s)
	if err != nil {
		t.Fatal(err)
	}
	return eps
}

type bundle struct {
	rdb    *redis.Client
	log    *events.Log
	d      *events.Deliverer
	m      *events.Metrics
	reg    *prometheus.Registry
	insp   *asynq.Inspector
	client *asynq.Client
}

type setupOpts struct {
	endpoints []events.Endpoint
	secret    string // SENDQ_WEBHOOK_SECRET
	cfg       func(*events.DelivererConfig)
	noStart   bool
}

func setup(t *testing.T, o setupOpts) *bundle {
	t.Helper()
	rdb := redistest.Start(t).Client(t)
	b := &bundle{rdb: rdb, reg: prometheus.NewRegistry(), insp: asynq.NewInspectorFromRedisClient(rdb),
		client: asynq.NewClientFromRedisClient(rdb)}
	b.m = events.NewMetrics(b.reg)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	var err error
	b.log, err = events.NewLog(rdb, b.client, events.LogConfig{Endpoints: o.endpoints, Metrics: b.m, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	var secrets events.Secrets
	if o.secret != "" {
		if secrets, err = events.ParseSecrets(o.secret); err != nil {
			t.Fatal(err)
		}
	}
	cfg := events.DelivererConfig{Endpoints: o.endpoints, Secrets: secrets, Log: b.log, Metrics: b.m, Logger: logger,
		RetryBase: 20 * time.Millisecond, PollInterval: 20 * time.Millisecond,
		SweepAfter: 300 * time.Millisecond, SweepInterval: 100 * time.Millisecond}
	if o.cfg != nil {
		o.cfg(&cfg)
	}
	b.d, err = events.NewDeliverer(rdb, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !o.noStart {
		b.start(t)
	}
	return b
}

func (b *bundle) start(t *testing.T) {
	t.Helper()
	if err := b.d.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.d.Shutdown)
}

// waitFor polls cond until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
