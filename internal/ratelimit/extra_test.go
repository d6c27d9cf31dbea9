package ratelimit

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/portico-gw/portico/internal/config"
	"github.com/portico-gw/portico/internal/ratelimit/algo"
	"github.com/portico-gw/portico/internal/reqctx"
)

// TestRateLimitAcrossPhases: the RateLimit field names the policy with the
// least remaining over both phases.
func TestRateLimitAcrossPhases(t *testing.T) {
	e := newEnv(t, envOpt{policies: map[string]*config.Policy{
		"per-ip":   pol("fixed_window", 3, time.Minute, "ip"),
		"per-user": pol("fixed_window", 10, time.Minute, "claim:sub"),
	}, route: []string{"per-ip", "per-user"}})
	r := e.do("Test-Sub", "alice")
	if name, rem, _ := rateLimitOf(t, r.header); name != "per-ip" || rem != 2 {
		t.Fatalf("RateLimit %s r=%d, want per-ip r=2 (kept over per-user's 9)", name, rem)
	}
	e2 := newEnv(t, envOpt{policies: map[string]*config.Policy{
		"per-ip":   pol("fixed_window", 30, time.Minute, "ip"),
		"per-user": pol("fixed_window", 2, time.Minute, "claim:sub"),
	}, route: []string{"per-ip", "per-user"}})
	r = e2.do("Test-Sub", "alice")
	if name, rem, _ := rateLimitOf(t, r.header); name != "per-user" || rem != 1 {
		t.Fatalf("RateLimit %s r=%d, want per-user r=1", name, rem)
	}
	items, err := parseSFList(r.header.Get("RateLimit-Policy"))
	if err != nil || len(items) != 2 {
		t.Fatalf("RateLimit-Policy %q: %v", r.header.Get("RateLimit-Policy"), err)
	}
}

// TestCostAboveOverrideLimit: an override below the policy's cost makes the
// request impossible: 429 without Retry-After.
func TestCostAboveOverrideLimit(t *testing.T) {
	p := pol("fixed_window", 10, time.Minute, "consumer")
	p.Cost = 2
	p.Overrides = map[string]*config.PolicyOverride{"tiny": {Limit: 1}}
	e := newEnv(t, envOpt{policies: map[string]*config.Policy{"p": p}, route: []string{"p"}})
	r := e.do("Test-Consumer", "tiny")
	if r.code != 429 || r.header.Get("Retry-After") != "" || !strings.Contains(r.body, "costs more") {
		t.Fatalf("%d Retry-After %q body %s", r.code, r.header.Get("Retry-After"), r.body)
	}
	if r := e.do("Test-Consumer", "other"); r.code != 200 {
		t.Fatalf("other consumer: %d", r.code)
	}
}

func TestLocalParams(t *testing.T) {
	cases := []struct {
		in   algo.Params
		n    int
		want algo.Params
	}{
		{algo.Params{Kind: algo.FixedWindow, Limit: 100, Window: sec}, 1, algo.Params{Kind: algo.FixedWindow, Limit: 100, Window: sec}},
		{algo.Params{Kind: algo.FixedWindow, Limit: 100, Window: sec}, 3, algo.Params{Kind: algo.FixedWindow, Limit: 34, Window: sec}},
		{algo.Params{Kind: algo.SlidingWindowLog, Limit: 5, Window: sec}, 50, algo.Params{Kind: algo.SlidingWindowLog, Limit: 1, Window: sec}},
		// Buckets: burst and rate both divided.
		{algo.Params{Kind: algo.TokenBucket, Limit: 100, Window: 10_000}, 4, algo.Params{Kind: algo.TokenBucket, Limit: 25, Window: 40_000}},
		// Never beyond algo's bounds.
		{algo.Params{Kind: algo.TokenBucket, Limit: 1 << 20, Window: 1 << 30}, 1000, algo.Params{Kind: algo.TokenBucket, Limit: 1049, Window: algo.MaxProduct / 1049}},
	}
	for _, c := range cases {
		got := localParams(c.in, c.n)
		if got != c.want {
			t.Errorf("localParams(%+v, %d) = %+v, want %+v", c.in, c.n, got, c.want)
		}
		if err := got.Validate(); err != nil {
			t.Errorf("localParams(%+v, %d) invalid: %v", c.in, c.n, err)
		}
	}
}

