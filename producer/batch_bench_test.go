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

	"github.com/sendq/sendq/metrics"
	"github.com/sendq/sendq/producer"
	"github.com/sendq/sendq/queue"
)

// BenchmarkBatchIntake posts 1,000-message batches (1 KB Body each) over
// loopback HTTP to the intake wired as `sendq serve` wires it (asynq client
// on the AutoPipeliner) on a real redis-server, and reports emails/s
// accepted. One asynq task per email: every email is its own enqueue.
func BenchmarkBatchIntake(b *testing.B) {
	srv := benchBatchServer(b, 0)
	body := benchBatch(1000, "")
	b.SetBytes(int64(len(body)))
	b.ResetTimer()
	for b.Loop() {
		postBatch(b, srv, body)
	}
	b.ReportMetric(float64(b.N*1000)/b.Elapsed().Seconds(), "emails/s")
	b.ReportMetric(b.Elapsed().Seconds()*1000/float64(b.N), "ms/batch")
}

// BenchmarkBatchCancel measures DELETE /v1/batches/{id} of a scheduled
// batch of 2,000 emails (SENDQ_MAX_BATCH=2000), as the issue asks.
func BenchmarkBatchCancel(b *testing.B) {
	srv := benchBatchServer(b, 2000)
	body := benchBatch(2000, time.Now().Add(time.Hour).UTC().Format(time.RFC3339))
	for b.Loop() {
		b.StopTimer()
		loc := postBatch(b, srv, body)
		b.StartTimer()
		req, _ := http.NewRequest("DELETE", srv.URL+loc, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		raw, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(raw), `"canceled":2000`) {
			b.Fatalf("DELETE batch = %d %s", resp.StatusCode, raw)
		}
	}
	b.ReportMetric(b.Elapsed().Seconds()*1000/float64(b.N), "ms/cancel")
}

func postBatch(b *testing.B, srv *httptest.Server, body []byte) string {
	resp, err := http.Post(srv.URL+"/v1/emails/batch", "application/json", bytes.NewReader(body))
	if err != nil {
		b.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		b.Fatalf("POST batch = %d", resp.StatusCode)
	}
	return resp.Header.Get("Location")
}

// benchBatch is a batch of n messages with a 1 KB Body each.
func benchBatch(n int, sendAt string) []byte {
	text := strings.Repeat("Lorem ipsum dolor sit amet, consectetur adipiscing elit. ", 19)[:1024]
	var body bytes.Buffer
	body.WriteString(`{"Defaults": {"From": "Bench <bench@bench.sendq.example>", "Subject": "bench", "IsHtml": false`)
	if sendAt != "" {
		fmt.Fprintf(&body, `, "SendAt": %q`, sendAt)
	}
	body.WriteString(`}, "Messages": [`)
	for i := range n {
		if i > 0 {
			body.WriteByte(',')
		}
		fmt.Fprintf(&body, `{"To": "rcpt%d@bench.sendq.invalid", "Body": %q}`, i, text)
	}
	body.WriteString(`]}`)
	return body.Bytes()
}

// benchBatchServer is the intake as `sendq serve` wires it.
func benchBatchServer(b *testing.B, maxBatch int) *httptest.Server {
	rdb, scripts := benchRedis(b)
	reg := prometheus.NewRegistry()
	m := metrics.New(reg, reg)
	api, err := producer.New(rdb, asynq.NewClientFromRedisClient(scripts),
		asynq.NewInspectorFromRedisClient(rdb), queue.NewStore(rdb, time.Hour),
		producer.Config{Metrics: m, MaxBatch: maxBatch, Scripts: ownScripts(b, rdb)})
	if err != nil {
		b.Fatal(err)
	}
	mux := http.NewServeMux()
	api.Register(mux)
	srv := httptest.NewServer(m.Instrument(mux))
	b.Cleanup(srv.Close)
	return srv
}

// BenchmarkTemplatedBatchIntake is BenchmarkBatchIntake with 1,000
// messages naming one stored template (about 2 KB, 5 variables), each
// with its own TemplateData: the render of every message included.
func BenchmarkTemplatedBatchIntake(b *testing.B) {
	srv := benchBatchServer(b, 0)
	para := strings.Repeat("Your parcel left our warehouse and is on its way to you. ", 6)
	tpl := fmt.Sprintf(`{"Subject": "Order {{.OrderNo}} shipped, {{.FirstName}}", "Html": %q, "Text": %q}`,
		"<html><body><h1>Hi {{.FirstName}},</h1>"+strings.Repeat("<p>"+para+"</p>", 4)+
			`<p>Order <b>{{.OrderNo}}</b>, {{.Items}} items, total {{.Total}}.</p><p><a href="{{.Link}}">Track it</a></p></body></html>`,
		"Hi {{.FirstName}},\n\n"+strings.Repeat(para+"\n", 2)+"Order {{.OrderNo}}, {{.Items}} items, total {{.Total}}: {{.Link}}\n")
	req, _ := http.NewRequest("PUT", srv.URL+"/v1/templates/shipped", strings.NewReader(tpl))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 201 {
		b.Fatalf("PUT template: %v %v", resp, err)
	}
	_ = resp.Body.Close()
	var body bytes.Buffer
	body.WriteString(`{"Defaults": {"From": "Bench <bench@bench.sendq.example>", "Template": "shipped"}, "Messages": [`)
	for i := range 1000 {
		if i > 0 {
			body.WriteByte(',')
		}
		fmt.Fprintf(&body, `{"To": "r%d@bench.sendq.example", "TemplateData": {"FirstName": "R %d", "OrderNo": %d, "Items": %d, "Total": "€%d.00", "Link": "https://shop.example.com/t/%d"}}`, i, i, i, 1+i%9, 10+i%90, i)
	}
	body.WriteString(`]}`)
	raw := body.Bytes()
	b.SetBytes(int64(len(raw)))
	b.ResetTimer()
	for b.Loop() {
		postBatch(b, srv, raw)
	}
	b.ReportMetric(float64(b.N*1000)/b.Elapsed().Seconds(), "emails/s")
	b.ReportMetric(b.Elapsed().Seconds()*1000/float64(b.N), "ms/batch")
}
