package upstream

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/portico-gw/portico/internal/config"
)

func TestBreakerOpensFailsFastHalfOpensAndCloses(t *testing.T) {
	clock := newFakeClock()
	env := newEnv(t, clock)
	s := newCounting(t)
	s.status.Store(500)
	up := &config.Upstream{Targets: targets(s.URL), Retries: ptr(0),
		CircuitBreaker: &config.CircuitBreaker{FailureRatio: 0.5, MinRequests: 10, OpenFor: config.Duration(10 * time.Second)}}
	p := env.apply(t, up)
	gauge := env.reg.m.breakerOpen.WithLabelValues("u")

	for i := range 10 {
		if status, _, err := send(p, http.MethodGet, ""); err != nil || status != 500 {
			t.Fatalf("request %d: status %d err %v", i, status, err)
		}
	}
	// 10 requests, all failed: open.
	for range 5 {
		if _, _, err := send(p, http.MethodGet, ""); problemCode(err) != "breaker_open" {
			t.Fatalf("err %v, want breaker_open", err)
		}
	}
	if s.hits.Load() != 10 {
		t.Fatalf("upstream saw %d requests while open, want 10", s.hits.Load())
	}
	if testutil.ToFloat64(gauge) != 1 || statusOf(t, env.reg, "u").Breaker != "open" {
		t.Fatalf("breaker gauge %v state %q", testutil.ToFloat64(gauge), statusOf(t, env.reg, "u").Breaker)
	}

	// After open_for, one probe passes; it fails: open again, for open_for.
	clock.Advance(10 * time.Second)
	if status, _, _ := send(p, http.MethodGet, ""); status != 500 {
		t.Fatalf("probe status %d, want 500 from upstream", status)
	}
	if _, _, err := send(p, http.MethodGet, ""); problemCode(err) != "breaker_open" {
		t.Fatalf("after failed probe: err %v, want breaker_open", err)
	}
	clock.Advance(9 * time.Second)
	if _, _, err := send(p, http.MethodGet, ""); problemCode(err) != "breaker_open" {
		t.Fatalf("before open_for elapsed again: err %v, want breaker_open", err)
	}
	if s.hits.Load() != 11 {
		t.Fatalf("upstream saw %d requests, want 11 (one probe)", s.hits.Load())
	}

	// The upstream recovers; the next probe closes the breaker.
	s.status.Store(200)
	clock.Advance(time.Second)
	if status, _, err := send(p, http.MethodGet, ""); err != nil || status != 200 {
		t.Fatalf("probe: status %d err %v", status, err)
	}
	for range 5 {
		if status, _, err := send(p, http.MethodGet, ""); err != nil || status != 200 {
			t.Fatalf("closed: status %d err %v", status, err)
		}
	}
	if testutil.ToFloat64(gauge) != 0 || statusOf(t, env.reg, "u").Breaker != "closed" {
		t.Fatal("breaker not closed")
	}
}

func TestBreakerHalfOpenAdmitsOneProbe(t *testing.T) {
	b := newBreaker(breakerConfig{ratio: 0.5, minReq: 2, openFor: 100}, testGauge(), slog.New(slog.DiscardHandler))
	b.record(0, outcomeFailure, false)
	b.record(0, outcomeFailure, false)
	if ok, _ := b.allow(50); ok {
		t.Fatal("open breaker admitted a request")
	}
	ok, probe := b.allow(100)
	if !ok || !probe {
		t.Fatal("no probe after open_for")
	}
	if ok, _ := b.allow(101); ok {
		t.Fatal("second concurrent probe admitted")
	}
	// A probe abandoned by its client frees the slot without a verdict.
	b.record(102, outcomeNeutral, true)
	if ok, probe := b.allow(103); !ok || !probe {
		t.Fatal("slot not freed after an abandoned probe")
	}
}

