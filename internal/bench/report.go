package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"time"
)

// Report is what a run measured: the table rows, and the machine and
// settings it ran with. -json writes it as is.
type Report struct {
	Time     time.Time `json:"time"`
	Machine  Machine   `json:"machine"`
	Settings Settings  `json:"settings"`
	Rows     []Row     `json:"rows"`
	Notes    []string  `json:"notes,omitempty"`
}

// Machine describes where the run happened.
type Machine struct {
	OS         string `json:"os"`
	Arch       string `json:"arch"`
	CPUs       int    `json:"cpus"`
	GOMAXPROCS int    `json:"gomaxprocs"`
	CPUModel   string `json:"cpu_model,omitempty"`
	Go         string `json:"go"`
	Redis      string `json:"redis"`
	// LoadAvg is /proc/loadavg's 1-minute figure at the start and the end
	// of the run: other work on the machine skews every number.
	LoadAvg [2]float64 `json:"load_avg"`
}

// Settings are the run's parameters.
type Settings struct {
	N                 int     `json:"n"`
	Concurrency       int     `json:"c"`
	BodyBytes         int     `json:"body_bytes"`
	Recipients        int     `json:"recipients"`
	Pool              int     `json:"pool"`
	Workers           int     `json:"workers"`
	WorkerConcurrency int     `json:"worker_concurrency"`
	NaiveConcurrency  int     `json:"naive_concurrency"`
	NoopConcurrency   int     `json:"noop_concurrency"`
	SMTPLatencyMs     float64 `json:"smtp_latency_ms"`
	Target            string  `json:"target,omitempty"`
}

// Row is one figure: sendq's value, the baseline's and their ratio
// (sendq / baseline). A nil pointer was not measured.
type Row struct {
	Figure   string   `json:"figure"`
	Unit     string   `json:"unit"`
	Sendq    *float64 `json:"sendq"`
	Baseline *float64 `json:"baseline,omitempty"`
	// BaselineName says what the baseline is.
	BaselineName string   `json:"baseline_name,omitempty"`
	Ratio        *float64 `json:"ratio,omitempty"`
}

