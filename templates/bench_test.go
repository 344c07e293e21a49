package templates_test

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/queue"
	"github.com/sendq/sendq/templates"
)

// benchSource is a template of about 2 KB with 5 variables, the size the
// bench's templated-batch phase uses.
func benchSource() templates.Source {
	para := strings.Repeat("Your parcel left our warehouse and is on its way to you. ", 6)
	html := "<html><body><h1>Hi {{.FirstName}},</h1>" + strings.Repeat("<p>"+para+"</p>", 4) +
		`<p>Order <b>{{.OrderNo}}</b>, {{.Items}} items, total {{.Total}}.</p><p><a href="{{.Link}}">Track it</a></p></body></html>`
	text := "Hi {{.FirstName}},\n\n" + strings.Repeat(para+"\n", 2) + "Order {{.OrderNo}}, {{.Items}} items, total {{.Total}}: {{.Link}}\n"
	return templates.Source{Subject: "Order {{.OrderNo}} shipped, {{.FirstName}}", Html: html, Text: text}
}

const benchData = `{"FirstName": "Ada", "OrderNo": 1042, "Items": 3, "Total": "€42.00", "Link": "https://shop.example.com/track/1042?u=ada"}`

// withData is the payload the other way would queue: the email without
// its rendered parts, with the pinned template and the data.
type withData struct {
	queue.Email
	TemplateData jsontext.Value `json:"template_data"`
}

func baseEmail(i int) queue.Email {
	return queue.Email{V: queue.PayloadVersion, ID: "0197a1b2-0000-7000-8000-" + strconv.Itoa(100000000000+i),
		CreatedAt: time.Now().UTC(), From: queue.Address{Address: "shop@example.com"},
		To: []queue.Address{{Name: "Ada Lovelace", Address: "ada@example.com"}}, Importance: queue.ImportanceNormal,
		Owner: "key:k1", Priority: queue.PriorityBulk, BatchID: "0197a1b2-0000-7000-8000-000000000000"}
}

// rendered is the email as sendq queues it: rendered at intake.
func rendered(b testing.TB, p *templates.Parsed, i int) []byte {
	data, err := templates.DecodeData([]byte(benchData))
	if err != nil {
		b.Fatal(err)
	}
	out, err := p.Render(data)
	if err != nil {
		b.Fatal(err)
	}
	e := baseEmail(i)
	e.Subject, e.Body, e.IsHTML, e.Text, e.Template, e.TemplateVersion = out.Subject, out.Html, true, out.Text, "order-shipped", 1
	raw, err := json.Marshal(&e)
	if err != nil {
		b.Fatal(err)
	}
	return raw
}

// unrendered is the other way's payload (intake still renders once, to
// answer a missing variable with a 400: that cost is the same both ways).
func unrendered(b testing.TB, p *templates.Parsed, i int) []byte {
	data, err := templates.DecodeData([]byte(benchData))
	if err != nil {
		b.Fatal(err)
	}
	if _, err := p.Render(data); err != nil {
		b.Fatal(err)
	}
	e := withData{Email: baseEmail(i), TemplateData: jsontext.Value(benchData)}
	e.Template, e.TemplateVersion = "order-shipped", 1
	raw, err := json.Marshal(&e)
	if err != nil {
		b.Fatal(err)
	}
	return raw
}

// redisBytes is Redis's used_memory growth per task for n tasks of
// payload(i), enqueued by asynq as the intake does.
func redisBytes(b *testing.B, rdb *redis.Client, n int, payload func(i int) []byte) float64 {
	ctx := b.Context()
	if err := rdb.FlushAll(ctx).Err(); err != nil {
		b.Fatal(err)
	}
	used := func() float64 {
		info := rdb.Info(ctx, "memory").Val()
		for line := range strings.SplitSeq(info, "\r\n") {
			if v, ok := strings.CutPrefix(line, "used_memory:"); ok {
				f, _ := strconv.ParseFloat(v, 64)
				return f
			}
		}
		b.Fatal("no used_memory in INFO")
		return 0
	}
	client := asynq.NewClientFromRedisClient(rdb)
	// asynq's queue bookkeeping first, so it is not counted.
	if _, err := client.EnqueueContext(ctx, asynq.NewTask(queue.TypeSendEmail, []byte("{}"), asynq.TaskID("warm"), asynq.Queue("emails_bulk"))); err != nil {
		b.Fatal(err)
	}
	before := used()
	for i := range n {
		t := asynq.NewTask(queue.TypeSendEmail, payload(i), asynq.TaskID("id-"+strconv.Itoa(i)), asynq.Queue("emails_bulk"), asynq.Retention(24*time.Hour))
		if _, err := client.EnqueueContext(ctx, t); err != nil {
			b.Fatal(err)
		}
	}
	return (used() - before) / float64(n)
}

// BenchmarkTemplatedPayload measures where a rendered template is kept,
// per email of a 2 KB template with 5 variables:
//
//   - rendered: the rendered subject, HTML and text in the task (what
//     sendq does). CPU: render and encode at intake, decode at the worker.
//   - data: the data and the pinned version in the task, rendered again at
//     the worker. CPU: the same render at intake (a 202 must mean no
//     variable is missing), a smaller encode and decode, then a second
//     render at the worker (its parse cached: versions are immutable).
//
// Each reports payload-bytes and redis-bytes (used_memory growth per
// queued task, asynq's hash and list entry included) beside ns/op.
func BenchmarkTemplatedPayload(b *testing.B) {
	p, err := templates.Parse(benchSource())
	if err != nil {
		b.Fatal(err)
	}
	rs := redistest.Start(b)
	rdb := rs.Client(b)
	const n = 2000
	b.Run("rendered", func(b *testing.B) {
		mem := redisBytes(b, rdb, n, func(i int) []byte { return rendered(b, p, i) })
		size := len(rendered(b, p, 0))
		for b.Loop() {
			raw := rendered(b, p, 1)
			if _, err := queue.DecodeEmail(raw); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(size), "payload-bytes")
		b.ReportMetric(mem, "redis-bytes")
	})
	b.Run("data", func(b *testing.B) {
		mem := redisBytes(b, rdb, n, func(i int) []byte { return unrendered(b, p, i) })
		size := len(unrendered(b, p, 0))
		for b.Loop() {
			raw := unrendered(b, p, 1)
			var e withData
			if err := json.Unmarshal(raw, &e); err != nil {
				b.Fatal(err)
			}
			data, err := templates.DecodeData(e.TemplateData)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := p.Render(data); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(size), "payload-bytes")
		b.ReportMetric(mem, "redis-bytes")
	})
}

// BenchmarkRender is one 2 KB, 5-variable template rendered (parse cached).
func BenchmarkRender(b *testing.B) {
	p, err := templates.Parse(benchSource())
	if err != nil {
		b.Fatal(err)
	}
	data, _ := templates.DecodeData([]byte(benchData))
	for b.Loop() {
		if _, err := p.Render(data); err != nil {
			b.Fatal(err)
		}
	}
}
