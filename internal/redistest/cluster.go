package redistest

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Cluster is a running Redis Cluster of real redis-server processes.
type Cluster struct {
	Addrs   []string
	servers []*Server
}

// URL is the redis-cluster:// URL sendq reads.
func (c *Cluster) URL() string { return "redis-cluster://" + strings.Join(c.Addrs, ",") }

// StartCluster starts masters redis-server processes in cluster mode on
// free loopback ports, joins them with redis-cli --cluster create and waits
// until the cluster is ok. It skips the test when redis-server or redis-cli
// is missing and SENDQ_TEST_REQUIRE_REDIS is unset.
func StartCluster(t testing.TB, masters int) *Cluster {
	t.Helper()
	for _, bin := range []string{"redis-server", "redis-cli"} {
		if _, err := exec.LookPath(bin); err != nil {
			if os.Getenv("SENDQ_TEST_REQUIRE_REDIS") != "" {
				t.Fatalf("%s not found and SENDQ_TEST_REQUIRE_REDIS is set", bin)
			}
			t.Skipf("%s not found: the cluster test needs real redis-server and redis-cli binaries", bin)
		}
	}
	c := &Cluster{}
	for i := 0; i < masters; i++ {
		port := clusterPort(t)
		s := startOn(t, port, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", "5000")
		c.servers = append(c.servers, s)
		c.Addrs = append(c.Addrs, s.Addr)
	}
	args := append([]string{"--cluster", "create"}, c.Addrs...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	if out, err := exec.Command("redis-cli", args...).CombinedOutput(); err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs})
	defer cc.Close()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ok := true
		for _, a := range c.Addrs {
			info, err := redis.NewClient(&redis.Options{Addr: a}).ClusterInfo(t.Context()).Result()
			if err != nil || !strings.Contains(info, "cluster_state:ok") {
				ok = false
			}
		}
		if ok {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis cluster not ok after 20s")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// clusterPort finds a port p with p and p+10000 (the cluster bus) free.
func clusterPort(t testing.TB) int {
	for i := 0; i < 50; i++ {
		p, err := freePort()
		if err != nil || p+10000 > 65535 {
			continue
		}
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p+10000))
		if err != nil {
			continue
		}
		l.Close()
		return p
	}
	t.Fatalf("no free port pair for a cluster node")
	return 0
}

func startOn(t testing.TB, port int, extra ...string) *Server {
	t.Helper()
	bin, _ := exec.LookPath("redis-server")
	s := &Server{Real: true, dir: t.TempDir(), Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port))}
	s.args = append([]string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", s.dir}, extra...)
	if err := s.start(bin); err != nil {
		t.Fatalf("start cluster node: %v", err)
	}
	t.Cleanup(s.Stop)
	return s
}

// Sentinel is a Redis master watched by one real redis-sentinel.
type Sentinel struct {
	Master *Server
	Addr   string // the sentinel's address
	Name   string // the monitored master's name
}

// URL is the redis-sentinel:// URL sendq reads.
func (s *Sentinel) URL() string { return "redis-sentinel://" + s.Addr + "/0?master=" + s.Name }

// StartSentinel starts a master and a sentinel monitoring it as "mymaster".
func StartSentinel(t testing.TB) *Sentinel {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		if os.Getenv("SENDQ_TEST_REQUIRE_REDIS") != "" {
			t.Fatalf("redis-server not found and SENDQ_TEST_REQUIRE_REDIS is set")
		}
		t.Skip("redis-server not found: the sentinel test needs real binaries")
	}
	master := Start(t)
	_, mport, _ := net.SplitHostPort(master.Addr)
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	conf := filepath.Join(dir, "sentinel.conf")
	body := "port " + strconv.Itoa(port) + "\nbind 127.0.0.1\ndir " + dir + "\n" +
		"sentinel monitor mymaster 127.0.0.1 " + mport + " 1\n" +
		"sentinel down-after-milliseconds mymaster 5000\n"
	if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	bin, _ := exec.LookPath("redis-server")
	s := &Server{Real: true, dir: dir, Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		args: []string{conf, "--sentinel"}}
	if err := s.start(bin); err != nil {
		t.Fatalf("start sentinel: %v", err)
	}
	t.Cleanup(s.Stop)
	sc := redis.NewSentinelClient(&redis.Options{Addr: s.Addr})
	defer sc.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		addr, err := sc.GetMasterAddrByName(t.Context(), "mymaster").Result()
		if err == nil && len(addr) == 2 && addr[1] == mport {
			return &Sentinel{Master: master, Addr: s.Addr, Name: "mymaster"}
		}
		if time.Now().After(deadline) {
			t.Fatalf("sentinel does not know the master: %v %v", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Pause freezes the master at addr (SIGSTOP) until the returned function,
// also run when t ends, lets it go on.
func (c *Cluster) Pause(t testing.TB, addr string) (resume func()) {
	t.Helper()
	for _, s := range c.servers {
		if s.Addr == addr {
			return s.Pause(t)
		}
	}
	t.Fatalf("no cluster master at %s", addr)
	return nil
}
