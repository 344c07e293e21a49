//go:build chaos

package chaos

import (
	"fmt"
	"math"
	"regexp"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/sendq/sendq/internal/proctest"
	"github.com/sendq/sendq/internal/smtptest"
)

var cooldownRe = regexp.MustCompile(`relay is throttling: pausing sends" cooldown=(\S+)`)

// maxCooldown is the longest throttling pause any worker logged.
func maxCooldown(ps []*proctest.Proc) (time.Duration, int) {
	var m time.Duration
	n := 0
	for _, p := range ps {
		for _, s := range cooldownRe.FindAllStringSubmatch(p.Logs(), -1) {
			n++
			if d, err := time.ParseDuration(s[1]); err == nil && d > m {
				m = d
			}
		}
	}
	return m, n
}

// Scenario 6: SMTP faults, one cluster per fault.
func TestSMTPFaults(t *testing.T) {
	t.Parallel()
	n := pick(100, 300)
	rate := 25.0

	// 421 and close: for the first 2 s of the run the server answers MAIL
	// with 421 and closes the connection. Transient (and a throttling
	// signal); nothing lost, no duplicate.
	t.Run("421", func(t *testing.T) {
		s := newScenario(t, "6a", "SMTP 421 and close (first 2 s)")
		var until atomic.Int64
		var n421 atomic.Int64
		until.Store(math.MaxInt64)
		c := newCluster(t, clusterConfig{hooks: smtptest.Hooks{Mail: func(ss *smtptest.Session, _ string) error {
			if time.Now().UnixNano() < until.Load() {
				n421.Add(1)
				conn := ss.Conn.Conn()
				time.AfterFunc(20*time.Millisecond, func() { _ = conn.Close() })
				return &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "service shutting down, closing transmission channel"}
			}
			return nil
		}}})
		until.Store(time.Now().Add(2 * time.Second).UnixNano())
		c.startLoad(loadSpec{N: n, Rate: rate}).wait()
		ty, _ := s.settle(c, 2*time.Minute)
		cd, ncd := maxCooldown(c.workers)
		s.note("%d × 421; workers paused %d times, longest cooldown %s (the late ones waited it out)", n421.Load(), ncd, cd)
		if ty.dups > 0 {
			t.Errorf("%d duplicates after 421 at MAIL; want 0: %v", ty.dups, ty.dupIDs)
		}
	})

	// 451 for a while: every RCPT gets 451 4.3.0 for the first 3 s.
	t.Run("451", func(t *testing.T) {
		s := newScenario(t, "6b", "SMTP 451 to every RCPT for 3 s")
		var until atomic.Int64
		var n451 atomic.Int64
		until.Store(math.MaxInt64)
		c := newCluster(t, clusterConfig{hooks: smtptest.Hooks{Rcpt: func(*smtptest.Session, string) error {
			if time.Now().UnixNano() < until.Load() {
				n451.Add(1)
				return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "temporary failure, try again later"}
			}
			return nil
		}}})
		until.Store(time.Now().Add(3 * time.Second).UnixNano())
		c.startLoad(loadSpec{N: n, Rate: rate}).wait()
		ty, _ := s.settle(c, time.Minute)
		s.note("%d × 451", n451.Load())
		if ty.dups > 0 {
			t.Errorf("%d duplicates after 451 at RCPT; want 0: %v", ty.dups, ty.dupIDs)
		}
	})

	// 550 for some recipients: every tenth recipient does not exist. Those
	// emails are failed (permanent, after one attempt), not lost.
	t.Run("550", func(t *testing.T) {
		s := newScenario(t, "6c", "SMTP 550 for 1 recipient in 10")
		c := newCluster(t, clusterConfig{hooks: smtptest.Hooks{Rcpt: func(_ *smtptest.Session, to string) error {
			if strings.HasPrefix(to, "reject-") {
				return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
			}
			return nil
		}}})
		as := c.startLoad(loadSpec{N: n, Rate: rate, Rcpt: func(i int) string {
			if i%10 == 3 {
				return fmt.Sprintf("reject-%d@chaos.example", i)
			}
			return fmt.Sprintf("rcpt-%d@chaos.example", i)
		}}).wait()
		ty, d := s.settle(c, time.Minute)
		rejected := map[string]bool{}
		for _, a := range as {
			if a.Code == 202 && a.I%10 == 3 {
				rejected[a.ID] = true
			}
		}
		if ty.failed != len(rejected) {
			t.Errorf("failed = %d; want the %d emails to rejected recipients", ty.failed, len(rejected))
		}
		for _, id := range ty.failedIDs {
			st := d.last[id]
			if !rejected[id] {
				t.Errorf("email %s failed but its recipient was not rejected: %+v", id, st)
			}
			if st.FailureReason != "permanent" || st.Attempts != 1 {
				t.Errorf("email %s: failure_reason %q after %d attempts; want permanent after 1", id, st.FailureReason, st.Attempts)
			}
		}
		for id := range rejected {
			if ty.copies[id] > 0 {
				t.Errorf("email %s to a rejected recipient reached the server", id)
			}
		}
		s.note("%d rejected with 550 5.1.1: failed (permanent, 1 attempt), not lost", len(rejected))
		if ty.dups > 0 {
			t.Errorf("%d duplicates; want 0: %v", ty.dups, ty.dupIDs)
		}
	})

	// The connection is dropped after the final dot, without a reply, for
	// one message in seven (at most 10): the server has the message, sendq
	// cannot know and retries. Each drop may give one duplicate, carrying
	// the same Message-ID.
	t.Run("drop-after-dot", func(t *testing.T) {
		s := newScenario(t, "6d", "SMTP connection dropped after the final dot (1 in 7, max 10)")
		var count, drops atomic.Int64
		var mu sync.Mutex
		dropped := map[string]int{}
		c := newCluster(t, clusterConfig{hooks: smtptest.Hooks{Data: func(_ *smtptest.Session, data []byte) error {
			if count.Add(1)%7 == 0 && drops.Load() < 10 {
				drops.Add(1)
				mu.Lock()
				dropped[messageID(data)]++
				mu.Unlock()
				return smtptest.DropConnection
			}
			return nil
		}}})
		c.startLoad(loadSpec{N: n, Rate: rate}).wait()
		ty, _ := s.settle(c, time.Minute)
		mu.Lock()
		defer mu.Unlock()
		if int64(ty.dups) != drops.Load() {
			t.Errorf("duplicates = %d; want one per drop after the dot (%d)", ty.dups, drops.Load())
		}
		for id, k := range ty.dupIDs {
			if dropped[id] == 0 {
				t.Errorf("email %s: %d copies, but no connection was dropped after its dot", id, k)
			}
		}
		// Every copy of an email carries the same Message-ID and Date.
		byID := map[string]map[string]bool{}
		for _, m := range c.sink.messages() {
			id := messageID(m.Data)
			if ty.dupIDs[id] == 0 {
				continue
			}
			if byID[id] == nil {
				byID[id] = map[string]bool{}
			}
			byID[id][header(m.Data, "Message-Id")+" / "+header(m.Data, "Date")] = true
		}
		for id, hs := range byID {
			if len(hs) != 1 {
				t.Errorf("the copies of email %s differ in Message-ID or Date: %v", id, hs)
			}
		}
		s.note("%d drops after the dot → %d duplicate(s), each with the same Message-ID", drops.Load(), ty.dups)
	})

	// The server is down (its port closed) for a while under load. Retries
	// must be spaced by the backoff: count each worker's dial attempts
	// during the outage, and each email's attempts.
	t.Run("server-down", func(t *testing.T) {
		down := pick(10*time.Second, 30*time.Second)
		s := newScenario(t, "6e", fmt.Sprintf("SMTP server down %s under load", down))
		c := newCluster(t, clusterConfig{})
		lead, rate := 3*time.Second, 10.0
		load := c.startLoad(loadSpec{N: int(rate * (lead + down + 3*time.Second).Seconds()), Rate: rate})
		time.Sleep(lead)
		dials0 := sumMetric(t, c.workers, "sendq_smtp_pool_dials_total")
		tries0 := sumMetric(t, c.workers, "sendq_delivery_attempts_total")
		c.sink.down()
		downAt := time.Now()
		time.Sleep(down)
		dials1 := sumMetric(t, c.workers, "sendq_smtp_pool_dials_total")
		tries1 := sumMetric(t, c.workers, "sendq_delivery_attempts_total")
		outage := time.Since(downAt)
		c.sink.up(t)
		load.wait()
		ty, d := s.settle(c, 2*time.Minute)
		// A refused dial on loopback costs microseconds: a loop that
		// redials without waiting would reach thousands per second. Each
		// delivery attempt may dial at most twice (a fresh connection after
		// a dead reused one), and attempts are spaced by the backoff.
		const hot = 200.0
		var rates []string
		for i := range dials0 {
			dials, tries := dials1[i]-dials0[i], tries1[i]-tries0[i]
			r := dials / outage.Seconds()
			rates = append(rates, fmt.Sprintf("%s %.0f dials (%.1f/s) for %.0f attempts", c.workers[i].Name, dials, r, tries))
			if r >= hot {
				t.Errorf("%s dialled %.0f times in the %s outage (%.1f/s): a hot loop", c.workers[i].Name, dials, outage, r)
			}
			if dials > 2*tries+2 {
				t.Errorf("%s dialled %.0f times for %.0f delivery attempts: redials without a delivery attempt", c.workers[i].Name, dials, tries)
			}
		}
		// Backoff 1 s, 2 s, then 3 s, ±20%: an email cannot be tried more
		// often than once per 0.8 s.
		maxAtt := 0
		for _, st := range d.last {
			maxAtt = max(maxAtt, st.Attempts)
		}
		bound := int(outage/(800*time.Millisecond)) + 2
		if maxAtt > bound {
			t.Errorf("an email was tried %d times in a %s outage; want at most %d (retries not spaced)", maxAtt, outage, bound)
		}
		s.note("during the outage %s; most attempts of one email: %d (bound %d)", strings.Join(rates, ", "), maxAtt, bound)
		if ty.dups > 0 {
			s.note("%d duplicate(s): the server was closed after taking a message and before answering", ty.dups)
		}
	})

	// The server restarts while the pool is idle: every pooled connection
	// is dead. The first send after the restart must redial and succeed in
	// one attempt.
	t.Run("restart-idle-pool", func(t *testing.T) {
		s := newScenario(t, "6f", "SMTP server restarted while the pool is idle")
		c := newCluster(t, clusterConfig{hooks: slowData(100 * time.Millisecond)})
		// Warm up: enough at once that each worker opens several connections.
		c.startLoad(loadSpec{N: 24, Conc: 24}).wait()
		if !c.waitDelivered(24, 30*time.Second) {
			t.Fatalf("warm-up: %d of 24 delivered", len(c.sink.messages()))
		}
		time.Sleep(500 * time.Millisecond)
		idle := c.sink.openConns()
		dials0 := sumMetric(t, c.workers, "sendq_smtp_pool_dials_total")
		c.sink.down()
		c.sink.up(t)
		var attempts []string
		retried := false
		for k := 0; k < 6; k++ {
			a := c.send(1000+k, loadSpec{})
			if a.Code != 202 {
				t.Fatalf("POST after the restart = %d", a.Code)
			}
			st := waitFinal(c.base(), a.ID, 30*time.Second)
			attempts = append(attempts, fmt.Sprint(st.Attempts))
			if st.Status != "sent" || st.Attempts != 1 {
				retried = true
				t.Errorf("send %d after the restart: %s after %d attempts (%s); want sent in 1", k+1, st.Status, st.Attempts, st.LastError)
			}
		}
		dials1 := sumMetric(t, c.workers, "sendq_smtp_pool_dials_total")
		redials := 0.0
		for i := range dials0 {
			redials += dials1[i] - dials0[i]
		}
		s.settle(c, 30*time.Second)
		s.note("%d idle connections killed by the restart; 6 sends after it took %s attempt(s), %.0f redials", idle, strings.Join(attempts, ","), redials)
		if retried {
			s.note("the immediate retry after a dead reused connection took another idle (dead) one instead of dialling")
		}
	})
}

// waitFinal polls the status of id until it is sent or failed.
func waitFinal(base, id string, within time.Duration) emailStatus {
	deadline := time.Now().Add(within)
	for {
		st, err := getStatus(base, id)
		if err == nil && (st.Status == "sent" || st.Status == "failed") || time.Now().After(deadline) {
			return st
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// header returns one header of a message, or "".
func header(data []byte, name string) string {
	head, _, _ := strings.Cut(string(data), "\r\n\r\n")
	var out []string
	for _, l := range strings.Split(head, "\r\n") {
		k, v, ok := strings.Cut(l, ":")
		if ok && strings.EqualFold(k, name) {
			out = append(out, strings.TrimSpace(v))
		}
	}
	sort.Strings(out)
	return strings.Join(out, ",")
}
