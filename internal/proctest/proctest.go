// Package proctest runs the real sendq binary for end-to-end tests: Build
// compiles it once (from a TestMain), and Start runs `sendq MODE` on a free
// loopback port, waits until /healthz answers and captures its log. The
// process is killed when the test ends.
//
// The end-to-end tests of cmd/sendq and the fault suite in internal/chaos
// both use it; it is not a _test file so that both can import it.
package proctest

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// pkg is the import path of the sendq command; `go build` resolves it from
// any directory inside the module, so Build needs no module root.
const pkg = "github.com/sendq/sendq/cmd/sendq"

// Build compiles the sendq command into dir (with the race detector if
// race is set) and returns the binary's path. The compiler's output goes
// to standard error.
func Build(dir string, race bool) (string, error) {
	bin := filepath.Join(dir, "sendq")
	args := []string{"build", "-o", bin}
	if race {
		args = append(args, "-race")
	}
	cmd := exec.Command("go", append(args, pkg)...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("build sendq: %w", err)
	}
	return bin, nil
}

// Config holds the optional settings of a process; the zero value is what
// Start uses.
type Config struct {
	// Name names the process in the test log and in the file LogDir
	// keeps. If empty, "sendq MODE" is used.
	Name string
	// LogDir, if set, receives the process' whole log when the test ends,
	// as <test name>.<Name>.log. If empty, no log is kept.
	LogDir string
	// Tail is how many of the last lines of the log are written to the
	// test log when the test failed. If zero, the whole log is.
	Tail int
}

// Proc is a running sendq process.
type Proc struct {
	Name string // see Config.Name
	Addr string // host:port of its HTTP server (SENDQ_HTTP_ADDR)
	Dir  string // its working directory, a t.TempDir

	cmd  *exec.Cmd
	logs logBuffer
	done chan struct{}
	err  error // the exit status, set before done is closed
}

// Start runs `bin mode` with env and the zero Config; see Config.Start.
func Start(t testing.TB, bin, mode string, env ...string) *Proc {
	t.Helper()
	return Config{}.Start(t, bin, mode, env...)
}

// Start runs `bin mode` in a fresh temporary directory, with PATH,
// SENDQ_HTTP_ADDR set to a free loopback port and env, and waits up to 15
// seconds until /healthz answers 200; it fails the test if the process
// exits or does not answer by then. When the test ends the process is
// killed, its log kept in LogDir, and the log written to the test log if
// the test failed.
func (c Config) Start(t testing.TB, bin, mode string, env ...string) *Proc {
	t.Helper()
	p := &Proc{Name: c.Name, Addr: freeAddr(t), Dir: t.TempDir(), done: make(chan struct{})}
	if p.Name == "" {
		p.Name = "sendq " + mode
	}
	p.cmd = exec.Command(bin, mode)
	p.cmd.Dir = p.Dir
	p.cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "SENDQ_HTTP_ADDR=" + p.Addr}, env...)
	p.cmd.Stdout, p.cmd.Stderr = &p.logs, &p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }() // exits with the process
	t.Cleanup(func() {
		p.Kill()
		if c.LogDir != "" {
			file := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name() + "." + p.Name + ".log")
			_ = os.MkdirAll(c.LogDir, 0o755)
			_ = os.WriteFile(filepath.Join(c.LogDir, file), []byte(p.Logs()), 0o644)
		}
		if t.Failed() {
			if c.Tail > 0 {
				t.Logf("--- %s log (last %d lines):\n%s", p.Name, c.Tail, tail(p.Logs(), c.Tail))
			} else {
				t.Logf("--- %s log:\n%s", p.Name, p.Logs())
			}
		}
	})
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := client.Get("http://" + p.Addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return p
			}
		}
		if p.exited() || time.Now().After(deadline) {
			t.Fatalf("sendq %s did not start: %v\n%s", mode, err, p.Logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Logs is everything the process wrote to stdout and stderr so far.
func (p *Proc) Logs() string { return p.logs.String() }

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Err is the process' exit status once it has exited (nil for status 0),
// and nil while it runs.
func (p *Proc) Err() error {
	if !p.exited() {
		return nil
	}
	return p.err
}

func (p *Proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Signal sends sig to the process.
func (p *Proc) Signal(sig os.Signal) error { return p.cmd.Process.Signal(sig) }

// Kill sends SIGKILL and waits for the process to be gone.
func (p *Proc) Kill() {
	if p.exited() {
		return
	}
	_ = p.Signal(syscall.SIGKILL)
	<-p.done
}

// Terminate sends SIGTERM and waits up to within for the exit. It returns
// how long the process took and whether it exited in time.
func (p *Proc) Terminate(within time.Duration) (time.Duration, bool) {
	start := time.Now()
	_ = p.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return time.Since(start), true
	case <-time.After(within):
		return time.Since(start), false
	}
}

// Stop sends SIGTERM and waits up to within for the exit; it fails the
// test if the process does not exit in time or exits with a non-zero
// status.
func (p *Proc) Stop(t testing.TB, within time.Duration) {
	t.Helper()
	if _, ok := p.Terminate(within); !ok {
		t.Errorf("sendq did not exit within %s of SIGTERM", within)
		return
	}
	if err := p.Err(); err != nil {
		t.Errorf("sendq exited with %v", err)
	}
}

// logBuffer is a bytes.Buffer safe for the process' writes and the test's
// reads at once.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// tail is the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
