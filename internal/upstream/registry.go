package upstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
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
// per process with NewRegistry, call Apply on every config load and Close at
// shutdown.
type Registry struct {
	log *slog.Logger
	now func() time.Time
	m   *metrics

	mu       sync.Mutex // serialises Apply, Close and Snapshot's view of ups
	ups      map[string]*upstream
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

	// Fields below are written by Apply under Registry.mu; pools copy what
	// they need when built, so traffic never reads them.
	targets  map[string]*target
	tr       *transports
	trKey    string
	breaker  *breaker
	retryCtr prometheus.Counter
	durObs   prometheus.Observer
	lastPool *Pool // the latest Apply's pool, for Snapshot

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

// preparedUpstream is one upstream after validation, before Apply commits.
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

// Apply makes the registry match ups and returns one Pool per upstream. It
// first checks everything config validation cannot (target URLs, balancer
// settings, TLS files readable and parseable) and changes nothing when any
// check fails; the error then names every bad upstream. Otherwise it keeps
// the state of upstreams and targets that stay, builds a new transport only
// for an upstream whose connection settings changed (closing the old one's
// idle connections), starts and stops health checkers to match, and drops
// the state of upstreams and targets that left. Pools returned by an earlier
// Apply keep working while it runs and afterwards.
func (r *Registry) Apply(ups map[string]*config.Upstream) (map[string]*Pool, error) {
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

	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, errors.New("upstream registry is closed")
	}
	pools := make(map[string]*Pool, len(prepared))
	keep := make(map[string]bool, len(prepared))
	for i := range prepared {
		p := &prepared[i]
		keep[p.name] = true
		pools[p.name] = r.applyOne(p)
	}
	for name, u := range r.ups {
		if !keep[name] {
			r.dropUpstream(u)
			delete(r.ups, name)
		}
	}
	return pools, nil
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

// applyOne commits one prepared upstream; r.mu is held.
func (r *Registry) applyOne(p *preparedUpstream) *Pool {
	u := r.ups[p.name]
	if u == nil {
		u = &upstream{
			name:     p.name,
			budget:   newRolling(budgetBuckets, budgetBucketWidth),
			targets:  map[string]*target{},
			retryCtr: r.m.retries.WithLabelValues(p.name),
			durObs:   r.m.duration.WithLabelValues(p.name),
		}
		r.ups[p.name] = u
	}
	if u.tr == nil || u.trKey != p.spec.key {
		old := u.tr
		u.tr, u.trKey = newTransports(p.spec), p.spec.key
		// In-flight requests on the old transport finish; only its idle
		// connections go now.
		old.closeIdle()
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
		if u.breaker == nil {
			u.breaker = newBreaker(bc, r.m.breakerOpen.WithLabelValues(p.name), r.log.With("upstream", p.name))
		} else {
			u.breaker.setConfig(bc)
		}
	} else if u.breaker != nil {
		u.breaker = nil
		r.m.breakerOpen.DeleteLabelValues(p.name)
	}

	hc := normaliseHealthCheck(cfg.HealthCheck)
	targets := make([]*target, len(p.targets))
	live := make(map[string]bool, len(p.targets))
	for i, pt := range p.targets {
		live[pt.url] = true
		t := u.targets[pt.url]
		if t == nil {
			t = &target{
				url:          pt.url,
				win:          newRolling(targetBuckets, targetBucketWidth),
				healthyGauge: r.m.healthy.WithLabelValues(p.name, pt.url),
				ejectCtr:     r.m.ejections.WithLabelValues(p.name, pt.url),
				errCtr:       r.m.requests.WithLabelValues(p.name, pt.url, "error"),
				upName:       p.name,
				reqVec:       r.m.requests,
			}
			// The URL string is the identity, so its parsed parts never
			// change afterwards (pools of older configs read them).
			t.scheme, t.host, t.h2c = pt.scheme, pt.host, pt.h2c
			t.healthy.Store(true)
			t.healthyGauge.Set(1)
			u.targets[pt.url] = t
		}
		targets[i] = t
		r.syncChecker(u, t, hc)
	}
	for url, t := range u.targets {
		if !live[url] {
			r.dropTarget(u, t)
			delete(u.targets, url)
		}
	}
	u.lastPool = newPool(r, u, p, targets)
	return u.lastPool
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
