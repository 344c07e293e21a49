package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/hibiken/asynq"
	"go.uber.org/goleak"

	"github.com/sendq/sendq/internal/redistest"
	"github.com/sendq/sendq/queue"
)

// TestMainTiny runs the whole bench, two rounds, with tiny numbers against
// a private redis-server and checks that every row of the table is there
// with a positive number and, where there is a baseline, the range of the
// two rounds' ratios, and that -json writes the same rows with each
// round's values.
func TestMainTiny(t *testing.T) {
	needRedisServer(t)
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	jsonPath := filepath.Join(t.TempDir(), "bench.json")
	var stdout, stderr bytes.Buffer
	env := func(string) string { return "" } // no REDIS_URL: Main starts its own Redis
	code := Main(ctx, []string{"-n", "200", "-c", "8", "-pool", "2", "-rounds", "2", "-live-duration", "500ms",
		"-smtp-latency", "1ms", "-json", jsonPath, "-templated-batches", "3"}, env, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("Main = %d; want 0\nstdout:\n%s\nstderr:\n%s", code, &stdout, &stderr)
	}
	out := stdout.String()
	if !strings.Contains(out, " rounds=2 ") {
		t.Errorf("the header does not say rounds=2:\n%s", out)
	}
	if !strings.Contains(out, "templated-batch phase (last round): 3 batches of 1000 messages") || !strings.Contains(out, "| emails accepted/s |") {
		t.Errorf("no templated-batch phase in the report:\n%s", out)
	}
	if !strings.Contains(out, "ran in the last round only") {
		t.Errorf("no note that the live phase and the RSS ran in the last round only:\n%s", out)
	}

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
		{"batch intake, 200-message batches, c=4 (emails/s)", "naive intake"},
		{"batch intake latency of one 200-message batch p99 (ms)", ""},
		{"Redis memory per queued batch email (bytes)", "naive intake"},
		{"batch delivery, 200 queued batch emails (emails/s)", "asynq no-op"},
		{"batch delivery CPU per email, this process (µs)", "asynq no-op"},
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
			lo, hi, ok := strings.Cut(fields[3], "-")
			if !ok {
				t.Errorf("row %q: min-max column %q; want lo-hi", w.prefix, fields[3])
				continue
			}
			checkPositive(t, w.prefix+" ratio min", lo)
			checkPositive(t, w.prefix+" ratio max", hi)
		}
	}
	if !strings.Contains(out, "live at") {
		t.Errorf("no live latency rows in:\n%s", out)
	}

	rep := readReport(t, jsonPath)
	if rep.Settings.N != 200 || rep.Settings.Pool != 2 || rep.Settings.Rounds != 2 {
		t.Errorf("json settings = %+v; want n=200 pool=2 rounds=2", rep.Settings)
	}
	if len(rep.Rounds) != 2 || rep.Rounds[0].First != "sendq" || rep.Rounds[1].First != "baselines" ||
		rep.Rounds[0].Seconds <= 0 || rep.Rounds[1].Seconds <= 0 {
		t.Errorf("json rounds = %+v; want round 1 sendq first, round 2 baselines first, both completed", rep.Rounds)
	}
	if got := strings.Count(out, "\n"); len(rep.Rows) < len(wantRows) || got < len(rep.Rows) {
		t.Errorf("json has %d rows, table %d lines; want at least %d rows", len(rep.Rows), got, len(wantRows))
	}
	for _, r := range rep.Rows {
		if r.Sendq == nil || *r.Sendq <= 0 {
			t.Errorf("json row %q: sendq = %v; want > 0", r.Figure, r.Sendq)
		}
		// The live latency and the RSS come from the last round only;
		// every other figure from both.
		want := 2
		if strings.Contains(r.Figure, "live at") || strings.Contains(r.Figure, "RSS") {
			want = 1
		}
		if len(r.Rounds) != want || r.Rounds[len(r.Rounds)-1].Round != 2 {
			t.Errorf("json row %q: rounds = %+v; want %d ending with round 2", r.Figure, r.Rounds, want)
			continue
		}
		if r.Baseline == nil {
			continue
		}
		for _, rv := range r.Rounds {
			if rv.Sendq == nil || rv.Baseline == nil || rv.Ratio == nil || *rv.Ratio <= 0 {
				t.Errorf("json row %q (%s) round %d = %+v; want sendq, baseline and a positive ratio", r.Figure, r.BaselineName, rv.Round, rv)
			}
		}
		if r.Ratio == nil || r.RatioMin == nil || r.RatioMax == nil || *r.RatioMin > *r.Ratio || *r.Ratio > *r.RatioMax {
			t.Errorf("json row %q (%s): ratio %v, min %v, max %v; want min <= ratio <= max", r.Figure, r.BaselineName, r.Ratio, r.RatioMin, r.RatioMax)
		}
	}
}

