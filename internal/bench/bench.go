// Package bench implements `sendq bench`: one command that measures
// sendq's intake and delivery and, in the same run, on the same Redis and
// the same SMTP sink, the baselines they are judged against, then prints
// each figure with its baseline and the ratio (sendq / baseline).
//
// One round, in order (Redis is flushed before each group):
//
//  1. sendq intake: N POST /v1/emails (1 KB body, API key and a unique
//     Idempotency-Key on every request) from C concurrent clients against
//     sendq's API built in process as `sendq serve` builds it; no worker
//     runs. Requests/s, latency p50/p90/p99/max, and Redis used_memory
//     per queued email.
//  2. sendq delivery: sendq's worker is started on the queued backlog and
//     delivers it to the sink: emails/s from the worker's start to the
//     N-th 250, enqueue-to-250 latency, and (last round only) the
//     process' peak RSS.
//  3. sendq live latency (last round only): with the worker running, a
//     paced load (a quarter of the median delivery rate by default) for a
//     few seconds: the enqueue-to-250 latency a steady stream sees.
//  4. naive intake (a bare handler that decodes into a struct and calls
//     asynq's Enqueue), then the naive worker (asynq + go-mail DialAndSend
//     per email) on what it queued.
//  5. asynq's Enqueue alone (16 goroutines, no HTTP), then an asynq server
//     with a no-op handler on those tasks.
//  6. raw SMTP: go-mail clients over as many connections as sendq's pool
//     sending pre-built messages, no Redis.
//
// With -target URL only the intake of a running sendq is measured (and the
// naive intake, in process, for the ratio).
//
// The machine's speed drifts from one minute to the next, so with -rounds N
// (3 by default) the whole run is repeated N times on the same Redis and
// sink, alternating the order: odd rounds run sendq first, even rounds the
// baselines first, so slow drift hits both sides alike. The table shows the
// median of each side across rounds and the median of the per-round
// (paired) ratios, with their range. The live-latency phase and the RSS
// sampling run in the last round only.
//
// Every phase also records the CPU it used, in this process (getrusage)
// and in Redis (INFO cpu), per email: on a machine shared with other work
// the rates swing from run to run, the CPU per email hardly moves. With
// -cpuprofile, samples carry a "component" label (pprof -tagfocus).
//
// Everything runs in one process on one machine, so the load generator,
// the API, the worker, the sink and Redis share its cores: the absolute
// numbers are lower than on separate machines, the ratios are what count.
package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/sendq/sendq/queue"
	"github.com/sendq/sendq/worker"
)

// options are the command's flags.
type options struct {
	n, c             int
	rounds           int
	pool             int
	concurrency      int
	fetchers         int
	workers          int
	naiveConcurrency int
	noopConcurrency  int
	enqueueWorkers   int
	smtpLatency      time.Duration
	bodyBytes        int
	rcpts            int
	redisURL         string
	target           string
	apiKey           string
	from             string
	jsonFile         string
	cpuProfile       string
	liveDuration     time.Duration
	liveRate         float64
	baselines        bool
	stall            time.Duration
	verbose          bool
	prioBulk         int
	prioN            int
	tplBatches       int // templated.go
	batchPhase       bool
	batchSize        int
	batchC           int
	batchN           int
	batchRSS         int
	prioBatches      bool
}

const usage = `Usage: sendq bench [flags]

Measures sendq's intake and delivery and, in the same run, the baselines
they are judged against (a naive asynq intake and worker, asynq's no-op
processing, raw SMTP), then prints figure | sendq | baseline | ratio.
The whole measurement is repeated -rounds times, alternating which side
goes first; the table shows medians across rounds, and the ratio is the
median of the per-round ratios (min-max beside it).
Redis is REDIS_URL (or -redis-url; an EMPTY database: it is flushed between
phases), else a private redis-server on a free port. The SMTP server is an
in-process sink that discards what it receives.

Flags:
`

