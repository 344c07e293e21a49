package producer_test

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/metrics"
	"github.com/sendq/sendq/producer"
	"github.com/sendq/sendq/queue"
)

// BenchmarkBatchIntake posts 1,000-message batches (1 KB Body each) over
// loopback HTTP to the intake wired as `sendq serve` wires it (asynq client
// on the AutoPipeliner) on a real redis-server, and reports emails/s
// accepted. One asynq task per email: every email is its own enqueue.
func BenchmarkBatchIntake(b *testing.B) {
	rs := redistest.Start(b)
	rdb, err := queue.NewRedisClient(rs.URL())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = rdb.Close() })
	ap, err := queue.NewPipeliner(rdb)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = ap.Close() })
	reg := prometheus.NewRegistry()
	m := metrics.New(reg, reg)
	api, err := producer.New(rdb, asynq.NewClientFromRedisClient(queue.ScriptsPipelined(rdb, ap)),
		asynq.NewInspectorFromRedisClient(rdb), queue.NewStore(rdb, time.Hour), producer.Config{Metrics: m})
	if err != nil {
		b.Fatal(err)
	}
	mux := http.NewServeMux()
	api.Register(mux)
	srv := httptest.NewServer(m.Instrument(mux))
	b.Cleanup(srv.Close)

	text := strings.Repeat("Lorem ipsum dolor sit amet, consectetur adipiscing elit. ", 19)[:1024]
	var body bytes.Buffer
	body.WriteString(`{"Defaults": {"From": "Bench <bench@bench.sendq.example>", "Subject": "bench", "IsHtml": false}, "Messages": [`)
	for i := range 1000 {
		if i > 0 {
			body.WriteByte(',')
		}
		fmt.Fprintf(&body, `{"To": "rcpt%d@bench.sendq.invalid", "Body": %q}`, i, text)
	}
	body.WriteString(`]}`)
	b.SetBytes(int64(body.Len()))
	b.ResetTimer()
	for b.Loop() {
		resp, err := http.Post(srv.URL+"/v1/emails/batch", "application/json", bytes.NewReader(body.Bytes()))
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			b.Fatalf("POST batch = %d", resp.StatusCode)
		}
	}
	b.ReportMetric(float64(b.N*1000)/b.Elapsed().Seconds(), "emails/s")
	b.ReportMetric(b.Elapsed().Seconds()*1000/float64(b.N), "ms/batch")
}
