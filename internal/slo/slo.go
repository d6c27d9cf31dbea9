// Package slo turns the gateway's request outcomes into service level
// indicators, error budgets and multi-window, multi-burn-rate alerts (Google
// SRE workbook, chapter 5), sends alert webhooks and exports equivalent
// Prometheus rules.
//
// An SLO names a route (or "bff/endpoint"), an objective in percent and a
// window. A request is bad when its status is 5xx (the gateway's own
// 502/503/504 included) or, when the SLO sets latency, when it took longer
// than that; 429, other 4xx and client disconnects (499) are good. Counts are
// kept per minute and per SLO name, so a reload that keeps an SLO keeps its
// history. With Redis (fleet mode) every node adds its per-minute counts to
// shared hashes and reads the fleet's sums back, so all nodes see the same
// burn rates, budgets survive restarts, and the node holding a Redis lease is
// the only one that sends webhooks.
package slo

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/rueidis"

	"github.com/portico-gw/portico/internal/config"
)

// Deps are the engine's dependencies.
type Deps struct {
	// Logger receives alert transitions and errors; nil discards.
	Logger *slog.Logger
	// Registerer gets the portico_slo_* gauges; nil means a private registry.
	Registerer prometheus.Registerer
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// HTTPClient sends webhooks; nil means a client with a 5 s timeout that
	// follows only the redirects that keep the POST and its body (307, 308).
	HTTPClient *http.Client
	// Redis enables fleet mode; nil keeps counts in this process only.
	Redis rueidis.Client
	// NodeID names this node in the webhook lease and payloads; "" means
	// the host name and process id.
	NodeID string
	// KeyPrefix prefixes every Redis key; "" means "portico:slo:".
	KeyPrefix string
	// EvaluateEvery is the period of the engine's background loop, which
	// evaluates (at once, then periodically) and in fleet mode flushes counts
	// to Redis every 2 s. 0 means 10 s; negative starts no loop, for tests
	// that call Evaluate and Flush themselves.
	EvaluateEvery time.Duration
}

// Burn-rate windows, shortest first, and their label values.
var (
	windows     = []time.Duration{5 * time.Minute, 30 * time.Minute, time.Hour, 2 * time.Hour, 6 * time.Hour, 24 * time.Hour, 72 * time.Hour}
	windowNames = []string{"5m", "30m", "1h", "2h", "6h", "1d", "3d"}
)

const (
	w5m = iota
	w30m
	w1h
	w2h
	w6h
	w1d
	w3d
	numWindows
)

// alertRule is one multi-window rule: the burn rate must exceed Factor over
// both the long and the short window.
type alertRule struct {
	Severity    string
	Factor      float64
	Long, Short int // indexes into windows
}

// alertRules are the SRE workbook's recommended rules for a 30-day-ish budget:
// page at 14.4x over 1h and 5m (2% of the budget in an hour) or 6x over 6h
// and 30m (5% in six hours); ticket at 3x over 1d and 2h (10% in a day) or
// 1x over 3d and 6h.
var alertRules = []alertRule{
	{"page", 14.4, w1h, w5m},
	{"page", 6, w6h, w30m},
	{"ticket", 3, w1d, w2h},
	{"ticket", 1, w3d, w6h},
}

// severities in a fixed order.
var severities = []string{"page", "ticket"}

// DefaultWindow is the budget window of an SLO that sets none.
const DefaultWindow = 28 * 24 * time.Hour

// sloConfig is the part of an SLO a reload may change.
type sloConfig struct {
	route     string
	objective float64 // percent
	window    time.Duration
	latency   time.Duration
	webhook   string
}

type sloState struct {
	name string
	cfg  atomic.Pointer[sloConfig]
	ring atomic.Pointer[minuteRing]

	// Evaluation state, guarded by Engine.evalMu: alerts firing as last
	// evaluated, and as last announced by webhook from this node.
	firing    [2]bool
	announced [2]bool
	// firingTo is the webhook this node last sent "firing" to, "" when the
	// severity was resolved since: a reload that changes alert_webhook
	// ends the page at the receiver that has it.
	firingTo [2]string
	fleet    fleetCache
	status   SLOStatus
}

type routeTrack struct {
	slos atomic.Pointer[[]*sloState]
}

