//go:build chaos

package chaos

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// loadSpec is a bounded load: at most N emails, at most Rate per second, at
// most Conc requests in flight, for at most Max.
type loadSpec struct {
	N    int
	Rate float64       // requests per second; 0: as fast as Conc allows
	Conc int           // requests in flight; default 8
	Max  time.Duration // bound on the whole run; default 2 minutes
	Pad  int           // bytes of filler in each body
	// Rcpt names the recipient of email i; default rcpt-i@chaos.example.
	Rcpt func(i int) string
	// Stop, when set, ends the run early once it returns true.
	Stop func() bool
}

// answer is one POST /v1/emails and what came back.
type answer struct {
	I          int
	Start, End time.Time
	Code       int // 0: no HTTP answer
	ID         string
	Err        error
}

func (a answer) latency() time.Duration { return a.End.Sub(a.Start) }

// loadRun is a running load.
type loadRun struct {
	done    chan struct{}
	mu      sync.Mutex
	answers []answer
}

var loadClient = &http.Client{Timeout: 15 * time.Second,
	Transport: &http.Transport{MaxIdleConnsPerHost: 16, DialContext: (&net.Dialer{Timeout: 3 * time.Second}).DialContext}}

// startLoad runs spec against the cluster's API in the background. Every
// 202 goes into the ledger; a 503 counts as not accepted; anything else is
// recorded as an unexpected answer.
func (c *cluster) startLoad(spec loadSpec) *loadRun {
	if spec.Conc <= 0 {
		spec.Conc = 8
	}
	if spec.Max <= 0 {
		spec.Max = 2 * time.Minute
	}
	r := &loadRun{done: make(chan struct{})}
	go func() { // ends after at most spec.Max plus one request's timeout
		defer close(r.done)
		start := time.Now()
		sem := make(chan struct{}, spec.Conc)
		var wg sync.WaitGroup
		for i := 0; i < spec.N; i++ {
			if spec.Stop != nil && spec.Stop() {
				break
			}
			if spec.Rate > 0 {
				if d := time.Until(start.Add(time.Duration(float64(i) / spec.Rate * float64(time.Second)))); d > 0 {
					time.Sleep(d)
				}
			}
			if time.Since(start) > spec.Max {
				break
			}
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				a := c.send(i, spec)
				r.mu.Lock()
				r.answers = append(r.answers, a)
				r.mu.Unlock()
			}()
		}
		wg.Wait()
	}()
	return r
}

// wait waits for the load to end and returns every answer.
func (r *loadRun) wait() []answer {
	<-r.done
	return r.snapshot()
}

func (r *loadRun) snapshot() []answer {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]answer(nil), r.answers...)
}

// send posts email i and records the answer in the ledger.
func (c *cluster) send(i int, spec loadSpec) answer {
	rcpt := fmt.Sprintf("rcpt-%d@chaos.example", i)
	if spec.Rcpt != nil {
		rcpt = spec.Rcpt(i)
	}
	text := fmt.Sprintf("chaos email %d", i)
	if spec.Pad > 0 {
		line := strings.Repeat("0123456789", 7) + "\n"
		text += "\n" + strings.Repeat(line, spec.Pad/len(line)+1)
	}
	body, _ := json.Marshal(map[string]any{
		"From": "Chaos <chaos@chaos.example>", "To": rcpt, "Subject": fmt.Sprintf("chaos %d", i),
		"Body": text, "IsHtml": false,
	})
	a := answer{I: i, Start: time.Now()}
	resp, err := loadClient.Post(c.base()+"/v1/emails", "application/json", bytes.NewReader(body))
	if err != nil {
		a.End, a.Err = time.Now(), err
		what := "transport error"
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			what = "client timeout"
		}
		c.ledger.otherAnswer(what)
		return a
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	a.End, a.Code = time.Now(), resp.StatusCode
	switch resp.StatusCode {
	case http.StatusAccepted:
		var acc struct{ ID string }
		if err := json.Unmarshal(b, &acc); err != nil || acc.ID == "" {
			c.ledger.otherAnswer("202 without an id")
			return a
		}
		a.ID = acc.ID
		c.ledger.accept(acc.ID)
	case http.StatusServiceUnavailable:
		c.ledger.reject()
	default:
		c.ledger.otherAnswer(fmt.Sprintf("%d %s", resp.StatusCode, strings.TrimSpace(string(b))))
	}
	return a
}

// maxLatency is the slowest answer among as that matches keep.
func maxLatency(as []answer, keep func(answer) bool) time.Duration {
	var m time.Duration
	for _, a := range as {
		if keep(a) && a.latency() > m {
			m = a.latency()
		}
	}
	return m
}
