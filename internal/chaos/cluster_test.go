//go:build chaos

package chaos

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sendq/sendq/internal/proctest"
	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/internal/smtptest"
)

// startProc runs `sendq mode` as name with env and waits until /healthz
// answers. The process is killed when the test ends; its log is kept in
// CHAOS_LOGS when that is set, and its tail is logged when the test failed.
func startProc(t *testing.T, name, mode string, env []string) *proctest.Proc {
	t.Helper()
	cfg := proctest.Config{Name: name, LogDir: os.Getenv("CHAOS_LOGS"), Tail: 40}
	return cfg.Start(t, binary, mode, env...)
}

// metric reads a metric from the process' /metrics: the sum of its samples
// over every label combination.
func metric(p *proctest.Proc, name string) (float64, error) {
	c := &http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get("http://" + p.Addr + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	sum, found := 0.0, false
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+" ") && !strings.HasPrefix(line, name+"{") {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			return 0, fmt.Errorf("%s: %q: %w", p.Name, line, err)
		}
		sum, found = sum+v, true
	}
	if !found {
		return 0, fmt.Errorf("%s: no sample %s", p.Name, name)
	}
	return sum, nil
}

// sink is the SMTP server of a scenario. It can go down and come back on
// the same address; the messages of every incarnation count.
type sink struct {
	mu    sync.Mutex
	addr  string
	hooks smtptest.Hooks
	cur   *smtptest.Server
	all   []*smtptest.Server
}

func startSink(t *testing.T, h smtptest.Hooks) *sink {
	t.Helper()
	s := &sink{addr: "127.0.0.1:0", hooks: h}
	s.up(t)
	t.Cleanup(s.down)
	return s
}

// up starts a server on the sink's address (a free port the first time).
func (s *sink) up(t testing.TB) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur != nil {
		return
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		srv, err := smtptest.Listen(s.addr, smtptest.WithHooks(s.hooks))
		if err == nil {
			s.cur, s.addr = srv, srv.Addr
			s.all = append(s.all, srv)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("smtp server on %s: %v", s.addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// down closes the server and every connection it holds.
func (s *sink) down() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur != nil {
		_ = s.cur.Close()
		s.cur = nil
	}
}

func (s *sink) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// messages is every message any incarnation of the server accepted.
func (s *sink) messages() []smtptest.Message {
	s.mu.Lock()
	all := append([]*smtptest.Server(nil), s.all...)
	s.mu.Unlock()
	var out []smtptest.Message
	for _, srv := range all {
		out = append(out, srv.Messages()...)
	}
	return out
}

// openConns is the number of connections the running server holds.
func (s *sink) openConns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur == nil {
		return 0
	}
	return s.cur.OpenConns()
}

// cluster is one scenario's system: Redis, the SMTP sink, one API, workers
// and the ledger.
type cluster struct {
	t       *testing.T
	redis   *redistest.Server
	sink    *sink
	env     []string
	api     *proctest.Proc
	workers []*proctest.Proc
	ledger  *ledger
	nworker int
}

type clusterConfig struct {
	redisArgs []string
	workers   int // default 2
	env       []string
	hooks     smtptest.Hooks
}

// baseEnv is what every scenario runs with: quick retries, a shutdown
// timeout above the SMTP timeout, a pool of 4 (so a worker runs 8 sends at
// once and a slow server builds a backlog).
var baseEnv = []string{
	"SENDQ_RETRY_BASE_DELAY=1s", "SENDQ_RETRY_MAX_DELAY=3s", "SENDQ_SHUTDOWN_TIMEOUT=10s",
	"SENDQ_SMTP_TIMEOUT=3s", "SENDQ_SMTP_POOL_SIZE=4",
}

const shutdownTimeout = 10 * time.Second

func newCluster(t *testing.T, cfg clusterConfig) *cluster {
	t.Helper()
	c := &cluster{t: t}
	c.redis = redistest.Start(t, redistest.Args(cfg.redisArgs...))
	if !c.redis.Real {
		t.Fatal("the fault suite needs a real redis-server")
	}
	c.sink = startSink(t, cfg.hooks)
	c.env = append([]string{"REDIS_URL=" + c.redis.URL(), "SENDQ_SMTP_URL=smtp://" + c.sink.Addr() + "?tls=none"}, baseEnv...)
	c.env = append(c.env, cfg.env...)
	c.ledger = newLedger(c.sink)
	c.api = startProc(t, "api", "api", c.env)
	n := cfg.workers
	if n == 0 {
		n = 2
	}
	for range n {
		c.startWorker()
	}
	return c
}

// startWorker starts one more worker.
func (c *cluster) startWorker() *proctest.Proc {
	c.nworker++
	p := startProc(c.t, fmt.Sprintf("worker%d", c.nworker), "worker", c.env)
	c.workers = append(c.workers, p)
	return p
}

func (c *cluster) base() string { return "http://" + c.api.Addr }

// redisClient is a plain client on the scenario's Redis, for CONFIG and
// INFO (never the machine's Redis).
func (c *cluster) redisClient() *redis.Client {
	return redis.NewClient(&redis.Options{Addr: c.redis.Addr, DialTimeout: 2 * time.Second, ReadTimeout: 3 * time.Second})
}

var pidRe = regexp.MustCompile(`(?m)^process_id:(\d+)`)

// redisPID asks the scenario's redis-server for its process id, so that it
// can be frozen with SIGSTOP.
func (c *cluster) redisPID() int {
	c.t.Helper()
	rc := c.redisClient()
	defer rc.Close()
	info, err := rc.Info(context.Background(), "server").Result()
	if err != nil {
		c.t.Fatalf("redis INFO: %v", err)
	}
	m := pidRe.FindStringSubmatch(info)
	if m == nil {
		c.t.Fatalf("redis INFO has no process_id")
	}
	pid, _ := strconv.Atoi(m[1])
	return pid
}

// waitDelivered waits until the SMTP server holds at least n messages.
func (c *cluster) waitDelivered(n int, within time.Duration) bool {
	deadline := time.Now().Add(within)
	for len(c.sink.messages()) < n {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// sumMetric adds a metric over the given processes.
func sumMetric(t *testing.T, ps []*proctest.Proc, name string) []float64 {
	t.Helper()
	out := make([]float64, len(ps))
	for i, p := range ps {
		v, err := metric(p, name)
		if err != nil {
			t.Errorf("metric: %v", err)
		}
		out[i] = v
	}
	return out
}
