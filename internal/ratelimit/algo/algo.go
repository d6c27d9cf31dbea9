// Package algo holds the five rate-limit algorithms as pure, deterministic
// steps: (params, state, now, cost) -> (state', decision). The memory store
// runs these functions; the Redis store runs Lua mirrors of them, and a
// differential test requires both to agree on every decision, remaining count
// and retry time. All times are integer microseconds (Redis TIME resolution;
// exact in Lua's doubles up to 2^53 µs).
package algo

// Kind selects an algorithm.
type Kind uint8

const (
	FixedWindow Kind = iota + 1
	SlidingWindowLog
	SlidingWindowCounter
	TokenBucket
	LeakyBucket // GCRA
)

// Params are one policy's numbers, compiled from config (overrides applied).
type Params struct {
	Kind Kind
	// Limit is the quota per Window (windowed kinds) or the burst (buckets).
	Limit int64
	// Window is the window length in µs (windowed kinds) or, for buckets,
	// the emission interval: the µs it takes to earn one unit (per/rate).
	Window int64
	// MaxDelay, for LeakyBucket only, lets a request that is early by at
	// most MaxDelay µs be admitted with Decision.Delay instead of rejected.
	MaxDelay int64
}

// State is the per-key state. Its meaning depends on Kind:
//   - FixedWindow: A = window index, B = count.
//   - SlidingWindowCounter: A = window index, B = current count, C = previous count.
//   - TokenBucket, LeakyBucket: A = theoretical arrival time (µs).
//   - SlidingWindowLog: Log = admission times (µs), oldest first, one entry per unit of cost.
//
// The zero State is a key never seen.
type State struct {
	A, B, C int64
	Log     []int64
}

// Decision is the outcome of one step.
type Decision struct {
	Allowed bool
	// Remaining is the quota left after this step (never negative).
	Remaining int64
	// RetryAfter is, when rejected, the µs until a request of the same cost
	// could be admitted; 0 when allowed.
	RetryAfter int64
	// ResetAfter is the µs until the quota is whole again.
	ResetAfter int64
	// Delay is, for LeakyBucket with MaxDelay, the µs the admitted request
	// must wait before it is forwarded.
	Delay int64
}
