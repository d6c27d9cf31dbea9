// Package algo holds the five rate-limit algorithms as pure, deterministic
// steps: (params, state, now, cost) -> (state', decision). The memory store
// runs these functions; the Redis store runs Lua mirrors of them, and a
// differential test requires both to agree on every decision, remaining count
// and retry time. All times are integer microseconds (Redis TIME resolution;
// exact in Lua's doubles up to 2^53 µs).
//
// # Change of meaning (for Lua mirrors)
//
// For FixedWindow and SlidingWindowCounter, State.A is the START of the
// stored window in µs (now - now%Window), not the window index. A start time
// stays meaningful when a reload changes the window length, where an index
// of the old length compared with one of the new length would lock a key out
// for ages (1m -> 1h makes every new index 60 times smaller). After a reload
// changed the length (lengthened it, typically), a start need not be a
// boundary of the new length: the stored window then lasts until the first
// boundary of the new length after its start, and RetryAfter and ResetAfter
// count to that boundary.
//
// # Arithmetic rules (mirrors must follow them exactly)
//
//   - All values are non-negative integers below 2^53 (Compile enforces
//     MaxLimit, MaxWindow and Limit*Window <= MaxProduct for buckets), so
//     Lua doubles hold them exactly. Integer division is floor division; a
//     Lua mirror must correct a float quotient q with "if q*b > a then q=q-1".
//   - The sliding window counter's weighted previous count is the one float
//     expression: ceil(float64(prev) * float64(r) / float64(W)), evaluated
//     left to right (multiply, then divide, then ceil), r being the µs left
//     in the current window. IEEE 754 doubles give Go and Lua the same result.
//   - A rejected step and any step with cost 0 (a peek) never write the state.
package algo

import "math"

// Kind selects an algorithm.
type Kind uint8

const (
	FixedWindow Kind = iota + 1
	SlidingWindowLog
	SlidingWindowCounter
	TokenBucket
	LeakyBucket // GCRA
)

// String returns the config name of the kind.
func (k Kind) String() string {
	switch k {
	case FixedWindow:
		return "fixed_window"
	case SlidingWindowLog:
		return "sliding_window_log"
	case SlidingWindowCounter:
		return "sliding_window_counter"
	case TokenBucket:
		return "token_bucket"
	case LeakyBucket:
		return "leaky_bucket"
	}
	return "unknown"
}

// Bucket reports whether k is a GCRA kind (token or leaky bucket).
func (k Kind) Bucket() bool { return k == TokenBucket || k == LeakyBucket }

// Never is the RetryAfter of a request that can never be admitted because its
// cost exceeds the policy's limit (or burst); such a request is rejected
// without touching the state. Callers must not wait for it.
const Never int64 = -1

// Bounds that keep every intermediate value below 2^53 (exact in Lua).
const (
	// MaxLimit is the largest Limit (and burst) Compile accepts: 2^40.
	MaxLimit = int64(1) << 40
	// MaxWindow is the longest window or emission interval in µs: 2^45 µs,
	// a little over a year.
	MaxWindow = int64(1) << 45
	// MaxProduct bounds Limit*Window for buckets (the burst capacity in µs)
	// and MaxDelay: 2^50 µs, about 35 years.
	MaxProduct = int64(1) << 50
	// MaxLogLimit is the largest Limit of a sliding window log (one entry
	// per admitted unit is kept).
	MaxLogLimit = 1000
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

// Capacity is the time in µs it takes an empty bucket to refill its burst
// (Limit*Window) for buckets, and the window length for windowed kinds. It is
// the "w" of the RateLimit-Policy header.
func (p *Params) Capacity() int64 {
	if p.Kind.Bucket() {
		return p.Limit * p.Window
	}
	return p.Window
}

// State is the per-key state. Its meaning depends on Kind:
//   - FixedWindow: A = window start (µs), B = count admitted in it.
//   - SlidingWindowCounter: A = current window start (µs), B = current count,
//     C = previous window's count.
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
	// could be admitted (if nothing else is admitted meanwhile); 0 when
	// allowed; Never when the cost exceeds the limit.
	RetryAfter int64
	// ResetAfter is the µs until the quota is whole again (0 when it is).
	ResetAfter int64
	// Delay is, for LeakyBucket with MaxDelay, the µs the admitted request
	// must wait before it is forwarded.
	Delay int64
}

