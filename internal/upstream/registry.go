package upstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/portico-gw/portico/internal/config"
)

// Deps are the Registry's dependencies.
type Deps struct {
	// Logger receives health transitions, ejections and breaker changes;
	// nil discards them.
	Logger *slog.Logger
	// Registerer receives the portico_upstream_* collectors once, when the
	// Registry is created; nil keeps them in a private registry. A second
	// Registry on the same Registerer shares the already registered ones.
	Registerer prometheus.Registerer
	// Now is the clock for windows, ejections and the breaker; nil means
	// time.Now. Active health check intervals use real timers.
	Now func() time.Time
}

// Registry holds the upstream state that outlives config reloads. Create one
// per process with NewRegistry; on every config load call Prepare and, once
// the rest of the config compiled too, Commit the Plan (or Apply, which is
// both at once); call Close at shutdown.
type Registry struct {
	log *slog.Logger
	now func() time.Time
	m   *metrics

	// mu guards ups (and what the comments of upstream and target place
	// under it), gen and closed: Prepare reads under it, Commit, Apply and
	// Close write under it, Snapshot reads under it.
	mu  sync.Mutex
	ups map[string]*upstream
	// gen counts commits, so that Commit can tell a plan built on state
	// that another commit changed since.
	gen      uint64
	closed   bool
	checkers sync.WaitGroup
}

// NewRegistry returns an empty Registry and registers its metrics.
func NewRegistry(deps Deps) *Registry {
	log := deps.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	now := deps.Now
	if now == nil {
		now = time.Now
	}
	reg := deps.Registerer
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	return &Registry{log: log, now: now, m: newMetrics(reg, log), ups: map[string]*upstream{}}
}

type metrics struct {
	requests    *prometheus.CounterVec
	duration    *prometheus.HistogramVec
	healthy     *prometheus.GaugeVec
	retries     *prometheus.CounterVec
	breakerOpen *prometheus.GaugeVec
	ejections   *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer, log *slog.Logger) *metrics {
	return &metrics{
		requests: register(reg, log, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "portico_upstream_requests_total",
			Help: "Attempts sent to upstream targets, by status code (\"error\" when no response came).",
		}, []string{"upstream", "target", "code"})),
		duration: register(reg, log, prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "portico_upstream_duration_seconds",
			Help:    "Time from sending an attempt to its response headers (or failure); for a BFF call read in turn, to when the gateway read them.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"upstream"})),
		healthy: register(reg, log, prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "portico_upstream_healthy",
			Help: "1 when the target passes active health checks (or has none), else 0.",
		}, []string{"upstream", "target"})),
		retries: register(reg, log, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "portico_upstream_retries_total",
			Help: "Retried attempts.",
		}, []string{"upstream"})),
		breakerOpen: register(reg, log, prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "portico_upstream_breaker_open",
			Help: "1 while the upstream's circuit breaker is open or half-open, else 0.",
		}, []string{"upstream"})),
		ejections: register(reg, log, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "portico_upstream_ejections_total",
			Help: "Passive ejections of a target after consecutive failures.",
		}, []string{"upstream", "target"})),
	}
}

func register[C prometheus.Collector](reg prometheus.Registerer, log *slog.Logger, c C) C {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
		log.Error("upstream metrics not registered", "err", err)
	}
	return c
}

// upstream is the long-lived state of one named upstream.
type upstream struct {
	name     string
	inflight atomic.Int64
	// budget counts requests (a) and retries (b) over 10 s for retry_budget.
	budget *rolling

	// Fields below are written by Commit under Registry.mu (retryCtr and
	// durObs once, when the upstream is registered); pools copy what they
	// need when built, so traffic reads only retryCtr and durObs, never
	// before Commit.
	targets  map[string]*target
	tr       *transports
	trKey    string
	breaker  *breaker
	retryCtr prometheus.Counter
	durObs   prometheus.Observer
	lastPool *Pool // the latest committed pool, for Snapshot

	// ejectMu guards the targets' ejection bookkeeping.
	ejectMu sync.Mutex
}

// target is the long-lived state of one target URL of an upstream.
type target struct {
	url    string // as configured: the map key and the metrics label
	scheme string // "http" or "https" (h2c:// targets use "http")
	host   string
	h2c    bool

	healthy      atomic.Bool
	ejectedUntil atomic.Int64 // unix ns; 0 or past means not ejected
	consecFail   atomic.Int64
	inflight     atomic.Int64
	win          *rolling // requests (a), failures (b) over the last minute

	// Under upstream.ejectMu.
	ejections    int   // consecutive ejections, for the doubling
	lastEjectEnd int64 // when the latest ejection ended (ns)

	// Active health checking; under Registry.mu.
	checkStop context.CancelFunc
	checkKey  string

	// Set once, by the Commit that registers the target (nil before: a
	// plan never committed exports nothing).
	healthyGauge prometheus.Gauge
	ejectCtr     prometheus.Counter
	errCtr       prometheus.Counter
	upName       string
	reqVec       *prometheus.CounterVec
	codes        [600]atomic.Pointer[prometheus.Counter]
}