// Engine computes SLO state. It is long-lived: create it once per process
// and Apply each loaded config.
type Engine struct {
	logger  *slog.Logger
	now     func() time.Time
	client  *http.Client
	redis   rueidis.Client
	nodeID  string
	prefix  string
	budgetG *prometheus.GaugeVec
	burnG   *prometheus.GaugeVec
	firingG *prometheus.GaugeVec

	mu     sync.Mutex // guards slos, active, retired, routes
	slos   map[string]*sloState
	active []*sloState
	// retired are SLOs a reload removed whose alerts the next evaluation
	// resolves, so a receiver is not left with a page that never ends.
	retired []*sloState
	routes  map[string]*routeTrack

	evalMu sync.Mutex // one Evaluate or Flush at a time

	ctx    context.Context // canceled by Close; bounds webhook retries
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// NewEngine returns an engine with no SLOs.
func NewEngine(deps Deps) *Engine {
	e := &Engine{
		logger: deps.Logger, now: deps.Now, client: deps.HTTPClient, redis: deps.Redis,
		nodeID: deps.NodeID, prefix: deps.KeyPrefix,
		slos: map[string]*sloState{}, routes: map[string]*routeTrack{},
	}
	if e.logger == nil {
		e.logger = slog.New(slog.DiscardHandler)
	}
	if e.now == nil {
		e.now = time.Now
	}
	if e.client == nil {
		e.client = &http.Client{Timeout: 5 * time.Second, CheckRedirect: keepPOST}
	}
	if e.nodeID == "" {
		host, _ := os.Hostname()
		e.nodeID = host + "-" + strconv.Itoa(os.Getpid())
	}
	if e.prefix == "" {
		e.prefix = "portico:slo:"
	}
	reg := deps.Registerer
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	e.budgetG = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "portico_slo_error_budget_remaining_ratio", Help: "Share of the error budget left over the SLO window (negative when overspent).",
	}, []string{"slo"})
	e.burnG = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "portico_slo_burn_rate", Help: "Error rate over the window divided by the rate the objective allows.",
	}, []string{"slo", "window"})
	e.firingG = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "portico_slo_alert_firing", Help: "1 while the SLO's burn-rate alert of this severity fires.",
	}, []string{"slo", "severity"})
	reg.MustRegister(e.budgetG, e.burnG, e.firingG)
	e.ctx, e.cancel = context.WithCancel(context.Background())
	if deps.EvaluateEvery >= 0 {
		every := deps.EvaluateEvery
		if every == 0 {
			every = 10 * time.Second
		}
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			e.run(e.ctx, every)
		}()
	}
	return e
}

// keepPOST stops at a redirect that would turn the webhook's POST into a
// bodiless GET (301, 302, 303): a receiver answering that GET with a 200
// would pass for a delivery, and the alert would be lost unseen. The
// redirect's status is then the answer, retried and logged as a failure.
func keepPOST(req *http.Request, via []*http.Request) error {
	if req.Method != http.MethodPost {
		return http.ErrUseLastResponse
	}
	if len(via) >= 10 {
		return errors.New("stopped after 10 redirects")
	}
	return nil
}

// Apply installs the SLOs of a (re)loaded config: Prepare, then Commit.
// An SLO keeps its counts and alert state across reloads by name; one
// removed from the config stops being evaluated and exported (its counts
// stay, should it come back), and the next evaluation resolves its alerts.
func (e *Engine) Apply(slos []*config.SLO) error {
	p, err := e.Prepare(slos)
	if err != nil {
		return err
	}
	p.Commit()
	return nil
}

// Plan is a checked set of SLOs not in force yet: the gateway commits it
// only once the whole config has compiled, so a refused reload leaves the
// objectives and alerting in force unchanged.
type Plan struct {
	e    *Engine
	slos []*config.SLO
	cfgs []*sloConfig
	seen map[string]bool
}

// Prepare checks every SLO and changes nothing; the error names each bad one.
func (e *Engine) Prepare(slos []*config.SLO) (*Plan, error) {
	cfgs := make([]*sloConfig, len(slos))
	seen := map[string]bool{}
	var errs []error
	for i, s := range slos {
		c, err := checkSLO(s)
		if err == nil && seen[s.Name] {
			err = fmt.Errorf("duplicate name %q", s.Name)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("slos[%d]: %w", i, err))
			continue
		}
		seen[s.Name] = true
		cfgs[i] = c
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return &Plan{e: e, slos: slos, cfgs: cfgs, seen: seen}, nil
}

// Commit puts the plan's SLOs in force.
func (p *Plan) Commit() {
	e, slos, cfgs, seen := p.e, p.slos, p.cfgs, p.seen
	e.mu.Lock()
	defer e.mu.Unlock()
	old := e.active
	e.active = make([]*sloState, len(slos))
	for i, s := range slos {
		st := e.slos[s.Name]
		if st == nil {
			st = &sloState{name: s.Name}
			e.slos[s.Name] = st
		}
		st.cfg.Store(cfgs[i])
		st.ensureRing(cfgs[i].window)
		e.active[i] = st
	}
	for _, st := range old {
		if !seen[st.name] {
			e.deleteSeries(st.name)
			e.retired = append(e.retired, st)
		}
	}
	// One removed and back before the next evaluation is not retired: its
	// alerts continue.
	e.retired = slices.DeleteFunc(e.retired, func(st *sloState) bool { return seen[st.name] })
	for name, rt := range e.routes {
		rt.slos.Store(e.forRoute(name))
	}
}

