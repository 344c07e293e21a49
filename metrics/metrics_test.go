package metrics_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/metrics"
	"github.com/sendq/sendq/queue"
	"github.com/sendq/sendq/suppression"
)

func TestQueueCollectorOnAFreshAndAFilledRedis(t *testing.T) {
	rs := redistest.Start(t)
	rdb := rs.Client(t)
	insp := asynq.NewInspectorFromRedisClient(rdb)
	c := metrics.NewQueueCollector(insp, "emails")
	want := `
# HELP sendq_redis_up 1 if Redis answered the last queue scrape.
# TYPE sendq_redis_up gauge
sendq_redis_up 1
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "sendq_redis_up"); err != nil {
		t.Errorf("fresh Redis: %v", err)
	}
	if n := testutil.CollectAndCount(c, "sendq_queue_tasks"); n != 6 {
		t.Errorf("fresh Redis: %d sendq_queue_tasks series; want 6 (every state, at 0)", n)
	}
	client := asynq.NewClientFromRedisClient(rdb)
	for i := 0; i < 3; i++ {
		if _, err := client.Enqueue(asynq.NewTask("email:send", nil), asynq.Queue("emails")); err != nil {
			t.Fatal(err)
		}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	got, err := testutil.GatherAndCount(reg, "sendq_queue_tasks")
	if err != nil || got != 6 {
		t.Fatalf("GatherAndCount = %d, %v", got, err)
	}
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			if mf.GetName() == "sendq_queue_tasks" && labelValue(m.GetLabel(), "state") == "pending" && m.GetGauge().GetValue() != 3 {
				t.Errorf("pending = %v; want 3", m.GetGauge().GetValue())
			}
		}
	}
	rs.Stop()
	if err := testutil.CollectAndCompare(c, strings.NewReader(strings.Replace(want, "\nsendq_redis_up 1\n", "\nsendq_redis_up 0\n", 1)), "sendq_redis_up"); err != nil {
		t.Errorf("Redis down: %v", err)
	}
}

func labelValue(pairs []*dto.LabelPair, name string) string {
	for _, p := range pairs {
		if p.GetName() == name {
			return p.GetValue()
		}
	}
	return ""
}

func TestReasonsMatchTheQueueContract(t *testing.T) {
	if fmt.Sprint(metrics.Reasons) != fmt.Sprint(queue.Reasons) {
		t.Errorf("metrics.Reasons = %v; queue.Reasons = %v", metrics.Reasons, queue.Reasons)
	}
}

func TestInitRelaysStartsEverySeries(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := metrics.New(reg, reg)
	if n, _ := testutil.GatherAndCount(reg, "sendq_relay_sends_total"); n != 0 {
		t.Fatalf("%d relay series before InitRelays; want 0 (relay names come from the configuration)", n)
	}
	m.InitRelays("primary", "backup")
	for name, want := range map[string]int{"sendq_relay_sends_total": 2 * len(metrics.RelayOutcomes), "sendq_relay_up": 2, "sendq_relay_circuit_state": 2} {
		if n, err := testutil.GatherAndCount(reg, name); err != nil || n != want {
			t.Errorf("%s: %d series (%v); want %d", name, n, err, want)
		}
	}
	for _, r := range []string{"primary", "backup"} {
		if up, st := testutil.ToFloat64(m.RelayUp.WithLabelValues(r)), testutil.ToFloat64(m.RelayCircuit.WithLabelValues(r)); up != 1 || st != 0 {
			t.Errorf("relay %s: up %v, circuit %v; want 1 (not known bad) and 0 (closed)", r, up, st)
		}
	}
}

func TestSuppressionReasonsMatchTheList(t *testing.T) {
	if fmt.Sprint(metrics.SuppressionReasons) != fmt.Sprint(suppression.Reasons) {
		t.Errorf("metrics.SuppressionReasons = %v; suppression.Reasons = %v", metrics.SuppressionReasons, suppression.Reasons)
	}
}

// The emails a priority's batch chunks hold, from the queue package's
// counts on a real Redis: a chunk is one task of many emails.
func TestQueueCollectorHeldEmails(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	store := queue.NewStore(rdb, 0)
	ctx := context.Background()
	bulk := queue.DefaultTopology.Queues(queue.PriorityBulk)
	hold := func(chunk string, n int) {
		t.Helper()
		hs := make([]queue.Held, n)
		for i := range hs {
			e := &queue.Email{ID: fmt.Sprintf("%s-%d", chunk, i), CreatedAt: time.Now(),
				From: queue.Address{Address: "a@example.com"}, To: []queue.Address{{Address: "b@example.com"}}}
			hs[i] = queue.Held{Email: e, Chunk: chunk, Queue: bulk[0], MaxAttempts: 3}
		}
		if err := store.Hold(ctx, hs, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	for i, n := range []int{100, 100, 37} {
		hold(fmt.Sprintf("chunk-%d", i), n)
	}
	// Offered twice (a retried batch), counted once; done twice, uncounted once.
	hold("chunk-2", 37)
	for range 2 {
		if err := store.DoneHeld(ctx, bulk[0], "chunk-0"); err != nil {
			t.Fatal(err)
		}
	}
	c := metrics.NewShardedQueueCollector(asynq.NewInspectorFromRedisClient(rdb), []metrics.QueueGroup{
		{Label: "emails-bulk", Queues: bulk}, {Label: "emails", Queues: queue.DefaultTopology.Queues(queue.PriorityNormal)},
	}).WithHeld(store.HeldEmails)
	want := `
# HELP sendq_queue_held_emails Emails of batches held by the queue's chunk tasks not finished yet (pending, scheduled or being delivered); each chunk is one task in sendq_queue_tasks.
# TYPE sendq_queue_held_emails gauge
sendq_queue_held_emails{queue="emails"} 0
sendq_queue_held_emails{queue="emails-bulk"} 137
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "sendq_queue_held_emails"); err != nil {
		t.Error(err)
	}
}
