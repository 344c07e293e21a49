package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"go.uber.org/goleak"

	"github.com/sendq/sendq/internal/redistest"
)

// TestMainTiny runs the whole bench with tiny numbers against a private
// redis-server and checks that every row of the table is there with a
// positive number, and that -json writes the same rows.
func TestMainTiny(t *testing.T) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		if os.Getenv("SENDQ_TEST_REQUIRE_REDIS") != "" {
			t.Fatalf("redis-server not found and SENDQ_TEST_REQUIRE_REDIS is set: %v", err)
		}
		t.Skip("redis-server is not installed")
	}
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	jsonPath := filepath.Join(t.TempDir(), "bench.json")
	var stdout, stderr bytes.Buffer
	env := func(string) string { return "" } // no REDIS_URL: Main starts its own Redis
	code := Main(ctx, []string{"-n", "200", "-c", "8", "-pool", "2", "-live-duration", "500ms",
		"-smtp-latency", "1ms", "-json", jsonPath}, env, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("Main = %d; want 0\nstdout:\n%s\nstderr:\n%s", code, &stdout, &stderr)
	}
	out := stdout.String()

	// Every figure must be a row whose sendq (and, where it has one,
	// baseline) column is a positive number.
	wantRows := []struct {
		prefix   string
		baseline string // "" if the row has none
	}{
		{"intake (requests/s)", "naive intake"},
		{"intake latency p50 (ms)", "naive intake"},
		{"intake latency p99 (ms)", "naive intake"},
		{"intake latency max (ms)", "naive intake"},
		{"intake (requests/s)", "asynq Enqueue alone"},
		{"intake CPU per request, this process (µs)", "naive intake"},
		{"intake Redis CPU per request (µs)", "naive intake"},
		{"Redis memory per queued email (bytes)", "naive intake"},
		{"delivery CPU per email, this process (µs)", "naive worker"},
		{"delivery CPU per email, this process (µs)", "asynq no-op"},
		{"delivery CPU per email, this process (µs)", "raw go-mail"},
		{"delivery Redis CPU per email (µs)", "naive worker"},
		{"delivery (emails/s)", "naive worker"},
		{"delivery (emails/s)", "asynq no-op"},
		{"delivery (emails/s)", "raw go-mail"},
		{"delivery (emails/s)", "workers*pool/latency maximum"},
		{"enqueue-to-250, backlog of 200, p50 (ms)", ""},
		{"enqueue-to-250, backlog of 200, p99 (ms)", ""},
		{"peak RSS during delivery (whole process) (MB)", ""},
	}
	for _, w := range wantRows {
		line := findRow(out, w.prefix, w.baseline)
		if line == "" {
			t.Errorf("no row %q (baseline %q) in:\n%s", w.prefix, w.baseline, out)
			continue
		}
		fields := strings.Fields(strings.TrimPrefix(line, w.prefix))
		if len(fields) < 3 {
			t.Errorf("row %q has %d columns; want sendq, baseline, ratio: %q", w.prefix, len(fields), line)
			continue
		}
		checkPositive(t, w.prefix+" sendq", fields[0])
		if w.baseline != "" {
			checkPositive(t, w.prefix+" baseline", fields[1])
			checkPositive(t, w.prefix+" ratio", strings.TrimSuffix(fields[2], "x"))
		}
	}
	if !strings.Contains(out, "live at") {
		t.Errorf("no live latency rows in:\n%s", out)
	}

	b, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	var rep Report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatalf("-json output does not decode: %v", err)
	}
	if rep.Settings.N != 200 || rep.Settings.Pool != 2 {
		t.Errorf("json settings = %+v; want n=200 pool=2", rep.Settings)
	}
	if got := strings.Count(out, "\n"); len(rep.Rows) < len(wantRows) || got < len(rep.Rows) {
		t.Errorf("json has %d rows, table %d lines; want at least %d rows", len(rep.Rows), got, len(wantRows))
	}
	for _, r := range rep.Rows {
		if r.Sendq == nil || *r.Sendq <= 0 {
			t.Errorf("json row %q: sendq = %v; want > 0", r.Figure, r.Sendq)
		}
	}
}

// findRow returns the table line that starts with prefix and names
// baseline (any line, if baseline is "").
func findRow(out, prefix, baseline string) string {
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, prefix) && strings.Contains(line, baseline) {
			return line
		}
	}
	return ""
}

func checkPositive(t *testing.T, what, s string) {
	t.Helper()
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || v <= 0 {
		t.Errorf("%s = %q; want a positive number", what, s)
	}
}

// TestRefusesNonEmptyRedis: a REDIS_URL database that holds keys is not
// flushed; the run stops before touching it.
func TestRefusesNonEmptyRedis(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	ctx := context.Background()
	if err := rdb.Set(ctx, "someone:else", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	env := func(k string) string {
		if k == "REDIS_URL" {
			return srv.URL()
		}
		return ""
	}
	if code := Main(ctx, []string{"-n", "10"}, env, &stdout, &stderr); code != 1 {
		t.Fatalf("Main on a non-empty database = %d; want 1 (stderr %q)", code, &stderr)
	}
	if !strings.Contains(stderr.String(), "holds 1 keys") {
		t.Errorf("stderr = %q; want it to say the database is not empty", &stderr)
	}
	if v, err := rdb.Get(ctx, "someone:else").Result(); err != nil || v != "v" {
		t.Errorf("the existing key is %q, %v after the refusal; want it untouched", v, err)
	}
}

func TestBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-n", "0"},
		{"-pool", "-1"},
		{"-target", "ftp://x"},
		{"extra"},
	} {
		var stdout, stderr bytes.Buffer
		if code := Main(context.Background(), args, func(string) string { return "" }, &stdout, &stderr); code != 2 {
			t.Errorf("Main(%q) = %d; want 2 (stderr %q)", args, code, &stderr)
		}
	}
}

func TestUUIDv7Time(t *testing.T) {
	before := time.Now()
	id := uuid.Must(uuid.NewV7())
	after := time.Now()
	got, ok := uuidV7Time(id.String())
	if !ok {
		t.Fatalf("uuidV7Time(%s) not ok", id)
	}
	// The id keeps the time to 256 ns, below the millisecond.
	if got.Before(before.Add(-time.Microsecond)) || got.After(after.Add(time.Microsecond)) {
		t.Errorf("uuidV7Time(%s) = %v; want between %v and %v", id, got, before, after)
	}
	if _, ok := uuidV7Time(uuid.NewString()); ok {
		t.Errorf("uuidV7Time(a v4 uuid) ok; want not ok")
	}
}

func TestPercentile(t *testing.T) {
	d := []time.Duration{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	for _, c := range []struct {
		p    float64
		want time.Duration
	}{{50, 5}, {90, 9}, {99, 10}, {100, 10}, {0, 1}} {
		if got := percentile(d, c.p); got != c.want {
			t.Errorf("percentile(1..10, %v) = %v; want %v", c.p, got, c.want)
		}
	}
}
