// Package metrics defines the Prometheus metrics sendq exports (a concern
// with a package of its own, such as dkim, defines its own on the same
// registry) and the /metrics handler. Metrics are built on an injected prometheus.Registerer,
// so tests use prometheus.NewRegistry(). Label values are bounded enums
// (route, code, reason, class, state, queue; relay, the configured relay
// names): never an address, an id or a subject. Every known label
// combination is initialised to zero so that rates and alerts work from
// the first scrape.
package metrics

import (
	"context"
	"net/http"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

const namespace = "sendq"

// Reply classes for SMTP replies.
const (
	Class2xx     = "2xx"
	Class4xx     = "4xx"
	Class5xx     = "5xx"
	ClassNetwork = "network" // no reply: refused, dropped, timed out
)

// ReplyClasses lists every reply class.
var ReplyClasses = []string{Class2xx, Class4xx, Class5xx, ClassNetwork}

// Attempt outcomes.
const (
	OutcomeSent    = "sent"    // every pending recipient accepted
	OutcomeRetry   = "retry"   // some recipient deferred, the email will be tried again
	OutcomeFailed  = "failed"  // the email is finished with at least one failure
	OutcomeAborted = "aborted" // the attempt could not run (Redis error, shutdown)
)

// Outcomes of a relay send (sendq_relay_sends_total): one transaction
// tried on one relay, or the relay passed over.
const (
	RelayDelivered = "delivered" // the relay answered 250 to the message, for some recipient at least
	RelayRejected  = "rejected"  // the relay answered, and took the message for no recipient
	RelayFailed    = "failed"    // no session, 421 or the connection lost: the recipients went on to the next relay
	RelaySkipped   = "skipped"   // the relay's circuit was open: not tried
	RelayAborted   = "aborted"   // the send could not run (canceled, rate limit unavailable)
)

// RelayOutcomes lists every relay send outcome.
var RelayOutcomes = []string{RelayDelivered, RelayRejected, RelayFailed, RelaySkipped, RelayAborted}

// Metrics holds every collector. A nil *Metrics is not valid; use New.
type Metrics struct {
	reg prometheus.Gatherer

	EmailsAccepted prometheus.Counter
	EmailsSent     prometheus.Counter
	EmailsFailed   *prometheus.CounterVec // reason
	RecipientsSent prometheus.Counter
	RecipientsFail *prometheus.CounterVec // reason
	Attempts       *prometheus.CounterVec // outcome
	AttemptsPerMsg prometheus.Histogram
	IdemReplays    prometheus.Counter
	RateLimited    *prometheus.CounterVec // scope: intake, relay
	RelayThrottles prometheus.Counter

	HTTPRequests *prometheus.CounterVec   // route, code
	HTTPDuration *prometheus.HistogramVec // route

	SMTPReplies      *prometheus.CounterVec // class
	SMTPSendDuration prometheus.Histogram
	EnqueueToFirst   prometheus.Histogram
	EnqueueToSent    prometheus.Histogram

	PoolOpen         prometheus.Gauge
	PoolIdle         prometheus.Gauge
	PoolInUse        prometheus.Gauge
	PoolDials        prometheus.Counter
	PoolDialFailures prometheus.Counter
	PoolWait         prometheus.Histogram

	RelayUp      *prometheus.GaugeVec   // relay
	RelayCircuit *prometheus.GaugeVec   // relay
	RelaySends   *prometheus.CounterVec // relay, outcome

	RecipientsSuppressed *prometheus.CounterVec // stage: intake, delivery
	SuppressionsAdded    *prometheus.CounterVec // reason
	InboundRejected      *prometheus.CounterVec // reason
	InboundReports       *prometheus.CounterVec // type, result

	TemplatedEmails *prometheus.CounterVec // result: TemplateResults
}

// TemplateResults are the results of a message naming a template at
// intake: rendered, or the 400 it got.
var TemplateResults = []string{"rendered", "missing_variable", "unknown_template", "invalid_data"}

// Suppression stages: where a suppressed recipient was stopped.
const (
	StageIntake   = "intake"
	StageDelivery = "delivery"
)

// SuppressionReasons are suppression.Reasons (a test keeps them equal).
var SuppressionReasons = []string{"hard_bounce", "complaint", "unsubscribe", "manual"}

// Why the inbound listener refused or ignored a message as a whole.
const (
	InboundForgedToken = "forged_token"   // RCPT to an address that is no valid token: 550 5.1.1
	InboundTooLarge    = "too_large"      // over the size cap: 552
	InboundUnparseable = "unparseable"    // not a MIME message sendq can read
	InboundNotReport   = "not_report"     // readable, but no delivery status or complaint report (an auto-reply)
	InboundMismatch    = "mismatched_ref" // its X-Sendq-Ref names another email than its envelope token
)

// InboundRejectReasons lists every InboundRejected reason.
var InboundRejectReasons = []string{InboundForgedToken, InboundTooLarge, InboundUnparseable, InboundNotReport, InboundMismatch}

// Report types and results of the inbound listener, per recipient a
// report names.
const (
	ReportBounce    = "bounce"    // Action: failed with a 5.x.x status
	ReportDelay     = "delay"     // Action: delayed
	ReportDelivery  = "delivery"  // Action: delivered (or relayed, expanded)
	ReportComplaint = "complaint" // an RFC 5965 feedback report
	ReportOther     = "other"     // anything else (failed with 4.x.x)

	ReportApplied          = "applied"           // the record, the list or a notice changed
	ReportUnknownRecipient = "unknown_recipient" // the email had no such recipient (or none that was sent)
	ReportUnchanged        = "unchanged"         // a repeat, or nothing to change
)

// ReportTypes and ReportResults list the label values of InboundReports.
var (
	ReportTypes   = []string{ReportBounce, ReportDelay, ReportDelivery, ReportComplaint, ReportOther}
	ReportResults = []string{ReportApplied, ReportUnknownRecipient, ReportUnchanged}
)

// Routes lists the HTTP routes, for initialising label values.
var Routes = []string{
	"POST /v1/emails", "GET /v1/emails", "GET /v1/emails/{id}", "POST /v1/emails/{id}/retry",
	"DELETE /v1/emails/{id}", "POST /SendEmail", "POST /SendEmailV2", "POST /SendEmailV3",
	"GET /TestConnection", "GET /v1/emails/{id}/events", "GET /v1/events",
	"GET /v1/suppressions", "GET /v1/suppressions/{address}",
	"PUT /v1/suppressions/{address}", "DELETE /v1/suppressions/{address}",
	"GET /v1/unsubscribe/{token}", "POST /v1/unsubscribe/{token}", "other",
}

// Reasons are queue.Reasons (metrics does not import queue; a test keeps
// the two lists equal).
var Reasons = []string{"permanent", "transient", "expired", "canceled", "invalid", "too_large", "unsupported", "archived", "suppressed"}

// New registers sendq's collectors, the Go and process collectors and a
// build-info gauge on reg. gatherer serves /metrics.
func New(reg prometheus.Registerer, gatherer prometheus.Gatherer) *Metrics {
	f := promauto.With(reg)
	m := &Metrics{reg: gatherer}
	m.EmailsAccepted = f.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "emails_accepted_total",
		Help: "Emails accepted by the intake (answered 202 after the task was stored in Redis)."})
	m.EmailsSent = f.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "emails_sent_total",
		Help: "Emails delivered to every recipient."})
	m.EmailsFailed = f.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "emails_failed_total",
		Help: "Emails finished with at least one recipient failed, by reason."}, []string{"reason"})
	m.RecipientsSent = f.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "recipients_sent_total",
		Help: "Recipients the SMTP server accepted a message for."})
	m.RecipientsFail = f.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "recipients_failed_total",
		Help: "Recipients given up on, by reason."}, []string{"reason"})
	m.Attempts = f.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "delivery_attempts_total",
		Help: "Delivery attempts by outcome (sent, retry, failed, aborted)."}, []string{"outcome"})
	m.AttemptsPerMsg = f.NewHistogram(prometheus.HistogramOpts{Namespace: namespace, Name: "attempts_per_email",
		Help: "Attempts an email took until it was finished.", Buckets: []float64{1, 2, 3, 5, 8, 13, 20, 40}})
	m.IdemReplays = f.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "idempotent_replays_total",
		Help: "Requests answered from an earlier request with the same Idempotency-Key."})
	m.RateLimited = f.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "rate_limited_total",
		Help: "Requests refused (intake, 429) or sends delayed (relay) by a rate limit."}, []string{"scope"})
	m.RelayThrottles = f.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "smtp_throttle_replies_total",
		Help: "Replies from the relay asking sendq to slow down (421, or 45x with 4.7.x)."})
	m.HTTPRequests = f.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "http_requests_total",
		Help: "HTTP requests by route and status code."}, []string{"route", "code"})
	m.HTTPDuration = f.NewHistogramVec(prometheus.HistogramOpts{Namespace: namespace, Name: "http_request_duration_seconds",
		Help: "HTTP request duration by route.", Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}},
		[]string{"route"})
	m.SMTPReplies = f.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "smtp_replies_total",
		Help: "SMTP replies by class (2xx, 4xx, 5xx, network: no reply)."}, []string{"class"})
	m.SMTPSendDuration = f.NewHistogram(prometheus.HistogramOpts{Namespace: namespace, Name: "smtp_send_duration_seconds",
		Help: "Duration of one SMTP transaction (MAIL to the reply after DATA).", Buckets: prometheus.ExponentialBuckets(0.0005, 2.5, 14)})
	m.EnqueueToFirst = f.NewHistogram(prometheus.HistogramOpts{Namespace: namespace, Name: "enqueue_to_first_attempt_seconds",
		Help: "Time from acceptance to the first delivery attempt.", Buckets: prometheus.ExponentialBuckets(0.001, 3, 14)})
	m.EnqueueToSent = f.NewHistogram(prometheus.HistogramOpts{Namespace: namespace, Name: "enqueue_to_sent_seconds",
		Help: "Time from acceptance until every recipient was sent.", Buckets: prometheus.ExponentialBuckets(0.001, 3, 16)})
	m.PoolOpen = f.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: "smtp_pool_connections_open",
		Help: "SMTP connections open in this process."})
	m.PoolIdle = f.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: "smtp_pool_connections_idle",
		Help: "SMTP connections open and idle in this process."})
	m.PoolInUse = f.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: "smtp_pool_connections_in_use",
		Help: "SMTP connections carrying a message now."})
	m.PoolDials = f.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "smtp_pool_dials_total",
		Help: "SMTP connections dialed (connect, EHLO, STARTTLS, AUTH)."})
	m.PoolDialFailures = f.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "smtp_pool_dial_failures_total",
		Help: "SMTP dials that failed."})
	m.PoolWait = f.NewHistogram(prometheus.HistogramOpts{Namespace: namespace, Name: "smtp_pool_wait_seconds",
		Help: "Time a delivery waited for a pooled connection.", Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10)})
	m.RelayUp = f.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace, Name: "relay_up",
		Help: "1 unless the relay's last send failed to get a session (connect, greeting, STARTTLS, AUTH), lost it, or got 421."}, []string{"relay"})
	m.RelayCircuit = f.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace, Name: "relay_circuit_state",
		Help: "The relay's circuit: 0 closed (in use), 1 half-open (one probe out), 2 open (skipped for the cool-down)."}, []string{"relay"})
	m.RelaySends = f.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "relay_sends_total",
		Help: "Transactions per relay by outcome (delivered, rejected, failed, skipped: circuit open, aborted)."}, []string{"relay", "outcome"})

	m.RecipientsSuppressed = f.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "recipients_suppressed_total",
		Help: "Recipients not sent to because they are on the suppression list, by where they were stopped (intake, delivery)."}, []string{"stage"})
	m.SuppressionsAdded = f.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "suppressions_added_total",
		Help: "Addresses added to the suppression list, by reason."}, []string{"reason"})
	m.InboundRejected = f.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "inbound_rejected_total",
		Help: "Messages to the bounce listener refused or ignored as a whole, by reason."}, []string{"reason"})
	m.InboundReports = f.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "inbound_reports_total",
		Help: "Recipients named by delivery status and complaint reports, by report type and result."}, []string{"type", "result"})
	m.TemplatedEmails = f.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "templated_emails_total",
		Help: "Messages naming a template at intake (single sends and batch messages), by result: rendered, or refused as missing_variable, unknown_template or invalid_data."}, []string{"result"})
	for _, r := range TemplateResults {
		m.TemplatedEmails.WithLabelValues(r)
	}
	for _, st := range []string{StageIntake, StageDelivery} {
		m.RecipientsSuppressed.WithLabelValues(st)
	}
	for _, r := range SuppressionReasons {
		m.SuppressionsAdded.WithLabelValues(r)
	}
	for _, r := range InboundRejectReasons {
		m.InboundRejected.WithLabelValues(r)
	}
	for _, ty := range ReportTypes {
		for _, r := range ReportResults {
			m.InboundReports.WithLabelValues(ty, r)
		}
	}
	for _, r := range Reasons {
		m.EmailsFailed.WithLabelValues(r)
		m.RecipientsFail.WithLabelValues(r)
	}
	for _, o := range []string{OutcomeSent, OutcomeRetry, OutcomeFailed, OutcomeAborted} {
		m.Attempts.WithLabelValues(o)
	}
	m.RateLimited.WithLabelValues("intake")
	m.RateLimited.WithLabelValues("relay")
	for _, c := range ReplyClasses {
		m.SMTPReplies.WithLabelValues(c)
	}
	for _, r := range Routes {
		m.HTTPDuration.WithLabelValues(r)
		for _, code := range []int{200, 201, 202, 400, 401, 403, 404, 409, 413, 415, 429, 503} {
			m.HTTPRequests.WithLabelValues(r, strconv.Itoa(code))
		}
	}

	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	version, revision := buildVersion()
	f.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace, Name: "build_info",
		Help: "Build information; the value is always 1."}, []string{"version", "revision", "goversion"}).
		WithLabelValues(version, revision, goVersion()).Set(1)
	return m
}