func parseFlags(args []string, getenv func(string) string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("sendq bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	fs.IntVar(&o.n, "n", 20000, "emails per phase")
	fs.IntVar(&o.c, "c", 64, "concurrent HTTP clients of the intake phases")
	fs.IntVar(&o.rounds, "rounds", 3, "repeat the whole measurement this many times, alternating sendq first and baselines first; the table shows medians")
	fs.IntVar(&o.pool, "pool", 8, "sendq's SMTP pool size (and the raw SMTP baseline's connections)")
	fs.IntVar(&o.concurrency, "worker-concurrency", 0, "sendq worker concurrency; 0: four times the pool, as sendq")
	fs.IntVar(&o.fetchers, "worker-fetchers", 0, "asynq servers of each sendq worker; 0: sendq's default")
	fs.IntVar(&o.workers, "workers", 1, "sendq workers delivering together (in this process, each with its own pool)")
	fs.IntVar(&o.naiveConcurrency, "naive-concurrency", 32, "concurrency of the naive worker baseline")
	fs.IntVar(&o.noopConcurrency, "noop-concurrency", 50, "concurrency of the asynq no-op baseline")
	fs.IntVar(&o.enqueueWorkers, "enqueue-goroutines", 16, "goroutines of the asynq Enqueue-alone baseline")
	fs.DurationVar(&o.smtpLatency, "smtp-latency", 0, "the sink's delay before answering the end of DATA, e.g. 40ms (a remote relay)")
	fs.IntVar(&o.bodyBytes, "body-bytes", 1024, "size of each email's Body")
	fs.IntVar(&o.rcpts, "rcpts", 1, "recipients per email")
	fs.StringVar(&o.redisURL, "redis-url", getenv("REDIS_URL"), "Redis URL of an empty database (env REDIS_URL); unset: a private redis-server")
	fs.StringVar(&o.target, "target", "", "base URL of a running sendq (http://host:8080): measure its intake only")
	fs.StringVar(&o.apiKey, "api-key", "", "API key for -target; default: the first of SENDQ_API_KEYS")
	fs.StringVar(&o.from, "from", "Bench <bench@bench.sendq.example>", "From of every email")
	fs.StringVar(&o.jsonFile, "json", "", "also write the results as JSON to this file")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of the whole run to this file; samples carry a component label (loadgen, sendq-api, sendq-worker, smtp-sink, naive-api, naive-worker, asynq-noop, raw-smtp) for pprof -tagfocus")
	fs.DurationVar(&o.liveDuration, "live-duration", 3*time.Second, "length of the paced live-latency phase; 0 skips it")
	fs.Float64Var(&o.liveRate, "live-rate", 0, "emails/s of the live phase; 0: a quarter of the measured delivery rate (the API and the load generator share the cores with the worker)")
	fs.BoolVar(&o.baselines, "baselines", true, "measure the baselines (false: sendq only)")
	fs.DurationVar(&o.stall, "stall-timeout", 30*time.Second, "fail a phase that makes no progress for this long")
	fs.IntVar(&o.prioBulk, "priority-bulk", 50000, "bulk emails queued for the priority phase (last round; at most 10 x -n): the worker is busy with them while high and normal ones are posted; 0 skips it")
	fs.BoolVar(&o.prioBatches, "priority-batches", false, "queue the priority phase's bulk backlog as 1,000-message batches (chunk tasks) instead of one task per email")
	fs.IntVar(&o.prioN, "priority-n", 50, "high emails, then normal ones, posted one every 100 ms in the priority phase")
	fs.IntVar(&o.tplBatches, "templated-batches", 20, "batches of 1,000 templated messages posted in the templated-batch phase (last round); 0 skips it")
	fs.BoolVar(&o.batchPhase, "batch", true, "measure the batch phases: batch intake (POST /v1/emails/batch), then the delivery of what it queued")
	fs.IntVar(&o.batchSize, "batch-size", 1000, "messages per batch of the batch phases (each like a single send of the run)")
	fs.IntVar(&o.batchC, "batch-c", 4, "concurrent HTTP clients posting batches")
	fs.IntVar(&o.batchN, "batch-n", 0, "emails of the batch phases (whole batches): posted, then delivered from the queue; 0: -n")
	fs.IntVar(&o.batchRSS, "batch-rss", 0, "last round: queue this many batch emails (e.g. 100000), then sample the process' RSS while the worker delivers them; 0 skips it")
	fs.BoolVar(&o.verbose, "v", false, "write sendq's logs (info and up) to stderr")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	var errs []string
	for _, f := range []struct {
		name string
		v    int
	}{{"n", o.n}, {"c", o.c}, {"rounds", o.rounds}, {"pool", o.pool}, {"workers", o.workers}, {"naive-concurrency", o.naiveConcurrency},
		{"noop-concurrency", o.noopConcurrency}, {"enqueue-goroutines", o.enqueueWorkers}, {"rcpts", o.rcpts},
		{"batch-size", o.batchSize}, {"batch-c", o.batchC}} {
		if f.v < 1 {
			errs = append(errs, fmt.Sprintf("-%s must be at least 1", f.name))
		}
	}
	if o.batchRSS < 0 || o.batchN < 0 {
		errs = append(errs, "-batch-n and -batch-rss may not be negative")
	}
	if o.batchN == 0 {
		o.batchN = o.n
	}
	// A short run (small -n) posts smaller batches.
	o.batchSize = min(o.batchSize, o.batchN)
	if o.concurrency < 0 || o.fetchers < 0 || o.bodyBytes < 0 || o.smtpLatency < 0 || o.liveDuration < 0 || o.liveRate < 0 {
		errs = append(errs, "-worker-concurrency, -worker-fetchers, -body-bytes, -smtp-latency, -live-duration and -live-rate may not be negative")
	}
	if o.stall <= 0 {
		errs = append(errs, "-stall-timeout must be positive")
	}
	if o.target != "" {
		u, err := url.Parse(o.target)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Sprintf("-target %q is not an http(s) URL", o.target))
		}
		if o.apiKey == "" {
			first, _, _ := strings.Cut(getenv("SENDQ_API_KEYS"), ",")
			o.apiKey, _, _ = strings.Cut(strings.TrimSpace(first), ":")
		}
	}
	if o.concurrency == 0 {
		o.concurrency = 4 * o.pool
	}
	if len(errs) > 0 {
		return nil, errors.New(strings.Join(errs, "; "))
	}
	return o, nil
}