func (t *target) counter(status int) prometheus.Counter {
	if status < 100 || status >= len(t.codes) {
		return t.reqVec.WithLabelValues(t.upName, t.url, strconv.Itoa(status))
	}
	if c := t.codes[status].Load(); c != nil {
		return *c
	}
	c := t.reqVec.WithLabelValues(t.upName, t.url, strconv.Itoa(status))
	t.codes[status].Store(&c)
	return c
}

// preparedUpstream is one upstream after validation, before Prepare reads
// the registry.
type preparedUpstream struct {
	name    string
	cfg     *config.Upstream
	targets []parsedTarget
	spec    transportSpec
	hash    hashKey
}

type parsedTarget struct {
	url, scheme, host string
	h2c               bool
	weight            int
}

// Plan is a config's upstreams prepared by Registry.Prepare: its pools are
// built, and nothing of the registry has changed. Commit makes it the
// registry's state; a Plan that is dropped instead leaves nothing behind.
type Plan struct {
	r     *Registry
	gen   uint64 // r.gen when prepared
	ups   []plannedUpstream
	pools map[string]*Pool
	done  bool // committed; under r.mu
}

// plannedUpstream is one upstream of a Plan: the objects its Pool already
// uses and what Commit must change for them to be in force.
type plannedUpstream struct {
	u     *upstream // the registered one, or a fresh one Commit registers
	fresh bool
	// tr, when set, replaces u.tr at Commit (trKey changed, or u is fresh).
	tr    *transports
	trKey string
	// br is the breaker in force after Commit (nil: none): u.breaker with
	// brCfg set at Commit, or a fresh one Commit exports.
	br      *breaker
	brCfg   breakerConfig
	hc      *healthCheck
	targets []*target // u.targets' or fresh ones, which Commit exports
	pool    *Pool
}

// Apply is Prepare followed by Commit, under one hold of the registry's
// lock: it checks ups, changes nothing when a check fails, and otherwise
// makes the registry match ups and returns one Pool per upstream. Pools
// returned by an earlier Apply keep working while it runs and afterwards.
func (r *Registry) Apply(ups map[string]*config.Upstream) (map[string]*Pool, error) {
	prepared, err := check(ups)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	pl, err := r.planLocked(prepared)
	if err != nil {
		return nil, err
	}
	if err := pl.commitLocked(); err != nil {
		return nil, err
	}
	return pl.pools, nil
}

// Prepare checks ups and builds the pools of a new config without touching
// the registry: nothing of the running config changes until Commit.
//
// It first checks everything config validation cannot (target URLs,
// balancer settings, TLS files readable and parseable); the error then
// names every bad upstream. Otherwise it builds one Pool per upstream on
// the state that stays (upstreams and targets by name and URL, with their
// health, ejections, breaker and transports), on fresh objects for what is
// new, and on a fresh transport where connection settings changed. Those
// fresh objects start no goroutine, open no connection and create no
// metric series before Commit, so dropping the Plan is the whole of
// refusing it. Prepare fails on a closed Registry.
//
// Reloads must be serialised: when a Plan is committed (or Apply runs),
// every other Plan prepared before becomes stale and its Commit fails.
func (r *Registry) Prepare(ups map[string]*config.Upstream) (*Plan, error) {
	prepared, err := check(ups)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.planLocked(prepared)
}

// Pools are the pools of the prepared config, by upstream name, in a map
// the caller may keep. They may be wired into handlers before Commit, but
// must not serve requests before it: until then the metric handles of
// fresh targets, upstreams and breakers are unset. After Commit they are
// exactly the pools that serve the new config.
func (p *Plan) Pools() map[string]*Pool { return maps.Clone(p.pools) }

// Commit makes the plan the registry's state: it registers new upstreams,
// applies transport, breaker and health-check changes, starts and stops
// health checkers, drops upstreams and targets the plan no longer has (and
// their metric series), and closes the idle connections of replaced
// transports. Pools of earlier configs keep working, on the state that
// stays; those of upstreams or targets dropped lose their active health
// checks and metric series.
//
// It fails, changing nothing, when the registry is closed, when the plan
// was committed already, or when it is stale: another plan was committed
// (or Apply ran) after it was prepared, so it was built on state that is
// gone. Prepare again then.
func (p *Plan) Commit() error {
	p.r.mu.Lock()
	defer p.r.mu.Unlock()
	return p.commitLocked()
}

