package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// templatedBatch is the size of each batch of the templated-batch phase.
const templatedBatch = 1000

// templatedTarget is the bound on the p99 of one batch.
const templatedTarget = 150 * time.Millisecond

// tplResult is what the templated-batch phase measured.
type tplResult struct {
	batches  int
	accepted int
	perSec   float64         // emails accepted per second, batches back to back
	lat      []time.Duration // each batch's POST to its 202, sorted
}

func (t *tplResult) write(w io.Writer) {
	fmt.Fprintf(w, "\ntemplated-batch phase (last round): %d batches of %d messages, one template of %d bytes with 5 variables, posted back to back\n",
		t.batches, templatedBatch, len(benchTemplateHTML)+len(benchTemplateText))
	fmt.Fprintf(w, "| figure | value |\n| --- | ---: |\n")
	fmt.Fprintf(w, "| emails accepted/s | %.0f |\n", t.perSec)
	fmt.Fprintf(w, "| one batch p50 | %s |\n| one batch p99 | %s (target <= %s) |\n| one batch max | %s |\n",
		msf(percentile(t.lat, 50)), msf(percentile(t.lat, 99)), msf(templatedTarget), msf(t.lat[len(t.lat)-1]))
}

// The bench's template: about 2 KB with 5 variables.
var (
	benchTemplatePara = strings.Repeat("Your parcel left our warehouse and is on its way to you. ", 6)
	benchTemplateHTML = "<html><body><h1>Hi {{.FirstName}},</h1>" + strings.Repeat("<p>"+benchTemplatePara+"</p>", 4) +
		`<p>Order <b>{{.OrderNo}}</b>, {{.Items}} items, total {{.Total}}.</p><p><a href="{{.Link}}">Track it</a></p></body></html>`
	benchTemplateText = "Hi {{.FirstName}},\n\n" + strings.Repeat(benchTemplatePara+"\n", 2) +
		"Order {{.OrderNo}}, {{.Items}} items, total {{.Total}}: {{.Link}}\n"
)

// templated is the templated-batch phase (last round only): sendq's
// intake alone, one template stored, then o.tplBatches batches of 1,000
// messages naming it, each with its own 5 variables, posted one after
// the other: emails accepted per second and each batch's latency.
func (r *runner) templated(ctx context.Context) error {
	if !r.lastRound() {
		return nil
	}
	if err := r.flush(ctx); err != nil {
		return err
	}
	api, err := startSendqAPI(r.redisURL, r.apiKey, r.log)
	if err != nil {
		return fmt.Errorf("sendq api: %w", err)
	}
	defer api.stop()
	base := strings.TrimSuffix(api.url, "/v1/emails")
	client := &http.Client{Timeout: 30 * time.Second}
	post := func(method, url string, body []byte) (int, []byte, error) {
		req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
		if err != nil {
			return 0, nil, err
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+r.apiKey)
		resp, err := client.Do(req)
		if err != nil {
			return 0, nil, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, b, err
	}
	tpl, _ := json.Marshal(map[string]string{"Subject": "Order {{.OrderNo}} shipped, {{.FirstName}}",
		"Html": benchTemplateHTML, "Text": benchTemplateText})
	if code, body, err := post("PUT", base+"/v1/templates/bench-shipped", tpl); err != nil || code/100 != 2 {
		return fmt.Errorf("templated phase: PUT template = %d %s: %v", code, body, err)
	}
	res := &tplResult{batches: r.o.tplBatches}
	start := time.Now()
	for b := range r.o.tplBatches {
		body := templatedBody(r.o.from, b)
		t0 := time.Now()
		code, ans, err := post("POST", base+"/v1/emails/batch", body)
		res.lat = append(res.lat, time.Since(t0))
		if err != nil || code != http.StatusAccepted {
			return fmt.Errorf("templated phase: batch %d = %d %.300s: %v", b, code, ans, err)
		}
		var a struct{ Accepted int }
		if err := json.Unmarshal(ans, &a); err != nil || a.Accepted != templatedBatch {
			return fmt.Errorf("templated phase: batch %d accepted %d of %d: %.300s", b, a.Accepted, templatedBatch, ans)
		}
		res.accepted += a.Accepted
	}
	res.perSec = rate(res.accepted, time.Since(start))
	slices.Sort(res.lat)
	r.tpl = res
	return nil
}

// templatedBody is batch b: 1,000 messages to distinct addresses, each
// with its 5 variables (defaults give none).
func templatedBody(from string, b int) []byte {
	var buf bytes.Buffer
	buf.WriteString(`{"Defaults": {"From": `)
	f, _ := json.Marshal(from)
	buf.Write(f)
	buf.WriteString(`, "Template": "bench-shipped"}, "Messages": [`)
	for i := range templatedBatch {
		if i > 0 {
			buf.WriteByte(',')
		}
		n := b*templatedBatch + i
		s := strconv.Itoa(n)
		buf.WriteString(`{"To": "rcpt` + s + `@bench.sendq.example", "TemplateData": {"FirstName": "Rcpt ` + s +
			`", "OrderNo": ` + s + `, "Items": ` + strconv.Itoa(1+n%9) + `, "Total": "€` + strconv.Itoa(10+n%90) +
			`.00", "Link": "https://shop.example.com/track/` + s + `"}}`)
	}
	buf.WriteString(`]}`)
	return buf.Bytes()
}
