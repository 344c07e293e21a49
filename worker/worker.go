package worker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/sendq/sendq/dkim"
	"github.com/sendq/sendq/internal/circuit"
	"github.com/sendq/sendq/metrics"
	"github.com/sendq/sendq/queue"
	"github.com/sendq/sendq/suppression"
	"github.com/sendq/sendq/token"
)

// Config configures a Worker. Zero values take the documented defaults.
type Config struct {
	// Relay is the SMTP server to deliver through, when there is one.
	// Relay or Relays is required.
	Relay *Relay
	// Relays are the SMTP servers to deliver through, in failover order
	// (ParseRelays); if empty, Relay alone. With more than one, each has a
	// circuit breaker (Circuit).
	Relays []*Relay
	// Routes sends the emails from some addresses or @domains only to
	// their relays, by name, in order (ParseRoutes); the rest go through
	// Relays in order.
	Routes map[string][]string
	// Circuit configures the relays' circuit breakers: a relay whose
	// session fails Threshold times in a row (3), or that answers 421, is
	// skipped for Cooldown (30s), then probed by one send. Not used with
	// a single relay.
	Circuit circuit.Config
	// Pool configures the SMTP connection pool of each relay (a relay's
	// pool_size= overrides Size).
	Pool PoolConfig
	// Concurrency is how many emails one process handles at once. If zero,
	// four times the pool size: the Redis round trips of some
	// emails overlap the SMTP transactions of others.
	Concurrency int
	// Fetchers is how many asynq servers the process runs over the same
	// pool and handler, splitting Concurrency between them. An asynq server
	// takes tasks from Redis one at a time, one round trip each, on a
	// single goroutine: with a fast relay that loop, not SMTP nor the
	// number of concurrent sends, is the ceiling (README: Performance).
	// If zero, 4; never more than Concurrency.
	Fetchers int
	// HighConcurrency is the share of Concurrency reserved for high
	// priority emails: the last of the Fetchers serves only the high
	// queues, polls them every 20ms and has this concurrency, so a backlog
	// of normal or bulk email never stands in front of them (with one
	// fetcher, a second is started for high, on top of Concurrency). If
	// zero, the last fetcher's even share (Concurrency/Fetchers, at
	// least 1).
	HighConcurrency int
	// ReservedConns is how many of the pool's connections normal and bulk
	// emails may not take: the last ReservedConns are for high ones. If
	// zero, Pool.Size/5 (at least 1 when the pool has 2 or more); -1: none.
	ReservedConns int
	// Topology names the queues to serve (SENDQ_QUEUE_SHARDS); nil is
	// one queue per priority.
	Topology *queue.Topology
	// RetryBaseDelay is the first retry's delay, doubled for each retry
	// with jitter. If zero, 30s.
	RetryBaseDelay time.Duration
	// RetryMaxDelay caps the retry delay. If zero, 1h.
	RetryMaxDelay time.Duration
	// MaxAge: an email not delivered this long after its delivery window
	// opened (queue.Email.WindowStart: its SendAt, else its acceptance) is
	// failed (reason expired) instead of retried. If zero, 72h.
	MaxAge time.Duration
	// ShutdownTimeout is how long Shutdown waits for in-flight sends. If
	// zero, 25s (below Kubernetes' 30s grace period).
	ShutdownTimeout time.Duration
	// PollInterval is how often an idle worker looks for new tasks and
	// how often due retries are moved to the queue. If zero, 1s for
	// retries (asynq's default is 5s) and 50ms for new tasks.
	PollInterval time.Duration
	// SMTPRate limits SMTP transactions to each relay across every worker
	// process (GCRA in Redis), like an SES account's send rate; a relay's
	// rate= overrides it. Zero: no limit.
	SMTPRate redis_rate.Limit
	// DKIM signs each message whose From domain has a key. If nil, no
	// message is signed.
	DKIM *dkim.Signer
	// NoTextPart sends an HTML body as it is. If false (the default), an
	// HTML-only body gets a text/plain alternative derived from it
	// (WithTextPart).
	NoTextPart bool
	// Store keeps delivery records. Required.
	Store *queue.Store
	// Enqueuer queues the task of its own an email of a chunk gets when
	// it is to be tried again. If nil, an asynq client on the worker's
	// Redis.
	Enqueuer queue.Enqueuer
	// Events stores each attempt's events with its record and hands them
	// to webhook delivery (the events package). If nil, none.
	Events Events
	// Logger; if nil, slog.Default().
	Logger *slog.Logger
	// Metrics; required.
	Metrics *metrics.Metrics

	// Suppression is the suppression list, checked just before RCPT; a
	// permanent failure saying the address does not exist adds to it.
	// Nil: no list (SENDQ_SUPPRESSION=false).
	Suppression *suppression.List
	// Notifier hears of recipients suppressed at delivery. Nil: nobody.
	Notifier suppression.Notifier
	// Signer signs bounce and unsubscribe references; required with
	// BounceDomain and for emails that ask for ListUnsubscribe.
	Signer *token.Signer
	// BounceDomain, when set, makes the envelope sender
	// b+TOKEN@BounceDomain, where sendq's inbound listener takes the
	// reports. If empty, the envelope sender is From (or the
	// DeliveryReceipt address).
	BounceDomain string
	// PublicURL is where the API is reached from outside, the base of
	// one-click unsubscribe links (https://mail.example.com).
	PublicURL string
}