// InitRelays initialises the per-relay series of the named relays: up 1,
// circuit closed, every send outcome 0. The worker calls it with the
// relays of SENDQ_SMTP_URL, whose names are the only relay label values.
func (m *Metrics) InitRelays(names ...string) {
	for _, n := range names {
		m.RelayUp.WithLabelValues(n).Set(1)
		m.RelayCircuit.WithLabelValues(n).Set(0)
		for _, o := range RelayOutcomes {
			m.RelaySends.WithLabelValues(n, o)
		}
	}
}

// Handler serves the registry in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// QueueCollector reads queue depths from Redis at scrape time, so the
// numbers are right however many workers run.
type QueueCollector struct {
	insp   *asynq.Inspector
	groups []QueueGroup
	tasks  *prometheus.Desc
	oldest *prometheus.Desc
	memory *prometheus.Desc
	up     *prometheus.Desc
	held   *prometheus.Desc
	// heldEmails, if set, counts the emails held by a group's chunk
	// tasks (WithHeld).
	heldEmails func(ctx context.Context, queues []string) (int, error)
	timeout    time.Duration
}

// QueueGroup is what one queue label shows: the sum of Queues (the shards
// of one priority).
type QueueGroup struct {
	Label  string
	Queues []string
}

// NewQueueCollector returns a collector of the given queues' depths.
func NewQueueCollector(insp *asynq.Inspector, queues ...string) *QueueCollector {
	groups := make([]QueueGroup, len(queues))
	for i, q := range queues {
		groups[i] = QueueGroup{Label: q, Queues: []string{q}}
	}
	return NewShardedQueueCollector(insp, groups)
}

