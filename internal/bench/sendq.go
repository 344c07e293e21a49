package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime/pprof"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/sendq/sendq/events"
	"github.com/sendq/sendq/internal/config"
	"github.com/sendq/sendq/metrics"
	"github.com/sendq/sendq/producer"
	"github.com/sendq/sendq/queue"
	"github.com/sendq/sendq/worker"
)

// sendqProc is sendq's API and worker built in process the way
// `sendq serve` builds them (cmd/sendq), with the default configuration:
// one Redis client shared by both, metrics on a private registry, the
// /v1 routes behind the metrics middleware, API-key auth on.
type sendqProc struct {
	cfg    *config.Config
	rdb    redis.UniversalClient
	ap     *redis.AutoPipeliner   // the intake's, if on
	claims *redis.AutoPipeliner   // the intake's for its claims, if on
	aps    []*redis.AutoPipeliner // the workers'
	enq    *asynq.Client
	m      *metrics.Metrics
	store  *queue.Store
	log    *slog.Logger
	srv    *http.Server
	served chan error
	url    string // POST target: http://127.0.0.1:port/v1/emails
}

// startSendqAPI starts the intake on a loopback port, accepting apiKey.
func startSendqAPI(redisURL, apiKey string, log *slog.Logger) (*sendqProc, error) {
	// The defaults of `sendq serve`, not the caller's environment: a bench
	// must not change with whatever SENDQ_* variables the shell has.
	cfg, err := config.Load("serve", nil, func(string) string { return "" }, io.Discard)
	if err != nil {
		return nil, fmt.Errorf("default config: %w", err)
	}
	cfg.APIKeys = apiKey
	rdb, err := queue.NewRedisClient(redisURL)
	if err != nil {
		return nil, err
	}
	p := &sendqProc{cfg: cfg, rdb: rdb, log: log, served: make(chan error, 1)}
	reg := prometheus.NewRegistry()
	p.m = metrics.New(reg, reg)
	p.store = queue.NewStore(rdb, cfg.RecordTTL())
	keys, err := producer.ParseAPIKeys(cfg.APIKeys)
	if err != nil {
		_ = rdb.Close()
		return nil, err
	}
	// As `sendq serve` does: concurrent enqueues share pipelines, and
	// the Idempotency-Key claims share a pipeliner of their own.
	var enq, scripts redis.UniversalClient = rdb, rdb
	if cfg.AutoPipeline {
		if p.ap, err = queue.NewPipeliner(rdb); err != nil {
			_ = rdb.Close()
			return nil, err
		}
		enq = queue.ScriptsPipelined(rdb, p.ap)
		if p.claims, err = queue.NewPipeliner(rdb); err != nil {
			p.closeRedis()
			return nil, err
		}
		scripts = queue.ScriptsPipelined(rdb, p.claims)
	}
	p.enq = asynq.NewClientFromRedisClient(enq)
	api, err := producer.New(rdb, p.enq, asynq.NewInspectorFromRedisClient(rdb), p.store, producer.Config{
		Keys: keys,
		Limits: producer.Limits{MaxRecipients: cfg.MaxRecipients, DefaultFrom: cfg.DefaultFrom,
			MaxAttachments: cfg.MaxAttachments, MaxSchedule: cfg.MaxSchedule, MaxAge: cfg.MaxAge},
		MaxBodyBytes: cfg.MaxMessageBytes, MaxAttempts: cfg.MaxAttempts, Retention: cfg.Retention,
		Scripts: scripts, Logger: log, Metrics: p.m,
	})
	if err != nil {
		p.closeRedis()
		return nil, err
	}
	mux := http.NewServeMux()
	api.Register(mux)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		p.closeRedis()
		return nil, err
	}
	p.srv = producer.NewHTTPServer(p.m.Instrument(mux), log)
	p.url = "http://" + ln.Addr().String() + "/v1/emails"
	// Connection goroutines inherit the label (see the CPU profile).
	// Serve returns when stop shuts the server down.
	go pprof.Do(context.Background(), pprof.Labels("component", "sendq-api"), func(context.Context) {
		p.served <- p.srv.Serve(ln)
	})
	return p, nil
}

// newWorker returns sendq's worker delivering to the sink at relayAddr with
// the given pool size and concurrency (0: four times the pool).
func (p *sendqProc) newWorker(relayAddr string, pool, concurrency, fetchers int) (*worker.Worker, error) {
	relay, err := worker.ParseRelay("smtp://" + relayAddr + "?tls=none")
	if err != nil {
		return nil, err
	}
	if concurrency <= 0 {
		concurrency = 4 * pool
	}
	c := p.cfg
	if fetchers <= 0 {
		fetchers = c.Fetchers
	}
	// As `sendq serve` does: the records of concurrent deliveries are
	// read and written in shared batches.
	// Each attempt's events go with its record, and are handed off to
	// the event log after it (no webhook URLs: the default).
	store, evrdb := p.store, p.rdb
	if c.AutoPipeline {
		aap, err := queue.NewPipeliner(p.rdb)
		if err != nil {
			return nil, err
		}
		p.aps = append(p.aps, aap)
		store, evrdb = queue.NewStore(aap, c.RecordTTL()), aap
	}
	evlog, err := events.NewLog(evrdb, nil, events.LogConfig{Retention: c.Retention, TTL: c.RecordTTL(), Logger: p.log})
	if err != nil {
		return nil, err
	}
	return worker.New(p.rdb, worker.Config{
		Relay: relay,
		Pool: worker.PoolConfig{Size: pool, IdleTimeout: c.IdleTimeout, MaxConnAge: c.MaxConnAge,
			CommandTimeout: c.SMTPTimeout},
		Concurrency: concurrency, Fetchers: fetchers, RetryBaseDelay: c.RetryBase, RetryMaxDelay: c.RetryMax,
		MaxAge: c.MaxAge, ShutdownTimeout: c.ShutdownTimeout,
		Store: store, Events: evlog, Logger: p.log, Metrics: p.m,
	})
}

// stop shuts the intake down, then closes the clients.
func (p *sendqProc) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = p.srv.Shutdown(ctx)
	<-p.served
	p.closeRedis()
}

func (p *sendqProc) closeRedis() {
	if p.enq != nil {
		_ = p.enq.Close()
	}
	if p.ap != nil {
		_ = p.ap.Close()
	}
	if p.claims != nil {
		_ = p.claims.Close()
	}
	for _, ap := range p.aps {
		_ = ap.Close()
	}
	_ = p.rdb.Close()
}
