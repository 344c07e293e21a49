// Package promtool finds Prometheus' promtool (Debian's prometheus package)
// for the tests that check sendq's alert rules and its /metrics output.
// Where it is not installed those tests are skipped with a message; set
// SENDQ_TEST_REQUIRE_PROMTOOL=1 (make test does) to make that an error.
package promtool

import (
	"bytes"
	"os"
	"os/exec"
	"testing"
)

// Path returns promtool's path, or skips t (fails it when
// SENDQ_TEST_REQUIRE_PROMTOOL is set) if it is not installed.
func Path(t testing.TB) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("SENDQ_TEST_REQUIRE_PROMTOOL") != "" {
			t.Fatalf("promtool not found and SENDQ_TEST_REQUIRE_PROMTOOL is set: run scripts/ensure-test-deps.sh")
		}
		t.Skip("promtool not installed: apt-get install prometheus (scripts/ensure-test-deps.sh) to run this check")
	}
	return p
}

// CheckMetrics runs `promtool check metrics` on a /metrics body (the
// Prometheus text format) and returns what it printed: nothing when every
// metric follows Prometheus' naming and help conventions. A lint problem
// makes promtool exit non-zero, which CheckMetrics reports through the
// output, not as an error; the error is for promtool not running at all.
func CheckMetrics(t testing.TB, body []byte) (string, error) {
	t.Helper()
	cmd := exec.Command(Path(t), "check", "metrics")
	cmd.Stdin = bytes.NewReader(body)
	out, err := cmd.CombinedOutput()
	if _, ok := err.(*exec.ExitError); ok {
		return string(out), nil
	}
	return string(out), err
}
