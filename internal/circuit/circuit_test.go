package circuit

import (
	"fmt"
	"testing"
	"time"
)

// step is one event in a breaker's life: the clock moves by wait, then
// either a call asks to go through (allow, and its ticket is kept under
// the name call) or a kept ticket's call ends with outcome.
type step struct {
	wait    time.Duration
	allow   string // a call asks; its ticket is kept under this name
	done    string // the call kept under this name ends...
	outcome Outcome
	// want: whether the call is let through (allow steps), and the state
	// after the step.
	wantAllowed bool
	wantState   State
}

func TestBreaker(t *testing.T) {
	cfg := Config{Threshold: 3, Cooldown: 30 * time.Second}
	tests := []struct {
		name  string
		steps []step
	}{
		{"failures below the threshold keep it closed; a success resets the count", []step{
			{allow: "a", wantAllowed: true}, {done: "a", outcome: Failure},
			{allow: "b", wantAllowed: true}, {done: "b", outcome: Failure},
			{allow: "c", wantAllowed: true}, {done: "c", outcome: Success},
			{allow: "d", wantAllowed: true}, {done: "d", outcome: Failure},
			{allow: "e", wantAllowed: true}, {done: "e", outcome: Failure},
			{allow: "f", wantAllowed: true, wantState: Closed},
		}},
		{"three failures in a row open it; nothing passes during the cool-down", []step{
			{allow: "a", wantAllowed: true}, {done: "a", outcome: Failure},
			{allow: "b", wantAllowed: true}, {done: "b", outcome: Failure},
			{allow: "c", wantAllowed: true}, {done: "c", outcome: Failure, wantState: Open},
			{allow: "d", wantAllowed: false, wantState: Open},
			{wait: 29 * time.Second, allow: "e", wantAllowed: false, wantState: Open},
		}},
		{"neutral outcomes neither count nor reset", []step{
			{allow: "a", wantAllowed: true}, {done: "a", outcome: Failure},
			{allow: "b", wantAllowed: true}, {done: "b", outcome: Neutral},
			{allow: "c", wantAllowed: true}, {done: "c", outcome: Failure},
			{allow: "d", wantAllowed: true}, {done: "d", outcome: Neutral},
			{allow: "e", wantAllowed: true}, {done: "e", outcome: Failure, wantState: Open},
		}},
		{"a trip (421) opens it at once", []step{
			{allow: "a", wantAllowed: true}, {done: "a", outcome: Trip, wantState: Open},
			{allow: "b", wantAllowed: false, wantState: Open},
		}},
		{"after the cool-down one probe passes; its success closes it", []step{
			{allow: "a", wantAllowed: true}, {done: "a", outcome: Trip, wantState: Open},
			{wait: 30 * time.Second, allow: "probe", wantAllowed: true, wantState: HalfOpen},
			{allow: "other", wantAllowed: false, wantState: HalfOpen},
			{done: "probe", outcome: Success, wantState: Closed},
			{allow: "c", wantAllowed: true, wantState: Closed},
			{allow: "d", wantAllowed: true, wantState: Closed},
		}},
		{"a failed probe opens it for another cool-down", []step{
			{allow: "a", wantAllowed: true}, {done: "a", outcome: Trip, wantState: Open},
			{wait: 31 * time.Second, allow: "probe", wantAllowed: true, wantState: HalfOpen},
			{wait: time.Second, done: "probe", outcome: Failure, wantState: Open},
			{wait: 29 * time.Second, allow: "b", wantAllowed: false, wantState: Open},
			{wait: time.Second, allow: "probe2", wantAllowed: true, wantState: HalfOpen},
			{done: "probe2", outcome: Trip, wantState: Open},
		}},
		{"a neutral probe hands the probe to the next call", []step{
			{allow: "a", wantAllowed: true}, {done: "a", outcome: Trip, wantState: Open},
			{wait: 30 * time.Second, allow: "probe", wantAllowed: true, wantState: HalfOpen},
			{done: "probe", outcome: Neutral, wantState: HalfOpen},
			{allow: "probe2", wantAllowed: true, wantState: HalfOpen},
			{allow: "other", wantAllowed: false, wantState: HalfOpen},
			{done: "probe2", outcome: Success, wantState: Closed},
		}},
		{"calls from before the circuit opened change nothing after", []step{
			{allow: "slow", wantAllowed: true},
			{allow: "a", wantAllowed: true}, {done: "a", outcome: Trip, wantState: Open},
			{done: "slow", outcome: Success, wantState: Open}, // not a probe: stays open
			{wait: 30 * time.Second, allow: "slow2", wantAllowed: true, wantState: HalfOpen},
			{done: "slow", outcome: Failure, wantState: HalfOpen},
			{done: "slow2", outcome: Success, wantState: Closed},
		}},
		{"a late failure from the open state does not reopen a closed circuit", []step{
			{allow: "a", wantAllowed: true}, {done: "a", outcome: Trip, wantState: Open},
			{wait: 30 * time.Second, allow: "probe", wantAllowed: true, wantState: HalfOpen},
			{done: "probe", outcome: Success, wantState: Closed},
			{done: "a", outcome: Trip, wantState: Closed},
			{done: "probe", outcome: Failure, wantState: Closed},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			var changes []string
			b := New(cfg, func() time.Time { return now }, func(from, to State) {
				changes = append(changes, fmt.Sprintf("%s>%s", from, to))
			})
			tickets := map[string]Ticket{}
			for i, s := range tt.steps {
				now = now.Add(s.wait)
				if s.allow != "" {
					tk, ok := b.Allow()
					if ok != s.wantAllowed {
						t.Fatalf("step %d: Allow() for %q = %v; want %v (changes %v)", i, s.allow, ok, s.wantAllowed, changes)
					}
					if ok {
						tickets[s.allow] = tk
					}
				} else {
					tk, ok := tickets[s.done]
					if !ok {
						t.Fatalf("step %d: no ticket %q (test bug)", i, s.done)
					}
					b.Done(tk, s.outcome)
				}
				if got := b.State(); got != s.wantState {
					t.Fatalf("step %d: State() = %s; want %s (changes %v)", i, got, s.wantState, changes)
				}
			}
		})
	}
}

func TestDefaults(t *testing.T) {
	now := time.Unix(0, 0)
	b := New(Config{}, func() time.Time { return now }, nil)
	for i := range 3 {
		tk, _ := b.Allow()
		b.Done(tk, Failure)
		if want := map[bool]State{true: Open, false: Closed}[i == 2]; b.State() != want {
			t.Fatalf("after %d failures State() = %s; want %s", i+1, b.State(), want)
		}
	}
	now = now.Add(30*time.Second - time.Nanosecond)
	if _, ok := b.Allow(); ok {
		t.Error("Allow() before the default 30s cool-down = true; want false")
	}
	now = now.Add(time.Nanosecond)
	if _, ok := b.Allow(); !ok {
		t.Error("Allow() at the default 30s cool-down = false; want true")
	}
}

func TestStateString(t *testing.T) {
	for s, want := range map[State]string{Closed: "closed", HalfOpen: "half-open", Open: "open"} {
		if s.String() != want {
			t.Errorf("State(%d).String() = %q; want %q", int(s), s.String(), want)
		}
	}
}