// TestTargetRounds measures the intake of a running sendq (its API on its
// own Redis, as `sendq api` runs it) over three rounds, alternating with the
// naive intake: every round's requests must be new emails to the target
// (Idempotency-Keys unique per round), not replays of the first round's.
func TestTargetRounds(t *testing.T) {
	needRedisServer(t)
	// Registered first, the check runs after the other cleanups (the
	// target's redis-server is stopped by one).
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })

	srv := redistest.Start(t)
	const key = "bench-target-key"
	api, err := startSendqAPI(srv.URL(), key, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer api.stop()

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	jsonPath := filepath.Join(t.TempDir(), "bench.json")
	var stdout, stderr bytes.Buffer
	target := strings.TrimSuffix(api.url, "/v1/emails")
	code := Main(ctx, []string{"-target", target, "-api-key", key, "-n", "50", "-c", "4", "-rounds", "3", "-json", jsonPath},
		func(string) string { return "" }, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("Main -target = %d; want 0\nstdout:\n%s\nstderr:\n%s", code, &stdout, &stderr)
	}
	if !strings.Contains(stdout.String(), " rounds=3 ") {
		t.Errorf("the header does not say rounds=3:\n%s", &stdout)
	}

	rep := readReport(t, jsonPath)
	var firsts []string
	for _, r := range rep.Rounds {
		firsts = append(firsts, r.First)
	}
	if want := []string{"sendq", "baselines", "sendq"}; !slices.Equal(firsts, want) {
		t.Errorf("json rounds went first: %q; want %q", firsts, want)
	}
	if len(rep.Rows) == 0 || rep.Rows[0].Figure != "intake" || len(rep.Rows[0].Rounds) != 3 || rep.Rows[0].RatioMin == nil {
		t.Fatalf("json first row = %+v; want the intake with 3 rounds and a ratio range", rep.Rows)
	}

	insp := asynq.NewInspectorFromRedisClient(srv.Client(t))
	info, err := insp.GetQueueInfo(queue.Name)
	if err != nil {
		t.Fatal(err)
	}
	if info.Size != 3*50 {
		t.Errorf("the target queued %d emails; want %d (50 new ones per round)", info.Size, 3*50)
	}
}

// needRedisServer skips the test when redis-server is not installed (Main
// starts a private one), unless SENDQ_TEST_REQUIRE_REDIS is set.
func needRedisServer(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		if os.Getenv("SENDQ_TEST_REQUIRE_REDIS") != "" {
			t.Fatalf("redis-server not found and SENDQ_TEST_REQUIRE_REDIS is set: %v", err)
		}
		t.Skip("redis-server is not installed")
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
		{"-rounds", "0"},
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

func TestMedian(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want *float64
	}{
		{nil, nil},
		{[]float64{7}, ptr(7)},
		{[]float64{3, 1, 2}, ptr(2)},
		{[]float64{4, 1, 3, 2}, ptr(2.5)},
		{[]float64{5, 5}, ptr(5)},
	} {
		in := slices.Clone(c.in)
		got := median(c.in)
		if !sameFloat(got, c.want) {
			t.Errorf("median(%v) = %v; want %v", c.in, fmtPtr(got), fmtPtr(c.want))
		}
		if !slices.Equal(in, c.in) {
			t.Errorf("median(%v) changed its input to %v", in, c.in)
		}
	}
}

