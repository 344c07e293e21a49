package worker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/textproto"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sendq/sendq/internal/circuit"
	"github.com/sendq/sendq/metrics"
	"github.com/sendq/sendq/queue"
)

// The relay layer: one Pool per relay of SENDQ_SMTP_URL, in failover
// order, each behind a circuit breaker, and the routes of
// SENDQ_SMTP_ROUTES that send some From domains to their own relays.
// deliver hands it an email's pending recipients; it tries the relays in
// order, skips those whose circuit is open, and gives the recipients a
// relay could not take (no session, 421, the connection lost) to the next.

// ParseRoutes parses SENDQ_SMTP_ROUTES: comma-separated FROM=RELAYS, where
// FROM is a domain (@a.com) or an address (ops@a.com) and RELAYS is one
// relay name or several in failover order separated by '|'
// (@a.com=primary,@b.com=eu|us). An address's route wins over its domain's.
// The names are checked against the relays by New.
func ParseRoutes(s string) (map[string][]string, error) {
	routes := map[string][]string{}
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		from, names, ok := strings.Cut(item, "=")
		from = strings.ToLower(strings.TrimSpace(from))
		at := strings.LastIndexByte(from, '@')
		if !ok || at < 0 || at == len(from)-1 || strings.ContainsAny(from, " \t\r\n") || strings.Count(from, "@") > 1 {
			return nil, fmt.Errorf("route %q is not @domain=relay or address=relay", item)
		}
		if _, dup := routes[from]; dup {
			return nil, fmt.Errorf("two routes for %s", from)
		}
		var list []string
		for n := range strings.SplitSeq(names, "|") {
			n = strings.TrimSpace(n)
			if !relayName.MatchString(n) {
				return nil, fmt.Errorf("route for %s: relay name %q is not 1 to 32 letters, digits, '.', '_' or '-'", from, n)
			}
			if slices.Contains(list, n) {
				return nil, fmt.Errorf("route for %s names relay %q twice", from, n)
			}
			list = append(list, n)
		}
		routes[from] = list
	}
	return routes, nil
}

// CheckRoutes reports the first route (by address) that names a relay
// relays do not have.
func CheckRoutes(routes map[string][]string, relays []*Relay) error {
	names := make([]string, 0, len(relays))
	for _, r := range relays {
		names = append(names, r.Name)
	}
	for _, from := range slices.Sorted(maps.Keys(routes)) {
		for _, n := range routes[from] {
			if !slices.Contains(names, n) {
				return fmt.Errorf("route for %s: no relay is named %q (relays: %s)", from, n, strings.Join(names, ", "))
			}
		}
	}
	return nil
}

// relaySet is every relay a worker delivers through.
type relaySet struct {
	all    []*upstream            // the default failover order
	routes map[string][]*upstream // From address or @domain -> its relays
}

// upstream is one relay with its pool, limits and health.
type upstream struct {
	relay   *Relay
	name    string
	pool    *Pool
	limiter *redis_rate.Limiter
	rate    redis_rate.Limit
	rateKey string
	// breaker is nil with a single relay: there is nowhere to fail over
	// to, so the relay is never taken out and a failing one is retried
	// with backoff, as it always was.
	breaker *circuit.Breaker
	log     *slog.Logger
	m       *metrics.Metrics
	up      prometheus.Gauge
	sends   map[string]prometheus.Counter // by outcome

	// Throttling replies pause this relay's sends in this process: until
	// pausedUntil (unix nanoseconds), for a cooldown that doubles while
	// the relay keeps throttling, up to maxCooldown.
	pausedUntil atomic.Int64
	cooldown    atomic.Int64
}

func newRelaySet(cfg *Config, limiter *redis_rate.Limiter) (*relaySet, error) {
	rs := &relaySet{routes: map[string][]*upstream{}}
	byName := map[string]*upstream{}
	names := make([]string, 0, len(cfg.Relays))
	for _, r := range cfg.Relays {
		names = append(names, r.Name)
	}
	cfg.Metrics.InitRelays(names...)
	for _, r := range cfg.Relays {
		pc := cfg.Pool
		if r.PoolSize > 0 {
			pc.Size = r.PoolSize
		}
		pool, err := NewPool(r, pc, cfg.Metrics)
		if err != nil {
			rs.close()
			return nil, fmt.Errorf("relay %s: %w", r.Name, err)
		}
		u := &upstream{relay: r, name: r.Name, pool: pool, limiter: limiter, rate: cfg.SMTPRate, rateKey: queue.RelayRateKey(r.Addr()),
			log: cfg.Logger, m: cfg.Metrics, up: cfg.Metrics.RelayUp.WithLabelValues(r.Name),
			sends: map[string]prometheus.Counter{}}
		if r.Rate != nil {
			u.rate = *r.Rate
		}
		for _, o := range metrics.RelayOutcomes {
			u.sends[o] = cfg.Metrics.RelaySends.WithLabelValues(r.Name, o)
		}
		if len(cfg.Relays) > 1 {
			state := cfg.Metrics.RelayCircuit.WithLabelValues(r.Name)
			u.breaker = circuit.New(cfg.Circuit, nil, func(from, to circuit.State) {
				state.Set(float64(to))
				switch to {
				case circuit.Open:
					u.log.Warn("relay taken out: circuit open", "relay", u.name, "from", from.String(), "cooldown", cfg.Circuit.Cooldown)
				case circuit.HalfOpen:
					u.log.Info("relay cool-down over: probing it", "relay", u.name)
				case circuit.Closed:
					u.log.Info("relay back in service: circuit closed", "relay", u.name)
				}
			})
		}
		rs.all = append(rs.all, u)
		byName[r.Name] = u
	}
	for from, list := range cfg.Routes {
		for _, n := range list {
			key := strings.ToLower(from)
			rs.routes[key] = append(rs.routes[key], byName[n]) // CheckRoutes ran in validate
		}
	}
	return rs, nil
}