// Main runs `sendq bench` with args (the flags after "bench"); getenv reads
// the environment (REDIS_URL, SENDQ_API_KEYS). It prints the table on
// stdout, progress and errors on stderr, and returns the exit code: 0, 1 if
// the run failed (a table is still printed for what was measured), 2 for
// bad flags. Canceling ctx stops the run.
func Main(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	o, err := parseFlags(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "sendq bench: %v\n", err)
		return 2
	}
	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err != nil {
			fmt.Fprintf(stderr, "sendq bench: %v\n", err)
			return 1
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			_ = f.Close()
			fmt.Fprintf(stderr, "sendq bench: cpu profile: %v\n", err)
			return 1
		}
		defer func() {
			pprof.StopCPUProfile()
			_ = f.Close()
		}()
	}
	r := &runner{o: o, stderr: stderr, prog: newProgress(stderr)}
	runErr := r.run(ctx)
	rep := r.report()
	rep.writeTable(stdout)
	if r.prio != nil {
		r.prio.write(stdout)
	}
	if r.tpl != nil {
		r.tpl.write(stdout)
	}
	if o.jsonFile != "" {
		if err := rep.writeJSON(o.jsonFile); err != nil && runErr == nil {
			runErr = err
		}
	}
	if runErr != nil {
		fmt.Fprintf(stderr, "sendq bench: %v\n", runErr)
		return 1
	}
	return 0
}