func TestBreakerIgnoresBelowMinRequestsAndRatio(t *testing.T) {
	tests := []struct {
		name          string
		fails, succes int
		wantOpen      bool
	}{
		{"below min_requests", 9, 0, false},
		{"ratio below", 4, 6, false},
		{"ratio reached", 5, 5, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := newBreaker(breakerConfig{ratio: 0.5, minReq: 10, openFor: 100}, testGauge(), slog.New(slog.DiscardHandler))
			for range tc.succes {
				b.record(1, outcomeSuccess, false)
			}
			for range tc.fails {
				b.record(1, outcomeFailure, false)
			}
			if open := breakerState(b.state.Load()) == stateOpen; open != tc.wantOpen {
				t.Fatalf("open %v, want %v", open, tc.wantOpen)
			}
		})
	}
	t.Run("old failures age out", func(t *testing.T) {
		b := newBreaker(breakerConfig{ratio: 0.5, minReq: 10, openFor: 100}, testGauge(), slog.New(slog.DiscardHandler))
		for range 9 {
			b.record(0, outcomeFailure, false)
		}
		// 11 s later the nine failures left the 10 s window.
		b.record(int64(11*time.Second), outcomeFailure, false)
		if breakerState(b.state.Load()) != stateClosed {
			t.Fatal("breaker opened on failures outside the window")
		}
	})
}

func TestActiveHealthCheck(t *testing.T) {
	env := newEnv(t, nil)
	var down atomic.Bool
	var checks atomic.Int64
	flaky := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			checks.Add(1)
			if down.Load() {
				w.WriteHeader(http.StatusServiceUnavailable)
			}
			return
		}
		w.WriteHeader(299)
	}))
	defer flaky.Close()
	other := newCounting(t)
	hc := &config.HealthCheck{Path: "/healthz", Interval: config.Duration(10 * time.Millisecond),
		Timeout: config.Duration(time.Second), ExpectStatus: 200, UnhealthyThreshold: 2, HealthyThreshold: 2}
	p := env.apply(t, &config.Upstream{Targets: targets(flaky.URL, other.URL), HealthCheck: hc})
	gauge := env.reg.m.healthy.WithLabelValues("u", flaky.URL)

	eventually(t, "first health checks", func() bool { return checks.Load() >= 2 })
	down.Store(true)
	eventually(t, "target marked down", func() bool { return !statusOf(t, env.reg, "u").Targets[0].Healthy })
	if testutil.ToFloat64(gauge) != 0 {
		t.Fatal("healthy gauge still 1")
	}
	other.hits.Store(0)
	for range 20 {
		if status, _, err := send(p, http.MethodGet, ""); err != nil || status != 200 {
			t.Fatalf("status %d err %v: an unhealthy target got traffic", status, err)
		}
	}
	if other.hits.Load() != 20 {
		t.Fatalf("healthy target served %d of 20", other.hits.Load())
	}
	down.Store(false)
	eventually(t, "target marked up", func() bool { return statusOf(t, env.reg, "u").Targets[0].Healthy })
	if testutil.ToFloat64(gauge) != 1 {
		t.Fatal("healthy gauge still 0")
	}
	sawFlaky := false
	for range 10 {
		if status, _, _ := send(p, http.MethodGet, ""); status == 299 {
			sawFlaky = true
		}
	}
	if !sawFlaky {
		t.Fatal("recovered target got no traffic")
	}

	// A reload without the target stops its checks and drops its series.
	env.apply(t, &config.Upstream{Targets: targets(other.URL), HealthCheck: hc})
	if n := testutil.CollectAndCount(env.reg.m.healthy); n != 1 {
		t.Fatalf("%d healthy series after removing a target, want 1", n)
	}
}

func TestAllUnhealthy(t *testing.T) {
	env := newEnv(t, nil)
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			w.WriteHeader(500)
		}
	}))
	defer s.Close()
	for _, tc := range []struct {
		mode     string
		wantCode string
	}{{"fail", "no_healthy_target"}, {"ignore", ""}} {
		t.Run(tc.mode, func(t *testing.T) {
			p := env.apply(t, &config.Upstream{Targets: targets(s.URL), HealthCheck: &config.HealthCheck{
				Path: "/healthz", Interval: config.Duration(10 * time.Millisecond), UnhealthyThreshold: 1,
				AllUnhealthy: tc.mode}})
			eventually(t, "target down", func() bool { return !statusOf(t, env.reg, "u").Targets[0].Healthy })
			status, _, err := send(p, http.MethodGet, "")
			if problemCode(err) != tc.wantCode || (tc.wantCode == "" && status != 200) {
				t.Fatalf("status %d err %v, want code %q", status, err, tc.wantCode)
			}
		})
	}
}

