package upstream

import (
	"fmt"
	"math"
	"net/http"
	"net/netip"
	"runtime"
	"strings"
	"testing"

	"github.com/portico-gw/portico/internal/identity"
	"github.com/portico-gw/portico/internal/reqctx"
)

func testTargets(n int) []*target {
	ts := make([]*target, n)
	for i := range ts {
		ts[i] = &target{url: fmt.Sprintf("http://10.0.0.%d:80", i+1)}
		ts[i].healthy.Store(true)
	}
	return ts
}

func urlsOf(ts []*target) []string {
	out := make([]string, len(ts))
	for i, t := range ts {
		out[i] = t.url
	}
	return out
}

func TestSmoothRoundRobin(t *testing.T) {
	ts := testTargets(3)
	b := newBalancer("round_robin", []int{5, 1, 1}, hashKey{}, urlsOf(ts))
	c := pickCtx{targets: ts}
	var seq strings.Builder
	for range 14 {
		seq.WriteByte("abc"[b.pick(nil, c)])
	}
	// nginx's documented sequence for weights 5, 1, 1, twice.
	if got, want := seq.String(), "aabacaaaabacaa"; got != want {
		t.Fatalf("sequence %s, want %s", got, want)
	}
	ts[0].healthy.Store(false)
	for range 6 {
		if i := b.pick(nil, c); i == 0 {
			t.Fatal("picked an unhealthy target")
		}
	}
}

func TestBalancersSkipIneligibleAndFollowWeights(t *testing.T) {
	for _, name := range []string{"round_robin", "least_request", "random", "consistent_hash"} {
		t.Run(name, func(t *testing.T) {
			ts := testTargets(4)
			weights := []int{1, 2, 3, 4}
			b := newBalancer(name, weights, hashKey{kind: "header", name: "X-User-Id"}, urlsOf(ts))
			ts[1].healthy.Store(false)
			ts[2].ejectedUntil.Store(100)
			c := pickCtx{targets: ts, now: 50, tried: 1 << 3}
			counts := make([]int, 4)
			const n = 20000
			for i := range n {
				req, _ := http.NewRequest(http.MethodGet, "http://x/", nil)
				req.Header.Set("X-User-Id", fmt.Sprint("user-", i))
				counts[b.pick(req, c)]++
			}
			if counts[0] != n {
				t.Fatalf("only target 0 is eligible, got %v", counts)
			}
			// All eligible: shares follow the weights within 5% (hashing is
			// close; least_request with nothing in flight is exact).
			c = pickCtx{targets: ts, now: 200}
			ts[1].healthy.Store(true)
			clear(counts)
			for i := range n {
				req, _ := http.NewRequest(http.MethodGet, "http://x/", nil)
				req.Header.Set("X-User-Id", fmt.Sprint("user-", i))
				counts[b.pick(req, c)]++
			}
			for i, k := range counts {
				want := float64(n) * float64(weights[i]) / 10
				if math.Abs(float64(k)-want) > 0.05*n {
					t.Fatalf("counts %v, want about %v for weights %v", counts, want, weights)
				}
			}
		})
	}
}

func TestLeastRequestPrefersLessLoaded(t *testing.T) {
	ts := testTargets(2)
	b := newBalancer("least_request", []int{1, 1}, hashKey{}, urlsOf(ts))
	ts[0].inflight.Store(10)
	c := pickCtx{targets: ts}
	for range 100 {
		if b.pick(nil, c) != 1 {
			t.Fatal("picked the busier target of two")
		}
	}
	// Only one target eligible: it is picked whatever its load.
	c.tried = 1 << 1
	for range 100 {
		if b.pick(nil, c) != 0 {
			t.Fatal("did not fall back to the only eligible target")
		}
	}
}

