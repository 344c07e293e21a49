package events

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
)

// Queue is the asynq queue of webhook deliveries, apart from the email
// queue and served by its own asynq server: a backlog of email never
// delays an event.
const Queue = "sendq-webhooks"

// TypeDeliver is the asynq task type of one event to one endpoint.
const TypeDeliver = "webhook:deliver"

// DisabledKey is the Redis hash of endpoints disabled by a 410 answer:
// endpoint key -> when and after which event. Remove a field (redis-cli
// HDEL sendq:webhooks:disabled KEY) to enable the endpoint again.
const DisabledKey = "sendq:webhooks:disabled"

// Ladder is the Standard Webhooks retry schedule at the default base of 5
// seconds: the delay before each retry after a failed attempt. An event is
// tried once and retried len(Ladder) times.
var Ladder = []time.Duration{5 * time.Second, 5 * time.Minute, 30 * time.Minute, 2 * time.Hour,
	5 * time.Hour, 10 * time.Hour, 14 * time.Hour, 20 * time.Hour, 24 * time.Hour}

// DefaultRetryBase is Ladder's first step; RetryBase scales the whole
// ladder in proportion.
const DefaultRetryBase = 5 * time.Second

// AttemptTimeout bounds one delivery attempt.
const AttemptTimeout = 10 * time.Second

// dedupeRetention is how long a finished delivery task is kept, so that a
// second hand-off of its event (the sweeper, after the first emitter died
// between queueing and marking) finds its id taken. It must outlast the
// sweeper's wait plus its interval.
const dedupeRetention = 5 * time.Minute

// delivery is the task payload: one event for one endpoint.
type delivery struct {
	V        int    `json:"v"`
	EventID  string `json:"event_id"`
	Endpoint string `json:"endpoint"` // Endpoint.Key; the URL is the configuration's
	Body     string `json:"body"`     // the exact bytes signed and sent
}

func newDelivery(eventID, endpoint string, body []byte) (*asynq.Task, error) {
	b, err := json.Marshal(delivery{V: 1, EventID: eventID, Endpoint: endpoint, Body: string(body)})
	if err != nil {
		return nil, fmt.Errorf("encode webhook task: %w", err)
	}
	return asynq.NewTask(TypeDeliver, b, asynq.TaskID(eventID+":"+endpoint), asynq.Queue(Queue),
		asynq.MaxRetry(len(Ladder)), asynq.Timeout(AttemptTimeout+5*time.Second), asynq.Retention(dedupeRetention)), nil
}

// DelivererConfig configures a Deliverer. Zero values take the documented
// defaults.
type DelivererConfig struct {
	// Endpoints are the receivers (SENDQ_WEBHOOK_URLS). A task for an
	// endpoint no longer listed is dropped.
	Endpoints []Endpoint
	// Secrets sign every delivery (SENDQ_WEBHOOK_SECRET). Required when
	// there are endpoints.
	Secrets Secrets
	// RetryBase is the first retry delay; the other steps of Ladder keep
	// their proportion to it (SENDQ_WEBHOOK_RETRY_BASE). If zero, 5s.
	RetryBase time.Duration
	// Concurrency is how many deliveries run at once. If zero, 10.
	Concurrency int
	// Log is the event log the sweeper hands off through. Required.
	Log *Log
	// SweepAfter: an email whose events were stored this long ago and are
	// still not handed off is swept. If zero, 30s.
	SweepAfter time.Duration
	// SweepInterval is how often the sweeper looks. If zero, 10s.
	SweepInterval time.Duration
	// PollInterval is how often the queue is polled for due retries and
	// new tasks. If zero, 1s and 100ms.
	PollInterval time.Duration
	// ShutdownTimeout is how long Shutdown waits for deliveries in
	// flight. If zero, AttemptTimeout plus 2s.
	ShutdownTimeout time.Duration
	// Metrics; required.
	Metrics *Metrics
	// Logger; if nil, slog.Default().
	Logger *slog.Logger
	// Transport, if set, replaces the HTTP transport (tests).
	Transport http.RoundTripper
}

// Deliverer sends webhook deliveries from the webhook queue, with the
// Standard Webhooks signature and retry schedule, and runs the sweeper.
type Deliverer struct {
	cfg       DelivererConfig
	rdb       redis.UniversalClient
	srv       *asynq.Server
	client    *http.Client
	endpoints map[string]Endpoint
	log       *slog.Logger
	m         *Metrics
	now       func() time.Time

	mu          sync.Mutex
	disabled    map[string]bool
	disabledAge time.Time

	stop chan struct{}
	done chan struct{}
}

// disabledRefresh is how long the list of disabled endpoints is cached:
// another process's 410 is seen within it.
const disabledRefresh = 5 * time.Second