// check runs prepare on every upstream and joins the errors.
func check(ups map[string]*config.Upstream) ([]preparedUpstream, error) {
	names := make([]string, 0, len(ups))
	for name := range ups {
		names = append(names, name)
	}
	slices.Sort(names)
	prepared := make([]preparedUpstream, 0, len(names))
	var errs []error
	for _, name := range names {
		p, err := prepare(name, ups[name])
		if err != nil {
			errs = append(errs, fmt.Errorf("upstreams.%s: %w", name, err))
			continue
		}
		prepared = append(prepared, p)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return prepared, nil
}

var errClosed = errors.New("upstream registry is closed")

// planLocked builds a Plan of prepared on the registry's current state,
// which it only reads; r.mu is held.
func (r *Registry) planLocked(prepared []preparedUpstream) (*Plan, error) {
	if r.closed {
		return nil, errClosed
	}
	pl := &Plan{r: r, gen: r.gen, ups: make([]plannedUpstream, len(prepared)),
		pools: make(map[string]*Pool, len(prepared))}
	for i := range prepared {
		pu := &pl.ups[i]
		r.planOne(pu, &prepared[i])
		pl.pools[pu.u.name] = pu.pool
	}
	return pl, nil
}

func (pl *Plan) commitLocked() error {
	r := pl.r
	switch {
	case r.closed:
		return errClosed
	case pl.done:
		return errors.New("upstream plan already committed")
	case pl.gen != r.gen:
		return errors.New("upstream plan is stale: another one was committed after it was prepared")
	}
	pl.done = true
	r.gen++
	keep := make(map[string]bool, len(pl.ups))
	for i := range pl.ups {
		pu := &pl.ups[i]
		keep[pu.u.name] = true
		r.commitOne(pu)
	}
	for name, u := range r.ups {
		if !keep[name] {
			r.dropUpstream(u)
			delete(r.ups, name)
		}
	}
	return nil
}

func prepare(name string, cfg *config.Upstream) (preparedUpstream, error) {
	p := preparedUpstream{name: name, cfg: cfg}
	if cfg == nil {
		return p, errors.New("missing definition")
	}
	if len(cfg.Targets) == 0 {
		return p, errors.New("targets: at least one target is required")
	}
	var errs []error
	seen := map[string]bool{}
	hasH2C := false
	for i, t := range cfg.Targets {
		pt, err := parseTarget(t)
		if err != nil {
			errs = append(errs, fmt.Errorf("targets[%d].url: %w", i, err))
			continue
		}
		if seen[pt.url] {
			errs = append(errs, fmt.Errorf("targets[%d].url: %q listed twice", i, t.URL))
			continue
		}
		seen[pt.url] = true
		hasH2C = hasH2C || pt.h2c
		p.targets = append(p.targets, pt)
	}
	switch cfg.Balance {
	case "", "round_robin", "least_request", "random":
	case "consistent_hash":
		hk, err := parseHashKey(cfg.HashKey)
		if err != nil {
			errs = append(errs, fmt.Errorf("hash_key: %w", err))
		}
		p.hash = hk
	default:
		errs = append(errs, fmt.Errorf("balance: unknown balancer %q", cfg.Balance))
	}
	if hc := cfg.HealthCheck; hc != nil {
		switch hc.AllUnhealthy {
		case "", "fail", "ignore":
		default:
			errs = append(errs, fmt.Errorf("health_check.all_unhealthy: unknown value %q", hc.AllUnhealthy))
		}
	}
	spec, err := loadTransportSpec(cfg, hasH2C)
	if err != nil {
		errs = append(errs, err)
	}
	p.spec = spec
	return p, errors.Join(errs...)
}

func parseTarget(t config.Target) (parsedTarget, error) {
	u, err := url.Parse(t.URL)
	if err != nil {
		return parsedTarget{}, err
	}
	pt := parsedTarget{url: t.URL, host: u.Host, weight: t.Weight}
	if pt.weight <= 0 {
		pt.weight = 1
	}
	switch strings.ToLower(u.Scheme) {
	case "http":
		pt.scheme = "http"
	case "https":
		pt.scheme = "https"
	case "h2c":
		pt.scheme, pt.h2c = "http", true
	default:
		return pt, fmt.Errorf("scheme of %q must be http, https or h2c", t.URL)
	}
	if u.Host == "" {
		return pt, fmt.Errorf("%q has no host", t.URL)
	}
	return pt, nil
}

// planOne fills pu for p: it reads the registry (r.mu is held) and changes
// nothing in it. What is fresh here is reachable only from the plan until
// commitOne registers it.
func (r *Registry) planOne(pu *plannedUpstream, p *preparedUpstream) {
	u := r.ups[p.name]
	if u == nil {
		// retryCtr and durObs are set at Commit: WithLabelValues would
		// export a series now.
		u = &upstream{
			name:    p.name,
			budget:  newRolling(budgetBuckets, budgetBucketWidth),
			targets: map[string]*target{},
		}
		pu.fresh = true
	}
	pu.u = u
	tr := u.tr
	if tr == nil || u.trKey != p.spec.key {
		// A transport opens connections only when used, so one of a plan
		// that is never committed holds none.
		tr = newTransports(p.spec)
		pu.tr, pu.trKey = tr, p.spec.key
	}

	cfg := p.cfg
	if cb := cfg.CircuitBreaker; cb != nil {
		bc := breakerConfig{ratio: cb.FailureRatio, minReq: int64(cb.MinRequests), openFor: int64(cb.OpenFor.D())}
		if bc.ratio <= 0 || bc.ratio > 1 {
			bc.ratio = 0.5
		}
		if bc.minReq <= 0 {
			bc.minReq = 20
		}
		if bc.openFor <= 0 {
			bc.openFor = int64(10 * time.Second)
		}
		pu.brCfg, pu.br = bc, u.breaker
		if pu.br == nil {
			// Its gauge comes at Commit (see breaker.export).
			pu.br = newBreaker(bc, nil, r.log.With("upstream", p.name))
		}
	}

	pu.hc = normaliseHealthCheck(cfg.HealthCheck)
	pu.targets = make([]*target, len(p.targets))
	for i, pt := range p.targets {
		t := u.targets[pt.url]
		if t == nil {
			// Its metric handles come at Commit (see exportTarget).
			t = &target{
				url:    pt.url,
				win:    newRolling(targetBuckets, targetBucketWidth),
				upName: p.name,
				reqVec: r.m.requests,
			}
			// The URL string is the identity, so its parsed parts never
			// change afterwards (pools of older configs read them).
			t.scheme, t.host, t.h2c = pt.scheme, pt.host, pt.h2c
			t.healthy.Store(true)
		}
		pu.targets[i] = t
	}
	pu.pool = newPool(r, u, p, tr, pu.br, pu.targets)
}

// commitOne puts pu in force; r.mu is held and the registry is as planOne
// saw it (Commit checks the generation).
func (r *Registry) commitOne(pu *plannedUpstream) {
	u := pu.u
	if pu.fresh {
		u.retryCtr = r.m.retries.WithLabelValues(u.name)
		u.durObs = r.m.duration.WithLabelValues(u.name)
		r.ups[u.name] = u
	}
	if pu.tr != nil {
		old := u.tr
		u.tr, u.trKey = pu.tr, pu.trKey
		// In-flight requests on the old transport finish; only its idle
		// connections go now.
		old.closeIdle()
	}

	switch {
	case pu.br == nil:
		if u.breaker != nil {
			u.breaker = nil
			r.m.breakerOpen.DeleteLabelValues(u.name)
		}
	case pu.br == u.breaker:
		u.breaker.setConfig(pu.brCfg)
	default:
		pu.br.export(r.m.breakerOpen.WithLabelValues(u.name))
		u.breaker = pu.br
	}

	live := make(map[string]bool, len(pu.targets))
	for _, t := range pu.targets {
		live[t.url] = true
		if u.targets[t.url] == nil {
			r.exportTarget(u, t)
			u.targets[t.url] = t
		}
		r.syncChecker(u, t, pu.hc)
	}
	for url, t := range u.targets {
		if !live[url] {
			r.dropTarget(u, t)
			delete(u.targets, url)
		}
	}
	u.lastPool = pu.pool
}

// exportTarget gives a target new to u its metric series. Nothing reads
// them before: its pools do not serve before Commit and its checker starts
// after this.
func (r *Registry) exportTarget(u *upstream, t *target) {
	t.healthyGauge = r.m.healthy.WithLabelValues(u.name, t.url)
	t.ejectCtr = r.m.ejections.WithLabelValues(u.name, t.url)
	t.errCtr = r.m.requests.WithLabelValues(u.name, t.url, "error")
	t.healthyGauge.Set(1)
}

func (r *Registry) dropUpstream(u *upstream) {
	for _, t := range u.targets {
		r.dropTarget(u, t)
	}
	u.tr.closeIdle()
	r.m.retries.DeleteLabelValues(u.name)
	r.m.duration.DeleteLabelValues(u.name)
	r.m.breakerOpen.DeleteLabelValues(u.name)
}

func (r *Registry) dropTarget(u *upstream, t *target) {
	if t.checkStop != nil {
		t.checkStop()
		t.checkStop = nil
	}
	labels := prometheus.Labels{"upstream": u.name, "target": t.url}
	r.m.healthy.Delete(labels)
	r.m.ejections.Delete(labels)
	r.m.requests.DeletePartialMatch(labels)
}

// Close stops every health checker and waits for them, and closes idle
// upstream connections. Pools keep working (without active checks).
func (r *Registry) Close() {
	r.mu.Lock()
	r.closed = true
	for _, u := range r.ups {
		for _, t := range u.targets {
			if t.checkStop != nil {
				t.checkStop()
				t.checkStop = nil
			}
		}
		u.tr.closeIdle()
	}
	r.mu.Unlock()
	r.checkers.Wait()
}

// Windows: the retry budget looks at 10 s; per-target request and error
// counts (for Snapshot) at the last minute.
const (
	budgetBuckets      = 10
	budgetBucketWidth  = int64(time.Second)
	targetBuckets      = 12
	targetBucketWidth  = int64(5 * time.Second)
	defaultRetryBudget = 0.2
	// minRetries lets a quiet upstream retry at all: with 0.2 and 2 requests
	// in the window, the budget alone would never allow one.
	minRetries = 3
)

// UpstreamStatus is one upstream in Snapshot, ready for JSON.
type UpstreamStatus struct {
	Name string `json:"name"`
	// Balance is the balancer in use.
	Balance string `json:"balance"`
	// Breaker is "closed", "open", "half_open", or "" when none is configured.
	Breaker string `json:"breaker,omitempty"`
	// Retries is the configured retry count per request.
	Retries int `json:"retries"`
	// RetriesRecent and RequestsRecent count the last 10 s (the retry
	// budget's window).
	RetriesRecent  int64          `json:"retries_10s"`
	RequestsRecent int64          `json:"requests_10s"`
	InFlight       int64          `json:"in_flight"`
	Targets        []TargetStatus `json:"targets"`
}

// TargetStatus is one target in Snapshot.
type TargetStatus struct {
	URL     string `json:"url"`
	Weight  int    `json:"weight"`
	Healthy bool   `json:"healthy"`
	// EjectedUntil is set while a passive ejection lasts.
	EjectedUntil *time.Time `json:"ejected_until,omitempty"`
	InFlight     int64      `json:"in_flight"`
	// Requests and ErrorRate cover the last minute; errors are connection
	// failures, timeouts and 5xx.
	Requests  int64   `json:"requests_1m"`
	ErrorRate float64 `json:"error_rate_1m"`
}

// Snapshot reports every upstream's state, sorted by name, targets in
// config order.
func (r *Registry) Snapshot() []UpstreamStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now().UnixNano()
	out := make([]UpstreamStatus, 0, len(r.ups))
	for _, u := range r.ups {
		req, ret := u.budget.sum(now)
		st := UpstreamStatus{
			Name: u.name, RetriesRecent: ret, RequestsRecent: req,
			InFlight: u.inflight.Load(),
		}
		if u.breaker != nil {
			st.Breaker = u.breaker.snapshot(now)
		}
		if pl := u.lastPool; pl != nil {
			st.Retries, st.Balance = pl.retries, pl.balance
			for i, t := range pl.targets {
				ts := TargetStatus{URL: t.url, Weight: pl.weights[i], Healthy: t.healthy.Load(), InFlight: t.inflight.Load()}
				if until := t.ejectedUntil.Load(); until > now {
					tm := time.Unix(0, until).UTC()
					ts.EjectedUntil = &tm
				}
				n, fails := t.win.sum(now)
				ts.Requests = n
				if n > 0 {
					ts.ErrorRate = float64(fails) / float64(n)
				}
				st.Targets = append(st.Targets, ts)
			}
		}
		out = append(out, st)
	}
	slices.SortFunc(out, func(a, b UpstreamStatus) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// transportFor returns the round tripper serving t.
func (ts *transports) forTarget(t *target) http.RoundTripper {
	switch {
	case t.h2c && ts.h2c != nil:
		return ts.h2c
	case t.scheme == "http" && ts.h1 != nil:
		return ts.h1
	}
	return ts.std
}