// NewShardedQueueCollector returns a collector of the depths of groups of
// queues, each summed under its label (bounded: one per priority).
func NewShardedQueueCollector(insp *asynq.Inspector, groups []QueueGroup) *QueueCollector {
	return &QueueCollector{
		insp: insp, groups: groups, timeout: 2 * time.Second,
		tasks: prometheus.NewDesc(namespace+"_queue_tasks", "Tasks in the queue by state, read from Redis.",
			[]string{"queue", "state"}, nil),
		oldest: prometheus.NewDesc(namespace+"_queue_oldest_pending_seconds", "Age of the oldest pending task.",
			[]string{"queue"}, nil),
		memory: prometheus.NewDesc(namespace+"_queue_memory_bytes", "Redis memory used by the queue's tasks (sampled).",
			[]string{"queue"}, nil),
		up: prometheus.NewDesc(namespace+"_redis_up", "1 if Redis answered the last queue scrape.", nil, nil),
		held: prometheus.NewDesc(namespace+"_queue_held_emails",
			"Emails of batches held by the queue's chunk tasks not finished yet (pending, scheduled or being delivered); each chunk is one task in sendq_queue_tasks.",
			[]string{"queue"}, nil),
	}
}

// WithHeld makes c export sendq_queue_held_emails, per group, from f: the
// emails a group's chunk tasks hold (a chunk is one task of many emails).
func (c *QueueCollector) WithHeld(f func(ctx context.Context, queues []string) (int, error)) *QueueCollector {
	c.heldEmails = f
	return c
}

