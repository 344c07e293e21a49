package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/sendq/sendq/metrics"
	"github.com/sendq/sendq/queue"
)

// Config configures a Worker. Zero values take the documented defaults.
type Config struct {
	// Relay is the SMTP server to deliver through. Required.
	Relay *Relay
	// Pool configures the SMTP connection pool.
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
	// SMTPRate limits SMTP transactions to the relay across every worker
	// process (GCRA in Redis), like an SES account's send rate. Zero: no
	// limit.
	SMTPRate redis_rate.Limit
	// Store keeps delivery records. Required.
	Store *queue.Store
	// Logger; if nil, slog.Default().
	Logger *slog.Logger
	// Metrics; required.
	Metrics *metrics.Metrics
}

func (c *Config) validate() error {
	var errs []string
	if c.Relay == nil {
		errs = append(errs, "Relay is required")
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
	if len(errs) > 0 {
		return errors.New("worker config: " + strings.Join(errs, "; "))
	}
	return nil
}

// Worker consumes the email queue and delivers through the pool.
type Worker struct {
	cfg  Config
	log  *slog.Logger
	m    *metrics.Metrics
	pool *Pool
	srvs []*asynq.Server // the fetchers, the high one last
	now  func() time.Time
	// general holds a token per connection a normal or bulk email is
	// using, so that ReservedConns stay free for high ones.
	general chan struct{}

	limiter *redis_rate.Limiter
	// Throttling replies from the relay pause this process' sends: until
	// pausedUntil (unix nanoseconds), for a cooldown that doubles while
	// the relay keeps throttling, up to maxCooldown.
	pausedUntil atomic.Int64
	cooldown    atomic.Int64
}

const maxCooldown = 30 * time.Second

// New returns a Worker on rdb. Call Start to begin and Shutdown to stop.
func New(rdb redis.UniversalClient, cfg Config) (*Worker, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	pool, err := NewPool(cfg.Relay, cfg.Pool, cfg.Metrics)
	if err != nil {
		return nil, err
	}
	w := &Worker{cfg: cfg, log: cfg.Logger, m: cfg.Metrics, pool: pool, now: time.Now,
		limiter: redis_rate.NewLimiter(rdb),
		general: make(chan struct{}, cfg.Pool.Size-cfg.ReservedConns)}
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
// QUIT on every pooled connection. A task still running after that goes
// back to the queue and its recorded recipients are not sent again.
func (w *Worker) Shutdown() {
	// The fetchers stop together, each waiting for its own in-flight
	// sends; then the pool they share closes.
	var wg sync.WaitGroup
	for _, srv := range w.srvs {
		wg.Go(srv.Shutdown)
	}
	wg.Wait()
	w.pool.Close()
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
	log := w.log.With("email_id", e.ID)
	rec, err := w.cfg.Store.Load(ctx, e)
	if err != nil {
		w.m.Attempts.WithLabelValues(metrics.OutcomeAborted).Inc()
		log.Warn("delivery attempt aborted", "err", err)
		return err
	}
	retried, _ := asynq.GetRetryCount(ctx)
	maxRetry, _ := asynq.GetMaxRetry(ctx)
	lastTry := retried >= maxRetry
	// asynq counts failed attempts (a worker that died counts too, once
	// its lease expired); the record counts attempts that got to write.
	// A task requeued by a shutdown is counted by neither until it ends.
	attempt := max(rec.Attempts, retried) + 1
	if attempt == 1 {
		w.m.EnqueueToFirst.Observe(start.Sub(e.CreatedAt).Seconds())
	}

	var pending []string
	for _, r := range e.Recipients() {
		if st, ok := rec.Recipients[r]; ok && (st.Status == queue.RecipientSent || st.Status == queue.RecipientFailed) {
			continue // settled by an earlier attempt: never sent twice
		}
		pending = append(pending, r)
	}

	// reason is why recipients failed in this attempt, if any did.
	reason := queue.ReasonPermanent
	results := map[string]queue.RecipientResult{}
	var lastReply queue.Reply
	var throttle bool
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
		var buildErr error
		results, lastReply, throttle, buildErr = w.deliver(ctx, e, pending)
		if buildErr != nil {
			// The message could not be built: nothing will fix that.
			failAll(queue.ReasonInvalid, oneLine(buildErr.Error()))
		}
	}

	// Settle every recipient: this attempt's result, or an earlier one's.
	// A deferred recipient with no attempt left, or whose next attempt
	// would come after the maximum age, fails now.
	var nSent, nDeferred, nFailed int
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
		}
	}
	for _, r := range results {
		switch r.Status {
		case queue.RecipientSent:
			w.m.RecipientsSent.Inc()
		case queue.RecipientFailed:
			w.m.RecipientsFail.WithLabelValues(reason).Inc()
		}
	}

	u := queue.Update{Recipients: results, LastError: formatReply(lastReply),
		Attempts: attempt, CreatedAt: e.CreatedAt, Owner: e.Owner, Priority: e.Priority, BatchID: e.BatchID, Reset: rec.Stale}
	if lastReply == (queue.Reply{}) || lastReply.Code == 250 {
		u.LastError = ""
	}
	var outcome string
	var ret error
	switch {
	case nDeferred > 0:
		outcome, u.State = metrics.OutcomeRetry, queue.StatusRetrying
		ret = &deferredError{n: nDeferred, last: u.LastError, throttled: throttle}
	case nFailed > 0:
		outcome, u.State, u.Reason = metrics.OutcomeFailed, queue.StatusFailed, reason
		ret = fmt.Errorf("%d recipient(s) failed: %s: %w", nFailed, u.LastError, asynq.SkipRetry)
	default:
		outcome, u.State, u.SentAt = metrics.OutcomeSent, queue.StatusSent, w.now()
	}
	// The record is written before the task is acknowledged: a crash after
	// this line and before asynq's ack redelivers the task, and the
	// recipients recorded here are skipped.
	if err := w.save(ctx, e.ID, u); err != nil {
		w.m.Attempts.WithLabelValues(metrics.OutcomeAborted).Inc()
		log.Error("record delivery results", "err", err)
		return err
	}
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
		"recipients", len(pending), "sent", nSent, "deferred", nDeferred, "failed", nFailed,
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

