package algo

import (
	"math/rand/v2"
	"slices"
	"syscall"
	"testing"
)

const sec = int64(1_000_000) // µs

// t0 is a midnight in 2026 (µs), a multiple of every window used below, so
// window boundaries sit at t0 + k*W.
const t0 = int64(20775*86_400) * sec

func clone(s State) State {
	s.Log = slices.Clone(s.Log)
	return s
}

func equalState(a, b State) bool {
	return a.A == b.A && a.B == b.B && a.C == b.C && slices.Equal(a.Log, b.Log)
}

// kinds returns one Params per kind with the same shape: 10 units per second
// (buckets: burst 10, one unit per 100ms).
func kinds() map[string]Params {
	return map[string]Params{
		"fixed_window":           {Kind: FixedWindow, Limit: 10, Window: sec},
		"sliding_window_counter": {Kind: SlidingWindowCounter, Limit: 10, Window: sec},
		"sliding_window_log":     {Kind: SlidingWindowLog, Limit: 10, Window: sec},
		"token_bucket":           {Kind: TokenBucket, Limit: 10, Window: sec / 10},
		"leaky_bucket":           {Kind: LeakyBucket, Limit: 10, Window: sec / 10},
	}
}

func admitN(p *Params, s *State, now, cost int64, n int) int {
	got := 0
	for range n {
		if Step(p, s, now, cost).Allowed {
			got++
		}
	}
	return got
}

func TestBoundaryBurst(t *testing.T) {
	// L requests 1µs before a window boundary, then L just after it.
	for name, p := range kinds() {
		t.Run(name, func(t *testing.T) {
			var s State
			before := admitN(&p, &s, t0+sec-1, 1, 10)
			after := admitN(&p, &s, t0+sec+1, 1, 10)
			if before != 10 {
				t.Fatalf("before boundary admitted %d, want 10", before)
			}
			want := 0
			if p.Kind == FixedWindow {
				want = 10 // the documented 2L boundary burst
			}
			if after != want {
				t.Fatalf("after boundary admitted %d, want %d", after, want)
			}
		})
	}
}

func TestRejectedConsumesNothing(t *testing.T) {
	for name, p := range kinds() {
		t.Run(name, func(t *testing.T) {
			var s State
			if got := admitN(&p, &s, t0+sec/2, 1, 10); got != 10 {
				t.Fatalf("admitted %d, want 10", got)
			}
			before := clone(s)
			for i := range 100 {
				d := Step(&p, &s, t0+sec/2+int64(i), 1)
				if d.Allowed {
					t.Fatalf("request %d admitted over the limit", i)
				}
				if d.RetryAfter <= 0 {
					t.Fatalf("rejected with RetryAfter %d", d.RetryAfter)
				}
				if !equalState(before, s) {
					t.Fatalf("rejection changed state: %+v -> %+v", before, s)
				}
			}
			// A steady sender at 2L gets about L: rejections did not push
			// the recovery back.
			admitted := 0
			for i := range 40 { // 2 seconds at 20/s
				if Step(&p, &s, t0+sec+int64(i)*sec/20, 1).Allowed {
					admitted++
				}
			}
			// Buckets also refilled half their burst before the sender began.
			if admitted < 18 || admitted > 25 {
				t.Fatalf("steady 2L sender admitted %d in 2s, want about 20", admitted)
			}
		})
	}
}

func TestCostAboveLimit(t *testing.T) {
	for name, p := range kinds() {
		t.Run(name, func(t *testing.T) {
			var s State
			Step(&p, &s, t0, 1)
			before := clone(s)
			d := Step(&p, &s, t0, 11)
			if d.Allowed || d.RetryAfter != Never {
				t.Fatalf("cost 11 of 10: %+v, want rejected with Never", d)
			}
			if !equalState(before, s) {
				t.Fatal("cost above limit changed state")
			}
			if d.Remaining != 9 {
				t.Fatalf("remaining %d, want 9", d.Remaining)
			}
		})
	}
}