func ptr(v float64) *float64 { return &v }

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// report turns the results into rows; what was not measured is left out
// (or shown as "-" when only the baseline is missing).
func (r *runner) report() *Report {
	o, res := r.o, &r.res
	rep := &Report{
		Time: time.Now().UTC(),
		Machine: Machine{OS: runtime.GOOS, Arch: runtime.GOARCH, CPUs: runtime.NumCPU(),
			GOMAXPROCS: runtime.GOMAXPROCS(0), CPUModel: cpuModel(), Go: runtime.Version(), Redis: r.redisDesc,
			LoadAvg: [2]float64{r.loadAvg, loadAvg()}},
		Settings: Settings{N: o.n, Concurrency: o.c, BodyBytes: o.bodyBytes, Recipients: o.rcpts, Pool: o.pool, Workers: o.workers,
			WorkerConcurrency: o.concurrency, NaiveConcurrency: o.naiveConcurrency, NoopConcurrency: o.noopConcurrency,
			SMTPLatencyMs: ms(o.smtpLatency), Target: o.target},
	}
	add := func(figure, unit string, sendq float64, haveSendq bool, baseName string, base float64, haveBase bool) {
		row := Row{Figure: figure, Unit: unit}
		if haveSendq {
			row.Sendq = ptr(sendq)
		}
		if haveBase {
			row.Baseline, row.BaselineName = ptr(base), baseName
			if haveSendq && base != 0 {
				row.Ratio = ptr(sendq / base)
			}
		}
		rep.Rows = append(rep.Rows, row)
	}

	in, naive := res.intake, res.naiveIntake
	if in != nil {
		hb := naive != nil
		nv := func(f func(*loadResult) float64) float64 {
			if naive == nil {
				return 0
			}
			return f(naive)
		}
		const base = "naive intake: handler + asynq Enqueue"
		add("intake", "requests/s", in.ReqPerSec(), true, base, nv((*loadResult).ReqPerSec), hb)
		for _, p := range []struct {
			name string
			p    float64
		}{{"p50", 50}, {"p90", 90}, {"p99", 99}, {"max", 100}} {
			add("intake latency "+p.name, "ms", ms(percentile(in.Latency, p.p)), true, base,
				nv(func(l *loadResult) float64 { return ms(percentile(l.Latency, p.p)) }), hb)
		}
		if res.enqueueAlone.n > 0 {
			add("intake", "requests/s", in.ReqPerSec(), true,
				fmt.Sprintf("asynq Enqueue alone, %d goroutines, no HTTP", o.enqueueWorkers), res.enqueueAlone.perSec(), true)
		}
		if c := res.intakeCPU; c.self > 0 && o.target == "" {
			nc := res.naiveIntakeCPU
			add("intake CPU per request, this process", "µs", c.selfPer(), true, base+" (same load generator)", nc.selfPer(), nc.n > 0)
			add("intake Redis CPU per request", "µs", c.redisPer(), true, base, nc.redisPer(), nc.n > 0)
		}
		if res.intakeMem > 0 {
			add("Redis memory per queued email", "bytes", res.intakeMem, true, base, res.naiveMem, res.naiveMem > 0)
		}
	}
	if res.delivery.n > 0 {
		d := res.delivery.perSec()
		if !o.baselines {
			add("delivery", "emails/s", d, true, "", 0, false)
		} else {
			add("delivery", "emails/s", d, true, fmt.Sprintf("naive worker: asynq + go-mail DialAndSend, c=%d", o.naiveConcurrency),
				res.naiveWorker.perSec(), res.naiveWorker.n > 0)
			add("delivery", "emails/s", d, true, fmt.Sprintf("asynq no-op handler, c=%d", o.noopConcurrency),
				res.noop.perSec(), res.noop.n > 0)
			add("delivery", "emails/s", d, true, fmt.Sprintf("raw go-mail over %d reused connections, no Redis", o.pool),
				res.raw.perSec(), res.raw.n > 0)
		}
		if o.smtpLatency > 0 {
			add("delivery", "emails/s", d, true, fmt.Sprintf("workers*pool/latency maximum: %d*%d / %s", o.workers, o.pool, o.smtpLatency),
				float64(o.workers*o.pool)/o.smtpLatency.Seconds(), true)
		}
		if c := res.deliveryCPU; c.self > 0 && !o.baselines {
			add("delivery CPU per email, this process", "µs", c.selfPer(), true, "", 0, false)
			add("delivery Redis CPU per email", "µs", c.redisPer(), true, "", 0, false)
		} else if c.self > 0 {
			for _, b := range []struct {
				name  string
				c     cost
				redis bool
			}{
				{fmt.Sprintf("naive worker, c=%d", o.naiveConcurrency), res.naiveWorkerCPU, true},
				{fmt.Sprintf("asynq no-op, c=%d", o.noopConcurrency), res.noopCPU, true},
				{fmt.Sprintf("raw go-mail, %d connections", o.pool), res.rawCPU, false},
			} {
				add("delivery CPU per email, this process", "µs", c.selfPer(), true, b.name+" (same sink)", b.c.selfPer(), b.c.n > 0)
				if b.redis {
					add("delivery Redis CPU per email", "µs", c.redisPer(), true, b.name, b.c.redisPer(), b.c.n > 0)
				}
			}
		}
		for _, l := range []struct {
			name string
			lat  []time.Duration
		}{{fmt.Sprintf("enqueue-to-250, backlog of %d,", res.delivery.n), res.backlogLat},
			{fmt.Sprintf("enqueue-to-250, live at %.0f/s,", res.liveRate), res.liveLat}} {
			if len(l.lat) == 0 {
				continue
			}
			add(l.name+" p50", "ms", ms(percentile(l.lat, 50)), true, "", 0, false)
			add(l.name+" p99", "ms", ms(percentile(l.lat, 99)), true, "", 0, false)
		}
		if res.rssPeak > 0 {
			add("peak RSS during delivery (whole process)", "MB", float64(res.rssPeak)/(1<<20), true, "", 0, false)
		}
	}

	if res.delivery.n > 0 {
		rep.Notes = append(rep.Notes,
			"delivery: from the worker's start to the sink's last 250; the worker did not run during the intake phase",
			"backlog latency includes the wait in the queue while the intake ran; live latency is a paced stream with the worker running",
			"RSS: API, worker, SMTP sink and load generator share this process (the worker is in process), so the worker alone uses less")
	}
	if res.badIDs > 0 {
		rep.Notes = append(rep.Notes, fmt.Sprintf("%d received messages had a Message-ID the load generator did not send; left out of the latencies", res.badIDs))
	}
	if o.target != "" {
		rep.Notes = append(rep.Notes, "intake of "+o.target+" (its own Redis and workers); the naive intake ran in this process")
	}
	return rep
}