// IdleAt returns the time (µs) from which s holds no usage at all, so that
// dropping it changes no future decision: the memory store evicts only such
// state, and a shared store may expire its key then (a TTL of IdleAt - now,
// rounded up, at least 1ms).
func IdleAt(p *Params, s *State) int64 {
	switch p.Kind {
	case FixedWindow:
		if s.B == 0 {
			return 0
		}
		return s.A + p.Window
	case SlidingWindowCounter:
		if s.B > 0 {
			return s.A + 2*p.Window
		}
		if s.C > 0 {
			return s.A + p.Window
		}
		return 0
	case SlidingWindowLog:
		if n := len(s.Log); n > 0 {
			return s.Log[n-1] + p.Window
		}
		return 0
	case TokenBucket, LeakyBucket:
		return s.A
	}
	return 0
}

// Step decides one request of the given cost at time now (µs) and, when it
// is admitted with cost > 0, updates s. It is pure: the same inputs give the
// same outputs on every node and in the Lua mirror.
//
// Common rules: a rejected request consumes nothing (s is left as it was);
// cost 0 peeks (the decision is computed, s is never written); a cost above
// Limit is rejected with RetryAfter = Never; a now earlier than the time the
// state records (window start, newest log entry) is clamped up to it, so a
// clock that steps back mints nothing. p must satisfy Validate.
//
// Per kind (L = Limit, W = Window, T = Window for buckets, now clamped):
//
// FixedWindow: windows are [k*W, (k+1)*W), aligned to the epoch, so every
// node agrees given one clock (Redis TIME). Admit iff count+cost <= L.
// Remaining = L - count. RetryAfter = window end - now. ResetAfter = window
// end - now while count > 0. At a boundary it admits up to 2L within an
// instant (L at the end of one window, L at the start of the next).
//
// SlidingWindowCounter (Cloudflare's estimate): with r = µs left in the
// current window, used = ceil(prev*r/W) + cur; admit iff used+cost <= L.
// Remaining = L - used (after admission). RetryAfter is the first instant at
// which the estimate leaves room for cost, found in closed form (the first r
// with ceil(prev*r/W) <= L-cur-cost in this window, else, with cur as the
// previous count, in the next one). ResetAfter = end of the next window while
// cur > 0, else end of this window while prev > 0. The estimate assumes the
// previous window's requests were spread evenly. No instant boundary burst
// is possible (at a boundary used = prev), and each aligned window admits at
// most L; but an adversary who spends L at the very end of one window can
// add up to L*f by fraction f of the next, so a W-long interval that straddles
// a boundary can hold up to (but fewer than) 2L admissions.
//
// SlidingWindowLog: exact; admit iff the entries in (now-W, now] plus cost
// are <= L. Remaining = L - live entries. RetryAfter = the time the
// (live+cost-L)-th oldest live entry leaves the window. ResetAfter = the time
// the newest entry leaves it.
//
// TokenBucket (GCRA): tat' = max(tat, now) + cost*T; admit iff
// tat' - now <= L*T (the bucket holds L units, one more every T µs).
// Remaining = floor((L*T - (tat' - now)) / T), not below 0. RetryAfter =
// tat' - now - L*T. ResetAfter = tat' - now (the bucket is full again at
// tat'). When rejected, Remaining and ResetAfter use max(tat, now) for tat'.
//
// LeakyBucket: the same GCRA as a queue rather than a bucket. With the
// default burst 1 requests are spaced T apart; a request whose excess
// e = tat' - now - L*T is positive but at most MaxDelay is ADMITTED with
// Delay = e (it waits in the virtual queue and tat advances, so later
// requests queue behind it); beyond MaxDelay it is rejected with RetryAfter =
// e - MaxDelay (when it could be admitted with the longest delay). With
// MaxDelay 0 it decides exactly like TokenBucket.
func Step(p *Params, s *State, now, cost int64) Decision {
	if cost < 0 {
		cost = 0
	}
	switch p.Kind {
	case FixedWindow:
		return fixedWindow(p, s, now, cost)
	case SlidingWindowCounter:
		return slidingCounter(p, s, now, cost)
	case SlidingWindowLog:
		return slidingLog(p, s, now, cost)
	case TokenBucket, LeakyBucket:
		return gcra(p, s, now, cost)
	}
	return Decision{RetryAfter: Never}
}