func TestPeek(t *testing.T) {
	for name, p := range kinds() {
		t.Run(name, func(t *testing.T) {
			var s State
			d := Step(&p, &s, t0, 0)
			if !d.Allowed || d.Remaining != 10 || d.ResetAfter != 0 {
				t.Fatalf("peek on empty state: %+v", d)
			}
			if !equalState(s, State{}) {
				t.Fatal("peek wrote the state")
			}
			admitN(&p, &s, t0, 1, 4)
			before := clone(s)
			d = Step(&p, &s, t0, 0)
			if !d.Allowed || d.Remaining != 6 {
				t.Fatalf("peek after 4: %+v, want remaining 6", d)
			}
			if !equalState(before, s) {
				t.Fatal("peek wrote the state")
			}
		})
	}
}

func TestCost(t *testing.T) {
	for name, p := range kinds() {
		t.Run(name, func(t *testing.T) {
			var s State
			for i, want := range []int64{7, 4, 1} {
				d := Step(&p, &s, t0, 3)
				if !d.Allowed || d.Remaining != want {
					t.Fatalf("step %d: %+v, want allowed remaining %d", i, d, want)
				}
			}
			if d := Step(&p, &s, t0, 3); d.Allowed {
				t.Fatalf("cost 3 with 1 left admitted: %+v", d)
			}
			if d := Step(&p, &s, t0, 1); !d.Allowed || d.Remaining != 0 {
				t.Fatalf("cost 1 with 1 left: %+v", d)
			}
			if p.Kind == SlidingWindowLog && len(s.Log) != 10 {
				t.Fatalf("log holds %d entries, want one per unit (10)", len(s.Log))
			}
		})
	}
}

func TestLimitChangeMidWindow(t *testing.T) {
	for name, p := range kinds() {
		t.Run(name, func(t *testing.T) {
			var s State
			now := t0 + sec/2
			admitN(&p, &s, now, 1, 10)
			lower := p
			lower.Limit = 5
			if d := Step(&lower, &s, now+1, 1); d.Allowed || d.Remaining != 0 {
				t.Fatalf("after lowering the limit: %+v, want rejected", d)
			}
			higher := p
			higher.Limit = 20
			if p.Kind.Bucket() {
				// Keep the refill rate: only the burst grows.
				higher.Window = p.Window
			}
			if got := admitN(&higher, &s, now+1, 1, 30); got != 10 {
				t.Fatalf("after raising the limit to 20: admitted %d more, want 10", got)
			}
		})
	}
}

func TestBackwardClock(t *testing.T) {
	for name, p := range kinds() {
		t.Run(name, func(t *testing.T) {
			var s State
			now := t0 + 5*sec + sec/2
			admitN(&p, &s, now, 1, 10)
			// Clock steps back 3 seconds, then wanders: nothing is minted.
			for _, back := range []int64{now - 3*sec, now - sec, now - 1, now - 5*sec} {
				if d := Step(&p, &s, back, 1); d.Allowed {
					t.Fatalf("admitted at %d after filling at %d", back-now, now)
				}
			}
			// Far future then back: the future admission is not undone.
			var f State
			admitN(&p, &f, now+100*sec, 1, 10)
			if got := admitN(&p, &f, now, 1, 10); got != 0 {
				t.Fatalf("after a jump back from the future admitted %d", got)
			}
		})
	}
}

func TestFixedWindowEpochAligned(t *testing.T) {
	p := Params{Kind: FixedWindow, Limit: 2, Window: 60 * sec}
	var s State
	now := t0 + 59*sec
	Step(&p, &s, now, 1)
	d := Step(&p, &s, now, 1)
	if d.ResetAfter != sec {
		t.Fatalf("reset after %d, want %d", d.ResetAfter, sec)
	}
	d = Step(&p, &s, now+sec/2, 1)
	if d.Allowed || d.RetryAfter != sec/2 {
		t.Fatalf("%+v, want rejected, retry after 0.5s", d)
	}
	if s.A != t0 {
		t.Fatalf("window start %d, want %d", s.A, t0)
	}
}