// TestSummarize: the sendq and baseline columns are medians of what the
// rounds measured; the ratio is the median of the per-round (paired)
// ratios, not the ratio of the medians.
func TestSummarize(t *testing.T) {
	rv := func(round int, sendq, base *float64) RoundValue {
		return RoundValue{Round: round, Sendq: sendq, Baseline: base}
	}
	for _, c := range []struct {
		name               string
		rounds             []RoundValue
		sendq, base, ratio *float64
		ratioMin, ratioMax *float64
		perRound           []*float64 // each round's ratio
	}{
		{name: "no rounds"},
		{
			name:   "one round",
			rounds: []RoundValue{rv(1, ptr(10), ptr(5))},
			sendq:  ptr(10), base: ptr(5), ratio: ptr(2), ratioMin: ptr(2), ratioMax: ptr(2),
			perRound: []*float64{ptr(2)},
		},
		{
			// Medians 20 and 10 would make 2; the rounds' ratios are 1, 2, 0.75.
			name:   "odd count, paired",
			rounds: []RoundValue{rv(1, ptr(10), ptr(10)), rv(2, ptr(20), ptr(10)), rv(3, ptr(30), ptr(40))},
			sendq:  ptr(20), base: ptr(10), ratio: ptr(1), ratioMin: ptr(0.75), ratioMax: ptr(2),
			perRound: []*float64{ptr(1), ptr(2), ptr(0.75)},
		},
		{
			name:   "even count: the mean of the middle two",
			rounds: []RoundValue{rv(1, ptr(4), ptr(1)), rv(2, ptr(1), ptr(1)), rv(3, ptr(3), ptr(1)), rv(4, ptr(2), ptr(1))},
			sendq:  ptr(2.5), base: ptr(1), ratio: ptr(2.5), ratioMin: ptr(1), ratioMax: ptr(4),
			perRound: []*float64{ptr(4), ptr(1), ptr(3), ptr(2)},
		},
		{
			name:   "baseline missing in one round",
			rounds: []RoundValue{rv(1, ptr(10), ptr(5)), rv(2, ptr(12), nil), rv(3, ptr(8), ptr(4))},
			sendq:  ptr(10), base: ptr(4.5), ratio: ptr(2), ratioMin: ptr(2), ratioMax: ptr(2),
			perRound: []*float64{ptr(2), nil, ptr(2)},
		},
		{
			name:   "sendq missing in one round",
			rounds: []RoundValue{rv(1, nil, ptr(5)), rv(2, ptr(10), ptr(4))},
			sendq:  ptr(10), base: ptr(4.5), ratio: ptr(2.5), ratioMin: ptr(2.5), ratioMax: ptr(2.5),
			perRound: []*float64{nil, ptr(2.5)},
		},
		{
			name:   "zero baseline: no ratio",
			rounds: []RoundValue{rv(1, ptr(3), ptr(0))},
			sendq:  ptr(3), base: ptr(0),
			perRound: []*float64{nil},
		},
		{
			name:     "no baseline at all",
			rounds:   []RoundValue{rv(1, ptr(3), nil), rv(2, ptr(5), nil)},
			sendq:    ptr(4),
			perRound: []*float64{nil, nil},
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := summarize(c.rounds)
			for _, f := range []struct {
				what      string
				got, want *float64
			}{{"sendq", got.sendq, c.sendq}, {"baseline", got.baseline, c.base}, {"ratio", got.ratio, c.ratio},
				{"ratio min", got.ratioMin, c.ratioMin}, {"ratio max", got.ratioMax, c.ratioMax}} {
				if !sameFloat(f.got, f.want) {
					t.Errorf("summarize(%s) %s = %s; want %s", c.name, f.what, fmtPtr(f.got), fmtPtr(f.want))
				}
			}
			if len(got.rounds) != len(c.perRound) {
				t.Fatalf("summarize(%s) returned %d rounds; want %d", c.name, len(got.rounds), len(c.perRound))
			}
			for i, want := range c.perRound {
				if g := got.rounds[i]; g.Round != c.rounds[i].Round || !sameFloat(g.Ratio, want) {
					t.Errorf("summarize(%s) round %d ratio = %s; want %s", c.name, g.Round, fmtPtr(g.Ratio), fmtPtr(want))
				}
			}
		})
	}
}

