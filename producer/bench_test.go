package producer_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/sendq/sendq/internal/dkimtest"
	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/metrics"
	"github.com/sendq/sendq/producer"
	"github.com/sendq/sendq/queue"
)

// benchRequestBody is the connector's example with a 1 KB HTML body and a
// small attachment: what DecodeRequest sees on every POST /v1/emails.
var benchRequestBody = []byte(`{
  "From": "Sales Bot <sales-bot@contoso.example>",
  "To": "recipient1@contoso.example;recipient2@contoso.example",
  "CC": "owner@contoso.example",
  "Subject": "새 잠재 고객 생성됨",
  "Body": "<p>` + strings.Repeat("A new lead was created in Salesforce. ", 27) + `</p>",
  "IsHtml": true,
  "Importance": "High",
  "Attachments": [{"ContentData": "aGVsbG8gd29ybGQ=", "ContentType": "text/plain", "FileName": "hello.txt"}]
}`)

// BenchmarkDecodeRequest measures decoding and validating one request
// body: the intake's CPU work per email before Redis.
func BenchmarkDecodeRequest(b *testing.B) {
	b.ReportAllocs()
	b.SetBytes(int64(len(benchRequestBody)))
	for b.Loop() {
		if _, err := producer.DecodeRequest(benchRequestBody, producer.Limits{}); err != nil {
			b.Fatal(err)
		}
	}
}

// sendBody is the body sendq bench sends (internal/bench): encoded by
// encoding/json, so the display name's angle brackets arrive as \u003c
// and \u003e, with a 1 KB Body.
func sendBody(b *testing.B) []byte {
	head, err := json.Marshal(map[string]any{"From": "Bench <bench@bench.sendq.example>", "To": "rcpt1@bench.sendq.invalid", "IsHtml": false})
	if err != nil {
		b.Fatal(err)
	}
	text, err := json.Marshal(strings.Repeat("Lorem ipsum dolor sit amet, consectetur adipiscing elit. ", 19)[:1024])
	if err != nil {
		b.Fatal(err)
	}
	return fmt.Appendf(head[:len(head)-1], `,"Subject":"bench email 1","Body":%s}`, text)
}

// recordingEnqueuer stands in for asynq: it keeps nothing and answers at
// once, so BenchmarkSend measures the intake's own work per request.
type recordingEnqueuer struct{ payloadBytes int }

func (r *recordingEnqueuer) EnqueueContext(_ context.Context, t *asynq.Task, _ ...asynq.Option) (*asynq.TaskInfo, error) {
	r.payloadBytes = len(t.Payload())
	return &asynq.TaskInfo{}, nil
}

// BenchmarkSend measures POST /v1/emails end to end without Redis and
// without the network: metrics middleware, routing, API-key check,
// decoding, validation, the idempotent id and body hash, the task payload
// and the 202, with the request sendq bench sends (1 KB body, an API key
// and a fresh Idempotency-Key each time).
func BenchmarkSend(b *testing.B) {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}) // never dialed: no rate limit
	b.Cleanup(func() { _ = rdb.Close() })
	keys, err := producer.ParseAPIKeys("bench-0123456789ab")
	if err != nil {
		b.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	m := metrics.New(reg, reg)
	api, err := producer.New(rdb, &recordingEnqueuer{}, asynq.NewInspectorFromRedisClient(rdb), nil, producer.Config{
		Keys: keys, Metrics: m, Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		b.Fatal(err)
	}
	mux := http.NewServeMux()
	api.Register(mux)
	benchPost(b, m.Instrument(mux))
}

// BenchmarkNaiveSend is BenchmarkSend's reference: the naive intake of
// sendq bench (internal/bench), a bare handler that decodes the body into
// a struct, encodes it as the payload and enqueues it, on the same harness
// and with the same request. The difference between the two is what
// sendq's own work costs per request, Redis aside.
func BenchmarkNaiveSend(b *testing.B) {
	type naiveEmail struct {
		From, To, Subject, Body string
		IsHtml                  bool
	}
	enq := &recordingEnqueuer{}
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
		if _, err := enq.EnqueueContext(r.Context(), asynq.NewTask("naive:send", payload)); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusAccepted)
		fmt.Fprintf(w, `{"id":%q}`, uuid.NewString()) // asynq makes an id for every task
	})
	benchPost(b, mux)
}

