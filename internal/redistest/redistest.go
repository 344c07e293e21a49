// Package redistest starts a private, throw-away redis-server for a test
// (and for sendq bench, through Launch).
//
// Every call to Start gets its own server on a free loopback port, so test
// packages (and parallel tests inside one) never share data and never touch
// the machine's Redis on 6379. Where no redis-server binary is installed,
// Start falls back to an in-process miniredis so that a fresh clone still
// passes; set SENDQ_TEST_REQUIRE_REDIS=1 (as .ci/run does) to make that an
// error instead.
package redistest

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// Server is one running Redis.
type Server struct {
	Addr string
	// Real is false when the server is a miniredis fallback.
	Real bool

	cmd     *exec.Cmd
	dir     string
	args    []string
	mini    *miniredis.Miniredis
	stopped bool
}

// URL returns the redis:// URL of the server.
func (s *Server) URL() string { return "redis://" + s.Addr + "/0" }

// Client returns a go-redis client for the server, closed with the test.
func (s *Server) Client(t testing.TB) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: s.Addr})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// Option changes how the server is started.
type Option func(*[]string)

// Args passes extra redis-server arguments, such as "--appendonly", "yes".
func Args(a ...string) Option { return func(args *[]string) { *args = append(*args, a...) } }

// Start starts a Redis for t and stops it when t ends.
func Start(t testing.TB, opts ...Option) *Server {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("SENDQ_TEST_REQUIRE_REDIS") != "" {
			t.Fatalf("redis-server not found and SENDQ_TEST_REQUIRE_REDIS is set: %v", err)
		}
		m := miniredis.RunT(t)
		return &Server{Addr: m.Addr(), mini: m}
	}
	var extra []string
	for _, o := range opts {
		o(&extra)
	}
	s, err := Launch(bin, t.TempDir(), extra...)
	if err != nil {
		t.Fatalf("start redis-server: %v", err)
	}
	t.Cleanup(func() { s.Stop() })
	return s
}

// Launch starts the redis-server binary bin on a free loopback port, with
// dir as its working directory, no persistence unless extra says so. The
// caller must Stop it. sendq bench uses it outside tests.
func Launch(bin, dir string, extra ...string) (*Server, error) {
	s := &Server{Real: true, dir: dir}
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ { // a free port can be taken before redis binds it
		port, err := freePort()
		if err != nil {
			return nil, fmt.Errorf("free port: %w", err)
		}
		s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		s.args = append([]string{
			"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
			"--dir", s.dir, "--protected-mode", "yes",
		}, extra...)
		if lastErr = s.start(bin); lastErr == nil {
			return s, nil
		}
	}
	return nil, lastErr
}

func (s *Server) start(bin string) error {
	cmd := exec.Command(bin, s.args...)
	cmd.Dir = s.dir
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		return err
	}
	ready := make(chan error, 1)
	go func() {
		// Read the log until the server says it is ready, then drain it
		// so the server never blocks on a full pipe. Exits with the process.
		sc := bufio.NewScanner(stdout)
		var lines []string
		sent := false
		for sc.Scan() {
			line := sc.Text()
			if !sent {
				lines = append(lines, line)
				if strings.Contains(line, "Ready to accept connections") || strings.Contains(line, "+monitor master") {
					ready <- nil
					sent = true
				}
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
	s.stopped = false
	return nil
}

// Stop kills the server (SIGKILL: nothing is flushed).
func (s *Server) Stop() {
	if s.mini != nil {
		s.mini.Close()
		return
	}
	if s.stopped || s.cmd == nil {
		return
	}
	s.stopped = true
	_ = s.cmd.Process.Signal(syscall.SIGKILL)
	_ = s.cmd.Wait()
}

// Pause freezes the server (SIGSTOP) until the returned function, also
// run when t ends, lets it go on (SIGCONT). A miniredis fallback skips t.
func (s *Server) Pause(t testing.TB) (resume func()) {
	t.Helper()
	if s.mini != nil || s.cmd == nil {
		t.Skip("pausing needs a real redis-server")
	}
	if err := s.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatalf("SIGSTOP redis-server: %v", err)
	}
	var once sync.Once
	resume = func() { once.Do(func() { _ = s.cmd.Process.Signal(syscall.SIGCONT) }) }
	t.Cleanup(resume)
	return resume
}

// Restart starts the server again on the same port and directory, after
// Stop. With AOF on, the data comes back.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	if s.mini != nil {
		t.Skip("restart needs a real redis-server")
	}
	s.Stop()
	bin, _ := exec.LookPath("redis-server")
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := s.start(bin)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("restart redis-server: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