// runner holds one run's shared pieces and what it measured.
type runner struct {
	o      *options
	stderr io.Writer
	prog   *progress
	log    *slog.Logger
	alog   asynq.Logger

	redisURL  string
	redisDesc string
	private   *redisServer          // the private redis-server, if one was started
	loadAvg   float64               // at the start
	rdb       redis.UniversalClient // for FLUSHDB and INFO
	asynqOpt  asynq.RedisConnOpt
	sink      *sink
	req       *request
	apiKey    string

	prio *prioResult // the priority phase's, if it ran
	tpl  *tplResult  // the templated-batch phase's, if it ran

	rounds []*results // one per round begun, in order
	res    *results   // the current round's
}

// results is everything one round measured; zero values were not measured.
type results struct {
	round      int       // 1-based
	sendqFirst bool      // the order of this round
	start      time.Time // when the round began
	end        time.Time // when it ended (zero if it failed)

	intake     *loadResult // sendq's, or the target's
	intakeMem  float64     // Redis bytes per queued email
	delivery   throughput
	backlogLat []time.Duration
	liveLat    []time.Duration
	liveRate   float64
	badIDs     int   // received messages whose Message-ID gave no enqueue time
	rssPeak    int64 // bytes, during sendq's delivery

	naiveIntake  *loadResult
	naiveMem     float64
	naiveWorker  throughput
	enqueueAlone throughput
	noop         throughput
	raw          throughput

	batchIntake                      *batchLoad
	batchMem                         float64 // Redis bytes per queued batch email
	batchDelivery                    throughput
	batchIntakeCPU, batchDeliveryCPU cost
	batchRSS                         int64 // bytes: peak while batchRSSN batch emails were delivered
	batchRSSN                        int

	// CPU used per phase, by this process and by Redis: unlike rates,
	// CPU per email hardly moves when other work shares the machine.
	intakeCPU, naiveIntakeCPU                    cost
	deliveryCPU, naiveWorkerCPU, noopCPU, rawCPU cost
}

// cost is the CPU time one phase of n emails used.
type cost struct {
	n     int
	self  time.Duration // this process: load generator or SMTP sink included
	redis time.Duration // the Redis server (INFO cpu)
}

// selfPer and redisPer are microseconds per email.
func (c cost) selfPer() float64  { return perEmailMicros(c.self, c.n) }
func (c cost) redisPer() float64 { return perEmailMicros(c.redis, c.n) }

func perEmailMicros(d time.Duration, n int) float64 {
	if n == 0 {
		return 0
	}
	return float64(d) / float64(time.Microsecond) / float64(n)
}

// meter starts measuring CPU; the returned function ends the measurement
// for n emails.
func (r *runner) meter(ctx context.Context) func(n int) cost {
	self, red := processCPU(), redisCPU(ctx, r.rdb)
	return func(n int) cost {
		return cost{n: n, self: processCPU() - self, redis: redisCPU(ctx, r.rdb) - red}
	}
}

// throughput is n events in d.
type throughput struct {
	n int
	d time.Duration
}

func (t throughput) perSec() float64 { return rate(t.n, t.d) }

