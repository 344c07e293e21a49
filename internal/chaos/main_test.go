//go:build chaos

package chaos

import (
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sendq/sendq/internal/proctest"
)

// binary is the sendq binary built once for the suite.
var binary string

func TestMain(m *testing.M) {
	flag.Parse()
	// Most scenarios spend their time waiting (for a recoverer, an outage,
	// a drain), so four at once fit on two cores; -parallel overrides.
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == "test.parallel" })
	if !set {
		_ = flag.Set("test.parallel", "4")
	}
	if _, err := exec.LookPath("redis-server"); err != nil {
		fmt.Fprintln(os.Stderr, "chaos: redis-server is not on the PATH; the fault suite needs a real one")
		os.Exit(1)
	}
	dir, err := os.MkdirTemp("", "sendq-chaos")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary, err = proctest.Build(dir, false)
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		_ = os.RemoveAll(dir)
		os.Exit(1)
	}
	start := time.Now()
	code := m.Run()
	report.write(os.Stdout, time.Since(start))
	if path := os.Getenv("CHAOS_REPORT"); path != "" {
		f, err := os.Create(path)
		if err == nil {
			report.write(f, time.Since(start))
			err = f.Close()
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "chaos: write CHAOS_REPORT:", err)
			code = 1
		}
	}
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// short reports whether the bounded (CI) form runs: CHAOS_SHORT=1 or -short.
func short() bool { return os.Getenv("CHAOS_SHORT") == "1" || testing.Short() }

// pick returns s in the short form and f in the full one.
func pick[T any](s, f T) T {
	if short() {
		return s
	}
	return f
}

// row is one line of the table: one scenario's ledger after the drain.
type row struct {
	Key       string // sort key: "1", "6a", …
	Scenario  string
	Accepted  int
	Delivered int
	Failed    int
	Lost      int
	Dups      int
	Rejected  int // 503 answers: never accepted
	Unacked   int // delivered although the API never answered 202 for it
	Notes     []string
	Result    string
	Elapsed   time.Duration
}

type table struct {
	mu   sync.Mutex
	rows []*row
}

var report table

func (tb *table) add(r *row) {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	tb.rows = append(tb.rows, r)
}

func (tb *table) write(w io.Writer, total time.Duration) {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	if len(tb.rows) == 0 {
		return
	}
	rows := append([]*row(nil), tb.rows...)
	sort.SliceStable(rows, func(i, j int) bool { return rows[i].Key < rows[j].Key })
	mode := "full"
	if short() {
		mode = "short (CHAOS_SHORT=1)"
	}
	fmt.Fprintf(w, "\n### sendq fault suite\n\n")
	fmt.Fprintf(w, "`go test -tags chaos -count=1 -v ./internal/chaos/`, %s form, %s, %d CPUs, %s, total %s\n\n",
		mode, runtime.Version(), runtime.NumCPU(), time.Now().UTC().Format("2006-01-02"), total.Round(time.Second))
	fmt.Fprintln(w, "| scenario | accepted | delivered | failed | lost | duplicates | 503s | result | time | notes |")
	fmt.Fprintln(w, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |")
	for _, r := range rows {
		notes := append([]string(nil), r.Notes...)
		if r.Unacked > 0 {
			notes = append(notes, fmt.Sprintf("%d delivered without a 202 (answered 503, stored anyway)", r.Unacked))
		}
		fmt.Fprintf(w, "| %s %s | %d | %d | %d | %d | %d | %d | %s | %s | %s |\n",
			r.Key, r.Scenario, r.Accepted, r.Delivered, r.Failed, r.Lost, r.Dups, r.Rejected, r.Result,
			r.Elapsed.Round(time.Second), strings.ReplaceAll(strings.Join(notes, "; "), "|", "\\|"))
	}
	fmt.Fprintln(w)
}
