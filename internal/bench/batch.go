package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sendq/sendq/worker"
)

// batchLoad is what one batch intake run measured.
type batchLoad struct {
	batches  int             // batches posted
	emails   int             // messages in them
	accepted int             // emails the answers accepted
	failed   int             // batches not answered 202
	firstErr string          // the first non-202
	elapsed  time.Duration   // first batch sent to last answer
	latency  []time.Duration // of every batch, sorted
}

func (b *batchLoad) emailsPerSec() float64 { return rate(b.accepted, b.elapsed) }

// batchBody is batch k of phase: size messages, each the body of a single
// send of the run (From, To, Subject, a Body of -body-bytes), so that a
// batch email is the same email as a single send's.
func (rq *request) batchBody(k, size int) []byte {
	var b bytes.Buffer
	b.WriteString(`{"Messages":[`)
	for i := range size {
		if i > 0 {
			b.WriteByte(',')
		}
		b.Write(rq.prefix)
		b.WriteString(strconv.Itoa(k*size + i))
		b.Write(rq.suffix)
	}
	b.WriteString(`]}`)
	return b.Bytes()
}

// runBatchLoad posts batches batches of size messages from c goroutines,
// each with its own Idempotency-Key, as a product would send them.
func runBatchLoad(ctx context.Context, client *http.Client, url string, rq *request, phase string, batches, size, c int, progress *atomic.Int64) *batchLoad {
	res := &batchLoad{batches: batches, emails: batches * size}
	lat := make([]time.Duration, batches)
	var next atomic.Int64
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	for range c {
		wg.Go(func() { // exits when every batch has been claimed
			for {
				k := int(next.Add(1) - 1)
				if k >= batches || ctx.Err() != nil {
					return
				}
				n, err := postBatch(ctx, client, url, rq, rq.idemKey(phase, k), rq.batchBody(k, size), &lat[k])
				progress.Add(int64(size))
				mu.Lock()
				res.accepted += n
				if err != nil {
					res.failed++
					if res.firstErr == "" {
						res.firstErr = err.Error()
					}
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	slices.Sort(lat)
	res.latency = lat
	return res
}

// postBatch posts one batch and returns how many of its emails the answer
// accepted.
func postBatch(ctx context.Context, client *http.Client, url string, rq *request, key string, body []byte, took *time.Duration) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	if rq.apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+rq.apiKey)
	}
	req.Header.Set("Idempotency-Key", key)
	t0 := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		*took = time.Since(t0)
		return 0, err
	}
	raw, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	*took = time.Since(t0)
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != http.StatusAccepted {
		return 0, fmt.Errorf("HTTP %d: %s", resp.StatusCode, bytes.TrimSpace(raw))
	}
	var ans struct {
		Accepted int `json:"accepted"`
	}
	if err := json.Unmarshal(raw, &ans); err != nil {
		return 0, fmt.Errorf("batch answer: %w", err)
	}
	return ans.Accepted, nil
}

// batchIntake posts n emails in batches of -batch-size to api: the batch
// load, its CPU and the Redis memory per queued email.
func (r *runner) batchIntake(ctx context.Context, api *sendqProc, name, phase string, n int) (*batchLoad, cost, float64, error) {
	o := r.o
	batches := max(n/o.batchSize, 1)
	client := newHTTPClient(o.batchC)
	defer client.CloseIdleConnections()
	var count atomic.Int64
	stop := r.prog.track(name, batches*o.batchSize, &count)
	runtime.GC()
	done := r.meter(ctx)
	var res *batchLoad
	mem, err := r.memDelta(ctx, func() {
		pprof.Do(ctx, pprof.Labels("component", "loadgen"), func(ctx context.Context) {
			res = runBatchLoad(ctx, client, api.url+"/batch", r.req, phase, batches, o.batchSize, o.batchC, &count)
		})
	})
	stop()
	c := done(batches * o.batchSize)
	if err != nil {
		return nil, c, 0, err
	}
	if res.failed > 0 || res.accepted != res.emails {
		return res, c, 0, fmt.Errorf("%s: %d of %d batches failed, %d of %d emails accepted; first: %s",
			name, res.failed, res.batches, res.accepted, res.emails, res.firstErr)
	}
	return res, c, float64(mem) / float64(res.accepted), nil
}

// batch is the batch phases: -batch-n emails posted in batches of
// -batch-size (emails accepted per second, the latency of one batch,
// Redis memory per queued email), then sendq's worker started on that
// backlog (emails/s to the sink's last 250, CPU per email), then, in the
// last round with -batch-rss N, N batch emails queued and delivered while
// the process' RSS is sampled.
func (r *runner) batch(ctx context.Context) error {
	o := r.o
	if err := r.flush(ctx); err != nil {
		return err
	}
	api, err := startSendqAPI(r.redisURL, r.apiKey, r.log)
	if err != nil {
		return fmt.Errorf("sendq api: %w", err)
	}
	defer api.stop() // after the workers' Shutdown (deferred below)
	in, c, mem, err := r.batchIntake(ctx, api, "batch intake", r.phase("batch"), o.batchN)
	r.res.batchIntake, r.res.batchIntakeCPU, r.res.batchMem = in, c, mem
	if err != nil {
		return err
	}
	d, dc, err := r.batchDeliver(ctx, api, "batch delivery", in.accepted)
	r.res.batchDelivery, r.res.batchDeliveryCPU = d, dc
	if err != nil {
		return err
	}
	if o.batchRSS <= 0 || !r.lastRound() {
		return nil
	}
	if err := r.flush(ctx); err != nil {
		return err
	}
	in, _, _, err = r.batchIntake(ctx, api, "batch rss: queue", "rss", o.batchRSS)
	if err != nil {
		return err
	}
	rss := sampleRSS()
	_, _, err = r.batchDeliver(ctx, api, "batch rss: deliver", in.accepted)
	r.res.batchRSS, r.res.batchRSSN = rss.stop(), in.accepted
	return err
}

// batchDeliver starts sendq's worker on n queued batch emails and waits
// until the sink has them all.
func (r *runner) batchDeliver(ctx context.Context, api *sendqProc, name string, n int) (throughput, cost, error) {
	o := r.o
	workers := make([]*worker.Worker, o.workers)
	for i := range workers {
		var err error
		if workers[i], err = api.newWorker(r.sink.addr, o.pool, o.concurrency, o.fetchers); err != nil {
			return throughput{}, cost{}, fmt.Errorf("sendq worker: %w", err)
		}
	}
	ph := r.sink.expect(n, false)
	runtime.GC()
	done := r.meter(ctx)
	start := time.Now()
	var err error
	for _, w := range workers {
		pprof.Do(ctx, pprof.Labels("component", "sendq-batch-worker"), func(context.Context) { err = w.Start() })
		if err != nil {
			return throughput{}, cost{}, err
		}
		defer w.Shutdown()
	}
	err = r.await(ctx, name, ph.countdown)
	c := done(n)
	if err != nil {
		return throughput{}, c, err
	}
	return throughput{n: n, d: ph.last.Sub(start)}, c, nil
}
