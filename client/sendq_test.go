package client_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/internal/smtptest"
	"github.com/sendq/sendq/metrics"
	"github.com/sendq/sendq/producer"
	"github.com/sendq/sendq/queue"
	"github.com/sendq/sendq/worker"
)

// The tests and examples run the client against a real sendq: its intake
// and worker in process, as `sendq serve` builds them, on a real
// redis-server and delivering to a real SMTP server.

// apiKey is the key every test sendq accepts.
const apiKey = "client-test-key-1"

// sendqURL is the address of the sendq the examples use, started by
// TestMain.
var sendqURL string

func TestMain(m *testing.M) {
	stop, err := startShared()
	if err != nil {
		fmt.Fprintln(os.Stderr, "start sendq:", err)
		os.Exit(1)
	}
	code := m.Run()
	stop()
	// As goleak.VerifyTestMain, after the shared sendq has stopped.
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// startShared starts the examples' sendq on its own Redis and SMTP server.
func startShared() (stop func(), err error) {
	var redisURL string
	var stopRedis func()
	if bin, lerr := exec.LookPath("redis-server"); lerr == nil {
		dir, err := os.MkdirTemp("", "sendq-client")
		if err != nil {
			return nil, err
		}
		rs, err := redistest.Launch(bin, dir)
		if err != nil {
			_ = os.RemoveAll(dir)
			return nil, err
		}
		redisURL, stopRedis = rs.URL(), func() { rs.Stop(); _ = os.RemoveAll(dir) }
	} else if os.Getenv("SENDQ_TEST_REQUIRE_REDIS") != "" {
		return nil, fmt.Errorf("redis-server not found and SENDQ_TEST_REQUIRE_REDIS is set: %w", lerr)
	} else {
		mr, err := miniredis.Run()
		if err != nil {
			return nil, err
		}
		redisURL, stopRedis = "redis://"+mr.Addr(), mr.Close
	}
	sink, err := smtptest.Listen("127.0.0.1:0")
	if err != nil {
		stopRedis()
		return nil, err
	}
	s, err := startSendq(redisURL, sink.Addr, nil)
	if err != nil {
		_ = sink.Close()
		stopRedis()
		return nil, err
	}
	sendqURL = s.URL
	return func() { s.stop(); _ = sink.Close(); stopRedis() }, nil
}

// server is one running sendq.
type server struct {
	URL   string // http://127.0.0.1:port
	M     *metrics.Metrics
	Redis *redistest.Server // nil for the shared one
	Sink  *smtptest.Server  // nil for the shared one
	stop  func()
}

// newServer starts a sendq for t on a Redis and an SMTP server of its own;
// mutate may change the intake's configuration.
func newServer(t *testing.T, mutate func(*producer.Config)) *server {
	t.Helper()
	rs := redistest.Start(t)
	sink := smtptest.Start(t)
	s, err := startSendq(rs.URL(), sink.Addr, mutate)
	if err != nil {
		t.Fatal(err)
	}
	s.Redis, s.Sink = rs, sink
	t.Cleanup(s.stop)
	return s
}

// startSendq starts the intake and a worker on redisURL, delivering to
// the SMTP server at smtpAddr, with API key apiKey.
func startSendq(redisURL, smtpAddr string, mutate func(*producer.Config)) (*server, error) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	rdb, err := queue.NewRedisClient(redisURL)
	if err != nil {
		return nil, err
	}
	reg := prometheus.NewRegistry()
	m := metrics.New(reg, reg)
	store := queue.NewStore(rdb, time.Hour)
	keys, err := producer.ParseAPIKeys(apiKey)
	if err != nil {
		return nil, err
	}
	enq := asynq.NewClientFromRedisClient(rdb)
	cfg := producer.Config{Keys: keys, Metrics: m, Logger: log, RedisTimeout: time.Second}
	if mutate != nil {
		mutate(&cfg)
	}
	api, err := producer.New(rdb, enq, asynq.NewInspectorFromRedisClient(rdb), store, cfg)
	if err != nil {
		return nil, closeAll(err, enq, rdb)
	}
	relay, err := worker.ParseRelay("smtp://" + smtpAddr + "?tls=none")
	if err != nil {
		return nil, closeAll(err, enq, rdb)
	}
	w, err := worker.New(rdb, worker.Config{
		Relay: relay, Pool: worker.PoolConfig{Size: 2, CommandTimeout: 2 * time.Second},
		Concurrency: 4, Fetchers: 1, RetryBaseDelay: 100 * time.Millisecond, RetryMaxDelay: time.Second,
		ShutdownTimeout: 5 * time.Second, Store: store, Logger: log, Metrics: m,
	})
	if err != nil {
		return nil, closeAll(err, enq, rdb)
	}
	if err := w.Start(); err != nil {
		return nil, closeAll(err, enq, rdb)
	}
	mux := http.NewServeMux()
	api.Register(mux)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		w.Shutdown()
		return nil, closeAll(err, enq, rdb)
	}
	srv := producer.NewHTTPServer(m.Instrument(producer.ConnectorPaths(mux)), log)
	served := make(chan struct{})
	go func() { // ends when srv.Shutdown runs, in stop
		defer close(served)
		_ = srv.Serve(ln)
	}()
	return &server{URL: "http://" + ln.Addr().String(), M: m, stop: func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-served
		w.Shutdown()
		_ = enq.Close()
		_ = rdb.Close()
	}}, nil
}

func closeAll(err error, enq *asynq.Client, rdb redis.UniversalClient) error {
	return errors.Join(err, enq.Close(), rdb.Close())
}