// deliver sends e to the pending recipients and judges each one. A
// transaction that fails before any RCPT on a reused connection (the server
// closed it while idle) is tried once more on a fresh connection.
func (w *Worker) deliver(ctx context.Context, e *queue.Email, pending []string) (map[string]queue.RecipientResult, queue.Reply, bool, error) {
	msg, err := BuildMessage(e)
	if err != nil {
		return map[string]queue.RecipientResult{}, queue.Reply{}, false, fmt.Errorf("build message: %w", err)
	}
	env := Envelope{From: e.EnvelopeFrom(), To: pending, DSN: e.DeliveryReceipt}
	var res *TxResult
	gaveUp := false
	if e.PriorityOrNormal() != queue.PriorityHigh {
		// Normal and bulk may not take the reserved connections.
		select {
		case w.general <- struct{}{}:
			defer func() { <-w.general }()
		case <-ctx.Done():
			res = (&TxResult{Rcpt: map[string]error{}}).failAll(pending, fmt.Errorf("wait for smtp connection: %w", ctx.Err()), true)
			gaveUp = true
		}
	}
	for try := 0; try < 2 && !gaveUp; try++ {
		if err := w.waitTurn(ctx); err != nil {
			res = (&TxResult{Rcpt: map[string]error{}}).failAll(pending, err, false)
			break
		}
		conn, err := w.pool.Get(ctx)
		if err != nil {
			res = (&TxResult{Rcpt: map[string]error{}}).failAll(pending, err, true)
			break
		}
		t0 := w.now()
		res = conn.Send(ctx, w.cfg.Pool.CommandTimeout, env, msg)
		w.m.SMTPSendDuration.Observe(w.now().Sub(t0).Seconds())
		reused := conn.Reused
		w.pool.Put(conn, res.Broken)
		if !(res.BeforeRcpt && res.Broken && reused) {
			break
		}
		// A reused connection was dead before the first RCPT: the relay
		// dropped it while idle, or restarted. Its idle siblings are as
		// old; drop them so the second try dials.
		w.pool.DropIdle()
	}
	now := w.now()
	out := make(map[string]queue.RecipientResult, len(pending))
	var last queue.Reply
	throttle := false
	for _, r := range pending {
		v, reply := Classify(res.Rcpt[r])
		w.m.SMTPReplies.WithLabelValues(replyClass(reply)).Inc()
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
		out[r] = queue.RecipientResult{Status: st, Reply: reply, UpdatedAt: now}
	}
	if throttle {
		w.throttled()
	} else if res.Delivered {
		w.cooldown.Store(0)
	}
	return out, last, throttle, nil
}

// waitTurn blocks until this process may open a transaction: after any
// cooldown a throttling relay imposed, and within the shared relay rate.
func (w *Worker) waitTurn(ctx context.Context) error {
	if d := time.Duration(w.pausedUntil.Load() - w.now().UnixNano()); d > 0 {
		// Spread the waiting sends over a tenth of the pause, so they do
		// not all hit the relay in the same instant when it ends.
		d += time.Duration(rand.Int64N(int64(d)/10 + 1))
		if err := sleepCtx(ctx, d); err != nil {
			return fmt.Errorf("relay cooldown: %w", err)
		}
	}
	if w.cfg.SMTPRate.IsZero() {
		return nil
	}
	key := queue.RelayRateKey(w.cfg.Relay.Addr())
	for {
		res, err := w.limiter.Allow(ctx, key, w.cfg.SMTPRate)
		if err != nil {
			return fmt.Errorf("relay rate limit: %w", err)
		}
		if res.Allowed > 0 {
			return nil
		}
		w.m.RateLimited.WithLabelValues("relay").Inc()
		if err := sleepCtx(ctx, res.RetryAfter); err != nil {
			return fmt.Errorf("relay rate limit: %w", err)
		}
	}
}

// throttled starts or lengthens the cooldown after a throttling reply. The
// cooldown doubles once per episode: replies that arrive while a pause is
// already running (sends that were in flight together) do not lengthen it.
func (w *Worker) throttled() {
	w.m.RelayThrottles.Inc()
	now := w.now()
	if now.UnixNano() < w.pausedUntil.Load() {
		return
	}
	d := min(max(2*time.Duration(w.cooldown.Load()), time.Second), maxCooldown)
	w.cooldown.Store(int64(d))
	w.pausedUntil.Store(now.Add(d).UnixNano())
	w.log.Warn("relay is throttling: pausing sends", "cooldown", d)
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
