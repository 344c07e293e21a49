// Command sendq runs sendq: an HTTP intake that queues emails in Redis and
// workers that deliver them through pooled SMTP connections.
//
//	sendq serve    intake and worker in one process
//	sendq api      intake only
//	sendq worker   worker only (run as many as you like on one Redis)
//	sendq inbound  the bounce listener only (SMTP on SENDQ_INBOUND_ADDR)
//	sendq send     send a file of rows (CSV or JSONL) through the batch API
//
// Configuration comes from the environment, each variable with a flag twin;
// `sendq help` lists them.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/sendq/sendq/dkim"
	"github.com/sendq/sendq/events"
	"github.com/sendq/sendq/inbound"
	"github.com/sendq/sendq/internal/bench"
	"github.com/sendq/sendq/internal/circuit"
	"github.com/sendq/sendq/internal/config"
	"github.com/sendq/sendq/internal/outbox"
	"github.com/sendq/sendq/internal/ui"
	"github.com/sendq/sendq/metrics"
	"github.com/sendq/sendq/producer"
	"github.com/sendq/sendq/queue"
	"github.com/sendq/sendq/suppression"
	"github.com/sendq/sendq/token"
	"github.com/sendq/sendq/worker"
)

func main() { os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr)) }

const usage = `sendq: asynchronous email delivery with an SMTP-connector-compatible API

Usage:
  sendq serve    [flags]   intake and worker in one process (what a newcomer runs)
  sendq api      [flags]   intake only
  sendq worker   [flags]   worker only; run as many as you like on one Redis
  sendq inbound  [flags]   the bounce listener only: SMTP on SENDQ_INBOUND_ADDR for SENDQ_BOUNCE_DOMAIN
  sendq healthcheck [flags]  exit 0 if the local process answers /healthz (for container health checks)
  sendq status ID          print an email's status (reads REDIS_URL)
  sendq queues             print queue depths
  sendq retry ID           queue a failed or canceled email again
  sendq cancel ID          cancel a queued, scheduled or retrying email
  sendq send -template NAME -file rows.csv [flags]
                           send every row of a file as batches, safe to re-run ('sendq send -h')
  sendq bench [flags]      measure intake and delivery against naive baselines ('sendq bench -h')
  sendq help               this text; 'sendq serve -h' lists every setting

Every setting is an environment variable with a flag twin; see README.md.
`

func run(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	name := args[0]
	switch name {
	case "serve", "api", "worker", "inbound", "healthcheck", "status", "queues", "retry", "cancel":
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	case "send":
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
		defer stop()
		return sendMain(ctx, args[1:], getenv, stdout, stderr)
	case "bench":
		// bench has its own flags: it builds its own Redis, sink, API and worker.
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
		defer stop()
		return bench.Main(ctx, args[1:], getenv, stdout, stderr)
	default:
		fmt.Fprintf(stderr, "sendq: unknown command %q\n\n%s", name, usage)
		return 2
	}
	flags, ids := splitArgs(args[1:])
	cfg, err := config.Load(name, flags, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "sendq: %v\n", err)
		return 2
	}
	switch name {
	case "healthcheck":
		return healthcheck(cfg, stderr)
	case "status", "queues", "retry", "cancel":
		return operate(name, ids, cfg, stdout, stderr)
	}
	if len(ids) > 0 {
		fmt.Fprintf(stderr, "sendq %s: unexpected argument %q\n", name, ids[0])
		return 2
	}
	log := newLogger(cfg, stderr)
	// go-redis logs pool trouble itself; route it through slog too.
	redis.SetLogger(redisLogger{log.With("component", "go-redis")})
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := serve(ctx, name, cfg, log); err != nil {
		log.Error("sendq stopped", "err", err)
		return 1
	}
	return 0
}

// splitArgs separates flags from positional arguments (an email id), so
// that "sendq status ID -redis-url=…" and "sendq status -redis-url=… ID"
// both work.
func splitArgs(args []string) (flags, rest []string) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			return flags, append(rest, args[i+1:]...)
		case len(a) > 1 && a[0] == '-':
			flags = append(flags, a)
			if !strings.Contains(a, "=") && i+1 < len(args) && !isBoolFlag(a) {
				flags = append(flags, args[i+1])
				i++
			}
		default:
			rest = append(rest, a)
		}
	}
	return flags, rest
}