// TestCombine: rows keep the rounds' order, a figure that only the last
// round has (the live latency) lands where that round lists it, and a row
// whose baseline one round missed stays one row.
func TestCombine(t *testing.T) {
	f := func(name, base string, sendq, b *float64) figure {
		return figure{name: name, unit: "u", baseName: base, sendq: sendq, base: b}
	}
	rounds := []Round{{Round: 1}, {Round: 2}, {Round: 3}}
	figs := [][]figure{
		{f("intake", "naive", ptr(9), ptr(10)), f("delivery", "naive", ptr(6), ptr(5)), f("delivery", "noop", ptr(6), ptr(12)), f("backlog", "", ptr(30), nil)},
		{f("delivery", "noop", ptr(8), ptr(10)), f("intake", "naive", ptr(11), ptr(10)), f("delivery", "naive", ptr(8), nil), f("backlog", "", ptr(20), nil)},
		{f("intake", "naive", ptr(10), ptr(10)), f("delivery", "naive", ptr(7), ptr(7)), f("delivery", "noop", ptr(7), ptr(14)),
			f("backlog", "", ptr(25), nil), f("live", "", ptr(3), nil), f("rss", "", ptr(50), nil)},
	}
	rows := combine(figs, rounds)
	var got []string
	for _, r := range rows {
		got = append(got, strings.TrimSpace(r.Figure+"/"+r.BaselineName+" "+ratio(r.Ratio)+" "+ratioRange(r)))
	}
	want := []string{
		"intake/naive 1.00x 0.90-1.10",
		"delivery/naive 1.10x 1.00-1.20",
		"delivery/noop 0.50x 0.50-0.80",
		"backlog/ -",
		"live/ -",
		"rss/ -",
	}
	if !slices.Equal(got, want) {
		t.Errorf("combine rows =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if n := len(rows[4].Rounds); n != 1 || rows[4].Rounds[0].Round != 3 {
		t.Errorf("live row rounds = %+v; want round 3 only", rows[4].Rounds)
	}
}

func TestProgressLabel(t *testing.T) {
	p := newProgress(io.Discard)
	p.setRound(1, 1)
	if got := p.label("sendq intake"); got != "sendq intake" {
		t.Errorf("label with one round = %q; want %q", got, "sendq intake")
	}
	p.setRound(2, 3)
	if got, want := p.label("sendq intake"), "round 2/3 · sendq intake"; got != want {
		t.Errorf("label in round 2 of 3 = %q; want %q", got, want)
	}
}

func sameFloat(a, b *float64) bool {
	if a == nil || b == nil {
		return a == b
	}
	return math.Abs(*a-*b) < 1e-9
}

func fmtPtr(v *float64) string {
	if v == nil {
		return "nil"
	}
	return strconv.FormatFloat(*v, 'g', -1, 64)
}

// readReport reads what -json wrote.
func readReport(t *testing.T, path string) *Report {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var rep Report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatalf("-json output does not decode: %v", err)
	}
	return &rep
}