// benchPost posts the bench request to h, each with its own
// Idempotency-Key, and fails on anything but a 202.
func benchPost(b *testing.B, h http.Handler) {
	body := sendBody(b)
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	i := 0
	for b.Loop() {
		i++
		req := httptest.NewRequest(http.MethodPost, "/v1/emails", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer bench-0123456789ab")
		req.Header.Set("Idempotency-Key", "bench-"+strconv.Itoa(i))
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != http.StatusAccepted {
			b.Fatalf("POST = %d %s; want 202", w.Code, w.Body)
		}
	}
}

// BenchmarkKeyedSendRedis is the keyed single send on a real redis-server,
// wired as `sendq serve` wires it (asynq's enqueue script on the automatic
// pipeliner), from 64 concurrent callers, with the Idempotency-Key claim
// on the plain client (claim=direct, as before Config.Scripts), through
// the enqueue's pipeliner (claim=shared), through a pipeliner of its own
// (claim=own, as `sendq serve` runs it), and without a key (claim=none:
// no claim, the floor). It reports the process' CPU and
// Redis's CPU per request beside the time.
func BenchmarkKeyedSendRedis(b *testing.B) {
	for _, mode := range []string{"direct", "shared", "own", "none"} {
		b.Run("claim="+mode, func(b *testing.B) {
			rdb, scripts := benchRedis(b)
			keys, err := producer.ParseAPIKeys("bench-0123456789ab")
			if err != nil {
				b.Fatal(err)
			}
			reg := prometheus.NewRegistry()
			m := metrics.New(reg, reg)
			cfg := producer.Config{Keys: keys, Metrics: m, Logger: slog.New(slog.DiscardHandler)}
			switch mode {
			case "shared":
				cfg.Scripts = scripts
			case "own":
				cfg.Scripts = ownScripts(b, rdb)
			}
			api, err := producer.New(rdb, asynq.NewClientFromRedisClient(scripts), asynq.NewInspectorFromRedisClient(rdb),
				queue.NewStore(rdb, time.Hour), cfg)
			if err != nil {
				b.Fatal(err)
			}
			mux := http.NewServeMux()
			api.Register(mux)
			h := m.Instrument(mux)
			body := sendBody(b)
			var n atomic.Int64
			cpu, rcpu := dkimtest.CPUTime(), redisCPU(b, rdb)
			b.SetParallelism(32) // 64 callers on 2 CPUs, as sendq bench's intake
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					req := httptest.NewRequest(http.MethodPost, "/v1/emails", bytes.NewReader(body))
					req.Header.Set("Content-Type", "application/json")
					req.Header.Set("Authorization", "Bearer bench-0123456789ab")
					if mode != "none" {
						req.Header.Set("Idempotency-Key", "bench-"+strconv.FormatInt(n.Add(1), 10))
					}
					w := httptest.NewRecorder()
					h.ServeHTTP(w, req)
					if w.Code != http.StatusAccepted {
						b.Errorf("POST = %d %s; want 202", w.Code, w.Body)
						return
					}
				}
			})
			b.StopTimer()
			dkimtest.ReportCPU(b, cpu)
			b.ReportMetric(float64(redisCPU(b, rdb)-rcpu)/float64(time.Microsecond)/float64(b.N), "redis-cpu-µs/op")
		})
	}
}

// redisCPU is INFO cpu's used_cpu_user + used_cpu_sys.
func redisCPU(b *testing.B, rdb redis.UniversalClient) time.Duration {
	info, err := rdb.Info(context.Background(), "cpu").Result()
	if err != nil {
		b.Fatal(err)
	}
	var sum float64
	for _, line := range strings.Split(info, "\r\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok && (k == "used_cpu_user" || k == "used_cpu_sys") {
			f, _ := strconv.ParseFloat(v, 64)
			sum += f
		}
	}
	return time.Duration(sum * float64(time.Second))
}

// benchRedis is a private redis-server's client, and the face of it whose
// scripts (asynq's enqueues) go through an automatic pipeliner, as `sendq
// serve` wires them.
func benchRedis(b *testing.B) (redis.UniversalClient, redis.UniversalClient) {
	rs := redistest.Start(b)
	rdb, err := queue.NewRedisClient(rs.URL())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = rdb.Close() })
	return rdb, ownScripts(b, rdb)
}

// ownScripts is rdb with its scripts on an automatic pipeliner of their
// own (the Idempotency-Key claims' in `sendq serve`).
func ownScripts(b *testing.B, rdb redis.UniversalClient) redis.UniversalClient {
	ap, err := queue.NewPipeliner(rdb)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = ap.Close() })
	return queue.ScriptsPipelined(rdb, ap)
}