func TestSlidingCounterEstimate(t *testing.T) {
	p := Params{Kind: SlidingWindowCounter, Limit: 10, Window: 10 * sec}
	var s State
	admitN(&p, &s, t0+9*sec, 1, 8) // previous window: 8
	// 25% into the next window: used = ceil(8*0.75) = 6.
	d := Step(&p, &s, t0+12*sec+sec/2, 0)
	if d.Remaining != 4 {
		t.Fatalf("remaining %d, want 4", d.Remaining)
	}
	if got := admitN(&p, &s, t0+12*sec+sec/2, 1, 10); got != 4 {
		t.Fatalf("admitted %d, want 4", got)
	}
	// Full now: cur=4, prev=8 -> room for one when ceil(8*r/W) <= 5: r <= 6.25s.
	d = Step(&p, &s, t0+12*sec+sec/2, 1)
	if d.Allowed || d.RetryAfter != sec+sec/4 {
		t.Fatalf("%+v, want retry after 1.25s", d)
	}
	if d.ResetAfter != 17*sec+sec/2 {
		t.Fatalf("reset after %d, want 17.5s", d.ResetAfter)
	}
}

// TestSlidingCounterBound checks the documented adversarial bound: L spent at
// the end of a window, then a sender at every millisecond: fewer than 2L in
// any W-long interval, at most L in each aligned window.
func TestSlidingCounterBound(t *testing.T) {
	const l, w = 100, sec
	p := Params{Kind: SlidingWindowCounter, Limit: l, Window: w}
	var s State
	var times []int64
	if got := admitN(&p, &s, t0+w-1, 1, l); got != l {
		t.Fatalf("admitted %d", got)
	}
	for range l {
		times = append(times, t0+w-1)
	}
	for now := t0 + w; now < t0+5*w; now += 1000 {
		if Step(&p, &s, now, 1).Allowed {
			times = append(times, now)
		}
	}
	maxIn := func(span int64) int {
		best, j := 0, 0
		for i := range times {
			for times[i]-times[j] >= span {
				j++
			}
			best = max(best, i-j+1)
		}
		return best
	}
	if m := maxIn(w); m >= 2*l {
		t.Fatalf("%d admitted within one window length, want < %d", m, 2*l)
	}
	perWindow := map[int64]int{}
	for _, at := range times {
		perWindow[at-at%w]++
	}
	for start, n := range perWindow {
		if n > l {
			t.Fatalf("%d admitted in the window at %d, want <= %d", n, start-t0, l)
		}
	}
	if n := len(times); n < 4*l || n > 5*l {
		t.Fatalf("%d admitted over 5 windows, want between 4L and 5L", n)
	}
}

func TestSlidingLogMatchesBruteForce(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	p := Params{Kind: SlidingWindowLog, Limit: 7, Window: 1000}
	var s State
	var admitted []int64
	now := t0
	for i := range 5000 {
		now += rng.Int64N(120)
		cost := rng.Int64N(3)
		live := int64(0)
		for _, a := range admitted {
			if a > now-p.Window {
				live++
			}
		}
		want := cost <= p.Limit && live+cost <= p.Limit
		d := Step(&p, &s, now, cost)
		if d.Allowed != want {
			t.Fatalf("step %d: allowed %v, brute force %v (live %d cost %d)", i, d.Allowed, want, live, cost)
		}
		if d.Allowed {
			for range cost {
				admitted = append(admitted, now)
			}
		}
	}
}

