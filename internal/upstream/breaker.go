package upstream

// The circuit breaker of one upstream, as a state machine:
//
//	           failures/requests >= failure_ratio
//	           and requests >= min_requests
//	           over the rolling window (10 s)
//	 closed ---------------------------------------> open
//	   ^                                              |
//	   |                                              | open_for elapsed
//	   | probe succeeded                              v   (checked lazily on the next request)
//	   +------------------------------------------ half-open
//	                                                  |
//	              probe failed: open again for        |
//	              open_for  <-------------------------+
//
// closed:    every request passes; outcomes are counted in 1 s buckets.
// open:      every request fails at once with 503 breaker_open; the upstream
//            sees nothing.
// half-open: one request at a time (the probe) passes; the others fail as in
//            open. A probe abandoned without an outcome (the client went away)
//            frees the slot for the next one.
//
// Only failures trip the breaker (connection errors, timeouts and 5xx), never
// slowness alone: a slow but correct upstream is protected by max_inflight.
// A request admitted before the breaker opened and finishing later does not
// move the state again.

import (
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

type breakerState int32

const (
	stateClosed breakerState = iota
	stateOpen
	stateHalfOpen
)

func (s breakerState) String() string {
	switch s {
	case stateOpen:
		return "open"
	case stateHalfOpen:
		return "half_open"
	}
	return "closed"
}

// breakerWindow is the rolling window the failure ratio is computed over.
const (
	breakerBuckets     = 10
	breakerBucketWidth = int64(1e9)
)

type breakerConfig struct {
	ratio   float64
	minReq  int64
	openFor int64 // ns
}

type breaker struct {
	state atomic.Int32 // breakerState; read without the lock on the hot path

	mu        sync.Mutex
	cfg       breakerConfig
	openUntil int64
	probing   bool
	win       *rolling         // a: requests, b: failures
	gauge     prometheus.Gauge // nil until export; only touched on state changes
	log       *slog.Logger     // with the upstream's name
}

// newBreaker returns a closed breaker. A nil gauge defers the metric to
// export, so that a breaker of a plan never committed creates no series;
// until then the breaker must not see traffic.
func newBreaker(cfg breakerConfig, gauge prometheus.Gauge, log *slog.Logger) *breaker {
	b := &breaker{cfg: cfg, win: newRolling(breakerBuckets, breakerBucketWidth), log: log}
	if gauge != nil {
		b.export(gauge)
	}
	return b
}

// export makes gauge b's breaker_open series and sets it to b's state.
func (b *breaker) export(gauge prometheus.Gauge) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.gauge = gauge
	v := 0.0
	if breakerState(b.state.Load()) != stateClosed {
		v = 1
	}
	gauge.Set(v)
}

func (b *breaker) setConfig(cfg breakerConfig) {
	b.mu.Lock()
	b.cfg = cfg
	b.mu.Unlock()
}

// retryAfter is how long the breaker stays open from now (0 when it is not
// open), for the Retry-After of the requests it refuses.
func (b *breaker) retryAfter(now int64) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	if breakerState(b.state.Load()) != stateOpen || b.openUntil <= now {
		return 0
	}
	return time.Duration(b.openUntil - now)
}

// allow says whether a request may go to the upstream now; probe is true
// when the request is the half-open probe, whose outcome decides the state.
func (b *breaker) allow(now int64) (ok, probe bool) {
	if breakerState(b.state.Load()) == stateClosed {
		return true, false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	switch breakerState(b.state.Load()) {
	case stateClosed:
		return true, false
	case stateOpen:
		if now < b.openUntil {
			return false, false
		}
		b.state.Store(int32(stateHalfOpen))
	}
	if b.probing {
		return false, false
	}
	b.probing = true
	return true, true
}

// outcome of one attempt as the breaker and passive health see it.
type outcome int8

const (
	outcomeSuccess outcome = iota
	outcomeFailure
	// outcomeNeutral: no verdict on the upstream (the client went away).
	outcomeNeutral
)

// record feeds the outcome of a request that allow admitted.
func (b *breaker) record(now int64, o outcome, probe bool) {
	if probe {
		b.mu.Lock()
		b.probing = false
		switch o {
		case outcomeSuccess:
			b.state.Store(int32(stateClosed))
			b.win.reset()
			b.gauge.Set(0)
			b.log.Info("upstream circuit breaker closed", "reason", "probe succeeded")
		case outcomeFailure:
			b.openLocked(now)
			b.log.Warn("upstream circuit breaker opened", "reason", "probe failed",
				"for", time.Duration(b.cfg.openFor))
		}
		b.mu.Unlock()
		return
	}
	if o == outcomeNeutral || breakerState(b.state.Load()) != stateClosed {
		return
	}
	var fail int64
	if o == outcomeFailure {
		fail = 1
	}
	total, failures := b.win.addSum(now, 1, fail)
	if fail == 0 {
		return
	}
	b.tripIfOver(now, total, failures)
}

// recordLate adds a failure to an attempt already recorded as a success
// (its answer's body failed later, on the read idle timeout), counting no
// further request. Only a closed breaker counts it; a probe's verdict was
// given with the headers.
func (b *breaker) recordLate(now int64) {
	if breakerState(b.state.Load()) != stateClosed {
		return
	}
	total, failures := b.win.addSum(now, 0, 1)
	b.tripIfOver(now, total, failures)
}

// tripIfOver opens a closed breaker whose window, after a failure, holds
// enough requests and too large a share of failures.
func (b *breaker) tripIfOver(now, total, failures int64) {
	b.mu.Lock()
	if breakerState(b.state.Load()) == stateClosed && total >= b.cfg.minReq &&
		float64(failures) >= b.cfg.ratio*float64(total) {
		b.openLocked(now)
		b.log.Warn("upstream circuit breaker opened", "requests", total, "failures", failures,
			"for", time.Duration(b.cfg.openFor))
	}
	b.mu.Unlock()
}

func (b *breaker) openLocked(now int64) {
	b.state.Store(int32(stateOpen))
	b.openUntil = now + b.cfg.openFor
	b.gauge.Set(1)
}

// snapshot returns the state as an operator sees it at now.
func (b *breaker) snapshot(now int64) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := breakerState(b.state.Load())
	if s == stateOpen && now >= b.openUntil {
		return stateHalfOpen.String()
	}
	return s.String()
}
