package events

import (
	"context"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/redis/go-redis/v9"
)

// Delivery outcomes, the label of sendq_webhook_deliveries_total.
const (
	OutcomeDelivered = "delivered" // the endpoint answered 2xx
	OutcomeRetry     = "retry"     // another answer or none; a retry is scheduled
	OutcomeExhausted = "exhausted" // the same, on the last attempt: given up
	OutcomeGone      = "gone"      // the endpoint answered 410: it is disabled
	OutcomeSkipped   = "skipped"   // the endpoint is disabled or no longer configured
)

// Outcomes lists every delivery outcome.
var Outcomes = []string{OutcomeDelivered, OutcomeRetry, OutcomeExhausted, OutcomeGone, OutcomeSkipped}

// Metrics are the events package's collectors, all named sendq_*.
type Metrics struct {
	Events          *prometheus.CounterVec // type: events handed to delivery and the log
	Swept           prometheus.Counter
	Deliveries      *prometheus.CounterVec // outcome
	AttemptDuration prometheus.Histogram
	Disabled        prometheus.Counter
}

// NewMetrics registers the collectors on reg, every label value at zero.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	f := promauto.With(reg)
	m := &Metrics{
		Events: f.NewCounterVec(prometheus.CounterOpts{Namespace: "sendq", Name: "events_total",
			Help: "Events stored and handed to webhook delivery and the event log, by type."}, []string{"type"}),
		Swept: f.NewCounter(prometheus.CounterOpts{Namespace: "sendq", Name: "events_swept_total",
			Help: "Events handed off by the sweeper because their emitter did not (it died, or Redis failed, between storing and handing off)."}),
		Deliveries: f.NewCounterVec(prometheus.CounterOpts{Namespace: "sendq", Name: "webhook_deliveries_total",
			Help: "Webhook delivery attempts by outcome (delivered, retry, exhausted, gone, skipped)."}, []string{"outcome"}),
		AttemptDuration: f.NewHistogram(prometheus.HistogramOpts{Namespace: "sendq", Name: "webhook_attempt_duration_seconds",
			Help: "Duration of one webhook delivery attempt (request to response headers).", Buckets: prometheus.ExponentialBuckets(0.001, 3, 10)}),
		Disabled: f.NewCounter(prometheus.CounterOpts{Namespace: "sendq", Name: "webhook_endpoints_disabled_total",
			Help: "Webhook endpoints disabled because they answered 410 Gone."}),
	}
	for _, t := range Types {
		m.Events.WithLabelValues(t)
	}
	for _, o := range Outcomes {
		m.Deliveries.WithLabelValues(o)
	}
	return m
}

// Collector reads the webhook backlog from Redis at scrape time, so the
// numbers are right however many processes run: deliveries waiting in
// the webhook queue, events not yet handed off, disabled endpoints.
type Collector struct {
	rdb      redis.UniversalClient
	insp     *asynq.Inspector
	backlog  *prometheus.Desc
	outbox   *prometheus.Desc
	disabled *prometheus.Desc
}

// NewCollector returns the backlog collector; register it once per process.
func NewCollector(rdb redis.UniversalClient, insp *asynq.Inspector) *Collector {
	return &Collector{rdb: rdb, insp: insp,
		backlog: prometheus.NewDesc("sendq_webhook_backlog",
			"Webhook deliveries not finished: pending, scheduled, retrying or running (queue "+Queue+"), read from Redis.", nil, nil),
		outbox: prometheus.NewDesc("sendq_events_outbox",
			"Emails with events stored and not yet handed to delivery, read from Redis.", nil, nil),
		disabled: prometheus.NewDesc("sendq_webhook_endpoints_disabled",
			"Webhook endpoints disabled (they answered 410), read from Redis.", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.backlog
	ch <- c.outbox
	ch <- c.disabled
}

// Collect implements prometheus.Collector. A value Redis does not give
// within 2 seconds is left out of the scrape.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if n, err := c.rdb.ZCard(ctx, OutboxKey).Result(); err == nil {
		ch <- prometheus.MustNewConstMetric(c.outbox, prometheus.GaugeValue, float64(n))
	}
	if n, err := c.rdb.HLen(ctx, DisabledKey).Result(); err == nil {
		ch <- prometheus.MustNewConstMetric(c.disabled, prometheus.GaugeValue, float64(n))
	}
	if n, err := Backlog(c.insp); err == nil {
		ch <- prometheus.MustNewConstMetric(c.backlog, prometheus.GaugeValue, float64(n))
	}
}

// Backlog is the number of webhook deliveries not finished.
func Backlog(insp *asynq.Inspector) (int, error) {
	qs, err := insp.Queues()
	if err != nil {
		return 0, err
	}
	for _, q := range qs {
		if q == Queue {
			info, err := insp.GetQueueInfo(Queue)
			if err != nil {
				return 0, err
			}
			return info.Pending + info.Scheduled + info.Retry + info.Active, nil
		}
	}
	return 0, nil
}
