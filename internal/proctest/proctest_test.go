package proctest

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestProc builds sendq and runs `sendq serve` with no configuration (an
// embedded Redis and SMTP server, no outside service) three times: stopped,
// killed, and with a name and a kept log.
func TestProc(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the sendq binary")
	}
	bin, err := Build(t.TempDir(), false)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("Stop", func(t *testing.T) {
		p := Start(t, bin, "serve")
		if p.Name != "sendq serve" || !strings.HasPrefix(p.Addr, "127.0.0.1:") || p.Dir == "" {
			t.Errorf("Name %q, Addr %q, Dir %q; want sendq serve, a loopback address and a directory", p.Name, p.Addr, p.Dir)
		}
		if p.Err() != nil {
			t.Errorf("Err() = %v while running; want nil", p.Err())
		}
		p.Stop(t, 30*time.Second)
		select {
		case <-p.Done():
		default:
			t.Errorf("Done() is open after Stop")
		}
		if p.Logs() == "" {
			t.Errorf("Logs() is empty")
		}
	})

	t.Run("Kill", func(t *testing.T) {
		p := Start(t, bin, "serve")
		p.Kill()
		if err := p.Err(); err == nil || !strings.Contains(err.Error(), "killed") {
			t.Errorf("Err() = %v after Kill; want signal: killed", err)
		}
		p.Kill() // a second Kill, like the one when the test ends, returns at once
	})

	t.Run("Terminate", func(t *testing.T) {
		p := Start(t, bin, "serve")
		if err := p.Signal(syscall.SIGCONT); err != nil {
			t.Errorf("Signal(SIGCONT) = %v", err)
		}
		if _, ok := p.Terminate(30 * time.Second); !ok || p.Err() != nil {
			t.Errorf("Terminate: exited %v with %v; want true with nil", ok, p.Err())
		}
	})

	logs := t.TempDir()
	t.Run("LogDir", func(t *testing.T) {
		Config{Name: "one", LogDir: logs}.Start(t, bin, "serve")
	})
	b, err := os.ReadFile(filepath.Join(logs, "TestProc_LogDir.one.log"))
	if err != nil || len(b) == 0 {
		t.Errorf("kept log: %d bytes, %v; want the process' log", len(b), err)
	}
}

func TestTail(t *testing.T) {
	for _, tc := range []struct {
		s    string
		n    int
		want string
	}{
		{"a\nb\nc\n", 2, "b\nc"},
		{"a\nb\nc", 2, "b\nc"},
		{"a\nb\n", 5, "a\nb"},
		{"", 3, ""},
	} {
		if got := tail(tc.s, tc.n); got != tc.want {
			t.Errorf("tail(%q, %d) = %q; want %q", tc.s, tc.n, got, tc.want)
		}
	}
}
