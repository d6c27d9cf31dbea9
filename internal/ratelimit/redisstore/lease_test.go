package redisstore

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/portico-gw/portico/internal/ratelimit"
	"github.com/portico-gw/portico/internal/ratelimit/algo"
)

// fakeClock is an injected local clock (µs) for lease lifetimes.
type fakeClock struct{ now atomic.Int64 }

func (c *fakeClock) read() int64             { return c.now.Load() }
func (c *fakeClock) advance(d time.Duration) { c.now.Add(d.Microseconds()) }

func peek(t *testing.T, s *Store, subject string, c ratelimit.Check) algo.Decision {
	t.Helper()
	c.Cost = 0
	out := make([]algo.Decision, 1)
	if err := s.Decide(context.Background(), subject, []ratelimit.Check{c}, out); err != nil {
		t.Fatal(err)
	}
	return out[0]
}

// TestLeaseHotKey: one node deciding a hot key with plenty of quota makes
// at most one script call per 50 decisions (the target is 0.02), and every
// decision it admits was counted in Redis.
func TestLeaseHotKey(t *testing.T) {
	s := newTestStore(t, sharedRedisAddr(t))
	l := NewLeaseStore(s, func() int { return 1 })
	subj := uniqueSubject(t, "hot")
	for _, p := range []algo.Params{fixed(1_000_000_000, time.Hour), {Kind: algo.TokenBucket, Limit: 1_000_000_000, Window: 1}} {
		t.Run(p.Kind.String(), func(t *testing.T) {
			checks := []ratelimit.Check{{Policy: p.Kind.String(), Params: p, Cost: 1}}
			out := make([]algo.Decision, 1)
			before := s.calls.Load()
			const n = 20000
			for i := range n {
				if err := l.Decide(context.Background(), subj, checks, out); err != nil {
					t.Fatal(err)
				}
				if !out[0].Allowed {
					t.Fatalf("decision %d rejected: %+v", i, out[0])
				}
			}
			calls := s.calls.Load() - before
			t.Logf("%d decisions, %d script calls (%.4f per decision)", n, calls, float64(calls)/n)
			if float64(calls)/n > 0.02 {
				t.Fatalf("%.4f script calls per decision, want <= 0.02", float64(calls)/n)
			}
			if p.Kind == algo.FixedWindow {
				if used := p.Limit - peek(t, s, subj, checks[0]).Remaining; used < n {
					t.Fatalf("redis counted %d units for %d admissions", used, n)
				}
			}
		})
	}
}

// TestLeaseExhaustion: five nodes share a limit of 400 with 1000 requests:
// never more than 400 admitted, at least 99% of it, and once the quota is
// gone the negative cache answers without script calls.
func TestLeaseExhaustion(t *testing.T) {
	addr := sharedRedisAddr(t)
	const nodes, limit, requests = 5, 400, 1000
	subj := uniqueSubject(t, "ex")
	check := ratelimit.Check{Policy: "p", Params: fixed(limit, time.Hour), Cost: 1}
	var ls []*LeaseStore
	var stores []*Store
	for range nodes {
		s := newTestStore(t, addr)
		stores = append(stores, s)
		ls = append(ls, NewLeaseStore(s, func() int { return nodes }))
	}
	var admitted atomic.Int64
	var wg sync.WaitGroup
	for n := range nodes {
		for range 2 {
			wg.Go(func() {
				out := make([]algo.Decision, 1)
				for range requests / nodes / 2 {
					if err := ls[n].Decide(context.Background(), subj, []ratelimit.Check{check}, out); err != nil {
						t.Error(err)
						return
					}
					if out[0].Allowed {
						admitted.Add(1)
					}
				}
			})
		}
	}
	wg.Wait()
	got := admitted.Load()
	t.Logf("admitted %d of limit %d while all nodes were busy", got, limit)
	if got > limit {
		t.Fatalf("admitted %d, over the limit %d", got, limit)
	}
	// Every node now rejects from its negative cache, once it has seen one
	// rejection: a node may still hold a unit of its lease (when fewer than
	// the limit were admitted), which it spends first.
	for n := range nodes {
		out := make([]algo.Decision, 1)
		for range limit {
			if err := ls[n].Decide(context.Background(), subj, []ratelimit.Check{check}, out); err != nil {
				t.Fatal(err)
			}
			if out[0].Allowed {
				admitted.Add(1)
				continue
			}
			break
		}
		if got := admitted.Load(); got > limit {
			t.Fatalf("admitted %d in all, over the limit %d", got, limit)
		}
		before := stores[n].calls.Load()
		for range 50 {
			if err := ls[n].Decide(context.Background(), subj, []ratelimit.Check{check}, out); err != nil {
				t.Fatal(err)
			}
			if out[0].Allowed {
				t.Fatalf("node %d admitted past the limit", n)
			}
			if out[0].RetryAfter <= 0 {
				t.Fatalf("node %d: rejection without RetryAfter: %+v", n, out[0])
			}
		}
		if c := stores[n].calls.Load() - before; c != 0 {
			t.Fatalf("node %d made %d script calls for cached rejections", n, c)
		}
	}
	// A node whose clients finished while its lease still held units kept
	// them until now; once spent, nearly the whole limit was admitted.
	if got := admitted.Load(); got < limit*99/100 {
		t.Fatalf("admitted %d in all, want between %d and %d", got, limit*99/100, limit)
	}
}