// NewDeliverer returns a Deliverer on rdb. Start it, and Shutdown to stop.
func NewDeliverer(rdb redis.UniversalClient, cfg DelivererConfig) (*Deliverer, error) {
	switch {
	case cfg.Log == nil:
		return nil, errors.New("webhook deliverer: Log is required")
	case cfg.Metrics == nil:
		return nil, errors.New("webhook deliverer: Metrics is required")
	case len(cfg.Endpoints) > 0 && cfg.Secrets.Len() == 0:
		return nil, errors.New("webhook deliverer: Secrets are required with Endpoints")
	}
	if cfg.RetryBase <= 0 {
		cfg.RetryBase = DefaultRetryBase
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 10
	}
	if cfg.SweepAfter <= 0 {
		cfg.SweepAfter = 30 * time.Second
	}
	if cfg.SweepInterval <= 0 {
		cfg.SweepInterval = 10 * time.Second
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = AttemptTimeout + 2*time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	tr := cfg.Transport
	if tr == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.MaxIdleConnsPerHost = cfg.Concurrency
		tr = t
	}
	d := &Deliverer{cfg: cfg, rdb: rdb, log: cfg.Logger, m: cfg.Metrics, now: time.Now,
		endpoints: map[string]Endpoint{},
		client: &http.Client{Transport: tr, Timeout: AttemptTimeout,
			// A redirect is not followed: the configured URL is the
			// receiver, and a 3xx is a failed attempt.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
		stop: make(chan struct{}), done: make(chan struct{})}
	for _, ep := range cfg.Endpoints {
		d.endpoints[ep.Key] = ep
	}
	delayed, poll := time.Second, 100*time.Millisecond
	if cfg.PollInterval > 0 {
		delayed, poll = cfg.PollInterval, cfg.PollInterval
	}
	d.srv = asynq.NewServerFromRedisClient(rdb, asynq.Config{
		Concurrency:              cfg.Concurrency,
		Queues:                   map[string]int{Queue: 1},
		RetryDelayFunc:           func(n int, _ error, _ *asynq.Task) time.Duration { return RetryDelay(cfg.RetryBase, n) },
		ShutdownTimeout:          cfg.ShutdownTimeout,
		DelayedTaskCheckInterval: delayed,
		TaskCheckInterval:        poll,
		Logger:                   asynqLogger{cfg.Logger},
		LogLevel:                 asynq.WarnLevel,
	})
	return d, nil
}

// RetryDelay is the delay before retry n+1 (n from 0) with ladder base
// base: Ladder[n] scaled by base/5s, ±10% jitter.
func RetryDelay(base time.Duration, n int) time.Duration {
	n = min(max(n, 0), len(Ladder)-1)
	d := time.Duration(float64(Ladder[n]) * float64(base) / float64(DefaultRetryBase))
	return d + time.Duration(float64(d)*(rand.Float64()*0.2-0.1))
}

// Start begins delivering and sweeping. It returns at once.
func (d *Deliverer) Start() error {
	mux := asynq.NewServeMux()
	mux.Handle(TypeDeliver, d)
	if err := d.srv.Start(mux); err != nil {
		return fmt.Errorf("start webhook deliverer: %w", err)
	}
	go d.sweep() // ends when Shutdown closes stop
	return nil
}

// Shutdown stops the sweeper, then the deliveries: those in flight get
// ShutdownTimeout to finish; one still running goes back to the queue.
func (d *Deliverer) Shutdown() {
	close(d.stop)
	<-d.done
	d.srv.Shutdown()
	d.client.CloseIdleConnections()
}

func (d *Deliverer) sweep() {
	defer close(d.done)
	t := time.NewTicker(d.cfg.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-d.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), d.cfg.SweepInterval)
		for {
			n, err := d.cfg.Log.Sweep(ctx, d.cfg.SweepAfter, 100)
			if err != nil {
				d.log.Warn("event sweep failed", "err", err)
			}
			if err != nil || n == 0 {
				break
			}
		}
		cancel()
	}
}

