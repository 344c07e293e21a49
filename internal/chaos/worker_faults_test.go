//go:build chaos

package chaos

import (
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/sendq/sendq/internal/proctest"
	"github.com/sendq/sendq/internal/smtptest"
)

// slowData makes the SMTP server take d to answer the final dot, so sends
// are in flight when a fault strikes.
func slowData(d time.Duration) smtptest.Hooks {
	return smtptest.Hooks{Data: func(*smtptest.Session, []byte) error { time.Sleep(d); return nil }}
}

// slowServer takes rcpt to answer RCPT and data to answer the final dot: a
// fault mostly finds sends before the message is taken, some after.
func slowServer(rcpt, data time.Duration) smtptest.Hooks {
	return smtptest.Hooks{
		Rcpt: func(*smtptest.Session, string) error { time.Sleep(rcpt); return nil },
		Data: func(*smtptest.Session, []byte) error { time.Sleep(data); return nil },
	}
}

// waitSending waits until at least n emails are being sent (status
// sending), so that a fault finds work in flight; it returns how many were.
func (c *cluster) waitSending(n int, within time.Duration) int {
	deadline := time.Now().Add(within)
	for {
		k, _ := getList(c.base(), "sending")
		if k >= n || time.Now().After(deadline) {
			return k
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var aof = []string{"--appendonly", "yes", "--appendfsync", "always"}

var sentLogRe = regexp.MustCompile(`email_id=(\S+) .*outcome=sent`)

// loggedSent returns the ids a worker logged as sent: their sent record was
// written (the log line follows the write).
func loggedSent(p *proctest.Proc) map[string]bool {
	out := map[string]bool{}
	for _, m := range sentLogRe.FindAllStringSubmatch(p.Logs(), -1) {
		out[m[1]] = true
	}
	return out
}

// Scenario 1: a worker is killed with SIGKILL while it sends; a new worker
// is started. asynq gives the dead worker's active tasks back only once
// their lease (30 s, extended every 5 s) has been expired for 30 s and a
// recoverer (every minute, and at each server start) runs: up to about two
// minutes. Nothing may be lost. A duplicate is possible only where the kill
// fell after the server took the message and before the sent record was
// written; a duplicate of an email the killed worker had logged as sent
// would be a bug.
func TestWorkerKilled(t *testing.T) {
	t.Parallel()
	s := newScenario(t, "1", "worker kill -9 mid-run, new worker started")
	c := newCluster(t, clusterConfig{redisArgs: aof, hooks: slowServer(150*time.Millisecond, 20*time.Millisecond)})
	n := pick(200, 500)
	load := c.startLoad(loadSpec{N: n, Rate: 60})
	if !c.waitDelivered(n/4, time.Minute) {
		t.Fatalf("only %d of %d delivered after a minute", len(c.sink.messages()), n/4)
	}
	victim := c.workers[0]
	sending := c.waitSending(8, 10*time.Second)
	victim.Kill()
	killedAt := time.Now()
	deliveredAtKill := len(c.sink.messages())
	c.startWorker()
	as := load.wait()
	t.Logf("killed %s after %d deliveries (%d emails sending across workers); load: %d answers", victim.Name, deliveredAtKill, sending, len(as))

	ty, d := s.settle(c, recoveryDrain)
	recovered := time.Since(killedAt) - 2*time.Second // the drain's quiet period
	s.note("killed %s after %d deliveries (%d sending at the kill); drained %s after the kill (asynq recovers a dead worker's tasks after lease expiry + 30 s, recoverer every minute)",
		victim.Name, deliveredAtKill, sending, recovered.Round(time.Second))
	sentByVictim := loggedSent(victim)
	t.Logf("%s had recorded %d emails as sent before the kill", victim.Name, len(sentByVictim))
	if len(sentByVictim) == 0 {
		t.Errorf("found no \"outcome=sent\" line in %s's log: the duplicate check below would be blind", victim.Name)
	}
	var ids []string
	for id := range ty.dupIDs {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		if sentByVictim[id] {
			t.Errorf("email %s: %d copies, but %s had recorded it as sent before the kill", id, ty.dupIDs[id], victim.Name)
		}
	}
	if ty.dups > 0 {
		s.note("%d duplicate(s): the kill fell after the server took the message and before the sent record (expected, counted)", ty.dups)
		t.Logf("duplicates (kill between the final dot and the sent record): %v", ids)
	}
	// The killed worker's sends come back only through asynq's recoverer,
	// long after the others: if none settled late, the kill caught nothing
	// in flight and the scenario proved nothing.
	if k, _ := d.late(20 * time.Second); k == 0 {
		t.Errorf("no email waited for recovery: the kill caught no send in flight (%d sending across workers)", sending)
	}
}

// Scenario 2: every worker gets SIGTERM under load. Each must exit within
// the shutdown timeout (plus a margin for process exit), having finished its
// in-flight sends; new workers take over. Nothing lost, no duplicate.
func TestWorkersTerminated(t *testing.T) {
	t.Parallel()
	s := newScenario(t, "2", "SIGTERM to every worker under load, new workers started")
	c := newCluster(t, clusterConfig{redisArgs: aof, hooks: slowData(200 * time.Millisecond)})
	n := pick(200, 500)
	load := c.startLoad(loadSpec{N: n, Rate: 50})
	if !c.waitDelivered(n/4, time.Minute) {
		t.Fatalf("only %d of %d delivered after a minute", len(c.sink.messages()), n/4)
	}
	const margin = 3 * time.Second
	sending := c.waitSending(6, 10*time.Second)
	old := append([]*proctest.Proc(nil), c.workers...)
	type stopped struct {
		took time.Duration
		ok   bool
	}
	res := make(chan stopped, len(old))
	for _, w := range old {
		go func() { took, ok := w.Terminate(shutdownTimeout + margin); res <- stopped{took, ok} }()
	}
	var took []string
	for range old {
		r := <-res
		if !r.ok {
			t.Errorf("a worker did not exit within %s of SIGTERM", shutdownTimeout+margin)
		}
		took = append(took, r.took.Round(10*time.Millisecond).String())
	}
	for _, w := range old {
		if err := w.Err(); err != nil {
			t.Errorf("%s exited with %v after SIGTERM; want 0", w.Name, err)
		}
		if strings.Contains(w.Logs(), "level=ERROR") {
			t.Logf("%s logged errors while stopping:\n%s", w.Name, grepLines(w.Logs(), "level=ERROR", 10))
		}
	}
	sort.Strings(took)
	for range old {
		c.startWorker()
	}
	load.wait()
	ty, _ := s.settle(c, time.Minute)
	s.note("%d sending at SIGTERM; workers exited %s after it (limit %s + %s)", sending, strings.Join(took, ", "), shutdownTimeout, margin)
	if ty.dups > 0 {
		t.Errorf("%d duplicates after a graceful shutdown; want 0: %v", ty.dups, ty.dupIDs)
	}
}

func grepLines(s, substr string, max int) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
			if len(out) == max {
				break
			}
		}
	}
	return strings.Join(out, "\n")
}