// TestLeaseLapseGivesBack: units a lease could not spend before it lapsed
// return to Redis with the next call, in the same window.
func TestLeaseLapseGivesBack(t *testing.T) {
	s := newTestStore(t, sharedRedisAddr(t))
	l := NewLeaseStore(s, func() int { return 1 })
	clk := &fakeClock{}
	clk.now.Store(1)
	l.clock = clk.read
	subj := uniqueSubject(t, "lapse")
	check := ratelimit.Check{Policy: "p", Params: fixed(1_000_000, time.Hour), Cost: 1}
	checks := []ratelimit.Check{check}
	out := make([]algo.Decision, 1)
	ctx := context.Background()
	// Build up a rate so the next lease is large: 1000 decisions in 1 ms.
	for range 1000 {
		if err := l.Decide(ctx, subj, checks, out); err != nil {
			t.Fatal(err)
		}
		clk.advance(time.Microsecond)
	}
	counted := check.Params.Limit - peek(t, s, subj, check).Remaining
	lease := l.get(subj, "p", clk.read())
	lease.mu.Lock()
	held := lease.tokens
	lease.mu.Unlock()
	if held <= 0 || counted != 1000+held {
		t.Fatalf("counted %d, held %d: want counted = 1000 admitted + held", counted, held)
	}
	// The lease lapses; the next decision gives the held units back.
	clk.advance(MaxLeaseTTL + time.Millisecond)
	before := s.calls.Load()
	if err := l.Decide(ctx, subj, checks, out); err != nil || !out[0].Allowed {
		t.Fatalf("%+v %v", out[0], err)
	}
	if c := s.calls.Load() - before; c != 1 {
		t.Fatalf("%d script calls after the lapse, want 1", c)
	}
	lease.mu.Lock()
	held = lease.tokens
	lease.mu.Unlock()
	if counted = check.Params.Limit - peek(t, s, subj, check).Remaining; counted != 1001+held {
		t.Fatalf("after the lapse counted %d, want 1001 admitted + %d held", counted, held)
	}
}