// Describe implements prometheus.Collector.
func (c *QueueCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.tasks
	ch <- c.oldest
	ch <- c.memory
	ch <- c.up
	ch <- c.held
}

// Collect implements prometheus.Collector.
func (c *QueueCollector) Collect(ch chan<- prometheus.Metric) {
	up := 1.0
	for _, g := range c.groups {
		info, err := c.groupInfo(g.Queues)
		if err != nil {
			up = 0
			continue
		}
		q := g.Label
		for state, n := range map[string]int{
			"pending": info.Pending, "active": info.Active, "scheduled": info.Scheduled,
			"retry": info.Retry, "archived": info.Archived, "completed": info.Completed,
		} {
			ch <- prometheus.MustNewConstMetric(c.tasks, prometheus.GaugeValue, float64(n), q, state)
		}
		ch <- prometheus.MustNewConstMetric(c.oldest, prometheus.GaugeValue, info.Latency.Seconds(), q)
		ch <- prometheus.MustNewConstMetric(c.memory, prometheus.GaugeValue, float64(info.MemoryUsage), q)
		if c.heldEmails != nil {
			ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
			n, err := c.heldEmails(ctx, g.Queues)
			cancel()
			if err != nil {
				up = 0
				continue
			}
			ch <- prometheus.MustNewConstMetric(c.held, prometheus.GaugeValue, float64(n), q)
		}
	}
	ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, up)
}