// order returns the relays for an email from the address from: its route
// (the address's, else its domain's), else every relay in failover order.
func (rs *relaySet) order(from string) []*upstream {
	if len(rs.routes) == 0 {
		return rs.all
	}
	from = strings.ToLower(from)
	if r, ok := rs.routes[from]; ok {
		return r
	}
	if at := strings.LastIndexByte(from, '@'); at >= 0 {
		if r, ok := rs.routes[from[at:]]; ok {
			return r
		}
	}
	return rs.all
}

func (rs *relaySet) close() {
	for _, u := range rs.all {
		u.pool.Close()
	}
}

// RelaysOutError is every recipient's error when no relay could be tried:
// each relay for the email had its circuit open. It is transient.
type RelaysOutError struct{ Relays []string }

func (e *RelaysOutError) Error() string {
	return "every relay is out of service (circuit open): " + strings.Join(e.Relays, ", ")
}

// send delivers msg to env.To through the relays for from, in order.
// It returns each recipient's error (nil: accepted) and the name of the
// relay that gave it (none when every relay was out).
func (w *Worker) send(ctx context.Context, env Envelope, msg io.WriterTo, from string) (rcpt map[string]error, via map[string]string, data map[string]queue.Reply) {
	rcpt = make(map[string]error, len(env.To))
	via = make(map[string]string, len(env.To))
	data = make(map[string]queue.Reply, len(env.To))
	todo := env.To
	var skipped []string
	tried := false
	for _, u := range w.relays.order(from) {
		if len(todo) == 0 || ctx.Err() != nil {
			break
		}
		ticket, ok := u.allow()
		if !ok {
			u.sends[metrics.RelaySkipped].Inc()
			skipped = append(skipped, u.name)
			continue
		}
		tried = true
		env.To = todo
		res, health := w.sendOne(ctx, u, env, msg)
		u.done(ticket, health)
		u.count(res, health)
		var next []string
		for _, r := range todo {
			err := res.Rcpt[r]
			rcpt[r], via[r] = err, u.name
			if err == nil && res.Delivered {
				data[r] = res.Reply
			}
			if (health == circuit.Failure || health == circuit.Trip) && relayLevel(err) {
				next = append(next, r)
			}
		}
		if len(next) > 0 {
			u.log.Debug("relay could not take the message: trying the next relay", "relay", u.name, "recipients", len(next))
		}
		todo = next
	}
	if !tried {
		var err error = &RelaysOutError{Relays: skipped}
		if len(skipped) == 0 {
			err = fmt.Errorf("deliver: %w", ctx.Err()) // canceled before any relay
		}
		for _, r := range todo {
			rcpt[r] = err
		}
	}
	return rcpt, via, data
}

// sendOne runs one transaction on u. A transaction that fails before any
// RCPT on a reused connection (the relay closed it while idle, or
// restarted) is tried once more on a fresh connection. It returns what the
// relay's health learned from it.
func (w *Worker) sendOne(ctx context.Context, u *upstream, env Envelope, msg io.WriterTo) (*TxResult, circuit.Outcome) {
	var res *TxResult
	reused := false
	for try := 0; try < 2; try++ {
		if err := u.waitTurn(ctx); err != nil {
			// Not the relay's doing (shutdown, Redis): no verdict on it.
			return (&TxResult{Rcpt: map[string]error{}}).failAll(env.To, err, false), circuit.Neutral
		}
		conn, err := u.pool.Get(ctx)
		if err != nil {
			res, reused = (&TxResult{Rcpt: map[string]error{}}).failAll(env.To, err, true), false
			break
		}
		t0 := w.now()
		res = conn.Send(ctx, w.cfg.Pool.CommandTimeout, env, msg)
		w.m.SMTPSendDuration.Observe(w.now().Sub(t0).Seconds())
		reused = conn.Reused
		u.pool.Put(conn, res.Broken)
		if !(res.BeforeRcpt && res.Broken && reused) {
			break
		}
		// A reused connection was dead before the first RCPT. Its idle
		// siblings are as old; drop them so the second try dials.
		u.pool.DropIdle()
	}
	throttle := false
	for _, err := range res.Rcpt {
		if err != nil {
			_, reply := Classify(err)
			throttle = throttle || throttled(reply)
		}
	}
	if throttle {
		u.throttled()
	} else if res.Delivered {
		u.cooldown.Store(0)
	}
	return res, judgeHealth(ctx, res, reused)
}