func (r *runner) run(ctx context.Context) error {
	o := r.o
	r.loadAvg = loadAvg()
	// sendq logs at info, one line per delivery attempt, as by default:
	// formatted all the same when discarded, so the cost is measured.
	var logOut io.Writer = io.Discard
	if o.verbose {
		logOut = r.stderr
	}
	r.log = slog.New(slog.NewTextHandler(logOut, &slog.HandlerOptions{Level: slog.LevelInfo}))
	r.alog = worker.NewAsynqLogger(r.log)
	runID := make([]byte, 6)
	_, _ = rand.Read(runID)

	if err := r.startRedis(ctx); err != nil {
		return err
	}
	defer r.rdb.Close()
	if o.redisURL == "" {
		// startRedis started a private server; stopRedis kills it.
		defer r.stopRedis()
	} else {
		defer func() { _ = r.flush(context.WithoutCancel(ctx)) }() // leave the database empty, as found
	}

	if o.target != "" {
		r.apiKey = o.apiKey
	} else {
		r.apiKey = "bench-" + hex.EncodeToString(runID)
	}
	r.req = newRequest(o.from, o.rcpts, o.bodyBytes, r.apiKey, hex.EncodeToString(runID))

	// Each side of a round is a list of phases; which side runs first
	// alternates (see round).
	var sendqSide, baseSide []func(context.Context) error
	if o.target != "" {
		sendqSide = append(sendqSide, r.targetIntake)
		if o.baselines {
			baseSide = append(baseSide, func(ctx context.Context) error { return r.naive(ctx, false) })
		}
	} else {
		s, err := startSink(o.smtpLatency)
		if err != nil {
			return fmt.Errorf("smtp sink: %w", err)
		}
		r.sink = s
		defer s.close()
		sendqSide = append(sendqSide, r.sendq)
		if o.batchPhase {
			sendqSide = append(sendqSide, r.batch)
		}
		if o.prioBulk > 0 {
			sendqSide = append(sendqSide, r.priority)
		}
		if o.tplBatches > 0 {
			sendqSide = append(sendqSide, r.templated)
		}
		if o.baselines {
			baseSide = append(baseSide, func(ctx context.Context) error { return r.naive(ctx, true) }, r.asynqNoop, r.rawSMTP)
		}
	}
	for i := 1; i <= o.rounds; i++ {
		if err := r.round(ctx, i, sendqSide, baseSide); err != nil {
			if o.rounds > 1 {
				return fmt.Errorf("round %d of %d: %w", i, o.rounds, err)
			}
			return err
		}
	}
	return nil
}

// round runs round i: odd rounds sendq's side first, then the baselines;
// even rounds the baselines first, so that a machine getting slower or
// faster during the run weighs on both sides alike.
func (r *runner) round(ctx context.Context, i int, sendqSide, baseSide []func(context.Context) error) error {
	r.res = &results{round: i, sendqFirst: i%2 == 1, start: time.Now()}
	r.rounds = append(r.rounds, r.res)
	r.prog.setRound(i, r.o.rounds)
	phases := append(append([]func(context.Context) error{}, sendqSide...), baseSide...)
	if !r.res.sendqFirst {
		phases = append(append([]func(context.Context) error{}, baseSide...), sendqSide...)
	}
	for _, ph := range phases {
		if err := ph(ctx); err != nil {
			return err
		}
	}
	r.res.end = time.Now()
	return nil
}

// lastRound reports whether the current round is the last: the live phase
// and the RSS sampling run only then.
func (r *runner) lastRound() bool { return r.res.round == r.o.rounds }

// phase is the name of a load phase in the current round, for the
// Idempotency-Keys: unique per round, so that a -target sendq (whose Redis
// is not flushed) never sees a key again.
func (r *runner) phase(name string) string {
	if r.o.rounds == 1 {
		return name
	}
	return name + strconv.Itoa(r.res.round)
}

// medianDelivery is sendq's median delivery rate over the rounds so far.
func (r *runner) medianDelivery() float64 {
	var rates []float64
	for _, res := range r.rounds {
		if res.delivery.n > 0 {
			rates = append(rates, res.delivery.perSec())
		}
	}
	if m := median(rates); m != nil {
		return *m
	}
	return 0
}