func TestLeakyBucketDelay(t *testing.T) {
	p := Params{Kind: LeakyBucket, Limit: 1, Window: 100_000, MaxDelay: 250_000}
	var s State
	for i, want := range []int64{0, 100_000, 200_000} {
		d := Step(&p, &s, t0, 1)
		if !d.Allowed || d.Delay != want {
			t.Fatalf("request %d: %+v, want admitted with delay %d", i, d, want)
		}
	}
	d := Step(&p, &s, t0, 1)
	if d.Allowed || d.RetryAfter != 50_000 {
		t.Fatalf("4th: %+v, want rejected, retry after 50ms", d)
	}
	// At t0+RetryAfter it is admitted with the longest delay.
	d = Step(&p, &s, t0+50_000, 1)
	if !d.Allowed || d.Delay != 250_000 {
		t.Fatalf("retry: %+v, want delay 250ms", d)
	}
	// The token bucket with the same numbers never delays.
	tb := p
	tb.Kind = TokenBucket
	tb.MaxDelay = 0
	var s2 State
	if d := Step(&tb, &s2, t0, 1); !d.Allowed || d.Delay != 0 {
		t.Fatalf("token bucket first: %+v", d)
	}
	if d := Step(&tb, &s2, t0, 1); d.Allowed || d.RetryAfter != 100_000 {
		t.Fatalf("token bucket second: %+v, want retry 100ms", d)
	}
}

// TestRetryAndResetExact checks on random traffic that RetryAfter is the
// first instant a rejected request fits (admitted then, rejected 1µs before)
// and that ResetAfter is the first instant the quota is whole.
func TestRetryAndResetExact(t *testing.T) {
	for name, p := range kinds() {
		if p.Kind == LeakyBucket {
			p.MaxDelay = 150_000
		}
		t.Run(name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(3, uint64(p.Kind)))
			var s State
			now := t0
			for i := range 20000 {
				now += rng.Int64N(sec / 8)
				cost := rng.Int64N(4)
				d := Step(&p, &s, now, cost)
				if d.Remaining < 0 || d.ResetAfter < 0 || d.Delay < 0 {
					t.Fatalf("step %d: negative field %+v", i, d)
				}
				if !d.Allowed && d.RetryAfter > 0 {
					c := clone(s)
					if !Step(&p, &c, now+d.RetryAfter, cost).Allowed {
						t.Fatalf("step %d: rejected again at now+RetryAfter (%d) cost %d", i, d.RetryAfter, cost)
					}
					c = clone(s)
					if Step(&p, &c, now+d.RetryAfter-1, cost).Allowed {
						t.Fatalf("step %d: admitted 1µs before RetryAfter (%d) cost %d", i, d.RetryAfter, cost)
					}
				}
				if d.ResetAfter > 0 {
					c := clone(s)
					if r := Step(&p, &c, now+d.ResetAfter, 0).Remaining; r != p.Limit {
						t.Fatalf("step %d: remaining %d at now+ResetAfter, want %d", i, r, p.Limit)
					}
					if r := Step(&p, &c, now+d.ResetAfter-1, 0).Remaining; r == p.Limit && p.Kind != SlidingWindowCounter {
						t.Fatalf("step %d: already whole 1µs before ResetAfter", i)
					}
				}
			}
		})
	}
}

func TestRefund(t *testing.T) {
	for name, p := range kinds() {
		t.Run(name, func(t *testing.T) {
			var s State
			admitN(&p, &s, t0, 2, 3) // 6 of 10 used
			before := Step(&p, &s, t0, 0).Remaining
			if d := Step(&p, &s, t0, 3); !d.Allowed {
				t.Fatalf("not admitted: %+v", d)
			}
			Refund(&p, &s, t0, 3)
			if got := Step(&p, &s, t0, 0).Remaining; got != before {
				t.Fatalf("remaining after refund %d, want %d", got, before)
			}
			// Refunds never make the quota more than whole.
			Refund(&p, &s, t0, 100)
			if got := Step(&p, &s, t0, 0).Remaining; got != p.Limit {
				t.Fatalf("remaining after over-refund %d, want %d", got, p.Limit)
			}
			if got := admitN(&p, &s, t0, 1, 20); got != 10 {
				t.Fatalf("admitted %d after over-refund, want 10", got)
			}
		})
	}
}

