//go:build chaos

package chaos

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// ledger is what the suite knows for sure: every id the API answered 202
// for, every answer that was not a 202, and (through the sink) every
// message the SMTP server accepted.
type ledger struct {
	sink *sink

	mu       sync.Mutex
	accepted map[string]bool
	order    []string
	rejected int            // 503: not accepted
	other    map[string]int // any other answer, by code or error
}

func newLedger(s *sink) *ledger {
	return &ledger{sink: s, accepted: map[string]bool{}, other: map[string]int{}}
}

func (l *ledger) accept(id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.accepted[id] {
		l.accepted[id] = true
		l.order = append(l.order, id)
	}
}

func (l *ledger) reject() {
	l.mu.Lock()
	l.rejected++
	l.mu.Unlock()
}

func (l *ledger) otherAnswer(what string) {
	l.mu.Lock()
	l.other[what]++
	l.mu.Unlock()
}

func (l *ledger) ids() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.order...)
}

func (l *ledger) counts() (accepted, rejected int, other map[string]int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	o := map[string]int{}
	for k, v := range l.other {
		o[k] = v
	}
	return len(l.order), l.rejected, o
}

// copies counts the messages the SMTP server accepted, by email id (the
// local part of the Message-ID).
func (l *ledger) copies() map[string]int {
	out := map[string]int{}
	for _, m := range l.sink.messages() {
		out[messageID(m.Data)]++
	}
	return out
}

// messageID returns the id in a message's Message-ID header (<ID@domain>),
// or "" if there is none.
func messageID(data []byte) string {
	h, err := textproto.NewReader(bufio.NewReader(bytes.NewReader(data))).ReadMIMEHeader()
	if err != nil && len(h) == 0 {
		return ""
	}
	v := strings.TrimSpace(h.Get("Message-Id"))
	v = strings.TrimPrefix(v, "<")
	id, _, ok := strings.Cut(v, "@")
	if !ok {
		return ""
	}
	return id
}

// emailStatus is the part of GET /v1/emails/{id} the suite reads.
type emailStatus struct {
	Code          int    `json:"-"`
	Status        string `json:"status"`
	Attempts      int    `json:"attempts"`
	FailureReason string `json:"failure_reason"`
	LastError     string `json:"last_error"`
}

var statusClient = &http.Client{Timeout: 10 * time.Second,
	Transport: &http.Transport{MaxIdleConnsPerHost: 16}}

func getStatus(base, id string) (emailStatus, error) {
	var st emailStatus
	resp, err := statusClient.Get(base + "/v1/emails/" + id)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	st.Code = resp.StatusCode
	if resp.StatusCode == 200 {
		if err := json.Unmarshal(b, &st); err != nil {
			return st, fmt.Errorf("status body %q: %w", b, err)
		}
	}
	return st, nil
}