func fixedWindow(p *Params, s *State, now, cost int64) Decision {
	w, l := p.Window, p.Limit
	start := now - now%w
	a, count := s.A, s.B
	end := start + w
	switch {
	case start < a:
		// The clock stepped back, or a reload changed the window length (a
		// need not be a boundary of w): stay in the stored window, which
		// ends at the first boundary of the current length after its start.
		now = max(now, a)
		end = a - a%w + w
	case start > a:
		a, count = start, 0
	}
	if cost > l || count+cost > l {
		d := Decision{Remaining: nonNeg(l - count), RetryAfter: end - now}
		if cost > l {
			d.RetryAfter = Never
		}
		if count > 0 {
			d.ResetAfter = end - now
		}
		return d
	}
	count += cost
	if cost > 0 {
		s.A, s.B = a, count
	}
	d := Decision{Allowed: true, Remaining: l - count}
	if count > 0 {
		d.ResetAfter = end - now
	}
	return d
}

// weighted is the sliding counter's share of the previous window:
// ceil(prev*r/w) in doubles, evaluated in this order (see package doc).
func weighted(prev, r, w int64) int64 {
	if prev == 0 {
		return 0
	}
	return int64(math.Ceil(float64(prev) * float64(r) / float64(w)))
}

// lastFit returns the largest r in [0, maxR] with weighted(n, r, w) <= room,
// for n > 0 and room >= 0: the float guess floor(room*w/n) corrected down
// until it fits (at most a step or two, only at float rounding edges).
func lastFit(n, room, w, maxR int64) int64 {
	r := int64(math.Floor(float64(room) * float64(w) / float64(n)))
	if r > maxR {
		r = maxR
	}
	for r > 0 && weighted(n, r, w) > room {
		r--
	}
	return r
}

func slidingCounter(p *Params, s *State, now, cost int64) Decision {
	w, l := p.Window, p.Limit
	start := now - now%w
	a, cur, prev := s.A, s.B, s.C
	end := start + w
	switch {
	case start < a:
		// As in fixedWindow: the stored window ends at the first boundary
		// of the current length after its start.
		now = max(now, a)
		end = a - a%w + w
	case start > a:
		// The stored count is the previous window's only if its window
		// ends at start (after a reload changed the length, a need not be
		// a boundary of w).
		if start-w <= a {
			prev = cur
		} else {
			prev = 0
		}
		a, cur = start, 0
	}
	r := end - now // 1..w
	used := weighted(prev, r, w) + cur
	if cost > l || used+cost > l {
		d := Decision{Remaining: nonNeg(l - used), ResetAfter: counterReset(end, w, now, cur, prev)}
		switch {
		case cost > l:
			d.RetryAfter = Never
		case cur+cost <= l:
			// Room appears in this window as prev's weight shrinks; the
			// rejection means prev > room, so lastFit < r.
			rr := lastFit(prev, l-cur-cost, w, w)
			d.RetryAfter = end - rr - now
		default:
			// Only in the next window, where cur becomes the previous count.
			rr := lastFit(cur, l-cost, w, w)
			d.RetryAfter = end + w - rr - now
		}
		return d
	}
	cur += cost
	if cost > 0 {
		s.A, s.B, s.C = a, cur, prev
	}
	return Decision{Allowed: true, Remaining: l - used - cost, ResetAfter: counterReset(end, w, now, cur, prev)}
}

