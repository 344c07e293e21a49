package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"
)

// Report is what a run measured: the table rows, and the machine and
// settings it ran with. -json writes it as is.
type Report struct {
	Time     time.Time `json:"time"`
	Machine  Machine   `json:"machine"`
	Settings Settings  `json:"settings"`
	// Rounds are the rounds begun, in order; the last one is incomplete
	// if the run failed.
	Rounds []Round  `json:"rounds"`
	Rows   []Row    `json:"rows"`
	Notes  []string `json:"notes,omitempty"`
}

// Round says when one round ran and which side went first.
type Round struct {
	Round int       `json:"round"` // 1-based
	First string    `json:"first"` // "sendq" or "baselines"
	Start time.Time `json:"start"`
	// Seconds is the round's length; 0 if it did not complete.
	Seconds float64 `json:"seconds,omitempty"`
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
	Rounds            int     `json:"rounds"`
}

// Row is one figure: sendq's value, the baseline's and their ratio
// (sendq / baseline), over the rounds. A nil pointer was not measured.
type Row struct {
	Figure string `json:"figure"`
	Unit   string `json:"unit"`
	// Sendq and Baseline are the medians over the rounds that measured
	// them.
	Sendq    *float64 `json:"sendq"`
	Baseline *float64 `json:"baseline,omitempty"`
	// BaselineName says what the baseline is.
	BaselineName string `json:"baseline_name,omitempty"`
	// Ratio is the median of the per-round ratios (each round's sendq over
	// the same round's baseline); RatioMin and RatioMax are their range.
	Ratio    *float64 `json:"ratio,omitempty"`
	RatioMin *float64 `json:"ratio_min,omitempty"`
	RatioMax *float64 `json:"ratio_max,omitempty"`
	// Rounds are the raw values of every round that measured the figure.
	Rounds []RoundValue `json:"rounds"`
}

// RoundValue is one figure in one round. A nil pointer was not measured.
type RoundValue struct {
	Round    int      `json:"round"`
	Sendq    *float64 `json:"sendq,omitempty"`
	Baseline *float64 `json:"baseline,omitempty"`
	Ratio    *float64 `json:"ratio,omitempty"`
}

func ptr(v float64) *float64 { return &v }

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// report turns the rounds' results into rows; what was not measured is left
// out (or shown as "-" when only the baseline is missing).
func (r *runner) report() *Report {
	o := r.o
	rep := &Report{
		Time: time.Now().UTC(),
		Machine: Machine{OS: runtime.GOOS, Arch: runtime.GOARCH, CPUs: runtime.NumCPU(),
			GOMAXPROCS: runtime.GOMAXPROCS(0), CPUModel: cpuModel(), Go: runtime.Version(), Redis: r.redisDesc,
			LoadAvg: [2]float64{r.loadAvg, loadAvg()}},
		Settings: Settings{N: o.n, Concurrency: o.c, BodyBytes: o.bodyBytes, Recipients: o.rcpts, Pool: o.pool, Workers: o.workers,
			WorkerConcurrency: o.concurrency, NaiveConcurrency: o.naiveConcurrency, NoopConcurrency: o.noopConcurrency,
			SMTPLatencyMs: ms(o.smtpLatency), Target: o.target, Rounds: o.rounds},
	}
	var (
		figs                    [][]figure
		delivered, live, rssRan bool
		badIDs, completed       int
	)
	for _, res := range r.rounds {
		first := "sendq"
		if !res.sendqFirst {
			first = "baselines"
		}
		rd := Round{Round: res.round, First: first, Start: res.start.UTC()}
		if !res.end.IsZero() {
			rd.Seconds = res.end.Sub(res.start).Seconds()
			completed++
		}
		rep.Rounds = append(rep.Rounds, rd)
		figs = append(figs, r.figures(res))
		delivered = delivered || res.delivery.n > 0
		live = live || len(res.liveLat) > 0
		rssRan = rssRan || res.rssPeak > 0
		badIDs += res.badIDs
	}
	rep.Rows = combine(figs, rep.Rounds)

	if o.rounds > 1 {
		rep.Notes = append(rep.Notes, fmt.Sprintf(
			"%d rounds, alternating the order (odd rounds sendq first, even rounds the baselines first): sendq and baseline are medians over the rounds (the mean of the middle two for an even count), ratio is the median of the per-round ratios, min-max their range",
			o.rounds))
		if completed < o.rounds {
			rep.Notes = append(rep.Notes, fmt.Sprintf("only %d of %d rounds completed; the medians are over what was measured", completed, o.rounds))
		}
		var once []string
		if live {
			once = append(once, "the live-latency phase")
		}
		if rssRan {
			once = append(once, "the peak RSS sampling")
		}
		if len(once) > 0 {
			rep.Notes = append(rep.Notes, strings.Join(once, " and ")+" ran in the last round only")
		}
	}
	if delivered {
		rep.Notes = append(rep.Notes,
			"delivery: from the worker's start to the sink's last 250; the worker did not run during the intake phase",
			"backlog latency includes the wait in the queue while the intake ran; live latency is a paced stream with the worker running",
			"RSS: API, worker, SMTP sink and load generator share this process (the worker is in process), so the worker alone uses less")
	}
	if badIDs > 0 {
		rep.Notes = append(rep.Notes, fmt.Sprintf("%d received messages had a Message-ID the load generator did not send; left out of the latencies", badIDs))
	}
	if o.target != "" {
		rep.Notes = append(rep.Notes, "intake of "+o.target+" (its own Redis and workers); the naive intake ran in this process")
	}
	return rep
}