// TestLeaseMixedChecks: a leasable policy and a sliding log (always exact)
// on one subject are still all-or-nothing: when the log rejects, the
// leased unit goes back to the local lease.
func TestLeaseMixedChecks(t *testing.T) {
	s := newTestStore(t, sharedRedisAddr(t))
	l := NewLeaseStore(s, func() int { return 1 })
	subj := uniqueSubject(t, "mixed")
	checks := []ratelimit.Check{
		{Policy: "fw", Params: fixed(1000, time.Hour), Cost: 1},
		{Policy: "log", Params: algo.Params{Kind: algo.SlidingWindowLog, Limit: 3, Window: time.Hour.Microseconds()}, Cost: 1},
	}
	out := make([]algo.Decision, 2)
	admitted := 0
	for range 10 {
		if err := l.Decide(context.Background(), subj, checks, out); err != nil {
			t.Fatal(err)
		}
		if out[0].Allowed && out[1].Allowed {
			admitted++
		}
	}
	if admitted != 3 {
		t.Fatalf("admitted %d, want 3", admitted)
	}
	// Redis counted what the leases took: the 3 admitted plus what this
	// node still holds (the rejected requests' units went back to it).
	lease := l.get(subj, "fw", l.clock())
	lease.mu.Lock()
	held := lease.tokens
	lease.mu.Unlock()
	if counted := 1000 - peek(t, s, subj, checks[0]).Remaining; counted != 3+held {
		t.Fatalf("redis counted %d, want 3 admitted + %d held", counted, held)
	}
	// Refund of the whole request: the log in Redis, the lease locally.
	if err := l.Refund(context.Background(), subj, checks); err != nil {
		t.Fatal(err)
	}
	if err := l.Decide(context.Background(), subj, checks, out); err != nil || !out[0].Allowed || !out[1].Allowed {
		t.Fatalf("after refund: %+v %v", out, err)
	}
}

// TestLeaseExactFallbacks: peeks, sliding logs, delayed leaky buckets and
// limits too small for the fleet go to Redis on every decision.
func TestLeaseExactFallbacks(t *testing.T) {
	tests := []struct {
		name  string
		check ratelimit.Check
		nodes int
		lease bool
	}{
		{"fixed", ratelimit.Check{Params: fixed(1000, time.Second), Cost: 1}, 10, true},
		{"peek", ratelimit.Check{Params: fixed(1000, time.Second), Cost: 0}, 10, false},
		{"small limit", ratelimit.Check{Params: fixed(79, time.Second), Cost: 1}, 10, false},
		{"log", ratelimit.Check{Params: algo.Params{Kind: algo.SlidingWindowLog, Limit: 1000, Window: 1e6}, Cost: 1}, 1, false},
		{"leaky delay", ratelimit.Check{Params: algo.Params{Kind: algo.LeakyBucket, Limit: 1000, Window: 100, MaxDelay: 1000}, Cost: 1}, 1, false},
		{"leaky", ratelimit.Check{Params: algo.Params{Kind: algo.LeakyBucket, Limit: 1000, Window: 100}, Cost: 1}, 1, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := leasable(&tc.check, tc.nodes); got != tc.lease {
				t.Fatalf("leasable = %v, want %v", got, tc.lease)
			}
		})
	}
	// Lease lives: a tenth of the window, at most 250 ms, at least 1 µs.
	for _, tc := range []struct {
		p    algo.Params
		want int64
	}{
		{fixed(10, time.Second), 100_000},
		{fixed(10, time.Hour), MaxLeaseTTL.Microseconds()},
		{fixed(10, 5*time.Microsecond), 1},
		{algo.Params{Kind: algo.TokenBucket, Limit: 100, Window: 1000}, 10_000},
	} {
		if got := leaseTTL(&tc.p); got != tc.want {
			t.Errorf("leaseTTL(%+v) = %d, want %d", tc.p, got, tc.want)
		}
	}
}