// writeTable prints the report as an aligned table.
func (rep *Report) writeTable(w io.Writer) {
	m, s := rep.Machine, rep.Settings
	model := ""
	if m.CPUModel != "" {
		model = ", " + m.CPUModel
	}
	fmt.Fprintf(w, "sendq bench: %s/%s, %d CPUs (GOMAXPROCS %d)%s, %s, load average %.1f at start, %.1f at end\n",
		m.OS, m.Arch, m.CPUs, m.GOMAXPROCS, model, m.Go, m.LoadAvg[0], m.LoadAvg[1])
	if s.Target != "" {
		fmt.Fprintf(w, "target: %s; Redis (naive intake): %s; n=%d c=%d body=%dB rcpts=%d\n",
			s.Target, m.Redis, s.N, s.Concurrency, s.BodyBytes, s.Recipients)
	} else {
		fmt.Fprintf(w, "Redis: %s; n=%d c=%d body=%dB rcpts=%d workers=%d pool=%d worker-concurrency=%d smtp-latency=%s\n",
			m.Redis, s.N, s.Concurrency, s.BodyBytes, s.Recipients, s.Workers, s.Pool, s.WorkerConcurrency,
			time.Duration(s.SMTPLatencyMs*float64(time.Millisecond)))
	}
	fmt.Fprintln(w, "ratio = sendq / baseline: above 1 is better for rates, below 1 for latency and memory")
	fmt.Fprintln(w)
	// The figure and the baseline's name are left-aligned, numbers right.
	cells := [][]string{{"figure", "sendq", "baseline", "ratio", "baseline is"}}
	for _, r := range rep.Rows {
		cells = append(cells, []string{r.Figure + " (" + r.Unit + ")", num(r.Sendq), num(r.Baseline), ratio(r.Ratio), r.BaselineName})
	}
	width := make([]int, 5)
	for _, row := range cells {
		for i, c := range row {
			width[i] = max(width[i], len(c))
		}
	}
	for _, row := range cells {
		line := fmt.Sprintf("%-*s  %*s  %*s  %*s  %s", width[0], row[0], width[1], row[1], width[2], row[2], width[3], row[3], row[4])
		fmt.Fprintln(w, strings.TrimRight(line, " "))
	}
	if len(rep.Notes) > 0 {
		fmt.Fprintln(w)
		for _, n := range rep.Notes {
			fmt.Fprintln(w, "note: "+n)
		}
	}
}

func num(v *float64) string {
	switch {
	case v == nil:
		return "-"
	case *v >= 100:
		return fmt.Sprintf("%.0f", *v)
	case *v >= 10:
		return fmt.Sprintf("%.1f", *v)
	default:
		return fmt.Sprintf("%.2f", *v)
	}
}

func ratio(v *float64) string {
	if v == nil {
		return "-"
	}
	return fmt.Sprintf("%.2fx", *v)
}

// writeJSON writes the report to path.
func (rep *Report) writeJSON(path string) error {
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write -json: %w", err)
	}
	return nil
}
