package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sendq/sendq/internal/redistest"
)

// redisServer is a private, throw-away redis-server on a free loopback
// port: no persistence, its own temporary directory, killed by stop.
type redisServer struct {
	*redistest.Server
	addr string
	dir  string
}

// startRedis starts a private redis-server. It never touches the machine's
// own Redis: the port is a free one chosen by the kernel.
func startRedis() (*redisServer, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, fmt.Errorf("redis-server is not installed: install it or set REDIS_URL to an empty database")
	}
	dir, err := os.MkdirTemp("", "sendq-bench-redis-")
	if err != nil {
		return nil, fmt.Errorf("redis dir: %w", err)
	}
	s, err := redistest.Launch(bin, dir)
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("start redis-server: %w", err)
	}
	return &redisServer{Server: s, addr: s.Addr, dir: dir}, nil
}

func (s *redisServer) url() string { return s.URL() }

// stop kills the server and removes its directory.
func (s *redisServer) stop() {
	s.Stop()
	_ = os.RemoveAll(s.dir)
}

// usedMemory is INFO memory's used_memory: the bytes Redis has allocated.
func usedMemory(ctx context.Context, rdb redis.UniversalClient) (int64, error) {
	info, err := rdb.Info(ctx, "memory").Result()
	if err != nil {
		return 0, fmt.Errorf("redis INFO memory: %w", err)
	}
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "used_memory:"); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return 0, fmt.Errorf("redis used_memory %q: %w", v, err)
			}
			return n, nil
		}
	}
	return 0, fmt.Errorf("redis INFO memory has no used_memory")
}

// redisCPU is INFO cpu's used_cpu_user + used_cpu_sys: the CPU time the
// Redis server has used (0 if the server does not say).
func redisCPU(ctx context.Context, rdb redis.UniversalClient) time.Duration {
	info, err := rdb.Info(ctx, "cpu").Result()
	if err != nil {
		return 0
	}
	var total float64
	for _, line := range strings.Split(info, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if ok && (k == "used_cpu_user" || k == "used_cpu_sys") {
			f, _ := strconv.ParseFloat(v, 64)
			total += f
		}
	}
	return time.Duration(total * float64(time.Second))
}