func (c *Config) validate() error {
	var errs []string
	if len(c.Relays) == 0 && c.Relay != nil {
		c.Relays = []*Relay{c.Relay}
	}
	if len(c.Relays) == 0 {
		errs = append(errs, "Relay or Relays is required")
	}
	// Copies: naming a relay must not change the caller's.
	relays := make([]*Relay, len(c.Relays))
	for i, r := range c.Relays {
		if r == nil {
			errs = append(errs, fmt.Sprintf("relay %d is nil", i+1))
			continue
		}
		cp := *r
		relays[i] = &cp
	}
	c.Relays = relays
	if len(errs) == 0 {
		if err := nameRelays(c.Relays); err != nil {
			errs = append(errs, err.Error())
		} else if err := CheckRoutes(c.Routes, c.Relays); err != nil {
			errs = append(errs, err.Error())
		}
	}
	if c.Circuit.Threshold <= 0 {
		c.Circuit.Threshold = 3
	}
	if c.Circuit.Cooldown <= 0 {
		c.Circuit.Cooldown = 30 * time.Second
	}
	if c.Store == nil {
		errs = append(errs, "Store is required")
	}
	if c.Metrics == nil {
		errs = append(errs, "Metrics is required")
	}
	c.Pool.setDefaults()
	if c.Concurrency <= 0 {
		c.Concurrency = 4 * c.Pool.Size
	}
	if c.Fetchers <= 0 {
		c.Fetchers = 4
	}
	c.Fetchers = min(c.Fetchers, c.Concurrency)
	if c.HighConcurrency <= 0 {
		c.HighConcurrency = max(1, c.Concurrency/c.Fetchers)
		if c.Fetchers == 1 {
			c.HighConcurrency = max(1, c.Concurrency/4)
		}
	}
	if c.Fetchers > 1 && c.HighConcurrency > c.Concurrency-(c.Fetchers-1) {
		errs = append(errs, fmt.Sprintf("high concurrency %d leaves less than one per other fetcher of concurrency %d", c.HighConcurrency, c.Concurrency))
	}
	switch {
	case c.ReservedConns < 0:
		c.ReservedConns = 0
	case c.ReservedConns == 0 && c.Pool.Size >= 2:
		c.ReservedConns = max(1, c.Pool.Size/5)
	}
	if c.ReservedConns >= c.Pool.Size {
		errs = append(errs, fmt.Sprintf("reserved connections %d must be fewer than the pool size %d", c.ReservedConns, c.Pool.Size))
	}
	if c.Topology == nil {
		c.Topology = queue.DefaultTopology
	}
	if c.RetryBaseDelay <= 0 {
		c.RetryBaseDelay = 30 * time.Second
	}
	if c.RetryMaxDelay <= 0 {
		c.RetryMaxDelay = time.Hour
	}
	if c.RetryMaxDelay < c.RetryBaseDelay {
		errs = append(errs, fmt.Sprintf("retry max delay %s is below the base delay %s", c.RetryMaxDelay, c.RetryBaseDelay))
	}
	if c.MaxAge <= 0 {
		c.MaxAge = 72 * time.Hour
	}
	if c.ShutdownTimeout <= 0 {
		c.ShutdownTimeout = 25 * time.Second
	}
	if c.Pool.CommandTimeout >= c.ShutdownTimeout {
		errs = append(errs, fmt.Sprintf("SMTP command timeout %s must be shorter than the shutdown timeout %s", c.Pool.CommandTimeout, c.ShutdownTimeout))
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if err := c.validateReferences(); err != nil {
		errs = append(errs, err.Error())
	}
	if len(errs) > 0 {
		return errors.New("worker config: " + strings.Join(errs, "; "))
	}
	return nil
}

// Events is what the worker needs of the events package: for one attempt's
// results, the commands that store its events in the record's write, and
// the hand-off to run once that write succeeded (a nil hand-off: nothing
// to do).
type Events interface {
	Attempt(e *queue.Email, attempt int, results map[string]queue.RecipientResult) (queue.Extra, func(context.Context) error, error)
}

// Worker consumes the email queue and delivers through the relays' pools.
type Worker struct {
	cfg    Config
	log    *slog.Logger
	m      *metrics.Metrics
	relays *relaySet
	srvs   []*asynq.Server // the fetchers, the high one last
	now    func() time.Time
	// general holds a token per transaction a normal or bulk email has
	// under way, so that ReservedConns stay free for high ones.
	general chan struct{}
	// texts keeps the text parts derived from the last HTML bodies.
	texts TextParts
	// slots holds a token per email of a chunk being delivered: at most
	// Concurrency across every chunk of the process.
	slots chan struct{}
	// highSlots are the slots of high priority chunks: HighConcurrency.
	highSlots chan struct{}
	enq       queue.Enqueuer
}

const maxCooldown = 30 * time.Second

// New returns a Worker on rdb. Call Start to begin and Shutdown to stop.
func New(rdb redis.UniversalClient, cfg Config) (*Worker, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	relays, err := newRelaySet(&cfg, redis_rate.NewLimiter(rdb))
	if err != nil {
		return nil, err
	}
	w := &Worker{cfg: cfg, log: cfg.Logger, m: cfg.Metrics, relays: relays, now: time.Now,
		general: make(chan struct{}, cfg.Pool.Size-cfg.ReservedConns), slots: make(chan struct{}, cfg.Concurrency),
		highSlots: make(chan struct{}, cfg.HighConcurrency),
		enq:       cfg.Enqueuer}
	if w.enq == nil {
		w.enq = asynq.NewClientFromRedisClient(rdb)
	}
	// Scheduled emails and due retries are moved to their queue by each
	// server's forwarder: the first fetcher and the high one check every
	// 250ms (SendAt is honoured within about a second and a quarter:
	// asynq scores by whole seconds, the intake rounds SendAt up), the
	// others every 5s as a fallback, to spare Redis.
	delayed, slowDelayed := 250*time.Millisecond, 5*time.Second
	poll, highPoll := 50*time.Millisecond, 20*time.Millisecond
	if cfg.PollInterval > 0 {
		delayed, slowDelayed, poll, highPoll = cfg.PollInterval, cfg.PollInterval, cfg.PollInterval, cfg.PollInterval
	}
	// Normal and bulk share the general fetchers, normal weighted 4 to 1:
	// asynq shuffles the weighted list on every fetch and takes from the
	// first queue that has a task, so a freed slot goes to a waiting
	// normal email four times in five however long the bulk backlog. The
	// shards of a priority weigh the same.
	queues := map[string]int{}
	for _, q := range cfg.Topology.Queues(queue.PriorityNormal) {
		queues[q] = 4
	}
	for _, q := range cfg.Topology.Queues(queue.PriorityBulk) {
		queues[q] = 1
	}
	general, rest := max(cfg.Fetchers-1, 1), cfg.Concurrency
	if cfg.Fetchers > 1 {
		rest -= cfg.HighConcurrency
	}
	for i := range general {
		// The rest split as evenly as it goes: 18 over 4 fetchers is 5, 5,
		// 4 and 4 for high.
		n := rest / general
		if i < rest%general {
			n++
		}
		d := slowDelayed
		if i == 0 {
			d = delayed
		}
		w.srvs = append(w.srvs, w.newServer(rdb, n, queues, d, poll))
	}
	high := map[string]int{}
	for _, q := range cfg.Topology.Queues(queue.PriorityHigh) {
		high[q] = 1
	}
	w.srvs = append(w.srvs, w.newServer(rdb, cfg.HighConcurrency, high, delayed, highPoll))
	return w, nil
}

// newServer returns one fetcher: an asynq server handing its tasks to w.
func (w *Worker) newServer(rdb redis.UniversalClient, concurrency int, queues map[string]int, delayed, poll time.Duration) *asynq.Server {
	cfg := w.cfg
	return asynq.NewServerFromRedisClient(rdb, asynq.Config{
		Concurrency:              concurrency,
		Queues:                   queues,
		RetryDelayFunc:           w.retryDelay,
		ShutdownTimeout:          cfg.ShutdownTimeout,
		DelayedTaskCheckInterval: delayed,
		TaskCheckInterval:        poll,
		Logger:                   NewAsynqLogger(cfg.Logger),
		LogLevel:                 asynq.WarnLevel,
	})
}

// Start begins fetching and delivering emails. It returns at once.
func (w *Worker) Start() error {
	mux := asynq.NewServeMux()
	mux.Handle(queue.TypeSendEmail, w)
	mux.HandleFunc(queue.TypeSendChunk, w.ProcessChunk)
	for i, srv := range w.srvs {
		if err := srv.Start(mux); err != nil {
			for _, started := range w.srvs[:i] {
				started.Shutdown()
			}
			return fmt.Errorf("start worker: %w", err)
		}
	}
	return nil
}

// Shutdown stops fetching, waits up to ShutdownTimeout for in-flight sends
// (each bounded by the SMTP command timeout, which is shorter), then says
// QUIT on every pooled connection of every relay. A task still running
// after that goes back to the queue and its recorded recipients are not
// sent again.
func (w *Worker) Shutdown() {
	// The fetchers stop together, each waiting for its own in-flight
	// sends; then the pools they share close.
	var wg sync.WaitGroup
	for _, srv := range w.srvs {
		wg.Go(srv.Shutdown)
	}
	wg.Wait()
	w.relays.close()
}

// retryDelay is the backoff: base * 2^n with ±20% jitter, capped at max.
// A relay that throttled us makes the next delay at least doubled.
func (w *Worker) retryDelay(n int, err error, _ *asynq.Task) time.Duration {
	d := w.cfg.RetryBaseDelay
	for i := 0; i < n && d < w.cfg.RetryMaxDelay; i++ {
		d *= 2
	}
	var te *deferredError
	if errors.As(err, &te) && te.throttled {
		d *= 2
	}
	if d > w.cfg.RetryMaxDelay {
		d = w.cfg.RetryMaxDelay
	}
	jitter := time.Duration(float64(d) * (rand.Float64()*0.4 - 0.2))
	return d + jitter
}

// deferredError is returned to asynq when some recipient is deferred: asynq
// schedules the retry.
type deferredError struct {
	n         int
	last      string
	throttled bool
}

func (e *deferredError) Error() string {
	return fmt.Sprintf("%d recipient(s) deferred: %s", e.n, e.last)
}

// ProcessTask delivers one email to every recipient not yet settled.
func (w *Worker) ProcessTask(ctx context.Context, t *asynq.Task) error {
	start := w.now()
	e, err := queue.DecodeEmail(t.Payload())
	if err != nil {
		w.m.EmailsFailed.WithLabelValues(queue.ReasonInvalid).Inc()
		w.m.Attempts.WithLabelValues(metrics.OutcomeFailed).Inc()
		w.log.Error("undecodable task", "err", err)
		return fmt.Errorf("%w: %w", err, asynq.SkipRetry)
	}
	rec, err := w.cfg.Store.Load(ctx, e)
	if err != nil {
		w.m.Attempts.WithLabelValues(metrics.OutcomeAborted).Inc()
		w.log.Warn("delivery attempt aborted", "email_id", e.ID, "err", err)
		return err
	}
	retried, _ := asynq.GetRetryCount(ctx)
	maxRetry, _ := asynq.GetMaxRetry(ctx)
	return w.attempt(ctx, start, e, rec, retried, maxRetry, nil)
}

// attempt delivers e (its record rec, retried earlier attempts by
// asynq's count, maxRetry allowed) to every recipient not yet settled,
// writes the record and returns what asynq is to hear. run is the chunk
// the email came in, nil for an email with a task of its own.
func (w *Worker) attempt(ctx context.Context, start time.Time, e *queue.Email, rec *queue.Record, retried, maxRetry int,
	run *chunkRun) error {
	log := w.log.With("email_id", e.ID)
	// The record counts attempts too: an email of a chunk that left it
	// has a task whose count began after its first attempt.
	lastTry := retried >= maxRetry || rec.Attempts >= maxRetry
	// asynq counts failed attempts (a worker that died counts too, once
	// its lease expired); the record counts attempts that got to write.
	// A task requeued by a shutdown is counted by neither until it ends.
	attempt := max(rec.Attempts, retried) + 1
	if attempt == 1 {
		w.m.EnqueueToFirst.Observe(start.Sub(e.CreatedAt).Seconds())
	}

	var pending []string
	for _, r := range e.Recipients() {
		if st, ok := rec.Recipients[r]; ok && queue.Settled(st.Status) {
			continue // settled by an earlier attempt: never sent twice
		}
		pending = append(pending, r)
	}
	// Suppressed recipients never reach RCPT.
	pending, suppressed, err := w.suppressed(ctx, e, pending, start)
	if err != nil {
		w.m.Attempts.WithLabelValues(metrics.OutcomeAborted).Inc()
		log.Warn("delivery attempt aborted", "err", err)
		return err
	}

	// reason is why recipients failed in this attempt, if any did.
	reason := queue.ReasonPermanent
	results := map[string]queue.RecipientResult{}
	var lastReply queue.Reply
	var throttle bool
	var dkimSig string
	failAll := func(why string, msg string) {
		reason, lastReply = why, queue.Reply{Message: msg}
		for _, r := range pending {
			results[r] = queue.RecipientResult{Status: queue.RecipientFailed, UpdatedAt: start, Reply: lastReply}
		}
	}
	switch {
	case len(pending) == 0:
	case start.Sub(e.WindowStart()) > w.cfg.MaxAge:
		failAll(queue.ReasonExpired, fmt.Sprintf("expired: not delivered within %s", w.cfg.MaxAge))
	default:
		if err := w.cfg.Store.LoadShared(ctx, e, run.sharedCache()); errors.Is(err, queue.ErrSharedGone) {
			failAll(queue.ReasonInvalid, oneLine(err.Error()))
			break
		} else if err != nil {
			w.m.Attempts.WithLabelValues(metrics.OutcomeAborted).Inc()
			log.Warn("delivery attempt aborted", "err", err)
			return err
		}
		msg, err := w.message(e, rec.DKIMSignature)
		if err != nil {
			// The message could not be built or signed: nothing will fix that.
			failAll(queue.ReasonInvalid, oneLine(err.Error()))
			break
		}
		dkimSig = msg.sig
		var why string
		results, lastReply, throttle, why, err = w.deliver(ctx, e, msg, pending)
		if why != "" {
			reason = why
		}
		if err != nil {
			// The envelope could not be written: nothing will fix that.
			failAll(queue.ReasonInvalid, oneLine(err.Error()))
		}
	}

	for r, res := range suppressed {
		results[r] = res
	}

	// Settle every recipient: this attempt's result, or an earlier one's.
	// A deferred recipient with no attempt left, or whose next attempt
	// would come after the maximum age, fails now.
	var nSent, nDeferred, nFailed, nSuppressed int
	expiresBeforeRetry := start.Add(w.retryDelay(retried, nil, nil)).Sub(e.WindowStart()) > w.cfg.MaxAge
	for _, r := range e.Recipients() {
		st, ok := results[r]
		if !ok {
			st = rec.Recipients[r]
		}
		if st.Status == queue.RecipientDeferred && (lastTry || expiresBeforeRetry) {
			st.Status = queue.RecipientFailed
			results[r] = st
			reason = queue.ReasonTransient
			if !lastTry {
				reason = queue.ReasonExpired
			}
		}
		switch st.Status {
		case queue.RecipientSent:
			nSent++
		case queue.RecipientDeferred:
			nDeferred++
		case queue.RecipientFailed:
			nFailed++
		case queue.RecipientSuppressed:
			nSuppressed++
		}
	}
	for _, r := range results {
		switch r.Status {
		case queue.RecipientSent:
			w.m.RecipientsSent.Inc()
		case queue.RecipientFailed:
			w.m.RecipientsFail.WithLabelValues(reason).Inc()
		case queue.RecipientSuppressed:
			w.m.RecipientsFail.WithLabelValues(queue.ReasonSuppressed).Inc()
		}
	}

	u := queue.Update{Recipients: results, LastError: formatReply(lastReply),
		Attempts: attempt, CreatedAt: e.CreatedAt, Owner: e.Owner, Priority: e.Priority, BatchID: e.BatchID, Reset: rec.Stale}
	if dkimSig != rec.DKIMSignature {
		u.DKIMSignature = dkimSig // for the next attempt to send again
	}
	if lastReply == (queue.Reply{}) || lastReply.Code == 250 {
		u.LastError = ""
	}
	var outcome string
	var ret error
	switch {
	case nDeferred > 0:
		outcome, u.State = metrics.OutcomeRetry, queue.StatusRetrying
		ret = &deferredError{n: nDeferred, last: u.LastError, throttled: throttle}
		if run != nil {
			// It leaves the chunk for a task of its own, queued before
			// the record says so: a crash in between leaves it sending in
			// the chunk, which takes it again when redelivered.
			if err := run.leave(ctx, e, rec, w.retryDelay(retried, ret, nil)); err != nil {
				w.m.Attempts.WithLabelValues(metrics.OutcomeAborted).Inc()
				log.Error("give the email a task of its own", "err", err)
				return err
			}
			u.Unchunk = true
		}
	case nFailed > 0:
		outcome, u.State, u.Reason = metrics.OutcomeFailed, queue.StatusFailed, reason
		ret = fmt.Errorf("%d recipient(s) failed: %s: %w", nFailed, u.LastError, asynq.SkipRetry)
	case nSuppressed > 0 && nSent == 0:
		// Every recipient is suppressed: nothing was sent, nothing will be.
		reason = queue.ReasonSuppressed
		outcome, u.State, u.Reason = metrics.OutcomeFailed, queue.StatusFailed, reason
		u.LastError = "every recipient is suppressed"
		ret = fmt.Errorf("%d recipient(s) suppressed: %w", nSuppressed, asynq.SkipRetry)
	default:
		outcome, u.State, u.SentAt = metrics.OutcomeSent, queue.StatusSent, w.now()
		if rec.Held && rec.Retention > 0 {
			// A batch email's payload goes after the retention, as a
			// single send's task does.
			u.PayloadTTL = rec.Retention
		}
	}
	// The attempt's events are stored in the record's write; their
	// hand-off follows it (a crash in between: the events sweeper).
	var handOff func(context.Context) error
	if w.cfg.Events != nil {
		if u.Extra, handOff, err = w.cfg.Events.Attempt(e, attempt, results); err != nil {
			log.Error("encode events", "err", err)
		}
	}
	// The record is written before the task is acknowledged: a crash after
	// this line and before asynq's ack redelivers the task, and the
	// recipients recorded here are skipped.
	if err := w.save(ctx, e.ID, u); err != nil {
		w.m.Attempts.WithLabelValues(metrics.OutcomeAborted).Inc()
		log.Error("record delivery results", "err", err)
		return err
	}
	if handOff != nil {
		if err := handOff(context.WithoutCancel(ctx)); err != nil {
			log.Warn("events stored; their hand-off is left to the sweeper", "err", err)
		}
	}
	w.afterSave(ctx, e, results)
	w.m.Attempts.WithLabelValues(outcome).Inc()
	switch outcome {
	case metrics.OutcomeSent:
		w.m.EmailsSent.Inc()
		w.m.EnqueueToSent.Observe(w.now().Sub(e.CreatedAt).Seconds())
		w.m.AttemptsPerMsg.Observe(float64(attempt))
	case metrics.OutcomeFailed:
		w.m.EmailsFailed.WithLabelValues(reason).Inc()
		w.m.AttemptsPerMsg.Observe(float64(attempt))
	}
	log.Info("delivery attempt", "attempt", attempt, "outcome", outcome,
		"recipients", len(pending), "sent", nSent, "deferred", nDeferred, "failed", nFailed, "suppressed", nSuppressed,
		"reply_code", lastReply.Code, "enhanced_code", lastReply.EnhancedCode,
		"duration_ms", w.now().Sub(start).Milliseconds())
	return ret
}

// save writes the attempt's results, trying again for a few seconds when
// Redis fails: a recipient accepted by the relay but not recorded would get
// a second copy on the next attempt. It keeps going after ctx is canceled
// (a shutdown must not drop what the relay already accepted).
func (w *Worker) save(ctx context.Context, id string, u queue.Update) error {
	ctx = context.WithoutCancel(ctx)
	var err error
	delay := 100 * time.Millisecond
	deadline := w.now().Add(saveRetryFor)
	for {
		if err = w.cfg.Store.Save(ctx, id, u); err == nil {
			return nil
		}
		if w.now().Add(delay).After(deadline) {
			return err
		}
		time.Sleep(delay)
		delay = min(2*delay, 2*time.Second)
	}
}

// saveRetryFor bounds how long save keeps trying: long enough to ride out a
// Redis restart or failover, shorter than asynq's 30 s task lease, after
// which another worker may take the task.
const saveRetryFor = 20 * time.Second

// deliver sends msg, the rendered e, to the pending recipients through
// its relays (send) and judges each one.
//
// It returns each recipient's result, the reply to report as the last
// error, whether a relay throttled, the failure reason when sendq itself
// refused recipients (RefusedError), and an error when the envelope could
// not be written.
func (w *Worker) deliver(ctx context.Context, e *queue.Email, msg *outgoing, pending []string) (map[string]queue.RecipientResult, queue.Reply, bool, string, error) {
	env, err := envelope(e, msg)
	if err != nil {
		return map[string]queue.RecipientResult{}, queue.Reply{}, false, "", err
	}
	// The envelope carries each domain in ASCII (IDNA); the record keeps
	// the addresses as given.
	// Two addresses that differ only there are one recipient.
	wire := make(map[string]string, len(pending))
	seen := make(map[string]bool, len(pending))
	refused := map[string]error{}
	for _, r := range pending {
		a, err := queue.ASCIIAddress(r)
		if err != nil {
			refused[r] = &RefusedError{Reason: queue.ReasonInvalid, EnhancedCode: "5.1.3", Msg: err.Error()}
			continue
		}
		wire[r] = a
		if !seen[a] {
			seen[a] = true
			env.To = append(env.To, a)
		}
	}
	var rcpt map[string]error
	var via map[string]string
	var data map[string]queue.Reply
	if len(env.To) > 0 && e.PriorityOrNormal() != queue.PriorityHigh {
		// Normal and bulk may not take the reserved connections.
		select {
		case w.general <- struct{}{}:
			defer func() { <-w.general }()
		case <-ctx.Done():
			err := fmt.Errorf("wait for smtp connection: %w", ctx.Err())
			rcpt = make(map[string]error, len(env.To))
			for _, r := range env.To {
				rcpt[r] = err
			}
		}
	}
	if len(env.To) > 0 && rcpt == nil {
		rcpt, via, data = w.send(ctx, env, msg, e.From.Address)
	}
	now := w.now()
	out := make(map[string]queue.RecipientResult, len(pending))
	var last queue.Reply
	throttle := false
	reason := ""
	for _, r := range pending {
		err, ok := refused[r]
		if !ok {
			err = rcpt[wire[r]]
		}
		v, reply := Classify(err)
		var re *RefusedError
		switch {
		case errors.As(err, &re):
			// Never offered to the relay: no reply to count.
			reason = re.Reason
		case v == Accepted:
			// The reply to the end of DATA, with the relay's queue id.
			if d, ok := data[wire[r]]; ok {
				reply = d
			}
			fallthrough
		default:
			w.m.SMTPReplies.WithLabelValues(replyClass(reply)).Inc()
		}
		st := queue.RecipientSent
		switch v {
		case Transient:
			st = queue.RecipientDeferred
			throttle = throttle || throttled(reply)
		case Permanent:
			st = queue.RecipientFailed
		}
		if v != Accepted || last == (queue.Reply{}) {
			last = reply
		}
		out[r] = queue.RecipientResult{Status: st, Reply: reply, UpdatedAt: now, Relay: via[wire[r]]}
	}
	return out, last, throttle, reason, nil
}

// envelope returns the envelope that declares msg: sender (its domain in
// ASCII), envelope id, size, and whether it needs SMTPUTF8 or 8BITMIME.
// The recipients are the caller's.
func envelope(e *queue.Email, msg *outgoing) (Envelope, error) {
	from, err := queue.ASCIIAddress(msg.envFrom)
	if err != nil {
		return Envelope{}, fmt.Errorf("envelope sender: %w", err)
	}
	head := msg.raw
	if i := bytes.Index(head, []byte("\r\n\r\n")); i >= 0 {
		head = head[:i]
	}
	return Envelope{From: from, DSN: e.DeliveryReceipt, EnvID: e.ID, Size: int64(len(msg.sig) + len(msg.raw)),
		UTF8Header: !isASCII(msg.sig) || !isASCII(string(head)), EightBit: !isASCII(string(msg.raw))}, nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