func TestConsistentHashMovesOnlyLeavingKeys(t *testing.T) {
	ts := testTargets(5)
	hk := hashKey{kind: "header", name: "X-User-Id"}
	weights := []int{1, 1, 1, 1, 1}
	full := newRingHash(weights, urlsOf(ts), hk)
	c := pickCtx{targets: ts}
	const n = 5000
	before := make([]int, n)
	for i := range n {
		before[i] = full.lookup(hashString(fmt.Sprint("user-", i)), c)
	}
	t.Run("target down", func(t *testing.T) {
		ts[2].healthy.Store(false)
		defer ts[2].healthy.Store(true)
		moved := 0
		for i := range n {
			after := full.lookup(hashString(fmt.Sprint("user-", i)), c)
			if before[i] != 2 && after != before[i] {
				t.Fatalf("key %d moved from %d to %d though its target is up", i, before[i], after)
			}
			if before[i] == 2 {
				moved++
			}
		}
		if moved < n/10 || moved > n*3/10 {
			t.Fatalf("%d of %d keys were on the removed target, want about a fifth", moved, n)
		}
	})
	t.Run("target removed from config", func(t *testing.T) {
		rest := append(append([]*target{}, ts[:2]...), ts[3:]...)
		ring := newRingHash([]int{1, 1, 1, 1}, urlsOf(rest), hk)
		for i := range n {
			after := rest[ring.lookup(hashString(fmt.Sprint("user-", i)), pickCtx{targets: rest})]
			if before[i] != 2 && after != ts[before[i]] {
				t.Fatalf("key %d moved to another target after an unrelated removal", i)
			}
		}
	})
	t.Run("keys", func(t *testing.T) {
		ip := netip.MustParseAddr("192.0.2.7")
		tests := []struct {
			key  string
			req  func() *http.Request
			same func() *http.Request
		}{
			{"ip", func() *http.Request { return reqWithInfo(&reqctx.Info{ClientIP: ip}) },
				func() *http.Request { return reqWithInfo(&reqctx.Info{ClientIP: ip}) }},
			{"claim:tenant", func() *http.Request {
				return reqWithInfo(&reqctx.Info{Identity: &identity.Identity{Claims: map[string]any{"tenant": "acme"}}})
			}, func() *http.Request {
				r, _ := http.NewRequest(http.MethodGet, "http://x/", nil)
				return r.WithContext(identity.NewContext(r.Context(), &identity.Identity{Claims: map[string]any{"tenant": "acme"}}))
			}},
		}
		for _, tc := range tests {
			hk, err := parseHashKey(tc.key)
			if err != nil {
				t.Fatal(err)
			}
			r := newRingHash(weights, urlsOf(ts), hk)
			h1, ok1 := r.keyHash(tc.req())
			h2, ok2 := r.keyHash(tc.same())
			if !ok1 || !ok2 || h1 != h2 {
				t.Fatalf("%s: key not extracted consistently (%v %v)", tc.key, ok1, ok2)
			}
			if _, ok := r.keyHash(reqWithInfo(&reqctx.Info{})); ok {
				t.Fatalf("%s: a request without the key produced one", tc.key)
			}
		}
	})
}

func reqWithInfo(in *reqctx.Info) *http.Request {
	r, _ := http.NewRequest(http.MethodGet, "http://x/", nil)
	return r.WithContext(reqctx.With(r.Context(), in))
}

func BenchmarkPick(b *testing.B) {
	for _, name := range []string{"round_robin", "least_request", "random", "consistent_hash"} {
		b.Run(name, func(b *testing.B) {
			ts := testTargets(8)
			b.ReportAllocs()
			bal := newBalancer(name, []int{1, 2, 1, 2, 1, 2, 1, 2}, hashKey{kind: "header", name: "X-User-Id"}, urlsOf(ts))
			req, _ := http.NewRequest(http.MethodGet, "http://x/", nil)
			req.Header.Set("X-User-Id", "user-12345")
			c := pickCtx{targets: ts, now: 1}
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			cpu0, ok := threadCPU()
			n := 0
			for b.Loop() {
				if bal.pick(req, c) < 0 {
					b.Fatal("no pick")
				}
				n++
			}
			if cpu1, ok1 := threadCPU(); ok && ok1 && n > 0 {
				b.ReportMetric(float64(cpu1-cpu0)/float64(n), "cpu-ns/op")
			}
		})
	}
}

func TestPickDoesNotAllocate(t *testing.T) {
	for _, name := range []string{"round_robin", "least_request", "random", "consistent_hash"} {
		ts := testTargets(8)
		bal := newBalancer(name, []int{1, 2, 1, 2, 1, 2, 1, 2}, hashKey{kind: "header", name: "X-User-Id"}, urlsOf(ts))
		req, _ := http.NewRequest(http.MethodGet, "http://x/", nil)
		req.Header.Set("X-User-Id", "user-12345")
		c := pickCtx{targets: ts, now: 1, tried: 1}
		if n := testing.AllocsPerRun(100, func() { bal.pick(req, c) }); n != 0 {
			t.Errorf("%s: %v allocations per pick, want 0", name, n)
		}
	}
}