// TestLeaseBucket: a token bucket spent through leases admits no more than
// burst + elapsed/T (plus one lease life), and about that much under
// overload.
func TestLeaseBucket(t *testing.T) {
	s := newTestStore(t, sharedRedisAddr(t))
	l := NewLeaseStore(s, func() int { return 1 })
	subj := uniqueSubject(t, "bucket")
	p := algo.Params{Kind: algo.TokenBucket, Limit: 500, Window: 1000} // 1000/s, burst 500
	checks := []ratelimit.Check{{Policy: "tb", Params: p, Cost: 1}}
	out := make([]algo.Decision, 1)
	start := time.Now()
	var admitted int64
	for time.Since(start) < 300*time.Millisecond {
		if err := l.Decide(context.Background(), subj, checks, out); err != nil {
			t.Fatal(err)
		}
		if out[0].Allowed {
			admitted++
		}
	}
	elapsed := time.Since(start).Microseconds()
	upper := p.Limit + (elapsed+leaseTTL(&p))/p.Window + 1
	lower := p.Limit + (elapsed-50_000)/p.Window // allow a slow start on a busy machine
	t.Logf("admitted %d in %v (bounds %d..%d)", admitted, time.Duration(elapsed)*time.Microsecond, lower, upper)
	// The lower bound only catches gross under-admission: one sequential
	// caller on a busy machine misses some refills between round trips.
	if admitted > upper || admitted < lower*8/10 {
		t.Fatalf("admitted %d, want %d..%d", admitted, lower*8/10, upper)
	}
}

// TestLeaseGiveBackSurvivesAbandonedFetch: a request whose leases of two
// policies have both lapsed, while another request is fetching one of them,
// gives up its own fetch and waits (holding a fetch while waiting could
// deadlock). The units its lapsed lease held must still go back to Redis
// with the next grant, not be dropped when it retries.
func TestLeaseGiveBackSurvivesAbandonedFetch(t *testing.T) {
	s := newTestStore(t, sharedRedisAddr(t))
	l := NewLeaseStore(s, func() int { return 1 })
	clk := &fakeClock{}
	clk.now.Store(1)
	l.clock = clk.read
	subj := uniqueSubject(t, "abandon")
	a := ratelimit.Check{Policy: "a", Params: fixed(1_000_000, time.Hour), Cost: 1}
	b := ratelimit.Check{Policy: "b", Params: fixed(1_000_000, time.Hour), Cost: 1}
	both := []ratelimit.Check{a, b}
	out := make([]algo.Decision, 2)
	ctx := context.Background()
	// A rate of 1000 decisions per ms, so the leases hold units.
	for range 1000 {
		if err := l.Decide(ctx, subj, both, out); err != nil || !out[0].Allowed || !out[1].Allowed {
			t.Fatalf("%+v %v", out, err)
		}
		clk.advance(time.Microsecond)
	}
	la, lb := l.get(subj, "a", clk.read()), l.get(subj, "b", clk.read())
	la.mu.Lock()
	held := la.tokens
	la.mu.Unlock()
	if held <= 0 {
		t.Fatalf("lease a holds %d units", held)
	}
	// Both leases lapse, and another request is fetching b.
	clk.advance(MaxLeaseTTL + time.Millisecond)
	other := make(chan struct{})
	lb.mu.Lock()
	lb.fetching = other
	lb.mu.Unlock()
	done := make(chan error, 1)
	go func() { done <- l.Decide(ctx, subj, both, make([]algo.Decision, 2)) }()
	// The request moved a's units out for its grant call, then gave that
	// fetch up to wait for b.
	for {
		la.mu.Lock()
		gaveUp := la.back == held && la.fetching == nil
		la.mu.Unlock()
		if gaveUp {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("decision ended before waiting for the other fetch: %v", err)
		case <-time.After(time.Millisecond):
		}
	}
	// The other fetch ends (say it failed); the request retries.
	lb.mu.Lock()
	lb.fetching = nil
	lb.mu.Unlock()
	close(other)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for _, x := range []struct {
		c  ratelimit.Check
		ls *lease
	}{{a, la}, {b, lb}} {
		x.ls.mu.Lock()
		now := x.ls.tokens
		x.ls.mu.Unlock()
		if counted := x.c.Params.Limit - peek(t, s, subj, x.c).Remaining; counted != 1001+now {
			t.Errorf("policy %s: redis counted %d, want 1001 admitted + %d held (the lapsed lease's units lost)",
				x.c.Policy, counted, now)
		}
	}
}
