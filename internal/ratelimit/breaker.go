package ratelimit

import (
	"math/rand/v2"
	"sync"
	"sync/atomic"
)

// The store breaker keeps a failing shared store out of the request path.
// The Service has one per shard of the store (see ShardedStore), so a
// failing Cluster master keeps only its own slots out.
//
//	closed ──3 consecutive failures──▶ open
//	open ──probe time reached (250ms ± 25% after opening or the last probe)──▶ half-open
//	half-open: exactly one request (the probe) goes to the store;
//	    success ──▶ closed;  failure ──▶ open (next probe 250ms ± 25% later)
//
// A call that fails after its client left counts neither way (the failure
// may be the client's); a probe that ends so leaves the breaker open and
// the next request probes.
//
// While open, decisions are taken without the store (on_store_error) at no
// round-trip cost. Each store call is bounded by the store timeout (default
// 20ms), so with concurrent traffic the switch happens within about one
// timeout, and sequentially within three (60ms), inside the 100ms target.
const (
	breakerThreshold = 3
	probeInterval    = 250_000 // µs
)

const (
	breakerClosed int32 = iota
	breakerOpen
)

type breaker struct {
	state atomic.Int32
	fails atomic.Int32
	clock *Clock

	mu        sync.Mutex
	nextProbe int64 // µs
	probing   bool
	jitter    func() int64 // µs in [-probeInterval/4, probeInterval/4]
}

func newBreaker(clock *Clock) *breaker {
	return &breaker{clock: clock, jitter: func() int64 {
		return rand.Int64N(probeInterval/2+1) - probeInterval/4
	}}
}

// allow reports whether a decision may use the store, and whether this call
// is the half-open probe (whose outcome decides the state).
func (b *breaker) allow() (use, probe bool) {
	if b.state.Load() == breakerClosed {
		return true, false
	}
	now := b.clock.Micros()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.probing || now < b.nextProbe {
		return false, false
	}
	b.probing = true
	return true, true
}

// report records the outcome of a store call allowed by allow.
func (b *breaker) report(ok, probe bool) {
	if ok {
		if probe || b.state.Load() != breakerClosed {
			b.mu.Lock()
			b.probing = false
			b.state.Store(breakerClosed)
			b.mu.Unlock()
		}
		if b.fails.Load() != 0 {
			b.fails.Store(0)
		}
		return
	}
	n := b.fails.Add(1)
	if probe || (n >= breakerThreshold && b.state.Load() == breakerClosed) {
		b.mu.Lock()
		b.probing = false
		b.state.Store(breakerOpen)
		b.nextProbe = b.clock.Micros() + probeInterval + b.jitter()
		b.mu.Unlock()
	}
}

// abandon ends a store call allowed by allow that says nothing about the
// store (its client left): the state is unchanged, and a probe's slot is
// free at once for the next request.
func (b *breaker) abandon(probe bool) {
	if probe {
		b.mu.Lock()
		b.probing = false
		b.mu.Unlock()
	}
}

// open reports whether the breaker currently keeps the store out.
func (b *breaker) open() bool { return b.state.Load() != breakerClosed }