func TestPassiveEjectionDoublesAndCaps(t *testing.T) {
	clock := newFakeClock()
	env := newEnv(t, clock)
	bad, good := newCounting(t), newCounting(t)
	bad.status.Store(500)
	const base = 10 * time.Second
	p := env.apply(t, &config.Upstream{Targets: targets(bad.URL, good.URL), Retries: ptr(0),
		Passive: &config.Passive{ConsecutiveFailures: 3, Ejection: config.Duration(base)}})
	ejectedFor := func() time.Duration {
		s := statusOf(t, env.reg, "u").Targets[0]
		if s.EjectedUntil == nil {
			return 0
		}
		return s.EjectedUntil.Sub(clock.Now())
	}
	// Each round: traffic until the bad target has failed 3 times in a
	// row, then the ejection must last base * 2^(round), capped at 10x.
	want := []time.Duration{base, 2 * base, 4 * base, 8 * base, 10 * base, 10 * base}
	for round, w := range want {
		bad.hits.Store(0)
		for i := 0; bad.hits.Load() < 3; i++ {
			if i > 100 {
				t.Fatalf("round %d: bad target never picked", round)
			}
			send(p, http.MethodGet, "")
		}
		if got := ejectedFor(); got != w {
			t.Fatalf("round %d: ejected for %v, want %v", round, got, w)
		}
		good.hits.Store(0)
		for range 10 {
			send(p, http.MethodGet, "")
		}
		if bad.hits.Load() != 3 || good.hits.Load() != 10 {
			t.Fatalf("round %d: ejected target got traffic (bad %d, good %d)", round, bad.hits.Load(), good.hits.Load())
		}
		clock.Advance(w)
	}
	if got := testutil.ToFloat64(env.reg.m.ejections.WithLabelValues("u", bad.URL)); got != float64(len(want)) {
		t.Fatalf("ejections_total %v, want %d", got, len(want))
	}
	// Long in rotation without ejection: the doubling starts over.
	clock.Advance(10*base + time.Second)
	bad.hits.Store(0)
	for bad.hits.Load() < 3 {
		send(p, http.MethodGet, "")
	}
	if got := ejectedFor(); got != base {
		t.Fatalf("after a quiet period: ejected for %v, want %v", got, base)
	}
}

func TestPassiveNeverEjectsLastTarget(t *testing.T) {
	clock := newFakeClock()
	env := newEnv(t, clock)
	bad := newCounting(t)
	bad.status.Store(502)
	p := env.apply(t, &config.Upstream{Targets: targets(bad.URL), Retries: ptr(0),
		Passive: &config.Passive{ConsecutiveFailures: 2, Ejection: config.Duration(time.Minute)}})
	for range 10 {
		if status, _, err := send(p, http.MethodGet, ""); err != nil || status != 502 {
			t.Fatalf("status %d err %v: the only target must keep getting traffic", status, err)
		}
	}
	if got := testutil.ToFloat64(env.reg.m.ejections.WithLabelValues("u", bad.URL)); got != 0 {
		t.Fatalf("ejections_total %v, want 0", got)
	}
}

func TestApplyKeepsStateAndTransports(t *testing.T) {
	clock := newFakeClock()
	env := newEnv(t, clock)
	s := newCounting(t)
	s.status.Store(500)
	mk := func(connect time.Duration) *config.Upstream {
		return &config.Upstream{Targets: targets(s.URL), Retries: ptr(0), ConnectTimeout: config.Duration(connect),
			CircuitBreaker: &config.CircuitBreaker{FailureRatio: 0.5, MinRequests: 2, OpenFor: config.Duration(time.Minute)}}
	}
	p1 := env.apply(t, mk(time.Second))
	send(p1, http.MethodGet, "")
	send(p1, http.MethodGet, "")
	p2 := env.apply(t, mk(time.Second))
	if p2 == p1 || p2.tr != p1.tr || p2.tr.std != p1.tr.std {
		t.Fatal("same config: the transport must be kept")
	}
	if _, _, err := send(p2, http.MethodGet, ""); problemCode(err) != "breaker_open" {
		t.Fatalf("breaker state lost over Apply: err %v", err)
	}
	p3 := env.apply(t, mk(2*time.Second))
	if p3.tr == p2.tr {
		t.Fatal("changed connect_timeout: want a new transport")
	}
	if _, _, err := send(p3, http.MethodGet, ""); problemCode(err) != "breaker_open" {
		t.Fatalf("breaker state lost over a transport change: err %v", err)
	}
	// The old pool still works while and after the new one is applied.
	if _, _, err := send(p1, http.MethodGet, ""); problemCode(err) != "breaker_open" {
		t.Fatalf("old pool: err %v", err)
	}
	// Removing the upstream drops its state: re-adding starts fresh.
	if _, err := env.reg.Apply(map[string]*config.Upstream{}); err != nil {
		t.Fatal(err)
	}
	if len(env.reg.Snapshot()) != 0 {
		t.Fatal("removed upstream still in snapshot")
	}
	p4 := env.apply(t, mk(time.Second))
	if status, _, err := send(p4, http.MethodGet, ""); err != nil || status != 500 {
		t.Fatalf("re-added upstream: status %d err %v, want a fresh breaker", status, err)
	}
}