func TestExtremes(t *testing.T) {
	day := 86_400 * sec
	cases := []struct {
		name   string
		p      Params
		fill   int64 // cost of one request that takes the whole quota
		retryA int64 // expected RetryAfter of the next unit request
	}{
		{"1/min fixed", Params{Kind: FixedWindow, Limit: 1, Window: 60 * sec}, 1, 60 * sec},
		{"1/min log", Params{Kind: SlidingWindowLog, Limit: 1, Window: 60 * sec}, 1, 60 * sec},
		{"1/min counter", Params{Kind: SlidingWindowCounter, Limit: 1, Window: 60 * sec}, 1, 120 * sec},
		{"1/min bucket", Params{Kind: TokenBucket, Limit: 1, Window: 60 * sec}, 1, 60 * sec},
		{"1e9/day fixed", Params{Kind: FixedWindow, Limit: 1e9, Window: day}, 1e9, day},
		{"1e9/day counter", Params{Kind: SlidingWindowCounter, Limit: 1e9, Window: day}, 1e9, day + 87},
		{"1e9/day bucket", Params{Kind: TokenBucket, Limit: 1e9, Window: 87}, 1e9, 87},
		{"1e9/day leaky", Params{Kind: LeakyBucket, Limit: 1e9, Window: 87, MaxDelay: 50}, 1e9, 37},
		{"max bucket", Params{Kind: TokenBucket, Limit: MaxLimit, Window: MaxProduct / MaxLimit}, MaxLimit, MaxProduct / MaxLimit},
		{"max window", Params{Kind: FixedWindow, Limit: MaxLimit, Window: MaxWindow}, MaxLimit, 0},
		{"1µs interval", Params{Kind: TokenBucket, Limit: 1e6, Window: 1}, 1e6, 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if err := c.p.Validate(); err != nil {
				t.Fatal(err)
			}
			var s State
			now := t0
			d := Step(&c.p, &s, now, c.fill)
			if !d.Allowed || d.Remaining != 0 {
				t.Fatalf("fill: %+v", d)
			}
			d = Step(&c.p, &s, now, 1)
			if d.Allowed || d.RetryAfter <= 0 {
				t.Fatalf("after fill: %+v", d)
			}
			if c.retryA > 0 && d.RetryAfter != c.retryA {
				t.Fatalf("retry after %d, want %d", d.RetryAfter, c.retryA)
			}
			c2 := clone(s)
			if !Step(&c.p, &c2, now+d.RetryAfter, 1).Allowed {
				t.Fatal("not admitted at RetryAfter")
			}
		})
	}
}

func BenchmarkStep(b *testing.B) {
	for name, p := range kinds() {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			var s State
			s.Log = make([]int64, 0, 16)
			now := t0
			cpu := processCPU()
			for b.Loop() {
				now += 50_000
				Step(&p, &s, now, 1)
			}
			// CPU time per step beside wall time: on a shared machine the
			// wall figure measures the contention.
			b.ReportMetric(float64(processCPU()-cpu)/float64(b.N), "cpu-ns/op")
		})
	}
}

func processCPU() int64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// TestLogStepKeepsOldSlice: an admitted log step must not change the
// entries visible through the slice it was given, so a store deciding
// several checks all-or-nothing can still drop the step when another check
// rejects.
func TestLogStepKeepsOldSlice(t *testing.T) {
	p := Params{Kind: SlidingWindowLog, Limit: 4, Window: 1000}
	s := State{Log: make([]int64, 0, 8)}
	for i := range 3 {
		Step(&p, &s, t0+int64(i)*400, 1) // entries at 0, 400, 800
	}
	old := s.Log
	snapshot := slices.Clone(old)
	// At 1200 the entry at 0 has expired; admit 2 more.
	c := State{Log: old}
	if d := Step(&p, &c, t0+1200, 2); !d.Allowed {
		t.Fatalf("not admitted: %+v", d)
	}
	if !slices.Equal(old, snapshot) {
		t.Fatalf("old slice changed: %v -> %v", snapshot, old)
	}
	if want := []int64{t0 + 400, t0 + 800, t0 + 1200, t0 + 1200}; !slices.Equal(c.Log, want) {
		t.Fatalf("new log %v, want %v", c.Log, want)
	}
}
