package upstream

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/portico-gw/portico/internal/config"
)

// probed is a target whose health endpoints (/healthz and /ready) answer
// with the status the test sets and count the probes; other paths answer
// status with "from <host>".
type probed struct {
	*httptest.Server
	health atomic.Int64
	probes atomic.Int64 // on either path
	ready  atomic.Int64 // on /ready
	status atomic.Int64
	hits   atomic.Int64
}

func newProbed(t *testing.T) *probed {
	t.Helper()
	p := &probed{}
	p.health.Store(http.StatusOK)
	p.status.Store(http.StatusOK)
	p.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" || r.URL.Path == "/ready" {
			p.probes.Add(1)
			if r.URL.Path == "/ready" {
				p.ready.Add(1)
			}
			w.WriteHeader(int(p.health.Load()))
			return
		}
		p.hits.Add(1)
		w.WriteHeader(int(p.status.Load()))
		_, _ = w.Write([]byte("from " + r.Host))
	}))
	t.Cleanup(p.Close)
	return p
}

func (p *probed) host() string { return strings.TrimPrefix(p.URL, "http://") }

// series names a family and labels (name, value pairs) for checkSeries.
type series struct {
	name   string
	labels []string
}

// checkSeries fails t when any of ss is (want false) or is not (want true)
// exported; the error ends with when.
func checkSeries(t *testing.T, env *testEnv, want bool, when string, ss []series) {
	t.Helper()
	for _, s := range ss {
		if hasSeries(t, env, s.name, s.labels...) != want {
			t.Errorf("series %s%v %s", s.name, s.labels, when)
		}
	}
}

// hasSeries reports whether env's Prometheus registry exports a series of
// the family name whose labels include want (name, value pairs).
func hasSeries(t *testing.T, env *testEnv, name string, want ...string) bool {
	t.Helper()
	mfs, err := env.prom.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, lp := range m.GetLabel() {
				got[lp.GetName()] = lp.GetValue()
			}
			for i := 0; i+1 < len(want); i += 2 {
				if got[want[i]] != want[i+1] {
					continue series
				}
			}
			return true
		}
	}
	return false
}