// groupInfo sums the infos of qs: counts and memory added, the oldest
// pending latency.
func (c *QueueCollector) groupInfo(qs []string) (*asynq.QueueInfo, error) {
	sum := &asynq.QueueInfo{}
	for _, q := range qs {
		info, err := c.queueInfo(q)
		if err != nil {
			return nil, err
		}
		sum.Pending += info.Pending
		sum.Active += info.Active
		sum.Scheduled += info.Scheduled
		sum.Retry += info.Retry
		sum.Archived += info.Archived
		sum.Completed += info.Completed
		sum.MemoryUsage += info.MemoryUsage
		sum.Latency = max(sum.Latency, info.Latency)
	}
	return sum, nil
}

func (c *QueueCollector) queueInfo(q string) (*asynq.QueueInfo, error) {
	type result struct {
		info *asynq.QueueInfo
		err  error
	}
	done := make(chan result, 1)
	// The Inspector has no context: bound the scrape by a timer instead.
	// The goroutine ends when GetQueueInfo returns (Redis timeouts bound it).
	go func() {
		// A queue nobody enqueued to yet is empty, not an error: asynq
		// reports it with an internal error type, so ask for the list.
		qs, err := c.insp.Queues()
		if err != nil {
			done <- result{nil, err}
			return
		}
		for _, name := range qs {
			if name == q {
				info, err := c.insp.GetQueueInfo(q)
				done <- result{info, err}
				return
			}
		}
		done <- result{&asynq.QueueInfo{Queue: q}, nil}
	}()
	select {
	case r := <-done:
		return r.info, r.err
	case <-time.After(c.timeout):
		return nil, context.DeadlineExceeded
	}
}

func buildVersion() (version, revision string) {
	version, revision = "devel", "unknown"
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return
	}
	if bi.Main.Version != "" {
		version = bi.Main.Version
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" {
			revision = s.Value
		}
	}
	return
}

func goVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		return bi.GoVersion
	}
	return "unknown"
}

// Instrument counts requests by route pattern and status code and times
// them. The route is the ServeMux pattern that matched ("other" if none),
// so label values stay bounded whatever the path.
func (m *Metrics) Instrument(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		next.ServeHTTP(rw, r)
		route := r.Pattern
		if route == "" || route == "/" {
			route = "other"
		}
		m.HTTPRequests.WithLabelValues(route, strconv.Itoa(rw.code)).Inc()
		m.HTTPDuration.WithLabelValues(route).Observe(time.Since(start).Seconds())
	})
}

type statusWriter struct {
	http.ResponseWriter
	code  int
	wrote bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wrote {
		w.code, w.wrote = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	w.wrote = true
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
