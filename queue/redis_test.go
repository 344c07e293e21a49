package queue_test

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/queue"
)

func scriptsPipelined(t *testing.T, rs *redistest.Server, opt *redis.Options) redis.UniversalClient {
	t.Helper()
	opt.Addr = rs.Addr
	rdb := redis.NewClient(opt)
	ap, err := queue.NewPipeliner(rdb)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ap.Close(); _ = rdb.Close() })
	return queue.ScriptsPipelined(rdb, ap)
}

// echo counts its runs in KEYS[1] and returns ARGV[1].
var echo = redis.NewScript(`redis.call("INCR", KEYS[1]) return ARGV[1]`)

// echoConcurrently runs echo from n goroutines at once, caller i on key
// keyOf(i) with argument i, and checks that each caller got its own i back.
func echoConcurrently(t *testing.T, c redis.UniversalClient, n int, keyOf func(i int) string) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			got, err := echo.Run(context.Background(), c, []string{keyOf(i)}, i).Text()
			if err == nil && got != strconv.Itoa(i) {
				err = errors.New("caller " + strconv.Itoa(i) + " got " + got)
			}
			if err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// Concurrent callers share batches, and each gets its own reply: the
// script echoes the caller's argument. The first call of a script Redis
// has not seen comes back NOSCRIPT and go-redis falls back to EVAL.
func TestScriptsPipelinedRepliesToEachCaller(t *testing.T) {
	rs := redistest.Start(t)
	c := scriptsPipelined(t, rs, &redis.Options{})
	ctx := context.Background()
	echoConcurrently(t, c, 200, func(int) string { return "calls" })
	if n, err := c.Get(ctx, "calls").Int(); err != nil || n != 200 {
		t.Errorf("the script ran %d times (%v); want 200", n, err)
	}
}

// With Redis frozen, a call ends with its context, not after the client's
// read timeout and retries. A call that was still waiting behind the
// stalled batch when its context ended is never written: it does not run
// when Redis wakes. (The stalled batch itself was written, so it runs.)
func TestScriptsPipelinedEndsWithTheContext(t *testing.T) {
	rs := redistest.Start(t)
	c := scriptsPipelined(t, rs, &redis.Options{ReadTimeout: 20 * time.Second, MaxRetries: 1})
	checkDropsGivenUp(t, c, "runs", func() func() { return rs.Pause(t) })
}

func checkDropsGivenUp(t *testing.T, c redis.UniversalClient, key string, pause func() (resume func())) {
	t.Helper()
	incr := redis.NewScript(`return redis.call("INCR", KEYS[1])`)
	keys := []string{key}
	if err := incr.Run(context.Background(), c, keys).Err(); err != nil { // loads the script
		t.Fatal(err)
	}
	resume := pause()
	run := func() <-chan error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		done := make(chan error, 1)
		go func() { defer cancel(); done <- incr.Run(ctx, c, keys).Err() }()
		return done
	}
	stalled := run()                   // written, then Redis does not answer
	time.Sleep(200 * time.Millisecond) // its batch is out
	queued := run()                    // waits behind it
	for name, done := range map[string]<-chan error{"stalled": stalled, "queued": queued} {
		select {
		case err := <-done:
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("%s call on a frozen Redis = %v; want context.DeadlineExceeded", name, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s call on a frozen Redis did not end with its context", name)
		}
	}
	resume()
	// The pipeliner recovers; the queued call was dropped, the stalled one
	// ran: this is the third run.
	n, err := incr.Run(context.Background(), c, keys).Int()
	if err != nil || n != 3 {
		t.Errorf("run after Redis came back = %d, %v; want 3 (the queued call must not have run)", n, err)
	}
}

// On Redis Cluster the pipeliner routes each script by its key's slot; every
// caller still gets its own reply.
func TestScriptsPipelinedOnCluster(t *testing.T) {
	cl := redistest.StartCluster(t, 3)
	rdb, err := queue.NewRedisClient(cl.URL())
	if err != nil {
		t.Fatal(err)
	}
	ap, err := queue.NewPipeliner(rdb)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ap.Close(); _ = rdb.Close() })
	c := queue.ScriptsPipelined(rdb, ap)
	ctx := context.Background()
	// Ten slots over three masters.
	echoConcurrently(t, c, 100, func(i int) string { return "calls:{" + strconv.Itoa(i%10) + "}" })
	total := 0
	for k := range 10 {
		n, err := rdb.Get(ctx, "calls:{"+strconv.Itoa(k)+"}").Int()
		if err != nil {
			t.Fatal(err)
		}
		total += n
	}
	if total != 100 {
		t.Errorf("the script ran %d times; want 100", total)
	}

	// A call that gave up while waiting behind a stalled batch is dropped
	// on a cluster node too.
	key := "given-up:{x}"
	master, err := rdb.(*redis.ClusterClient).MasterForKey(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	checkDropsGivenUp(t, c, key, func() func() { return cl.Pause(t, master.Options().Addr) })
}