func (r *runner) startRedis(ctx context.Context) error {
	r.redisURL = r.o.redisURL
	if r.redisURL == "" {
		s, err := startRedis()
		if err != nil {
			return err
		}
		r.redisURL, r.redisDesc = s.url(), "private redis-server on "+s.addr
		r.private = s
	} else {
		u, err := url.Parse(r.redisURL)
		if err != nil {
			return fmt.Errorf("REDIS_URL does not parse")
		}
		r.redisDesc = u.Redacted()
	}
	rdb, err := queue.NewRedisClient(r.redisURL)
	if err != nil {
		r.stopRedis()
		return err
	}
	if err := r.checkRedis(ctx, rdb); err != nil {
		_ = rdb.Close()
		r.stopRedis()
		return err
	}
	r.rdb = rdb
	return nil
}

// checkRedis reads the server's version and refuses a database that holds
// keys: the bench flushes it between phases.
func (r *runner) checkRedis(ctx context.Context, rdb redis.UniversalClient) error {
	opt, err := asynq.ParseRedisURI(r.redisURL)
	if err != nil {
		return fmt.Errorf("REDIS_URL for asynq: %w", err)
	}
	r.asynqOpt = opt
	n, err := rdb.DBSize(ctx).Result()
	if err != nil {
		return fmt.Errorf("redis: %w", err)
	}
	if n > 0 && r.o.redisURL != "" {
		return fmt.Errorf("the Redis database holds %d keys; sendq bench flushes it between phases, so give it an empty one (e.g. redis://host:6379/15)", n)
	}
	if v, err := rdb.Info(ctx, "server").Result(); err == nil {
		for _, line := range strings.Split(v, "\n") {
			if ver, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:"); ok {
				r.redisDesc += " (Redis " + ver + ")"
			}
		}
	}
	return nil
}

func (r *runner) stopRedis() {
	if r.private != nil {
		r.private.stop()
		r.private = nil
	}
}

func (r *runner) flush(ctx context.Context) error {
	if err := r.rdb.FlushDB(ctx).Err(); err != nil {
		return fmt.Errorf("redis FLUSHDB: %w", err)
	}
	return nil
}

// load runs one intake load against url with the progress bar, labelled
// as the load generator in the CPU profile.
// rq, if given, replaces the run's request.
func (r *runner) load(ctx context.Context, name, url, phase string, n, c int, every time.Duration, rq ...*request) *loadResult {
	req := r.req
	if len(rq) > 0 {
		req = rq[0]
	}
	client := newHTTPClient(c)
	defer client.CloseIdleConnections()
	var count atomic.Int64
	stop := r.prog.track(name, n, &count)
	defer stop()
	var res *loadResult
	pprof.Do(ctx, pprof.Labels("component", "loadgen"), func(ctx context.Context) {
		res = runLoad(ctx, client, url, req, phase, n, c, every, &count)
	})
	return res
}

// await waits until cd is done, and fails when its count does not move for
// the stall timeout (a stuck phase must not hang the run).
func (r *runner) await(ctx context.Context, name string, cd *countdown) error {
	stop := r.prog.track(name, int(cd.target), &cd.count)
	defer stop()
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	last, moved := cd.count.Load(), time.Now()
	for {
		select {
		case <-cd.done:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case now := <-t.C:
			if c := cd.count.Load(); c != last {
				last, moved = c, now
			} else if now.Sub(moved) > r.o.stall {
				return fmt.Errorf("%s: no progress for %s (%d of %d done)", name, r.o.stall, c, cd.target)
			}
		}
	}
}

// memDelta runs f and returns Redis used_memory after minus before.
func (r *runner) memDelta(ctx context.Context, f func()) (int64, error) {
	before, err := usedMemory(ctx, r.rdb)
	if err != nil {
		return 0, err
	}
	f()
	after, err := usedMemory(ctx, r.rdb)
	if err != nil {
		return 0, err
	}
	return after - before, nil
}

func checkLoad(name string, res *loadResult) error {
	if res.Accepted == res.N {
		return nil
	}
	return fmt.Errorf("%s: %d of %d requests not accepted (%v); first: %s", name, res.N-res.Accepted, res.N, res.Statuses, res.FirstErr)
}