// figure is one row of one round, before the rounds are combined. A nil
// pointer was not measured; baseName is set even then, so that the row is
// the same row in every round.
type figure struct {
	name, unit, baseName string
	sendq, base          *float64
}

func (f figure) key() string { return f.name + "\x00" + f.unit + "\x00" + f.baseName }

// combine merges the rounds' figures into rows, each with the summary of
// its rounds. Rows keep the order in which the rounds list them; a figure
// only some rounds have (the live latency, the RSS) goes after the figure
// that precedes it in the first round that has it.
func combine(figs [][]figure, rounds []Round) []Row {
	type acc struct {
		f    figure
		vals []RoundValue
	}
	var keys []string
	byKey := map[string]*acc{}
	for i, round := range figs {
		at := 0 // where a new figure goes: after the last one seen
		for _, f := range round {
			k := f.key()
			a, ok := byKey[k]
			if !ok {
				a = &acc{f: f}
				byKey[k] = a
				keys = slices.Insert(keys, at, k)
			}
			at = slices.Index(keys, k) + 1
			a.vals = append(a.vals, RoundValue{Round: rounds[i].Round, Sendq: f.sendq, Baseline: f.base})
		}
	}
	rows := make([]Row, 0, len(keys))
	for _, k := range keys {
		a := byKey[k]
		s := summarize(a.vals)
		row := Row{Figure: a.f.name, Unit: a.f.unit, Sendq: s.sendq, Baseline: s.baseline,
			Ratio: s.ratio, RatioMin: s.ratioMin, RatioMax: s.ratioMax, Rounds: s.rounds}
		if s.baseline != nil {
			row.BaselineName = a.f.baseName
		}
		rows = append(rows, row)
	}
	return rows
}