// statusMany asks the status of every id, eight at a time.
func statusMany(base string, ids []string) map[string]emailStatus {
	out := make(map[string]emailStatus, len(ids))
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for _, id := range ids {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			st, err := getStatus(base, id)
			if err != nil {
				return // unknown this round
			}
			mu.Lock()
			out[id] = st
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}

// drained is where every accepted email stands after the drain.
type drained struct {
	last     map[string]emailStatus   // the last status seen
	terminal map[string]string        // sent, failed, or gone (404 three times)
	at       map[string]time.Duration // when, after the drain began, each became terminal
	took     time.Duration
	timedOut bool
}

// late counts the emails that took longer than d into the drain to settle,
// and the longest of them.
func (d *drained) late(after time.Duration) (int, time.Duration) {
	n, longest := 0, time.Duration(0)
	for _, at := range d.at {
		if at > after {
			n++
		}
		longest = max(longest, at)
	}
	return n, longest
}

// drain polls the status of every accepted email until each is sent, failed
// or gone, or until timeout; then waits for the SMTP server to be quiet for
// two seconds, so that a late duplicate is counted.
func (c *cluster) drain(timeout time.Duration) *drained {
	start := time.Now()
	d := &drained{last: map[string]emailStatus{}, terminal: map[string]string{}, at: map[string]time.Duration{}}
	missing := map[string]int{}
	for {
		var pending []string
		for _, id := range c.ledger.ids() {
			if d.terminal[id] == "" {
				pending = append(pending, id)
			}
		}
		if len(pending) == 0 {
			break
		}
		if time.Since(start) > timeout {
			d.timedOut = true
			break
		}
		for id, st := range statusMany(c.base(), pending) {
			d.last[id] = st
			switch {
			case st.Code == 200 && (st.Status == "sent" || st.Status == "failed"):
				d.terminal[id], d.at[id] = st.Status, time.Since(start)
			case st.Code == 404:
				missing[id]++
				if missing[id] >= 3 {
					d.terminal[id], d.at[id] = "gone", time.Since(start)
				}
			case st.Code == 200:
				missing[id] = 0
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	d.took = time.Since(start)
	quietFor(c.sink, 2*time.Second, 15*time.Second)
	return d
}

// quietFor waits until the sink has taken no new message for quiet, at most
// max.
func quietFor(s *sink, quiet, max time.Duration) {
	deadline := time.Now().Add(max)
	n, since := len(s.messages()), time.Now()
	for time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
		if m := len(s.messages()); m != n {
			n, since = m, time.Now()
		}
		if time.Since(since) >= quiet {
			return
		}
	}
}

// tally is the ledger's verdict after a drain.
type tally struct {
	accepted, delivered, failed, lost, dups, rejected, unacked int
	lostIDs                                                    []string
	dupIDs                                                     map[string]int // id -> copies, for ids with more than one
	failedIDs                                                  []string
	unackedIDs                                                 []string // delivered, never answered 202
	copies                                                     map[string]int
	other                                                      map[string]int
}

func (c *cluster) tally(d *drained) *tally {
	copies := c.ledger.copies()
	accepted, rejected, other := c.ledger.counts()
	ty := &tally{accepted: accepted, rejected: rejected, other: other, dupIDs: map[string]int{}, copies: copies}
	acc := map[string]bool{}
	for _, id := range c.ledger.ids() {
		acc[id] = true
		n := copies[id]
		switch {
		case n > 0:
			ty.delivered++
			if n > 1 {
				ty.dups += n - 1
				ty.dupIDs[id] = n
			}
		case d.terminal[id] == "failed":
			ty.failed++
			ty.failedIDs = append(ty.failedIDs, id)
		default:
			ty.lost++
			ty.lostIDs = append(ty.lostIDs, id)
		}
	}
	for id := range copies {
		if !acc[id] {
			ty.unacked++
			ty.unackedIDs = append(ty.unackedIDs, id)
		}
	}
	sort.Strings(ty.unackedIDs)
	sort.Strings(ty.lostIDs)
	return ty
}

// scenario is one row of the table, filled as the scenario runs.
type scenario struct {
	t          *testing.T
	row        *row
	expectLoss bool // the negative control: lost must be > 0
}

// newScenario registers the scenario's row; its result is set when the
// test ends.
func newScenario(t *testing.T, key, name string) *scenario {
	s := &scenario{t: t, row: &row{Key: key, Scenario: name, Result: "—"}}
	start := time.Now()
	report.add(s.row)
	t.Cleanup(func() {
		s.row.Elapsed = time.Since(start)
		switch {
		case t.Skipped():
			s.row.Result = "skipped"
		case t.Failed():
			s.row.Result = "**FAIL**"
		default:
			s.row.Result = "pass"
		}
	})
	return s
}

func (s *scenario) note(format string, args ...any) {
	s.row.Notes = append(s.row.Notes, fmt.Sprintf(format, args...))
}

// settle drains c, fills the row and checks the promise: nothing lost
// (unless this is the negative control) and no answer that is neither 202
// nor 503 (unless allowed).
func (s *scenario) settle(c *cluster, timeout time.Duration) (*tally, *drained) {
	t := s.t
	t.Helper()
	d := c.drain(timeout)
	ty := c.tally(d)
	r := s.row
	r.Accepted, r.Delivered, r.Failed, r.Lost, r.Dups = ty.accepted, ty.delivered, ty.failed, ty.lost, ty.dups
	r.Rejected, r.Unacked = ty.rejected, ty.unacked
	t.Logf("ledger: accepted %d, delivered %d, failed %d, lost %d, duplicates %d, 503 %d, delivered without 202 %d, drain %s",
		ty.accepted, ty.delivered, ty.failed, ty.lost, ty.dups, ty.rejected, ty.unacked, d.took.Round(100*time.Millisecond))
	if d.timedOut {
		s.note("drain timed out after %s", timeout)
	}
	if ty.unacked > 0 {
		t.Logf("delivered although the API never answered 202 for them: %v", ty.unackedIDs)
	}
	if n, longest := d.late(20 * time.Second); n > 0 {
		s.note("%d email(s) settled only %s into the drain", n, longest.Round(time.Second))
	}
	for what, n := range ty.other {
		t.Errorf("%d answers were %s (only 202 and 503 are expected)", n, what)
		s.note("%d answers %s", n, what)
	}
	if ty.lost > 0 && !s.expectLoss {
		for i, id := range ty.lostIDs {
			if i == 10 {
				t.Logf("… and %d more", len(ty.lostIDs)-10)
				break
			}
			st := d.last[id]
			t.Logf("lost %s: status %d %q attempts %d last_error %q", id, st.Code, st.Status, st.Attempts, st.LastError)
		}
		t.Errorf("lost %d accepted emails; want 0", ty.lost)
	}
	// An email the API calls sent must have reached the server.
	for _, id := range ty.lostIDs {
		if d.terminal[id] == "sent" {
			t.Errorf("email %s: status sent, but the SMTP server never got it", id)
		}
	}
	if ty.accepted == 0 {
		t.Errorf("nothing was accepted: the scenario proved nothing")
	}
	return ty, d
}

// getList returns the total of GET /v1/emails?status=state.
func getList(base, state string) (int, error) {
	resp, err := statusClient.Get(base + "/v1/emails?page_size=1&status=" + state)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var l struct{ Total int }
	if resp.StatusCode != 200 {
		return 0, fmt.Errorf("list %s: %s", state, resp.Status)
	}
	err = json.NewDecoder(resp.Body).Decode(&l)
	return l.Total, err
}