// sendq measures sendq's intake, then its delivery of that backlog, then
// the live latency.
func (r *runner) sendq(ctx context.Context) error {
	o := r.o
	if err := r.flush(ctx); err != nil {
		return err
	}
	api, err := startSendqAPI(r.redisURL, r.apiKey, r.log)
	if err != nil {
		return fmt.Errorf("sendq api: %w", err)
	}
	defer api.stop() // after the worker's Shutdown (deferred below)

	runtime.GC()
	var in *loadResult
	done := r.meter(ctx)
	phase := r.phase("sendq")
	mem, err := r.memDelta(ctx, func() { in = r.load(ctx, "sendq intake", api.url, phase, o.n, o.c, 0) })
	r.res.intake = in
	r.res.intakeCPU = done(o.n)
	if err != nil {
		return err
	}
	if err := checkLoad("sendq intake", in); err != nil {
		return err
	}
	r.res.intakeMem = float64(mem) / float64(in.Accepted)

	// -workers K: K independent workers (each its own asynq server and
	// pool), as K worker processes would run, but in this process.
	workers := make([]*worker.Worker, o.workers)
	for i := range workers {
		if workers[i], err = api.newWorker(r.sink.addr, o.pool, o.concurrency, o.fetchers); err != nil {
			return fmt.Errorf("sendq worker: %w", err)
		}
	}
	ph := r.sink.expect(in.Accepted, true)
	runtime.GC()
	// The RSS sampler wakes every 50ms: only in the last round, so that
	// the other rounds measure the worker alone.
	var rss *rssSampler
	if r.lastRound() {
		rss = sampleRSS()
	}
	stopRSS := func() {
		if rss != nil {
			r.res.rssPeak = rss.stop()
			rss = nil
		}
	}
	done = r.meter(ctx)
	start := time.Now()
	for _, w := range workers {
		pprof.Do(ctx, pprof.Labels("component", "sendq-worker"), func(context.Context) { err = w.Start() })
		if err != nil {
			stopRSS()
			return err
		}
		defer w.Shutdown()
	}
	err = r.await(ctx, "sendq delivery", ph.countdown)
	r.res.deliveryCPU = done(in.Accepted)
	stopRSS()
	if err != nil {
		return err
	}
	r.res.delivery = throughput{n: in.Accepted, d: ph.last.Sub(start)}
	var bad int
	r.res.backlogLat, bad = enqueueTo250(ph.receipts(), r.req.sentTimes(phase, in))
	r.res.badIDs += bad

	if o.liveDuration <= 0 || !r.lastRound() {
		return nil
	}
	// Live: a paced stream below the delivery rate, the worker running.
	lr := o.liveRate
	if lr <= 0 {
		lr = r.medianDelivery() / 4
	}
	n := max(int(lr*o.liveDuration.Seconds()), 10)
	r.res.liveRate = lr
	ph = r.sink.expect(n, true)
	live := r.load(ctx, "sendq live", api.url, "live", n, min(o.c, n), time.Duration(float64(time.Second)/lr))
	if err := checkLoad("sendq live", live); err != nil {
		return err
	}
	if err := r.await(ctx, "sendq live", ph.countdown); err != nil {
		return err
	}
	r.res.liveLat, bad = enqueueTo250(ph.receipts(), r.req.sentTimes("live", live))
	r.res.badIDs += bad
	return nil
}

// targetIntake measures the intake of a running sendq at -target.
func (r *runner) targetIntake(ctx context.Context) error {
	u := strings.TrimSuffix(r.o.target, "/") + "/v1/emails"
	r.res.intake = r.load(ctx, "target intake", u, r.phase("target"), r.o.n, r.o.c, 0)
	return checkLoad("target intake", r.res.intake)
}