func TestNegCacheBounded(t *testing.T) {
	c := newNegCache()
	// Fill one shard (keys congruent mod negShards) beyond its bound.
	for i := range negPerShard + 10 {
		c.put(uint64(i*negShards), 1000, 1, 0)
	}
	if n := len(c.shards[0].m); n > negPerShard {
		t.Fatalf("shard holds %d entries, bound %d", n, negPerShard)
	}
	// Once they expire, new entries fit again.
	c.put(uint64((negPerShard+20)*negShards), 5000, 1, 1000)
	if _, _, ok := c.get(uint64((negPerShard+20)*negShards), 1001); !ok {
		t.Fatal("entry not cached after expired ones were dropped")
	}
	if _, _, ok := c.get(0, 1000); ok {
		t.Fatal("expired entry answered")
	}
	c.put(7, 5000, 1, 0)
	c.invalidate()
	if _, _, ok := c.get(7, 1); ok {
		t.Fatal("entry survived invalidation")
	}
}

// TestPreAuthHeaderOnly: a route whose policies are all post-auth still
// advertises them before auth (so a 401 carries RateLimit-Policy).
func TestPreAuthHeaderOnly(t *testing.T) {
	svc, err := NewService(config.RateLimits{Policies: map[string]*config.Policy{
		"per-user": pol("fixed_window", 5, time.Minute, "claim:sub"),
	}}, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	mw, err := svc.Middleware("r", []string{"per-user"}, PreAuth)
	if err != nil {
		t.Fatal(err)
	}
	unauthorized := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(401) })
	w := httptest.NewRecorder()
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	r = r.WithContext(reqctx.With(r.Context(), &reqctx.Info{ClientIP: netip.MustParseAddr("192.0.2.9")}))
	mw(unauthorized).ServeHTTP(w, r)
	if w.Code != 401 || w.Header().Get("RateLimit-Policy") != `"per-user";q=5;w=60` {
		t.Fatalf("%d %q", w.Code, w.Header().Get("RateLimit-Policy"))
	}
}

func FuzzParseKey(f *testing.F) {
	for _, s := range []string{"ip", "header:X-Tenant+ip", "claim:sub", "consumer+route", "global", "ip+", "header:", "+"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, expr string) {
		k, err := ParseKey(expr)
		if err != nil {
			return
		}
		// The normalized text parses to itself.
		k2, err := ParseKey(k.Text)
		if err != nil || k2.Text != k.Text || k2.Phase() != k.Phase() {
			t.Fatalf("%q -> %q -> %v %v", expr, k.Text, k2, err)
		}
	})
}

// TestRetryAfterProperty: for every algorithm, on random traffic, each 429
// carries Retry-After >= t of its RateLimit field, RateLimit-Policy and
// RateLimit parse as RFC 9651 lists with r >= 0, and a retry after
// Retry-After seconds is admitted.
func TestRetryAfterProperty(t *testing.T) {
	policies := map[string]*config.Policy{
		"fixed_window":           pol("fixed_window", 5, 10*time.Second, "ip"),
		"sliding_window_counter": pol("sliding_window_counter", 5, 10*time.Second, "ip"),
		"sliding_window_log":     pol("sliding_window_log", 5, 10*time.Second, "ip"),
		"token_bucket":           {Algorithm: "token_bucket", Rate: 1, Per: config.Duration(2 * time.Second), Burst: 5, Key: "ip", Cost: 1},
		"leaky_bucket": {Algorithm: "leaky_bucket", Rate: 2, Per: config.Duration(time.Second), Burst: 2,
			MaxDelay: config.Duration(time.Second), Key: "ip", Cost: 1},
	}
	for name, p := range policies {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, envOpt{policies: map[string]*config.Policy{name: p}, route: []string{name},
				wait: func(context.Context, time.Duration) error { return nil }})
			rng := rand.New(rand.NewPCG(5, uint64(len(name))))
			limited := 0
			for i := range 400 {
				e.clock.Advance(time.Duration(rng.Int64N(int64(700 * time.Millisecond))))
				r := e.do()
				items, err := parseSFList(r.header.Get("RateLimit-Policy"))
				if err != nil || len(items) != 1 || items[0].params["q"] < 1 || items[0].params["w"] < 1 {
					t.Fatalf("request %d: RateLimit-Policy %q: %v", i, r.header.Get("RateLimit-Policy"), err)
				}
				_, _, tsec := rateLimitOf(t, r.header)
				if r.code == 200 {
					continue
				}
				if r.code != 429 {
					t.Fatalf("request %d: status %d", i, r.code)
				}
				limited++
				ra, err := strconv.ParseInt(r.header.Get("Retry-After"), 10, 64)
				if err != nil || ra < 1 || ra < tsec {
					t.Fatalf("request %d: Retry-After %q, t=%d", i, r.header.Get("Retry-After"), tsec)
				}
				e.clock.Advance(time.Duration(ra) * time.Second)
				if r := e.do(); r.code != 200 {
					t.Fatalf("request %d: still %d after Retry-After %ds", i, r.code, ra)
				}
			}
			if limited == 0 {
				t.Fatal("traffic never hit the limit; the test tests nothing")
			}
		})
	}
}