// figures lists what one round measured.
func (r *runner) figures(res *results) []figure {
	o := r.o
	var out []figure
	add := func(name, unit string, sendq float64, haveSendq bool, baseName string, base float64, haveBase bool) {
		f := figure{name: name, unit: unit, baseName: baseName}
		if haveSendq {
			f.sendq = ptr(sendq)
		}
		if haveBase {
			f.base = ptr(base)
		}
		out = append(out, f)
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
	out = append(out, r.batchFigures(res)...)
	return out
}

// batchFigures lists what the batch phases measured in one round.
func (r *runner) batchFigures(res *results) []figure {
	o := r.o
	var out []figure
	add := func(name, unit string, sendq float64, baseName string, base float64, haveBase bool) {
		f := figure{name: name, unit: unit, baseName: baseName, sendq: ptr(sendq)}
		if haveBase {
			f.base = ptr(base)
		}
		out = append(out, f)
	}
	const naive = "naive intake: handler + asynq Enqueue, requests/s"
	noop := fmt.Sprintf("asynq no-op handler, c=%d, tasks/s", o.noopConcurrency)
	if b := res.batchIntake; b != nil && b.accepted > 0 {
		add(fmt.Sprintf("batch intake, %d-message batches, c=%d", o.batchSize, o.batchC), "emails/s", b.emailsPerSec(),
			naive, res.naiveIntake.reqPerSec(), res.naiveIntake != nil)
		for _, p := range []struct {
			name string
			p    float64
		}{{"p50", 50}, {"p99", 99}, {"max", 100}} {
			add(fmt.Sprintf("batch intake latency of one %d-message batch %s", o.batchSize, p.name), "ms", ms(percentile(b.latency, p.p)), "", 0, false)
		}
		if c := res.batchIntakeCPU; c.self > 0 {
			nc := res.naiveIntakeCPU
			add("batch intake CPU per email, this process", "µs", c.selfPer(), "naive intake per request (same load generator)", nc.selfPer(), nc.n > 0)
			add("batch intake Redis CPU per email", "µs", c.redisPer(), "naive intake per request", nc.redisPer(), nc.n > 0)
		}
		if res.batchMem > 0 {
			add("Redis memory per queued batch email", "bytes", res.batchMem, "naive intake per queued email", res.naiveMem, res.naiveMem > 0)
		}
	}
	if d := res.batchDelivery; d.n > 0 {
		add(fmt.Sprintf("batch delivery, %d queued batch emails", d.n), "emails/s", d.perSec(), noop, res.noop.perSec(), res.noop.n > 0)
		if c := res.batchDeliveryCPU; c.self > 0 {
			add("batch delivery CPU per email, this process", "µs", c.selfPer(), "asynq no-op per task (same process)", res.noopCPU.selfPer(), res.noopCPU.n > 0)
			add("batch delivery Redis CPU per email", "µs", c.redisPer(), "asynq no-op per task", res.noopCPU.redisPer(), res.noopCPU.n > 0)
		}
	}
	if res.batchRSS > 0 {
		add(fmt.Sprintf("peak RSS delivering %d queued batch emails (whole process)", res.batchRSSN), "MB", float64(res.batchRSS)/(1<<20), "", 0, false)
	}
	return out
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
		fmt.Fprintf(w, "target: %s; Redis (naive intake): %s; rounds=%d n=%d c=%d body=%dB rcpts=%d\n",
			s.Target, m.Redis, s.Rounds, s.N, s.Concurrency, s.BodyBytes, s.Recipients)
	} else {
		fmt.Fprintf(w, "Redis: %s; rounds=%d n=%d c=%d body=%dB rcpts=%d workers=%d pool=%d worker-concurrency=%d smtp-latency=%s\n",
			m.Redis, s.Rounds, s.N, s.Concurrency, s.BodyBytes, s.Recipients, s.Workers, s.Pool, s.WorkerConcurrency,
			time.Duration(s.SMTPLatencyMs*float64(time.Millisecond)))
	}
	fmt.Fprintln(w, "ratio = sendq / baseline: above 1 is better for rates, below 1 for latency and memory")
	fmt.Fprintln(w)
	// The figure and the baseline's name are left-aligned, numbers right.
	cells := [][]string{{"figure", "sendq", "baseline", "ratio", "min-max", "baseline is"}}
	for _, r := range rep.Rows {
		cells = append(cells, []string{r.Figure + " (" + r.Unit + ")", num(r.Sendq), num(r.Baseline), ratio(r.Ratio),
			ratioRange(r), r.BaselineName})
	}
	width := make([]int, 6)
	for _, row := range cells {
		for i, c := range row {
			width[i] = max(width[i], len(c))
		}
	}
	for _, row := range cells {
		line := fmt.Sprintf("%-*s  %*s  %*s  %*s  %*s  %s", width[0], row[0], width[1], row[1], width[2], row[2],
			width[3], row[3], width[4], row[4], row[5])
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

// ratioRange is "min-max" of a row's per-round ratios, or "" for a row
// with fewer than two.
func ratioRange(r Row) string {
	n := 0
	for _, rv := range r.Rounds {
		if rv.Ratio != nil {
			n++
		}
	}
	if n < 2 || r.RatioMin == nil || r.RatioMax == nil {
		return ""
	}
	return fmt.Sprintf("%.2f-%.2f", *r.RatioMin, *r.RatioMax)
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
