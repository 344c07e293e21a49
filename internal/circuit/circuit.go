// Package circuit is the circuit breaker that takes an SMTP relay out of
// service while it fails and brings it back once a probe succeeds. It is
// pure logic on an injected clock: no goroutines, no I/O, no timers.
//
// The states are the usual three. Closed: every call is let through;
// Threshold failures in a row, or one Trip, open the circuit. Open: no
// call is let through until Cooldown has passed since it opened. Half-open:
// exactly one call (the probe) is let through; its success closes the
// circuit, its failure opens it for another Cooldown.
//
// Each call that Allow lets through is a Ticket, and its outcome is given
// back with Done. A ticket from an earlier state (a send that started
// before the circuit opened and ended after) changes nothing: only what
// happened in the current state counts, as in sony/gobreaker's generations.
package circuit

import (
	"sync"
	"time"
)

// State is a circuit's state. The values are those of the
// sendq_relay_circuit_state gauge.
type State int

// States.
const (
	Closed   State = 0
	HalfOpen State = 1
	Open     State = 2
)

func (s State) String() string {
	switch s {
	case Closed:
		return "closed"
	case HalfOpen:
		return "half-open"
	default:
		return "open"
	}
}

// Outcome is what a call let through taught about the relay.
type Outcome int

// Outcomes.
const (
	// Success: the relay held a session and answered (whatever it said
	// about the message).
	Success Outcome = iota
	// Failure: the relay could not be reached or held no session
	// (connect, greeting, STARTTLS, AUTH, a connection lost). Threshold in
	// a row open the circuit.
	Failure
	// Trip: the relay said it is closing (421); the circuit opens at once.
	Trip
	// Neutral: the call says nothing about the relay (it was canceled, or
	// a pooled connection had gone stale while idle). A neutral probe lets
	// the next call probe instead.
	Neutral
)

// Config configures a Breaker. Zero values take the documented defaults.
type Config struct {
	// Threshold is how many failures in a row open the circuit. If zero, 3.
	Threshold int
	// Cooldown is how long an open circuit lets nothing through before a
	// probe. If zero, 30s.
	Cooldown time.Duration
}

// Ticket is one call Allow let through; give it back to Done.
type Ticket struct {
	gen   uint64
	probe bool
}

// Breaker is one relay's circuit. It is safe for concurrent use.
type Breaker struct {
	cfg Config
	now func() time.Time

	mu       sync.Mutex
	state    State
	gen      uint64 // incremented on every state change
	failures int    // in a row, while closed
	until    time.Time
	probing  bool // the half-open probe is out
	onChange func(from, to State)
}

// New returns a closed Breaker that reads the time from now (time.Now when
// nil) and calls onChange, if not nil, on every change of state, with the
// breaker's lock held (it must not call the breaker).
func New(cfg Config, now func() time.Time, onChange func(from, to State)) *Breaker {
	if cfg.Threshold <= 0 {
		cfg.Threshold = 3
	}
	if cfg.Cooldown <= 0 {
		cfg.Cooldown = 30 * time.Second
	}
	if now == nil {
		now = time.Now
	}
	return &Breaker{cfg: cfg, now: now, onChange: onChange}
}

// Allow reports whether a call may go to the relay now. An open circuit
// whose cool-down has passed turns half-open and lets this call through as
// its probe; while the probe is out, Allow refuses.
func (b *Breaker) Allow() (Ticket, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case Closed:
		return Ticket{gen: b.gen}, true
	case Open:
		if b.now().Before(b.until) {
			return Ticket{}, false
		}
		b.set(HalfOpen)
	}
	if b.probing {
		return Ticket{}, false
	}
	b.probing = true
	return Ticket{gen: b.gen, probe: true}, true
}

// Done records the outcome of the call t let through.
func (b *Breaker) Done(t Ticket, o Outcome) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if t.gen != b.gen {
		return // from an earlier state
	}
	switch b.state {
	case Closed:
		switch o {
		case Success:
			b.failures = 0
		case Failure:
			b.failures++
			if b.failures >= b.cfg.Threshold {
				b.open()
			}
		case Trip:
			b.open()
		}
	case HalfOpen:
		if !t.probe {
			return
		}
		switch o {
		case Success:
			b.set(Closed)
		case Failure, Trip:
			b.open()
		default:
			b.probing = false // the next call probes
		}
	}
}

// State returns the circuit's state. An open circuit whose cool-down has
// passed still reads open until a call probes it.
func (b *Breaker) State() State {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.state
}

func (b *Breaker) open() {
	b.until = b.now().Add(b.cfg.Cooldown)
	b.set(Open)
}

func (b *Breaker) set(s State) {
	from := b.state
	b.state, b.gen, b.failures, b.probing = s, b.gen+1, 0, false
	if b.onChange != nil && from != s {
		b.onChange(from, s)
	}
}