// naive measures the naive intake and, with deliver, the naive worker on
// what it queued.
func (r *runner) naive(ctx context.Context, deliver bool) error {
	o := r.o
	if err := r.flush(ctx); err != nil {
		return err
	}
	api, err := startNaiveAPI(r.asynqOpt)
	if err != nil {
		return fmt.Errorf("naive api: %w", err)
	}
	runtime.GC()
	var in *loadResult
	done := r.meter(ctx)
	mem, err := r.memDelta(ctx, func() { in = r.load(ctx, "naive intake", api.url, r.phase("naive"), o.n, o.c, 0) })
	r.res.naiveIntakeCPU = done(o.n)
	api.stop()
	r.res.naiveIntake = in
	if err != nil {
		return err
	}
	if err := checkLoad("naive intake", in); err != nil {
		return err
	}
	r.res.naiveMem = float64(mem) / float64(in.Accepted)
	if !deliver {
		return nil
	}

	ph := r.sink.expect(in.Accepted, false)
	runtime.GC()
	done = r.meter(ctx)
	start := time.Now()
	var srv *asynq.Server
	pprof.Do(ctx, pprof.Labels("component", "naive-worker"), func(context.Context) {
		srv, err = startNaiveWorker(r.asynqOpt, r.sink.addr, o.naiveConcurrency, r.alog)
	})
	if err != nil {
		return err
	}
	defer srv.Shutdown()
	if err := r.await(ctx, "naive worker", ph.countdown); err != nil {
		return err
	}
	r.res.naiveWorkerCPU = done(in.Accepted)
	r.res.naiveWorker = throughput{n: in.Accepted, d: ph.last.Sub(start)}
	return nil
}

// asynqNoop measures asynq's Enqueue alone, then an asynq server with a
// no-op handler on those tasks.
func (r *runner) asynqNoop(ctx context.Context) error {
	o := r.o
	if err := r.flush(ctx); err != nil {
		return err
	}
	payload := r.req.naivePayload()
	var count atomic.Int64
	stop := r.prog.track("asynq enqueue", o.n, &count)
	var d time.Duration
	var err error
	pprof.Do(ctx, pprof.Labels("component", "loadgen"), func(ctx context.Context) {
		d, err = enqueueNoop(ctx, r.asynqOpt, payload, o.n, o.enqueueWorkers, &count)
	})
	stop()
	if err != nil {
		return err
	}
	r.res.enqueueAlone = throughput{n: o.n, d: d}

	cd := newCountdown(o.n)
	runtime.GC()
	done := r.meter(ctx)
	start := time.Now()
	var srv *asynq.Server
	pprof.Do(ctx, pprof.Labels("component", "asynq-noop"), func(context.Context) {
		srv, err = startNoop(r.asynqOpt, o.noopConcurrency, cd, r.alog)
	})
	if err != nil {
		return err
	}
	defer srv.Shutdown()
	if err := r.await(ctx, "asynq no-op", cd); err != nil {
		return err
	}
	r.res.noopCPU = done(o.n)
	r.res.noop = throughput{n: o.n, d: cd.last.Sub(start)}
	return nil
}

// rawSMTP measures go-mail over pool-many reused connections, no Redis.
func (r *runner) rawSMTP(ctx context.Context) error {
	o := r.o
	e, err := r.req.email()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ph := r.sink.expect(o.n, false)
	runtime.GC()
	done := r.meter(ctx)
	start := time.Now()
	errc := make(chan error, 1)
	// The goroutine ends when every message is sent, on an error, or when
	// this function returns and cancels ctx.
	go pprof.Do(ctx, pprof.Labels("component", "raw-smtp"), func(ctx context.Context) {
		errc <- rawSMTP(ctx, r.sink.addr, e, o.n, o.pool)
	})
	if err := r.await(ctx, "raw smtp", ph.countdown); err != nil {
		return err
	}
	if err := <-errc; err != nil {
		return err
	}
	r.res.rawCPU = done(o.n)
	r.res.raw = throughput{n: o.n, d: ph.last.Sub(start)}
	return nil
}
