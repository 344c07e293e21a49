package bench

import (
	"bufio"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
)

// enqueueTo250 returns, sorted, the time from each email's request to the
// sink's receipt of it, and how many receipts carried no usable id.
//
// The id is in the Message-ID (<email-id@domain>). With an Idempotency-Key
// the id is derived from the key, and sent maps it to the time the load
// generator sent the request (a little before the intake's CreatedAt: the
// figure includes the intake's own latency). Without one, the id is a UUIDv7
// that the intake creates just before it stamps CreatedAt; google/uuid
// writes it with RFC 9562's "increased clock precision" (48 bits of Unix
// milliseconds, then 12 bits of sub-millisecond fraction in 256 ns units),
// so the id itself is CreatedAt to within a microsecond.
func enqueueTo250(recv []receipt, sent map[string]time.Time) ([]time.Duration, int) {
	out := make([]time.Duration, 0, len(recv))
	bad := 0
	for _, r := range recv {
		created, ok := sent[r.id]
		if !ok {
			created, ok = uuidV7Time(r.id)
		}
		d := r.at.Sub(created)
		if !ok || d < 0 || d > 24*time.Hour {
			bad++
			continue
		}
		out = append(out, d)
	}
	slices.Sort(out)
	return out, bad
}

// uuidV7Time decodes the creation time of a UUIDv7 written by google/uuid.
func uuidV7Time(s string) (time.Time, bool) {
	u, err := uuid.Parse(s)
	if err != nil || u.Version() != 7 {
		return time.Time{}, false
	}
	ms := int64(u[0])<<40 | int64(u[1])<<32 | int64(u[2])<<24 | int64(u[3])<<16 | int64(u[4])<<8 | int64(u[5])
	frac := (int64(u[6]&0x0f)<<8 | int64(u[7])) << 8 // 256 ns units
	return time.Unix(0, ms*int64(time.Millisecond)+frac), true
}

// rssSampler records the process' peak resident set size while it runs.
type rssSampler struct {
	done chan struct{}
	wg   sync.WaitGroup
	peak int64
}

// sampleRSS reads VmRSS from /proc/self/status every 50ms until stop. On
// systems without /proc it records nothing.
func sampleRSS() *rssSampler {
	s := &rssSampler{done: make(chan struct{})}
	s.wg.Add(1)
	go func() { // exits when stop is called
		defer s.wg.Done()
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			if v := procStatus("VmRSS"); v > s.peak {
				s.peak = v
			}
			select {
			case <-s.done:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

// stop ends the sampling and returns the peak in bytes (0: unknown).
func (s *rssSampler) stop() int64 {
	close(s.done)
	s.wg.Wait()
	return s.peak
}

// procStatus reads a "kB" field of /proc/self/status, in bytes (0 if
// unavailable).
func procStatus(field string) int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return 0
			}
			return kb << 10
		}
	}
	return 0
}

// cpuModel is the first "model name" of /proc/cpuinfo, or "".
func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// loadAvg is the 1-minute load average from /proc/loadavg, or 0.
func loadAvg() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f, _, _ := strings.Cut(string(b), " ")
	v, _ := strconv.ParseFloat(f, 64)
	return v
}

// median of vs: the middle value, or the mean of the two middle ones for
// an even count; nil for none. vs is left as it is.
func median(vs []float64) *float64 {
	if len(vs) == 0 {
		return nil
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	m := len(s) / 2
	if len(s)%2 == 1 {
		return ptr(s[m])
	}
	return ptr((s[m-1] + s[m]) / 2)
}

// summary is one figure over the rounds.
type summary struct {
	sendq, baseline    *float64 // medians over the rounds that measured them
	ratio              *float64 // median of the per-round ratios
	ratioMin, ratioMax *float64
	rounds             []RoundValue // the rounds, each with its ratio
}

// summarize combines one figure's rounds. The ratio is paired: each
// round's sendq value over the same round's baseline (none when either is
// missing or the baseline is 0), then the median of those, which is not
// the ratio of the medians: a round that ran while the machine was slow is
// slow on both sides, and its ratio still counts as one.
func summarize(rounds []RoundValue) summary {
	var s summary
	var sendq, base, ratios []float64
	for _, rv := range rounds {
		rv.Ratio = nil
		if rv.Sendq != nil {
			sendq = append(sendq, *rv.Sendq)
		}
		if rv.Baseline != nil {
			base = append(base, *rv.Baseline)
			if rv.Sendq != nil && *rv.Baseline != 0 {
				rv.Ratio = ptr(*rv.Sendq / *rv.Baseline)
				ratios = append(ratios, *rv.Ratio)
			}
		}
		s.rounds = append(s.rounds, rv)
	}
	s.sendq, s.baseline, s.ratio = median(sendq), median(base), median(ratios)
	if len(ratios) > 0 {
		s.ratioMin, s.ratioMax = ptr(slices.Min(ratios)), ptr(slices.Max(ratios))
	}
	return s
}
