package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/sendq/sendq/producer"
	"github.com/sendq/sendq/queue"
)

// request builds the body and headers of the i-th POST /v1/emails: the
// Send Email body with a Body of the configured size, an API key and a
// unique Idempotency-Key, as a product would send it.
type request struct {
	prefix, suffix []byte // the body around the request number
	apiKey         string
	runID          string
	sample         naiveEmail
}

func newRequest(from string, rcpts, bodyBytes int, apiKey, runID string) *request {
	to := make([]string, rcpts)
	for i := range to {
		to[i] = fmt.Sprintf("rcpt%d@bench.sendq.invalid", i+1)
	}
	body := strings.Repeat("Lorem ipsum dolor sit amet, consectetur adipiscing elit. ", bodyBytes/56+1)[:bodyBytes]
	// Subject carries the request number; the rest is the same for all.
	head, _ := json.Marshal(map[string]any{"From": from, "To": strings.Join(to, ";"), "IsHtml": false})
	tail, _ := json.Marshal(body)
	return &request{
		prefix: append(head[:len(head)-1], []byte(`,"Subject":"bench email `)...),
		suffix: append([]byte(`","Body":`), append(tail, '}')...),
		apiKey: apiKey, runID: runID,
		sample: naiveEmail{From: from, To: strings.Join(to, ";"), Subject: "bench email 0", Body: body},
	}
}

// withPriority returns rq with "Priority": p in every body.
func (rq *request) withPriority(p string) *request {
	c := *rq
	c.prefix = append([]byte(`{"Priority":"`+p+`",`), rq.prefix[1:]...)
	return &c
}

// naivePayload is the naive task payload of one email like the requests.
func (rq *request) naivePayload() []byte {
	b, _ := json.Marshal(rq.sample)
	return b
}

// email is one email like the requests, as sendq's intake queues it.
func (rq *request) email() (*queue.Email, error) {
	var b bytes.Buffer
	b.Write(rq.prefix)
	b.WriteByte('0')
	b.Write(rq.suffix)
	e, err := producer.DecodeRequest(b.Bytes(), producer.Limits{})
	if err != nil {
		return nil, fmt.Errorf("bench email: %w", err)
	}
	e.ID = uuid.Must(uuid.NewV7()).String()
	e.CreatedAt = time.Now().UTC()
	return e, nil
}

func (rq *request) build(ctx context.Context, url string, phase string, i int) (*http.Request, error) {
	n := strconv.Itoa(i)
	b := make([]byte, 0, len(rq.prefix)+len(n)+len(rq.suffix))
	b = append(append(append(b, rq.prefix...), n...), rq.suffix...)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	if rq.apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+rq.apiKey)
	}
	req.Header.Set("Idempotency-Key", rq.idemKey(phase, i))
	return req, nil
}

// idemKey is the Idempotency-Key of request i of phase.
func (rq *request) idemKey(phase string, i int) string {
	return rq.runID + "-" + phase + "-" + strconv.Itoa(i)
}

// sentTimes maps the email id of every request of a load run to the time it
// was sent. With an Idempotency-Key the intake derives the id from the key
// (producer.IdempotentID), so the id is known without reading the answers.
func (rq *request) sentTimes(phase string, res *loadResult) map[string]time.Time {
	keys, err := producer.ParseAPIKeys(rq.apiKey)
	keyID := "anonymous"
	if err == nil && len(keys) > 0 {
		keyID = keys[0].ID
	}
	out := make(map[string]time.Time, len(res.SentAt))
	for i, t := range res.SentAt {
		if !t.IsZero() {
			out[producer.IdempotentID(keyID, rq.idemKey(phase, i))] = t
		}
	}
	return out
}

// newHTTPClient is the load generator's client: keep-alive connections,
// one idle connection kept per concurrent caller, no proxy, no compression.
func newHTTPClient(c int) *http.Client {
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			Proxy:               nil,
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConns:        c,
			MaxIdleConnsPerHost: c,
			IdleConnTimeout:     90 * time.Second,
			DisableCompression:  true,
		},
	}
}

// loadResult is what one load run measured.
type loadResult struct {
	N        int             // requests sent
	Accepted int             // answered 202
	Statuses map[int]int     // every other status (0: transport error)
	FirstErr string          // the first non-202, for the report
	Elapsed  time.Duration   // first request sent to last answer
	Latency  []time.Duration // of every request, sorted
	SentAt   []time.Time     // when request i was sent
}

// reqPerSec is ReqPerSec, 0 for a nil result.
func (r *loadResult) reqPerSec() float64 {
	if r == nil {
		return 0
	}
	return r.ReqPerSec()
}

// ReqPerSec is the request rate over the run.
func (r *loadResult) ReqPerSec() float64 { return rate(r.N, r.Elapsed) }

// runLoad sends n requests from c goroutines. With every > 0, request i is
// not sent before start+i*every (an open-loop paced load); otherwise each
// goroutine sends its next request as soon as the last one was answered.
// progress counts answered requests.
func runLoad(ctx context.Context, client *http.Client, url string, rq *request, phase string, n, c int, every time.Duration, progress *atomic.Int64) *loadResult {
	res := &loadResult{N: n, Statuses: map[int]int{}}
	lat := make([]time.Duration, n)
	res.SentAt = make([]time.Time, n)
	var next atomic.Int64
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	for g := 0; g < c; g++ {
		wg.Add(1)
		go func() { // exits when every request has been claimed
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				if every > 0 {
					if d := time.Until(start.Add(time.Duration(i) * every)); d > 0 {
						time.Sleep(d)
					}
				}
				res.SentAt[i] = time.Now()
				code, err := send(ctx, client, url, rq, phase, i, &lat[i])
				progress.Add(1)
				if code == http.StatusAccepted {
					continue
				}
				mu.Lock()
				res.Statuses[code]++
				if res.FirstErr == "" {
					res.FirstErr = fmt.Sprintf("HTTP %d: %v", code, err)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	res.Accepted = n
	for _, v := range res.Statuses {
		res.Accepted -= v
	}
	slices.Sort(lat)
	res.Latency = lat
	return res
}

// send makes request i and reads the whole answer, so that the connection
// is reused. It returns the status (0 for a transport error).
func send(ctx context.Context, client *http.Client, url string, rq *request, phase string, i int, took *time.Duration) (int, error) {
	req, err := rq.build(ctx, url, phase, i)
	if err != nil {
		return 0, err
	}
	t0 := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		*took = time.Since(t0)
		return 0, err
	}
	body, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	*took = time.Since(t0)
	if resp.StatusCode != http.StatusAccepted {
		return resp.StatusCode, fmt.Errorf("%s", bytes.TrimSpace(body))
	}
	return resp.StatusCode, err
}

// percentile of sorted durations, nearest-rank.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p/100*float64(len(sorted))+0.999999) - 1
	if i < 0 {
		i = 0
	}
	if i >= len(sorted) {
		i = len(sorted) - 1
	}
	return sorted[i]
}

func rate(n int, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}