func TestApplyRejectsBadConfigAndChangesNothing(t *testing.T) {
	env := newEnv(t, nil)
	s := newCounting(t)
	good := &config.Upstream{Targets: targets(s.URL)}
	env.apply(t, good)
	tests := []struct {
		name string
		up   *config.Upstream
	}{
		{"no targets", &config.Upstream{}},
		{"bad scheme", &config.Upstream{Targets: targets("ftp://x")}},
		{"no host", &config.Upstream{Targets: targets("http://")}},
		{"duplicate", &config.Upstream{Targets: targets(s.URL, s.URL)}},
		{"unknown balancer", &config.Upstream{Targets: targets(s.URL), Balance: "fastest"}},
		{"bad hash key", &config.Upstream{Targets: targets(s.URL), Balance: "consistent_hash", HashKey: "cookie:x"}},
		{"missing ca", &config.Upstream{Targets: targets(s.URL), TLS: &config.UpstreamTLS{CA: "/nonexistent/ca.pem"}}},
		{"cert without key", &config.Upstream{Targets: targets(s.URL), TLS: &config.UpstreamTLS{Cert: "/x"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := env.reg.Apply(map[string]*config.Upstream{"u": good, "bad": tc.up})
			if err == nil {
				t.Fatal("want an error")
			}
			t.Log(err)
			if snap := env.reg.Snapshot(); len(snap) != 1 || snap[0].Name != "u" {
				t.Fatalf("a failed Apply changed the registry: %+v", snap)
			}
		})
	}
}

// TestApplyConcurrentWithTraffic reloads many times while requests flow
// through whichever pool is current; under -race this checks that Apply
// never writes what pools read, and no request fails because of a reload.
func TestApplyConcurrentWithTraffic(t *testing.T) {
	env := newEnv(t, nil)
	a, b := newCounting(t), newCounting(t)
	configs := []*config.Upstream{
		{Targets: targets(a.URL, b.URL)},
		{Targets: targets(a.URL), ConnectTimeout: config.Duration(time.Second)},
		{Targets: targets(b.URL, a.URL), Balance: "least_request",
			HealthCheck: &config.HealthCheck{Path: "/healthz", Interval: config.Duration(5 * time.Millisecond)}},
		{Targets: targets(a.URL, b.URL), Balance: "consistent_hash", HashKey: "header:X-User-Id",
			CircuitBreaker: &config.CircuitBreaker{FailureRatio: 0.5, MinRequests: 10, OpenFor: config.Duration(time.Second)},
			Passive:        &config.Passive{ConsecutiveFailures: 3, Ejection: config.Duration(time.Second)}},
	}
	var cur atomic.Pointer[Pool]
	cur.Store(env.apply(t, configs[0]))
	stop := make(chan struct{})
	var failed, sent atomic.Int64
	done := make(chan struct{})
	for range 4 {
		go func() {
			defer func() { done <- struct{}{} }()
			for {
				select {
				case <-stop:
					return
				default:
				}
				sent.Add(1)
				if status, _, err := send(cur.Load(), http.MethodGet, ""); err != nil || status != 200 {
					failed.Add(1)
				}
			}
		}()
	}
	for i := range 60 {
		cur.Store(env.apply(t, configs[i%len(configs)]))
		_ = env.reg.Snapshot()
	}
	close(stop)
	for range 4 {
		<-done
	}
	if failed.Load() != 0 {
		t.Fatalf("%d of %d requests failed during reloads", failed.Load(), sent.Load())
	}
}