func isBoolFlag(a string) bool { return a == "-h" || a == "-help" || a == "--help" }

func newLogger(cfg *config.Config, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel))
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// redisLogger adapts slog to go-redis' logger. go-redis formats addresses,
// never passwords, into these lines.
type redisLogger struct{ l *slog.Logger }

func (r redisLogger) Printf(_ context.Context, format string, v ...any) {
	r.l.Warn(fmt.Sprintf(format, v...))
}

// serve builds the components for mode (serve, api, worker or inbound),
// runs them until ctx is canceled, then stops them in order.
func serve(ctx context.Context, mode string, cfg *config.Config, log *slog.Logger) error {
	runAPI, runWorker := mode == "serve" || mode == "api", mode == "serve" || mode == "worker"
	runInbound := mode == "inbound" || (mode == "serve" && cfg.BounceDomain != "")
	if mode == "inbound" && cfg.BounceDomain == "" {
		return errors.New("sendq inbound needs SENDQ_BOUNCE_DOMAIN (and SENDQ_SIGNING_KEY)")
	}
	var signer *token.Signer
	if cfg.SigningKey != "" {
		var err error
		if signer, err = token.NewSigner(cfg.SigningKey); err != nil {
			return fmt.Errorf("SENDQ_SIGNING_KEY: %w", err)
		}
	}
	// Suppressions, asynchronous bounces, reports and unsubscribes become
	// events of their emails (set once the event log exists, below).
	var notifier suppression.Notifier
	// newList returns the suppression list on rdb, or nil when it is off.
	newList := func(rdb redis.UniversalClient) *suppression.List {
		if !cfg.Suppression {
			return nil
		}
		return suppression.New(rdb)
	}

	// The DKIM keys first: a bad one stops the process before it serves.
	var dkimKeys []*dkim.Key
	if runWorker && cfg.DKIM != "" {
		var err error
		if dkimKeys, err = dkim.LoadKeys(cfg.DKIM); err != nil {
			return fmt.Errorf("SENDQ_DKIM: %w", err)
		}
	}

	// Redis: the configured one, or an embedded in-memory one.
	redisURL := cfg.RedisURL
	if redisURL == "" {
		mr := miniredis.NewMiniRedis()
		if err := mr.Start(); err != nil {
			return fmt.Errorf("embedded redis: %w", err)
		}
		defer mr.Close()
		redisURL = "redis://" + mr.Addr()
		log.Warn("REDIS_URL is not set: using an EMBEDDED IN-MEMORY Redis. Nothing survives a restart and other processes cannot share the queue. Set REDIS_URL for real use.",
			"addr", mr.Addr())
	}
	rdb, err := queue.NewRedisClient(redisURL)
	if err != nil {
		return err
	}
	defer rdb.Close()

	reg := prometheus.NewRegistry()
	m := metrics.New(reg, reg)
	insp := asynq.NewInspectorFromRedisClient(rdb)
	topo := cfg.Topology()
	store := queue.NewStore(rdb, cfg.RecordTTL())
	reg.MustRegister(metrics.NewShardedQueueCollector(insp, queueGroups(topo, events.Queue)).WithHeld(store.HeldEmails))
	evm := events.NewMetrics(reg)
	reg.MustRegister(events.NewCollector(rdb, insp))
	eventsConfig := events.LogConfig{Endpoints: cfg.WebhookEndpoints, Retention: cfg.Retention, TTL: cfg.RecordTTL(),
		Metrics: evm, Logger: log}
	nclient := asynq.NewClientFromRedisClient(rdb)
	defer nclient.Close()
	nlog, err := events.NewLog(rdb, nclient, eventsConfig)
	if err != nil {
		return err
	}
	notifier = noticeEvents{log: nlog}

	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		producer.WriteJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		rctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := rdb.Ping(rctx).Err(); err != nil {
			producer.WriteError(w, http.StatusServiceUnavailable, "redis_unavailable", "", "Redis does not answer")
			return
		}
		producer.WriteJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	})
	mux.Handle("GET /metrics", m.Handler())
	mux.HandleFunc("GET /openapi.yaml", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/yaml")
		_, _ = w.Write(producer.OpenAPI)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		producer.WriteError(w, http.StatusNotFound, "not_found", "", "no such route; see /openapi.yaml")
	})

	var client *asynq.Client
	if runAPI {
		keys, err := producer.ParseAPIKeys(cfg.APIKeys)
		if err != nil {
			return fmt.Errorf("SENDQ_API_KEYS: %w", err)
		}
		allow, err := producer.ParseAllowList(cfg.AllowedFrom)
		if err != nil {
			return fmt.Errorf("SENDQ_ALLOWED_FROM: %w", err)
		}
		if len(keys) == 0 {
			log.Warn("SENDQ_API_KEYS is not set: the API accepts requests WITHOUT authentication. Anyone who reaches it can send mail.")
		}
		adminKeys, err := producer.ParseAPIKeys(cfg.AdminKeys)
		if err != nil {
			return fmt.Errorf("SENDQ_ADMIN_KEYS: %w", err)
		}
		// The enqueues of concurrent requests share pipelines: one write
		// and one read for a batch instead of for every request, which
		// halves Redis's CPU per request (README: Performance). Each
		// request still waits for its own reply, within its deadline.
		// The Idempotency-Key claims get a pipeliner of their own: a keyed
		// send waits for its claim before its enqueue, and on one ordered
		// stream the two would take turns (BenchmarkKeyedSendRedis).
		var enq, scripts redis.UniversalClient = rdb, rdb
		if cfg.AutoPipeline {
			ap, err := queue.NewPipeliner(rdb)
			if err != nil {
				return err
			}
			defer ap.Close() // before rdb's Close, deferred earlier
			enq = queue.ScriptsPipelined(rdb, ap)
			claims, err := queue.NewPipeliner(rdb)
			if err != nil {
				return err
			}
			defer claims.Close()
			scripts = queue.ScriptsPipelined(rdb, claims)
		}
		client = asynq.NewClientFromRedisClient(enq)
		evlog, err := events.NewLog(rdb, client, eventsConfig)
		if err != nil {
			return err
		}
		// The suppression checks go straight to Redis, not through an
		// automatic pipeliner: its blocking face ignores the caller's
		// context, and with Redis frozen an intake answer waited for
		// Redis to wake (9.9 s in the fault suite's Redis pause).
		api, err := producer.New(rdb, client, insp, store, producer.Config{
			Keys: keys, AdminKeys: adminKeys, AllowedFrom: allow,
			Limits: producer.Limits{MaxRecipients: cfg.MaxRecipients, DefaultFrom: cfg.DefaultFrom,
				MaxAttachments: cfg.MaxAttachments, MaxSchedule: cfg.MaxSchedule, MaxAge: cfg.MaxAge},
			MaxBodyBytes: cfg.MaxMessageBytes, MaxBatch: cfg.MaxBatch, MaxBatchBytes: cfg.MaxBatchBytes, MaxAttempts: cfg.MaxAttempts, Retention: cfg.Retention,
			RatePerKey: cfg.RatePerKey, Events: evlog, Topology: topo, Scripts: scripts,
			Logger: log, Metrics: m,
			Suppression: newList(rdb), Signer: signer, PublicURL: cfg.PublicURL, Notifier: notifier,
		})
		if err != nil {
			return err
		}
		api.Register(mux)
		// The asynq web UI, read-only, behind the same API keys.
		uiKeys := keys
		if cfg.AdminKeys != "" {
			uiKeys = adminKeys
		} else if len(keys) > 1 {
			log.Warn("SENDQ_ADMIN_KEYS is not set: every API key opens the web view at /ui/, which shows every key's emails. Set SENDQ_ADMIN_KEYS to keep the keys' emails apart there too.")
		}
		uiOpts := ui.Options{Anonymous: len(uiKeys) == 0, AllowWrites: cfg.UIAllowWrites}
		if len(uiKeys) > 0 {
			uiOpts.CheckKey = producer.KeyChecker(uiKeys)
		}
		console, err := ui.New(rdb, uiOpts)
		if err != nil {
			return err
		}
		mux.Handle(ui.Path, console) // asynqmon's own API lives under it too
	}

	var w *worker.Worker
	var deliverer *events.Deliverer
	var wclient *asynq.Client
	if runWorker {
		smtpURL := cfg.SMTPURL
		if smtpURL == "" {
			ob, err := outbox.Start(cfg.OutboxDir, log)
			if err != nil {
				return err
			}
			defer func() {
				sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				_ = ob.Shutdown(sctx)
			}()
			smtpURL = ob.URL()
			log.Warn("SENDQ_SMTP_URL is not set: delivering to an EMBEDDED capture server that writes each message as an .eml file instead of sending it.",
				"dir", cfg.OutboxDir)
		}
		relays, err := worker.ParseRelays(smtpURL)
		if err != nil {
			return fmt.Errorf("SENDQ_SMTP_URL: %w", err)
		}
		routes, err := worker.ParseRoutes(cfg.SMTPRoutes)
		if err == nil {
			err = worker.CheckRoutes(routes, relays)
		}
		if err != nil {
			return fmt.Errorf("SENDQ_SMTP_ROUTES: %w", err)
		}
		// The delivery records of concurrent sends share pipelines too,
		// and so do the events written with them and their hand-off.
		wstore, wrdb, wenq := store, redis.UniversalClient(rdb), redis.UniversalClient(rdb)
		wlist := newList(rdb) // not pipelined either, as at the intake
		if cfg.AutoPipeline {
			ap, err := queue.NewPipeliner(rdb)
			if err != nil {
				return err
			}
			defer ap.Close() // after the worker's Shutdown, below
			wstore, wrdb, wenq = queue.NewStore(ap, cfg.RecordTTL()), ap, queue.ScriptsPipelined(rdb, ap)
		}
		wclient = asynq.NewClientFromRedisClient(wenq)
		wlog, err := events.NewLog(wrdb, wclient, eventsConfig)
		if err != nil {
			return err
		}
		// Webhooks have their own asynq server and concurrency: a backlog
		// of email never delays an event. Its sweeper hands off the events
		// of any process that died between storing and handing them off.
		deliverer, err = events.NewDeliverer(rdb, events.DelivererConfig{
			Endpoints: cfg.WebhookEndpoints, Secrets: cfg.WebhookSecrets, RetryBase: cfg.WebhookRetryBase,
			Concurrency: cfg.WebhookConcurrency, Log: wlog, Metrics: evm, Logger: log,
		})
		if err != nil {
			return err
		}
		var dkimSigner *dkim.Signer
		if cfg.DKIM != "" {
			dkimSigner = dkim.NewSigner(dkimKeys, reg)
			for _, k := range dkimKeys {
				log.Info("dkim key loaded: publish its public key at its DNS name", "domain", k.Domain, "selector", k.Selector,
					"algorithm", k.Algorithm(), "dns_name", k.DNSName(), "txt", k.TXTRecord())
			}
		}
		w, err = worker.New(rdb, worker.Config{
			Relays: relays, Routes: routes,
			Circuit: circuit.Config{Threshold: cfg.CircuitFailures, Cooldown: cfg.CircuitCooldown},
			Pool: worker.PoolConfig{Size: cfg.PoolSize, IdleTimeout: cfg.IdleTimeout, MaxConnAge: cfg.MaxConnAge,
				CommandTimeout: cfg.SMTPTimeout},
			Concurrency: cfg.Concurrency, Fetchers: cfg.Fetchers, HighConcurrency: cfg.HighConcurrency,
			ReservedConns: cfg.ReservedConns, Topology: topo, RetryBaseDelay: cfg.RetryBase, RetryMaxDelay: cfg.RetryMax,
			MaxAge: cfg.MaxAge, ShutdownTimeout: cfg.ShutdownTimeout, SMTPRate: cfg.SMTPRate,
			DKIM: dkimSigner, NoTextPart: !cfg.TextPart,
			Store: wstore, Enqueuer: wclient, Events: wlog, Logger: log, Metrics: m,
			Suppression: wlist, Notifier: notifier, Signer: signer, BounceDomain: cfg.BounceDomain, PublicURL: cfg.PublicURL,
		})
		if err != nil {
			return err
		}
		if err := deliverer.Start(); err != nil {
			return err
		}
		if err := w.Start(); err != nil {
			deliverer.Shutdown()
			return err
		}
		if len(cfg.WebhookEndpoints) > 0 {
			log.Info("webhooks enabled", "endpoints", len(cfg.WebhookEndpoints), "secrets", cfg.WebhookSecrets.Len(),
				"retry_base", cfg.WebhookRetryBase, "concurrency", cfg.WebhookConcurrency)
		}
		for _, r := range relays {
			log.Info("relay", "relay", r.Name, "url", r.String())
		}
		log.Info("worker started", "relays", len(relays), "routes", len(routes), "pool_size", cfg.PoolSize, "concurrency", cfg.Concurrency, "fetchers", cfg.Fetchers)
	}

	var in *inbound.Server
	inboundErr := make(chan error, 1)
	if runInbound {
		var err error
		in, err = inbound.New(inbound.Config{
			Domain: cfg.BounceDomain, Signer: signer, Store: store, Suppression: newList(rdb), Notifier: notifier,
			MaxMessageBytes: cfg.InboundMaxBytes, Logger: log.With("component", "inbound"), Metrics: m,
		})
		if err == nil {
			var iln net.Listener
			if iln, err = net.Listen("tcp", cfg.InboundAddr); err == nil {
				go func() { inboundErr <- in.Serve(iln) }() // ends when in.Shutdown is called
				log.Info("inbound listening", "addr", iln.Addr().String(), "domain", cfg.BounceDomain)
			} else {
				err = fmt.Errorf("listen %s: %w", cfg.InboundAddr, err)
			}
		}
		if err != nil {
			if w != nil {
				w.Shutdown()
			}
			return err
		}
	}

	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		if w != nil {
			w.Shutdown()
			deliverer.Shutdown()
		}
		if in != nil {
			_ = in.Close()
		}
		return fmt.Errorf("listen %s: %w", cfg.HTTPAddr, err)
	}
	// The connector's /{connectionId}/SendEmailV3 and its kin are served as
	// /SendEmailV3 (a ServeMux pattern for them would conflict with /ui/).
	srv := producer.NewHTTPServer(m.Instrument(producer.ConnectorPaths(mux)), log)
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }() // ends when srv.Shutdown is called
	log.Info("sendq listening", "mode", mode, "addr", ln.Addr().String())

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("stopping: signal received")
	case err := <-serveErr:
		runErr = fmt.Errorf("http server: %w", err)
	case err := <-inboundErr:
		runErr = fmt.Errorf("inbound server: %w", err)
	}

	// Shutdown order: (1) stop the intake, so no new 202 is promised, and
	// the inbound listener (a report cut off is retried by its sender);
	// (2) stop the worker: no new fetches, in-flight sends finish within
	// the shutdown timeout (and hand off their events), then the pool
	// says QUIT; (3) stop webhook delivery: the sweeper, then deliveries
	// in flight (one cut short goes back to its queue); (4) the deferred
	// closes: Redis client, embedded outbox, embedded Redis.
	hctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = srv.Shutdown(hctx)
	if in != nil {
		_ = in.Shutdown(hctx)
	}
	if w != nil {
		w.Shutdown()
		deliverer.Shutdown()
		_ = wclient.Close()
	}
	if client != nil {
		_ = client.Close()
	}
	log.Info("sendq stopped")
	return runErr
}

// queueGroups maps the queue label of the metrics (queue.BaseName of each
// priority) to the priority's shard queues, which it sums.
func queueGroups(t *queue.Topology, more ...string) []metrics.QueueGroup {
	var out []metrics.QueueGroup
	for _, p := range queue.Priorities {
		out = append(out, metrics.QueueGroup{Label: queue.BaseName(p), Queues: t.Queues(p)})
	}
	for _, q := range more {
		out = append(out, metrics.QueueGroup{Label: q, Queues: []string{q}})
	}
	return out
}

// healthcheck asks the local process' /healthz; a container health check
// runs it, so the image needs no shell or curl.
func healthcheck(cfg *config.Config, stderr io.Writer) int {
	host, port, err := net.SplitHostPort(cfg.HTTPAddr)
	if err != nil {
		fmt.Fprintf(stderr, "healthcheck: %v\n", err)
		return 1
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	c := &http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get("http://" + net.JoinHostPort(host, port) + "/healthz")
	if err != nil {
		fmt.Fprintf(stderr, "healthcheck: %v\n", err)
		return 1
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "healthcheck: %s\n", resp.Status)
		return 1
	}
	return 0
}
