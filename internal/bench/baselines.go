package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hibiken/asynq"
	gomail "github.com/wneessen/go-mail"

	"github.com/sendq/sendq/queue"
	"github.com/sendq/sendq/worker"
)

// The baselines are what a user could write in an afternoon, and what
// asynq and SMTP allow by themselves on the same machine. They run against
// the same Redis (flushed between phases) and the same SMTP sink as sendq.

// naiveTaskType is the task type of the naive intake and worker.
const naiveTaskType = "naive:send"

// naiveEmail is the naive intake's request and task payload.
type naiveEmail struct {
	From    string
	To      string
	Subject string
	Body    string
	IsHtml  bool // the connector's spelling
}

// naiveAPI is the naive intake: a bare handler that decodes the body into
// a struct and calls asynq's Enqueue. No auth, no validation, no
// idempotency, no metrics.
type naiveAPI struct {
	client *asynq.Client
	srv    *http.Server
	served chan error
	url    string
}

func startNaiveAPI(redis asynq.RedisConnOpt) (*naiveAPI, error) {
	a := &naiveAPI{client: asynq.NewClient(redis), served: make(chan error, 1)}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/emails", func(w http.ResponseWriter, r *http.Request) {
		var e naiveEmail
		if err := json.NewDecoder(r.Body).Decode(&e); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		payload, err := json.Marshal(e)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		info, err := a.client.Enqueue(asynq.NewTask(naiveTaskType, payload))
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusAccepted)
		fmt.Fprintf(w, `{"id":%q}`, info.ID)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		_ = a.client.Close()
		return nil, err
	}
	a.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	a.url = "http://" + ln.Addr().String() + "/v1/emails"
	// Serve returns when stop shuts the server down.
	go pprof.Do(context.Background(), pprof.Labels("component", "naive-api"), func(context.Context) {
		a.served <- a.srv.Serve(ln)
	})
	return a, nil
}

func (a *naiveAPI) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = a.srv.Shutdown(ctx)
	<-a.served
	_ = a.client.Close()
}

// startNaiveWorker starts an asynq server whose handler builds a go-mail
// message and calls DialAndSend for every email: one SMTP connection per
// email. Stop it with Shutdown.
func startNaiveWorker(redis asynq.RedisConnOpt, relayAddr string, concurrency int, logger asynq.Logger) (*asynq.Server, error) {
	host, port, err := splitAddr(relayAddr)
	if err != nil {
		return nil, err
	}
	client, err := gomail.NewClient(host, gomail.WithPort(port), gomail.WithTLSPolicy(gomail.NoTLS))
	if err != nil {
		return nil, fmt.Errorf("naive worker: %w", err)
	}
	srv := asynq.NewServer(redis, asynq.Config{Concurrency: concurrency, Logger: logger, LogLevel: asynq.WarnLevel})
	mux := asynq.NewServeMux()
	mux.HandleFunc(naiveTaskType, func(ctx context.Context, t *asynq.Task) error {
		var e naiveEmail
		if err := json.Unmarshal(t.Payload(), &e); err != nil {
			return fmt.Errorf("%w: %w", err, asynq.SkipRetry)
		}
		m := gomail.NewMsg()
		if err := m.From(e.From); err != nil {
			return err
		}
		if err := m.To(strings.Split(e.To, ";")...); err != nil {
			return err
		}
		m.Subject(e.Subject)
		ct := gomail.TypeTextPlain
		if e.IsHtml {
			ct = gomail.TypeTextHTML
		}
		m.SetBodyString(ct, e.Body)
		return client.DialAndSendWithContext(ctx, m)
	})
	if err := srv.Start(mux); err != nil {
		return nil, fmt.Errorf("naive worker: %w", err)
	}
	return srv, nil
}

// enqueueNoop stores n tasks carrying payload with c goroutines calling
// asynq's Enqueue directly (no HTTP), and returns how long it took.
func enqueueNoop(ctx context.Context, redis asynq.RedisConnOpt, payload []byte, n, c int, progress *atomic.Int64) (time.Duration, error) {
	client := asynq.NewClient(redis)
	defer client.Close()
	var next atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	start := time.Now()
	for g := 0; g < c; g++ {
		wg.Add(1)
		go func() { // exits when every task is claimed or on the first error
			defer wg.Done()
			for next.Add(1) <= int64(n) && ctx.Err() == nil && firstErr.Load() == nil {
				if _, err := client.EnqueueContext(ctx, asynq.NewTask("noop", payload)); err != nil {
					firstErr.CompareAndSwap(nil, err)
				}
				progress.Add(1)
			}
		}()
	}
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		return 0, fmt.Errorf("asynq enqueue: %w", err)
	}
	return time.Since(start), ctx.Err()
}

// startNoop starts an asynq server with a handler that does nothing but
// count down. Stop it with Shutdown.
func startNoop(redis asynq.RedisConnOpt, concurrency int, cd *countdown, logger asynq.Logger) (*asynq.Server, error) {
	srv := asynq.NewServer(redis, asynq.Config{Concurrency: concurrency, Logger: logger, LogLevel: asynq.WarnLevel})
	if err := srv.Start(asynq.HandlerFunc(func(context.Context, *asynq.Task) error {
		cd.add(time.Now())
		return nil
	})); err != nil {
		return nil, fmt.Errorf("asynq no-op server: %w", err)
	}
	return srv, nil
}

// rawSMTP sends n pre-built messages over conns go-mail connections, each
// dialed once and reused (no NOOP before each message), no Redis: what
// SMTP and go-mail allow over as many connections as sendq's pool.
func rawSMTP(ctx context.Context, relayAddr string, e *queue.Email, n, conns int) error {
	host, port, err := splitAddr(relayAddr)
	if err != nil {
		return err
	}
	var next atomic.Int64
	errs := make(chan error, conns)
	var wg sync.WaitGroup
	for g := 0; g < conns; g++ {
		wg.Add(1)
		go func() { // exits when every message is claimed or on an error
			defer wg.Done()
			msg, err := worker.BuildMessage(e)
			if err != nil {
				errs <- err
				return
			}
			c, err := gomail.NewClient(host, gomail.WithPort(port), gomail.WithTLSPolicy(gomail.NoTLS), gomail.WithoutNoop())
			if err != nil {
				errs <- err
				return
			}
			if err := c.DialWithContext(ctx); err != nil {
				errs <- fmt.Errorf("raw smtp dial: %w", err)
				return
			}
			defer c.Close()
			for next.Add(1) <= int64(n) && ctx.Err() == nil {
				if err := c.Send(msg); err != nil {
					errs <- fmt.Errorf("raw smtp send: %w", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs // nil when no goroutine failed
}

func splitAddr(addr string) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	return host, port, err
}