func checkSLO(s *config.SLO) (*sloConfig, error) {
	if s == nil || s.Name == "" {
		return nil, errors.New("name is required")
	}
	if s.Route == "" {
		return nil, fmt.Errorf("%s: route is required", s.Name)
	}
	if !(s.Objective > 0 && s.Objective < 100) {
		return nil, fmt.Errorf("%s: objective %v must be above 0 and below 100 (percent)", s.Name, s.Objective)
	}
	c := &sloConfig{route: s.Route, objective: s.Objective, window: s.Window.D(), latency: s.Latency.D(), webhook: s.AlertWebhook}
	if c.window == 0 {
		c.window = DefaultWindow
	}
	if c.window < time.Minute || c.latency < 0 {
		return nil, fmt.Errorf("%s: window must be at least 1m and latency not negative", s.Name)
	}
	if c.webhook != "" {
		if u, err := url.Parse(c.webhook); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("%s: alert_webhook %q is not an http(s) URL", s.Name, c.webhook)
		}
	}
	return c, nil
}

func (e *Engine) deleteSeries(name string) {
	e.budgetG.DeleteLabelValues(name)
	for _, w := range windowNames {
		e.burnG.DeleteLabelValues(name, w)
	}
	for _, s := range severities {
		e.firingG.DeleteLabelValues(name, s)
	}
}

// forRoute lists the active SLOs of route; e.mu is held.
func (e *Engine) forRoute(route string) *[]*sloState {
	var list []*sloState
	for _, st := range e.active {
		if st.cfg.Load().route == route {
			list = append(list, st)
		}
	}
	if list == nil {
		return nil
	}
	return &list
}

// Observer returns the hook the telemetry middleware calls for every finished
// request of route, with its status, duration and end time (the caller has
// read the clock already, so the hook does not). The hook stays valid across
// reloads (it follows the SLOs applied later) and does not allocate.
func (e *Engine) Observer(route string) func(status int, d time.Duration, end time.Time) {
	e.mu.Lock()
	rt := e.routes[route]
	if rt == nil {
		rt = &routeTrack{}
		rt.slos.Store(e.forRoute(route))
		e.routes[route] = rt
	}
	e.mu.Unlock()
	return func(status int, d time.Duration, end time.Time) {
		p := rt.slos.Load()
		if p == nil {
			return
		}
		for _, st := range *p {
			st.observe(end, status, d)
		}
	}
}

// ForgetRoute drops the engine's entry for a route the running config no
// longer has, so that routes renamed over many reloads do not pile up. A hook
// handed out before keeps counting for in-flight requests against the SLOs
// applied when it was last updated; a route that comes back gets a new one.
func (e *Engine) ForgetRoute(route string) {
	e.mu.Lock()
	delete(e.routes, route)
	e.mu.Unlock()
}

// IsBad is the SLI: 5xx is bad; 499 (client gone), 101 (a WebSocket's
// lifetime is not a latency) and other statuses are judged by latency alone,
// when the SLO has a threshold, except 499, which is never bad.
func IsBad(status int, d, latency time.Duration) bool {
	switch {
	case status >= 500 && status <= 599:
		return true
	case status == 499 || status == http.StatusSwitchingProtocols:
		return false
	}
	return latency > 0 && d > latency
}

func (st *sloState) observe(now time.Time, status int, d time.Duration) {
	bad := IsBad(status, d, st.cfg.Load().latency)
	st.ring.Load().add(minuteOf(now), bad)
}

func minuteOf(t time.Time) int64 { return t.Unix() / 60 }

// Close stops the background loop (after a last flush in fleet mode) and
// webhook deliveries in progress (after their current attempt), and waits
// for them.
func (e *Engine) Close() {
	e.cancel()
	e.wg.Wait()
}

// run evaluates at once and then every period (and in fleet mode flushes
// counts to Redis every 2 s) until ctx ends; in fleet mode it flushes a last
// time on the way out, so a node stopping loses no counts.
func (e *Engine) run(ctx context.Context, every time.Duration) {
	e.Evaluate(e.now())
	eval := time.NewTicker(every)
	defer eval.Stop()
	var flush <-chan time.Time
	if e.redis != nil {
		ft := time.NewTicker(2 * time.Second)
		defer ft.Stop()
		flush = ft.C
	}
	for {
		select {
		case <-ctx.Done():
			if e.redis != nil {
				fctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				if err := e.Flush(fctx); err != nil {
					e.logger.Warn("slo: last flush to redis", "err", err)
				}
				cancel()
			}
			return
		case <-eval.C:
			e.Evaluate(e.now())
		case <-flush:
			if err := e.Flush(ctx); err != nil {
				e.logger.Warn("slo: flushing counts to redis", "err", err)
			}
		}
	}
}

// burn returns the burn rate of bad out of total for objective (percent).
func burn(bad, total uint64, objective float64) float64 {
	if total == 0 {
		return 0
	}
	return (float64(bad) / float64(total)) / (1 - objective/100)
}

func round6(v float64) float64 { return math.Round(v*1e6) / 1e6 }