// TestStaleClockUnderContention: decisions with times jumping back and
// forth inside a 100ms span, from 8 goroutines, never admit more than the
// burst plus what 100ms earns (golang/go#71360 admitted 5000x).
func TestStaleClockUnderContention(t *testing.T) {
	m := NewMemory(MemoryConfig{})
	params := map[string]algo.Params{
		"token":   {Kind: algo.TokenBucket, Limit: 100, Window: 10_000},
		"fixed":   {Kind: algo.FixedWindow, Limit: 100, Window: 60 * sec},
		"counter": {Kind: algo.SlidingWindowCounter, Limit: 100, Window: 60 * sec},
		"log":     {Kind: algo.SlidingWindowLog, Limit: 100, Window: 60 * sec},
	}
	for name, p := range params {
		t.Run(name, func(t *testing.T) {
			checks := []Check{{Policy: name, Params: p, Cost: 1}}
			var admitted atomic.Int64
			var wg sync.WaitGroup
			for g := range 8 {
				wg.Go(func() {
					rng := rand.New(rand.NewPCG(uint64(g), 99))
					out := make([]algo.Decision, 1)
					for range 2000 {
						now := t0 + rng.Int64N(100_000)
						if err := m.DecideAt(now, "hot", checks, out); err != nil {
							t.Error(err)
							return
						}
						if out[0].Allowed {
							admitted.Add(1)
						}
					}
				})
			}
			wg.Wait()
			limit := int64(100)
			if p.Kind == algo.TokenBucket {
				limit += 100_000 / p.Window // what the 100ms span earns
			}
			if n := admitted.Load(); n > limit || n < 100 {
				t.Fatalf("admitted %d, want 100..%d", n, limit)
			}
		})
	}
}

// TestKeySprayKeepsThrottledKey: a spray of many distinct subjects keeps the
// store within its bound, and a key throttled for an hour stays throttled
// however much the spray churns the store (eviction never frees it).
func TestKeySprayKeepsThrottledKey(t *testing.T) {
	m := NewMemory(MemoryConfig{MaxKeys: 256 * 8})
	victim := []Check{{Policy: "hourly", Params: algo.Params{Kind: algo.FixedWindow, Limit: 1, Window: 3600 * sec}, Cost: 1}}
	spray := []Check{{Policy: "per-second", Params: algo.Params{Kind: algo.TokenBucket, Limit: 1, Window: sec}, Cost: 1}}
	out := make([]algo.Decision, 1)
	if err := m.DecideAt(t0, "victim", victim, out); err != nil || !out[0].Allowed {
		t.Fatalf("victim's first request: %v %+v", err, out[0])
	}
	refused := 0
	for i := range 100_000 {
		now := t0 + int64(i)*100 // 10k new subjects a second
		err := m.DecideAt(now, "spray-"+strconv.Itoa(i), spray, out)
		if errors.Is(err, ErrStoreFull) {
			refused++
		} else if err != nil {
			t.Fatal(err)
		}
		if i%10_000 == 0 {
			if n := m.Len(); n > 256*8 {
				t.Fatalf("after %d subjects the store holds %d keys, bound %d", i, n, 256*8)
			}
			if err := m.DecideAt(now, "victim", victim, out); err != nil || out[0].Allowed {
				t.Fatalf("after %d subjects the victim was admitted again (err %v)", i, err)
			}
		}
	}
	t.Logf("%d of 100000 spray subjects refused while shards were full of active keys", refused)
}