// ProcessTask makes one delivery attempt.
func (d *Deliverer) ProcessTask(ctx context.Context, t *asynq.Task) error {
	var p delivery
	if err := json.Unmarshal(t.Payload(), &p); err != nil || p.V != 1 {
		d.m.Deliveries.WithLabelValues(OutcomeSkipped).Inc()
		d.log.Error("undecodable webhook task", "err", err)
		return fmt.Errorf("decode webhook task: %w", asynq.SkipRetry)
	}
	log := d.log.With("event_id", p.EventID, "endpoint", p.Endpoint)
	ep, ok := d.endpoints[p.Endpoint]
	if !ok {
		d.m.Deliveries.WithLabelValues(OutcomeSkipped).Inc()
		log.Warn("webhook dropped: its endpoint is no longer in SENDQ_WEBHOOK_URLS")
		return fmt.Errorf("endpoint %s not configured: %w", p.Endpoint, asynq.SkipRetry)
	}
	log = log.With("host", ep.Host)
	if d.isDisabled(ctx, ep.Key) {
		d.m.Deliveries.WithLabelValues(OutcomeSkipped).Inc()
		return fmt.Errorf("endpoint %s is disabled (it answered 410): %w", ep.Host, asynq.SkipRetry)
	}
	retried, _ := asynq.GetRetryCount(ctx)
	maxRetry, _ := asynq.GetMaxRetry(ctx)

	start := d.now()
	code, err := d.post(ctx, ep, p.EventID, []byte(p.Body), start)
	d.m.AttemptDuration.Observe(d.now().Sub(start).Seconds())
	switch {
	case err == nil && code/100 == 2:
		d.m.Deliveries.WithLabelValues(OutcomeDelivered).Inc()
		log.Debug("webhook delivered", "attempt", retried+1, "code", code)
		return nil
	case err == nil && code == http.StatusGone:
		d.m.Deliveries.WithLabelValues(OutcomeGone).Inc()
		d.disable(ep, p.EventID, log)
		return fmt.Errorf("endpoint %s answered 410 Gone: disabled: %w", ep.Host, asynq.SkipRetry)
	}
	if err == nil {
		err = fmt.Errorf("endpoint %s answered %d", ep.Host, code)
	}
	if retried >= maxRetry {
		d.m.Deliveries.WithLabelValues(OutcomeExhausted).Inc()
		log.Error("webhook given up", "attempt", retried+1, "err", err)
		return err
	}
	d.m.Deliveries.WithLabelValues(OutcomeRetry).Inc()
	log.Info("webhook attempt failed; retry scheduled", "attempt", retried+1, "err", err)
	return err
}

// post sends body to ep, signed, and returns the status code. Errors
// never carry the URL (it may hold a token).
func (d *Deliverer) post(ctx context.Context, ep Endpoint, id string, body []byte, ts time.Time) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, ep.URL, bytes.NewReader(body))
	if err != nil {
		return 0, fmt.Errorf("webhook request to %s: %w", ep.Host, redact(err))
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "sendq-webhooks/1")
	req.Header.Set(HeaderID, id)
	req.Header.Set(HeaderTimestamp, fmt.Sprint(ts.Unix()))
	req.Header.Set(HeaderSignature, d.cfg.Secrets.Sign(id, ts, body))
	resp, err := d.client.Do(req)
	if err != nil {
		return 0, fmt.Errorf("webhook to %s: %w", ep.Host, redact(err))
	}
	// Drain a little of the answer so the connection can be reused.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	_ = resp.Body.Close()
	return resp.StatusCode, nil
}

// redact drops the URL from a *url.Error.
func redact(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		if ue.Timeout() {
			return fmt.Errorf("timed out after %s: %w", AttemptTimeout, context.DeadlineExceeded)
		}
		return ue.Err
	}
	return err
}

// disable records in Redis that ep answered 410: no delivery to it is
// attempted again, from any process, until the operator removes the entry.
func (d *Deliverer) disable(ep Endpoint, eventID string, log *slog.Logger) {
	d.mu.Lock()
	if d.disabled == nil {
		d.disabled = map[string]bool{}
	}
	d.disabled[ep.Key] = true
	d.mu.Unlock()
	v, _ := json.Marshal(map[string]string{"host": ep.Host, "event_id": eventID, "disabled_at": d.now().UTC().Format(time.RFC3339)})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	added, err := d.rdb.HSetNX(ctx, DisabledKey, ep.Key, v).Result()
	if err != nil {
		log.Error("webhook endpoint answered 410 Gone; disabling it in Redis failed (disabled in this process only)", "err", err)
		return
	}
	if added {
		d.m.Disabled.Inc()
		log.Warn("webhook endpoint answered 410 Gone: disabled; remove it from " + DisabledKey + " in Redis to enable it again")
	}
}

func (d *Deliverer) isDisabled(ctx context.Context, key string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.disabled == nil || d.now().Sub(d.disabledAge) > disabledRefresh {
		keys, err := d.rdb.HKeys(ctx, DisabledKey).Result()
		if err == nil {
			d.disabled = make(map[string]bool, len(keys))
			for _, k := range keys {
				d.disabled[k] = true
			}
			d.disabledAge = d.now()
		}
	}
	return d.disabled[key]
}

// asynqLogger adapts slog to asynq.Logger.
type asynqLogger struct{ l *slog.Logger }

func (a asynqLogger) Debug(args ...any) {
	a.l.Debug(fmt.Sprint(args...), "component", "asynq-webhooks")
}
func (a asynqLogger) Info(args ...any) { a.l.Info(fmt.Sprint(args...), "component", "asynq-webhooks") }
func (a asynqLogger) Warn(args ...any) { a.l.Warn(fmt.Sprint(args...), "component", "asynq-webhooks") }
func (a asynqLogger) Error(args ...any) {
	a.l.Error(fmt.Sprint(args...), "component", "asynq-webhooks")
}
func (a asynqLogger) Fatal(args ...any) {
	a.l.Error(fmt.Sprint(args...), "component", "asynq-webhooks")
}
