package bench

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// redisServer is a private, throw-away redis-server on a free loopback
// port: no persistence, its own temporary directory, killed by stop.
type redisServer struct {
	addr string
	cmd  *exec.Cmd
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
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ { // a free port can be taken before redis binds it
		port, err := freePort()
		if err != nil {
			return nil, fmt.Errorf("free port: %w", err)
		}
		s := &redisServer{addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), dir: dir}
		if lastErr = s.start(bin, port); lastErr == nil {
			return s, nil
		}
	}
	_ = os.RemoveAll(dir)
	return nil, fmt.Errorf("start redis-server: %w", lastErr)
}

func (s *redisServer) start(bin string, port int) error {
	cmd := exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", s.dir, "--protected-mode", "yes")
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		return err
	}
	ready := make(chan error, 1)
	// Read the log until the server is ready, then drain it so the server
	// never blocks on a full pipe. The goroutine exits with the process.
	go func() {
		sc := bufio.NewScanner(out)
		var lines []string
		sent := false
		for sc.Scan() {
			if sent {
				continue
			}
			lines = append(lines, sc.Text())
			if strings.Contains(sc.Text(), "Ready to accept connections") {
				ready <- nil
				sent = true
			}
		}
		if !sent {
			ready <- fmt.Errorf("redis-server exited: %s", strings.Join(lines, "\n"))
		}
	}()
	select {
	case err := <-ready:
		if err != nil {
			_ = cmd.Wait()
			return err
		}
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return fmt.Errorf("redis-server did not get ready in 10s")
	}
	s.cmd = cmd
	return nil
}

func (s *redisServer) url() string { return "redis://" + s.addr + "/0" }

// stop kills the server and removes its directory.
func (s *redisServer) stop() {
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	_ = os.RemoveAll(s.dir)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
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
