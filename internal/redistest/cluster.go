package redistest

import (
	"net"
	"os"
	"os/exec"
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
