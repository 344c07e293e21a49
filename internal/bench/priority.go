package bench

import (
	"context"
	"fmt"
	"io"
	"runtime/pprof"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/hibiken/asynq"

	"github.com/sendq/sendq/queue"
)

// prioResult is what the priority phase measured.
type prioResult struct {
	bulk         int             // bulk emails queued before
	bulkAlone    float64         // bulk emails/s delivered before the first high POST
	bulkDuring   float64         // bulk emails/s while high and normal ones were posted and delivered
	high, normal []time.Duration // POST sent to the sink's 250, sorted
	lost         int             // high or normal emails not received within 30 s
}

func (p *prioResult) write(w io.Writer) {
	fmt.Fprintf(w, "\npriority phase (last round): %d bulk emails queued, the worker busy with them; high, then normal, posted one every 100 ms\n", p.bulk)
	fmt.Fprintf(w, "| figure | n | p50 | p99 | max |\n| --- | ---: | ---: | ---: | ---: |\n")
	for _, l := range []struct {
		name string
		d    []time.Duration
	}{{"high: POST to the sink's 250", p.high}, {"normal: POST to the sink's 250", p.normal}} {
		if len(l.d) == 0 {
			continue
		}
		fmt.Fprintf(w, "| %s | %d | %s | %s | %s |\n", l.name, len(l.d), msf(percentile(l.d, 50)), msf(percentile(l.d, 99)), msf(l.d[len(l.d)-1]))
	}
	fmt.Fprintf(w, "bulk delivery: %.0f emails/s alone, %.0f emails/s while the high and normal ones went through; %d not received\n", p.bulkAlone, p.bulkDuring, p.lost)
}

func msf(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }

// priority is the priority phase (last round only): o.prioBulk bulk
// emails queued straight into Redis (as a batch's would be), sendq's
// worker started on them with the default configuration, then, once it is
// busy, o.prioN high emails posted one every 100 ms, then as many normal
// ones: the latency from each POST to the sink's 250, and the bulk rate
// before and during.
func (r *runner) priority(ctx context.Context) error {
	o := r.o
	if !r.lastRound() {
		return nil
	}
	if err := r.flush(ctx); err != nil {
		return err
	}
	nBulk := min(o.prioBulk, 10*o.n) // a short run (small -n) stays short
	api, err := startSendqAPI(r.redisURL, r.apiKey, r.log)
	if err != nil {
		return fmt.Errorf("sendq api: %w", err)
	}
	defer api.stop()
	if o.prioBatches {
		// As a product queues a bulk send: batches (chunk tasks).
		in, _, _, err := r.batchIntake(ctx, api, "priority: bulk batches", r.phase("prio-bulk"), nBulk)
		if err != nil {
			return err
		}
		nBulk = in.accepted
	} else if err := queueBulk(ctx, r, api, nBulk); err != nil {
		return err
	}
	w, err := api.newWorker(r.sink.addr, o.pool, o.concurrency, o.fetchers)
	if err != nil {
		return err
	}
	total := nBulk + 2*o.prioN
	ph := r.sink.expect(total, true)
	start := time.Now()
	pprof.Do(ctx, pprof.Labels("component", "sendq-worker"), func(context.Context) { err = w.Start() })
	if err != nil {
		return err
	}
	defer w.Shutdown()
	// Busy: a tenth of the backlog (at most 5,000) delivered.
	busy := int64(min(nBulk/10, 5000))
	for ph.count.Load() < busy {
		if time.Since(start) > o.stall {
			return fmt.Errorf("priority phase: %d of %d bulk emails delivered in %s", ph.count.Load(), busy, o.stall)
		}
		time.Sleep(5 * time.Millisecond)
	}
	res := &prioResult{bulk: nBulk}
	t0, c0 := time.Now(), ph.count.Load()
	res.bulkAlone = rate(int(c0), t0.Sub(start))
	sent := map[string]time.Time{}
	isHigh := map[string]bool{}
	for _, p := range []string{queue.PriorityHigh, queue.PriorityNormal} {
		rq := r.req.withPriority(p)
		name := "prio-" + p
		l := r.load(ctx, "sendq "+p+" under bulk", api.url, name, o.prioN, o.prioN, 100*time.Millisecond, rq)
		if err := checkLoad("sendq "+p, l); err != nil {
			return err
		}
		for id, t := range rq.sentTimes(name, l) {
			sent[id] = t
			isHigh[id] = p == queue.PriorityHigh
		}
	}
	// Wait for every high and normal one (not for the rest of the bulk).
	deadline := time.Now().Add(30 * time.Second)
	var got map[string]time.Time
	for {
		got = map[string]time.Time{}
		for _, rc := range ph.receipts() {
			if _, ok := sent[rc.id]; ok {
				got[rc.id] = rc.at
			}
		}
		if len(got) == len(sent) || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	t1, c1 := time.Now(), ph.count.Load()
	res.bulkDuring = rate(int(c1-c0)-len(got), t1.Sub(t0))
	res.lost = len(sent) - len(got)
	for id, at := range got {
		d := at.Sub(sent[id])
		if isHigh[id] {
			res.high = append(res.high, d)
		} else {
			res.normal = append(res.normal, d)
		}
	}
	slices.Sort(res.high)
	slices.Sort(res.normal)
	r.prio = res
	return nil
}

// queueBulk queues n bulk emails straight into Redis, one task each, as
// single sends' would be.
func queueBulk(ctx context.Context, r *runner, api *sendqProc, nBulk int) error {
	e, err := r.req.email()
	if err != nil {
		return err
	}
	e.Priority = queue.PriorityBulk
	var next atomic.Int64
	var enqErr atomic.Pointer[error]
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for next.Add(1) <= int64(nBulk) {
				c := *e
				c.ID = uuid.Must(uuid.NewV7()).String()
				task, err := queue.NewTask(&c)
				if err == nil {
					_, err = api.enq.EnqueueContext(ctx, task, asynq.MaxRetry(api.cfg.MaxAttempts-1), asynq.Retention(api.cfg.Retention))
				}
				if err != nil {
					enqErr.CompareAndSwap(nil, &err)
					return
				}
			}
		})
	}
	wg.Wait()
	if p := enqErr.Load(); p != nil {
		return fmt.Errorf("queue bulk: %w", *p)
	}
	return nil
}