// judgeHealth is what one transaction says about its relay: a 421
// anywhere trips the circuit; no session (connect, greeting, STARTTLS,
// AUTH) or a session lost is a failure; any other reply is a success. A
// canceled send, and a reused connection found dead before its first
// RCPT (it went stale while idle: nothing to hold against the relay), are
// neutral.
func judgeHealth(ctx context.Context, res *TxResult, reused bool) circuit.Outcome {
	if ctx.Err() != nil {
		return circuit.Neutral
	}
	failed := false
	for _, err := range res.Rcpt {
		if err == nil {
			continue
		}
		if replyCode(err) == 421 {
			return circuit.Trip
		}
		var de *DialError
		switch {
		case errors.As(err, &de):
			failed = true
		case errors.Is(err, errPoolClosed), errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
			return circuit.Neutral
		case closesConn(err):
			if reused && res.BeforeRcpt {
				return circuit.Neutral
			}
			failed = true
		}
	}
	if failed {
		return circuit.Failure
	}
	return circuit.Success
}

// relayLevel reports whether err says the relay, not the recipient, could
// not take the message: no session, 421, or no reply at all. Such a
// recipient goes on to the next relay.
func relayLevel(err error) bool {
	var de *DialError
	return err != nil && (errors.As(err, &de) || closesConn(err))
}

// replyCode is the SMTP reply code err carries, or 0.
func replyCode(err error) int {
	var tp *textproto.Error
	if errors.As(err, &tp) {
		return tp.Code
	}
	return 0
}

// allow asks u's circuit whether u may be tried now.
func (u *upstream) allow() (circuit.Ticket, bool) {
	if u.breaker == nil {
		return circuit.Ticket{}, true
	}
	return u.breaker.Allow()
}

// done records what a send learned about u's health.
func (u *upstream) done(t circuit.Ticket, o circuit.Outcome) {
	switch o {
	case circuit.Success:
		u.up.Set(1)
	case circuit.Failure, circuit.Trip:
		u.up.Set(0)
	}
	if u.breaker != nil {
		u.breaker.Done(t, o)
	}
}

// count adds the send to sendq_relay_sends_total.
func (u *upstream) count(res *TxResult, o circuit.Outcome) {
	switch {
	case res.Delivered:
		u.sends[metrics.RelayDelivered].Inc()
	case o == circuit.Failure || o == circuit.Trip:
		u.sends[metrics.RelayFailed].Inc()
	case o == circuit.Neutral:
		u.sends[metrics.RelayAborted].Inc()
	default:
		u.sends[metrics.RelayRejected].Inc()
	}
}

// waitTurn blocks until this process may open a transaction on u: after
// any cooldown a throttling reply imposed, and within u's shared rate.
func (u *upstream) waitTurn(ctx context.Context) error {
	if d := time.Duration(u.pausedUntil.Load() - time.Now().UnixNano()); d > 0 {
		// Spread the waiting sends over a tenth of the pause, so they do
		// not all hit the relay in the same instant when it ends.
		d += time.Duration(rand.Int64N(int64(d)/10 + 1))
		if err := sleepCtx(ctx, d); err != nil {
			return fmt.Errorf("relay cooldown: %w", err)
		}
	}
	if u.rate.IsZero() {
		return nil
	}
	for {
		res, err := u.limiter.Allow(ctx, u.rateKey, u.rate)
		if err != nil {
			return fmt.Errorf("relay rate limit: %w", err)
		}
		if res.Allowed > 0 {
			return nil
		}
		u.m.RateLimited.WithLabelValues("relay").Inc()
		if err := sleepCtx(ctx, res.RetryAfter); err != nil {
			return fmt.Errorf("relay rate limit: %w", err)
		}
	}
}

// throttled starts or lengthens u's cooldown after a throttling reply. The
// cooldown doubles once per episode: replies that arrive while a pause is
// already running (sends that were in flight together) do not lengthen it.
func (u *upstream) throttled() {
	u.m.RelayThrottles.Inc()
	now := time.Now()
	if now.UnixNano() < u.pausedUntil.Load() {
		return
	}
	d := min(max(2*time.Duration(u.cooldown.Load()), time.Second), maxCooldown)
	u.cooldown.Store(int64(d))
	u.pausedUntil.Store(now.Add(d).UnixNano())
	// The cooldown first, as before: the fault suite reads it from the line.
	u.log.Warn("relay is throttling: pausing sends", "cooldown", d, "relay", u.name)
}