// counterReset is ResetAfter for a window ending at end.
func counterReset(end, w, now, cur, prev int64) int64 {
	switch {
	case cur > 0:
		return end + w - now
	case prev > 0:
		return end - now
	}
	return 0
}

func slidingLog(p *Params, s *State, now, cost int64) Decision {
	w, l := p.Window, p.Limit
	log := s.Log
	n := len(log)
	if n > 0 && now < log[n-1] {
		now = log[n-1]
	}
	// Entries are live while e > now-w; find the first live one.
	cut := now - w
	i := 0
	for i < n && log[i] <= cut {
		i++
	}
	live := int64(n - i)
	if cost > l || live+cost > l {
		d := Decision{Remaining: nonNeg(l - live)}
		if live > 0 {
			d.ResetAfter = log[n-1] + w - now
		}
		if cost > l {
			d.RetryAfter = Never
		} else {
			k := live + cost - l // entries that must leave first; 1..live
			d.RetryAfter = log[i+int(k)-1] + w - now
		}
		return d
	}
	d := Decision{Allowed: true, Remaining: l - live - cost}
	if cost > 0 {
		// Drop expired entries by reslicing and append one per unit of cost.
		// Appending writes only past the old length, so a caller holding the
		// old slice (a store deciding several checks all-or-nothing) still
		// sees the old log intact; append's reallocation keeps only live
		// entries, so the array stays within a small multiple of L.
		log = log[i:]
		for j := int64(0); j < cost; j++ {
			log = append(log, now)
		}
		s.Log = log
		d.ResetAfter = w
	} else if live > 0 {
		d.ResetAfter = log[n-1] + w - now
	}
	return d
}

func gcra(p *Params, s *State, now, cost int64) Decision {
	t, l := p.Window, p.Limit
	capacity := l * t
	tat := s.A
	if tat < now {
		tat = now
	}
	if cost > l {
		return Decision{Remaining: nonNeg((capacity - (tat - now)) / t), RetryAfter: Never, ResetAfter: tat - now}
	}
	next := tat + cost*t
	excess := next - now - capacity
	var delay int64
	if excess > 0 {
		maxDelay := int64(0)
		if p.Kind == LeakyBucket {
			maxDelay = p.MaxDelay
		}
		if excess > maxDelay || cost == 0 {
			return Decision{
				Remaining:  nonNeg((capacity - (tat - now)) / t),
				RetryAfter: excess - maxDelay,
				ResetAfter: tat - now,
			}
		}
		delay = excess
	}
	if cost > 0 {
		s.A = next
	}
	return Decision{Allowed: true, Remaining: nonNeg((capacity - (next - now)) / t), ResetAfter: next - now, Delay: delay}
}

// Refund gives back cost units that an earlier admitted Step took from s
// (used when a later check of the same request was rejected, so that the
// request as a whole consumed nothing). It never takes s below empty:
//   - windowed counters subtract from the stored current count;
//   - the log drops its newest cost entries;
//   - buckets move tat back by cost*T, not below now (a bucket cannot hold
//     more than full).
//
// Between the admission and the refund, other requests saw the units taken;
// that can only have rejected them, never admitted one too many.
func Refund(p *Params, s *State, now, cost int64) {
	if cost <= 0 {
		return
	}
	switch p.Kind {
	case FixedWindow, SlidingWindowCounter:
		s.B = nonNeg(s.B - cost)
	case SlidingWindowLog:
		n := int64(len(s.Log)) - cost
		if n < 0 {
			n = 0
		}
		s.Log = s.Log[:n]
	case TokenBucket, LeakyBucket:
		tat := s.A - cost*p.Window
		if tat < now {
			tat = now
		}
		if tat < s.A {
			s.A = tat
		}
	}
}

func nonNeg(v int64) int64 {
	if v < 0 {
		return 0
	}
	return v
}