// breakerCfg reads the config of the breaker in force for name.
func breakerCfg(t *testing.T, r *Registry, name string) (breakerConfig, *breaker) {
	t.Helper()
	r.mu.Lock()
	b := r.ups[name].breaker
	r.mu.Unlock()
	if b == nil {
		t.Fatalf("upstream %q has no breaker", name)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.cfg, b
}

func snapshotNames(r *Registry) []string {
	var names []string
	for _, s := range r.Snapshot() {
		names = append(names, s.Name)
	}
	return names
}

func targetURLs(s UpstreamStatus) []string {
	var urls []string
	for _, t := range s.Targets {
		urls = append(urls, t.URL)
	}
	return urls
}

// waitProbes waits until p was probed n more times than now.
func waitProbes(t *testing.T, p *probed, n int64) {
	t.Helper()
	from := p.probes.Load()
	eventually(t, "health probes of "+p.URL, func() bool { return p.probes.Load() >= from+n })
}

// reloadFixture is a running config (upstreams a: a1, a2 and b: b1, all
// health-checked on /healthz, a with a breaker) and a plan for the next
// one: a moves to a2, n1 with another breaker config, connect_timeout and
// health check path (/ready), b goes, c (c1, with a breaker) comes.
type reloadFixture struct {
	env            *testEnv
	a1, a2, b1     *probed
	n1, c1         *probed
	running        map[string]*Pool
	plan           *Plan
	oldBreakerCfg  breakerConfig
	oldBreaker     *breaker
	nextBreakerCfg breakerConfig
}

func newReloadFixture(t *testing.T) *reloadFixture {
	t.Helper()
	f := &reloadFixture{env: newEnv(t, nil)}
	f.a1, f.a2, f.b1, f.n1, f.c1 = newProbed(t), newProbed(t), newProbed(t), newProbed(t), newProbed(t)
	hc := func(path string) *config.HealthCheck {
		return &config.HealthCheck{Path: path, Interval: config.Duration(20 * time.Millisecond),
			UnhealthyThreshold: 1, HealthyThreshold: 1}
	}
	running, err := f.env.reg.Apply(map[string]*config.Upstream{
		"a": {Targets: targets(f.a1.URL, f.a2.URL), Retries: ptr(0), HealthCheck: hc("/healthz"),
			CircuitBreaker: &config.CircuitBreaker{FailureRatio: 0.5, MinRequests: 5, OpenFor: config.Duration(time.Minute)}},
		"b": {Targets: targets(f.b1.URL), HealthCheck: hc("/healthz")},
	})
	if err != nil {
		t.Fatal(err)
	}
	f.running = running
	f.oldBreakerCfg, f.oldBreaker = breakerCfg(t, f.env.reg, "a")
	f.nextBreakerCfg = breakerConfig{ratio: 0.9, minReq: 50, openFor: int64(time.Second)}
	f.plan, err = f.env.reg.Prepare(map[string]*config.Upstream{
		"a": {Targets: targets(f.a2.URL, f.n1.URL), Retries: ptr(0), HealthCheck: hc("/ready"),
			ConnectTimeout: config.Duration(3 * time.Second),
			CircuitBreaker: &config.CircuitBreaker{FailureRatio: 0.9, MinRequests: 50, OpenFor: config.Duration(time.Second)}},
		"c": {Targets: targets(f.c1.URL), Retries: ptr(0), HealthCheck: hc("/ready"),
			CircuitBreaker: &config.CircuitBreaker{FailureRatio: 0.5, MinRequests: 2, OpenFor: config.Duration(time.Minute)}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// TestPreparedPlanChangesNothing is a refused reload: a plan prepared and
// never committed must leave the running config's upstreams, targets,
// health checkers, metrics, breaker and transports as they were.
func TestPreparedPlanChangesNothing(t *testing.T) {
	f := newReloadFixture(t)
	env := f.env

	if got := snapshotNames(env.reg); strings.Join(got, ",") != "a,b" {
		t.Fatalf("snapshot upstreams %v, want a,b", got)
	}
	if got := targetURLs(statusOf(t, env.reg, "a")); strings.Join(got, ",") != f.a1.URL+","+f.a2.URL {
		t.Fatalf("a's targets %v, want the running a1, a2", got)
	}
	if got := targetURLs(statusOf(t, env.reg, "b")); len(got) != 1 || got[0] != f.b1.URL {
		t.Fatalf("b's targets %v, want b1", got)
	}

	// The running targets are still checked, a1 (which the plan drops)
	// and b1 (whose upstream the plan drops) included.
	for _, c := range []struct {
		up string
		i  int
		p  *probed
	}{{"a", 0, f.a1}, {"b", 0, f.b1}} {
		target := f.running[c.up].targets[c.i]
		c.p.health.Store(http.StatusServiceUnavailable)
		// The checker stores the state before it sets the gauge.
		eventually(t, c.p.URL+" marked down", func() bool {
			return !target.healthy.Load() && !statusOf(t, env.reg, c.up).Targets[c.i].Healthy &&
				testutil.ToFloat64(env.reg.m.healthy.WithLabelValues(c.up, c.p.URL)) == 0
		})
		c.p.health.Store(http.StatusOK)
		eventually(t, c.p.URL+" marked up", func() bool { return target.healthy.Load() })
	}
	// Nothing probes the plan's new targets, nor with the plan's settings.
	waitProbes(t, f.a2, 3)
	if n, c := f.n1.probes.Load(), f.c1.probes.Load(); n != 0 || c != 0 {
		t.Fatalf("uncommitted targets probed: n1 %d, c1 %d times", n, c)
	}
	if n := f.a2.ready.Load(); n != 0 {
		t.Fatalf("a2 probed %d times on the plan's /ready before Commit", n)
	}

	// Metrics: b's series stay, the plan's new ones do not exist.
	checkSeries(t, env, true, "gone before Commit", []series{
		{"portico_upstream_healthy", []string{"upstream", "b", "target", f.b1.URL}},
		{"portico_upstream_healthy", []string{"upstream", "a", "target", f.a1.URL}},
		{"portico_upstream_retries_total", []string{"upstream", "b"}},
		{"portico_upstream_breaker_open", []string{"upstream", "a"}},
	})
	checkSeries(t, env, false, "exported before Commit", []series{
		{"portico_upstream_healthy", []string{"target", f.n1.URL}},
		{"portico_upstream_ejections_total", []string{"target", f.n1.URL}},
		{"portico_upstream_requests_total", []string{"target", f.n1.URL}},
		{"portico_upstream_healthy", []string{"upstream", "c"}},
		{"portico_upstream_retries_total", []string{"upstream", "c"}},
		{"portico_upstream_duration_seconds", []string{"upstream", "c"}},
		{"portico_upstream_breaker_open", []string{"upstream", "c"}},
	})

	// Breaker and transport of the running config are in force.
	if cfg, b := breakerCfg(t, env.reg, "a"); cfg != f.oldBreakerCfg || b != f.oldBreaker {
		t.Fatalf("a's breaker %p %+v, want the running %p %+v", b, cfg, f.oldBreaker, f.oldBreakerCfg)
	}
	env.reg.mu.Lock()
	tr := env.reg.ups["a"].tr
	env.reg.mu.Unlock()
	if tr != f.running["a"].tr || f.plan.Pools()["a"].tr == tr {
		t.Fatal("a's transport: want the running one in force and a new one in the plan")
	}

	// The running pools serve as before.
	if status, body, err := send(f.running["b"], http.MethodGet, ""); err != nil || status != 200 || body != "from "+f.b1.host() {
		t.Fatalf("running pool b: status %d body %q err %v", status, body, err)
	}
}

// TestCommitAppliesPlan commits the plan of TestPreparedPlanChangesNothing:
// b and a1 go with their checkers and series, n1 and c come with theirs,
// a's breaker takes the new config and keeps its state.
func TestCommitAppliesPlan(t *testing.T) {
	f := newReloadFixture(t)
	env := f.env
	pools := f.plan.Pools()
	if err := f.plan.Commit(); err != nil {
		t.Fatal(err)
	}

	if got := snapshotNames(env.reg); strings.Join(got, ",") != "a,c" {
		t.Fatalf("snapshot upstreams %v, want a,c", got)
	}
	if got := targetURLs(statusOf(t, env.reg, "a")); strings.Join(got, ",") != f.a2.URL+","+f.n1.URL {
		t.Fatalf("a's targets %v, want a2, n1", got)
	}

	// n1 and c1 are checked now; a1 and b1 no longer.
	n1 := pools["a"].targets[1]
	f.n1.health.Store(http.StatusServiceUnavailable)
	eventually(t, "n1 marked down", func() bool {
		return !n1.healthy.Load() && !statusOf(t, env.reg, "a").Targets[1].Healthy &&
			testutil.ToFloat64(env.reg.m.healthy.WithLabelValues("a", f.n1.URL)) == 0
	})
	f.n1.health.Store(http.StatusOK)
	eventually(t, "n1 marked up", func() bool { return n1.healthy.Load() })
	waitProbes(t, f.c1, 1)
	eventually(t, "a2 probed with the new settings", func() bool { return f.a2.ready.Load() > 0 })
	a1, b1 := f.a1.probes.Load(), f.b1.probes.Load()
	waitProbes(t, f.n1, 3)
	if f.a1.probes.Load() != a1 || f.b1.probes.Load() != b1 {
		t.Fatalf("dropped targets still probed: a1 %d -> %d, b1 %d -> %d",
			a1, f.a1.probes.Load(), b1, f.b1.probes.Load())
	}

	checkSeries(t, env, true, "not exported after Commit", []series{
		{"portico_upstream_healthy", []string{"upstream", "a", "target", f.n1.URL}},
		{"portico_upstream_ejections_total", []string{"upstream", "a", "target", f.n1.URL}},
		{"portico_upstream_healthy", []string{"upstream", "c", "target", f.c1.URL}},
		{"portico_upstream_retries_total", []string{"upstream", "c"}},
		{"portico_upstream_breaker_open", []string{"upstream", "c"}},
	})
	checkSeries(t, env, false, "still exported after Commit", []series{
		{"portico_upstream_healthy", []string{"upstream", "b"}},
		{"portico_upstream_retries_total", []string{"upstream", "b"}},
		{"portico_upstream_healthy", []string{"target", f.a1.URL}},
		{"portico_upstream_ejections_total", []string{"target", f.a1.URL}},
	})

	// a keeps its breaker object (and state) under the new config.
	if cfg, b := breakerCfg(t, env.reg, "a"); cfg != f.nextBreakerCfg || b != f.oldBreaker {
		t.Fatalf("a's breaker %p %+v, want %p with %+v", b, cfg, f.oldBreaker, f.nextBreakerCfg)
	}
	env.reg.mu.Lock()
	tr := env.reg.ups["a"].tr
	env.reg.mu.Unlock()
	if tr != pools["a"].tr {
		t.Fatal("a's transport in force is not the one the plan's pool uses")
	}

	if err := f.plan.Commit(); err == nil || !strings.Contains(err.Error(), "already committed") {
		t.Fatalf("second Commit: %v, want already committed", err)
	}
}

// TestPlanPoolsServeAfterCommit checks that the pools Prepare returned are
// the ones in force after Commit: a request reaches the new target and
// shows in the registry's view of it, and the breaker a new upstream's pool
// trips is the one Snapshot and the metrics report.
func TestPlanPoolsServeAfterCommit(t *testing.T) {
	env := newEnv(t, nil)
	old, next, c1 := newProbed(t), newProbed(t), newProbed(t)
	c1.status.Store(http.StatusInternalServerError)
	if _, err := env.reg.Apply(map[string]*config.Upstream{"a": {Targets: targets(old.URL)}}); err != nil {
		t.Fatal(err)
	}
	plan, err := env.reg.Prepare(map[string]*config.Upstream{
		"a": {Targets: targets(next.URL)},
		"c": {Targets: targets(c1.URL), Retries: ptr(0),
			CircuitBreaker: &config.CircuitBreaker{FailureRatio: 0.5, MinRequests: 2, OpenFor: config.Duration(time.Minute)}},
	})
	if err != nil {
		t.Fatal(err)
	}
	pools := plan.Pools()
	if err := plan.Commit(); err != nil {
		t.Fatal(err)
	}

	if status, body, err := send(pools["a"], http.MethodGet, ""); err != nil || status != 200 || body != "from "+next.host() {
		t.Fatalf("plan's pool a: status %d body %q err %v, want 200 from the new target", status, body, err)
	}
	if next.hits.Load() != 1 || old.hits.Load() != 0 {
		t.Fatalf("hits: new target %d, old %d", next.hits.Load(), old.hits.Load())
	}
	if s := statusOf(t, env.reg, "a"); s.Targets[0].Requests != 1 || s.RequestsRecent != 1 {
		t.Fatalf("a's status %+v: the request is not on the registry's target", s)
	}
	if got := testutil.ToFloat64(env.reg.m.requests.WithLabelValues("a", next.URL, "200")); got != 1 {
		t.Fatalf(`requests_total{a, new, 200} = %v, want 1`, got)
	}

	for range 2 {
		if status, _, err := send(pools["c"], http.MethodGet, ""); err != nil || status != 500 {
			t.Fatalf("plan's pool c: status %d err %v", status, err)
		}
	}
	if _, _, err := send(pools["c"], http.MethodGet, ""); problemCode(err) != "breaker_open" {
		t.Fatalf("plan's pool c after 2 failures: err %v, want breaker_open", err)
	}
	if s := statusOf(t, env.reg, "c"); s.Breaker != "open" {
		t.Fatalf("c's breaker in the snapshot %q, want open: the pool trips another breaker", s.Breaker)
	}
	if got := testutil.ToFloat64(env.reg.m.breakerOpen.WithLabelValues("c")); got != 1 {
		t.Fatalf("breaker_open{c} = %v, want 1", got)
	}
	if got := testutil.ToFloat64(env.reg.m.requests.WithLabelValues("c", c1.URL, "500")); got != 2 {
		t.Fatalf(`requests_total{c, c1, 500} = %v, want 2`, got)
	}
}

// TestStalePlanCommitFails: once a plan is committed (or Apply ran), every
// plan prepared before it is refused at Commit and changes nothing; so is
// any plan after Close.
func TestStalePlanCommitFails(t *testing.T) {
	env := newEnv(t, nil)
	a, b := newProbed(t), newProbed(t)
	both := map[string]*config.Upstream{"a": {Targets: targets(a.URL)}, "b": {Targets: targets(b.URL)}}
	if _, err := env.reg.Apply(both); err != nil {
		t.Fatal(err)
	}
	onlyA := map[string]*config.Upstream{"a": {Targets: targets(a.URL)}}

	for _, later := range []struct {
		name   string
		commit func() error
	}{
		{"Commit", func() error {
			pl, err := env.reg.Prepare(both)
			if err != nil {
				return err
			}
			return pl.Commit()
		}},
		{"Apply", func() error { _, err := env.reg.Apply(both); return err }},
	} {
		t.Run(later.name, func(t *testing.T) {
			stale, err := env.reg.Prepare(onlyA)
			if err != nil {
				t.Fatal(err)
			}
			if err := later.commit(); err != nil {
				t.Fatal(err)
			}
			if err := stale.Commit(); err == nil || !strings.Contains(err.Error(), "stale") {
				t.Fatalf("Commit of a stale plan: %v, want stale", err)
			}
			if got := snapshotNames(env.reg); strings.Join(got, ",") != "a,b" {
				t.Fatalf("a refused stale plan changed the registry: %v", got)
			}
		})
	}

	pl, err := env.reg.Prepare(onlyA)
	if err != nil {
		t.Fatal(err)
	}
	env.reg.Close()
	if err := pl.Commit(); err == nil {
		t.Fatal("Commit after Close succeeded")
	}
	if _, err := env.reg.Prepare(onlyA); err == nil {
		t.Fatal("Prepare after Close succeeded")
	}
}

// TestPrepareConcurrentWithTraffic prepares plans, drops half of them and
// commits the others while requests flow through the current pools and
// Snapshot runs; under -race this checks that Prepare only reads what
// traffic, checkers and Snapshot share, and that a dropped plan disturbs
// no request.
func TestPrepareConcurrentWithTraffic(t *testing.T) {
	env := newEnv(t, nil)
	a, b := newProbed(t), newProbed(t)
	hc := &config.HealthCheck{Interval: config.Duration(5 * time.Millisecond)}
	configs := []*config.Upstream{
		{Targets: targets(a.URL, b.URL), HealthCheck: hc},
		{Targets: targets(a.URL), ConnectTimeout: config.Duration(time.Second)},
		{Targets: targets(b.URL, a.URL), Balance: "least_request", HealthCheck: hc,
			CircuitBreaker: &config.CircuitBreaker{FailureRatio: 0.5, MinRequests: 10, OpenFor: config.Duration(time.Second)}},
		{Targets: targets(a.URL, b.URL), ConnectTimeout: config.Duration(2 * time.Second),
			Passive: &config.Passive{ConsecutiveFailures: 3, Ejection: config.Duration(time.Second)}},
	}
	var cur atomic.Pointer[Pool]
	cur.Store(env.apply(t, configs[0]))
	stop := make(chan struct{})
	var failed, sent atomic.Int64
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
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
		})
	}
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			_ = env.reg.Snapshot()
		}
	})
	for i := range 80 {
		// A second upstream comes and goes, so fresh upstreams, breakers
		// and targets are prepared too.
		ups := map[string]*config.Upstream{"u": configs[i%len(configs)]}
		if i%3 == 0 {
			ups["v"] = configs[(i+1)%len(configs)]
		}
		pl, err := env.reg.Prepare(ups)
		if err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			continue // a refused reload
		}
		if err := pl.Commit(); err != nil {
			t.Fatal(err)
		}
		cur.Store(pl.Pools()["u"])
	}
	close(stop)
	wg.Wait()
	if failed.Load() != 0 {
		t.Fatalf("%d of %d requests failed during reloads", failed.Load(), sent.Load())
	}
}
