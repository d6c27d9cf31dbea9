// Package telemetry observes every request the gateway serves: Prometheus
// metrics (the names of DESIGN.md section 4), live per-route statistics with
// latency quantiles that need no Prometheus, the JSON access log and
// OpenTelemetry tracing with W3C trace context.
//
// One *Telemetry lives for the whole process and owns the Prometheus
// registry, so metric series and live statistics survive config reloads. The
// gateway compiles each route's chain with Middleware(route), which resolves
// the route's series once; per request the middleware only does atomic adds.
// After swapping in a new runtime the gateway calls RetainRoutes, which lets
// the state of routes the reload removed go.
package telemetry

import (
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"runtime"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Deps are the dependencies of a Telemetry. Every field is optional.
type Deps struct {
	// Logger receives operational messages (tracing export errors); nil
	// discards them.
	Logger *slog.Logger
	// AccessLog receives one JSON line per request; nil means os.Stdout.
	AccessLog io.Writer
	// Now is the clock; nil means time.Now. Durations are measured with it,
	// from reqctx.Info.Start when the gateway set it (so Start must come
	// from the same clock).
	Now func() time.Time
	// Version is the build version reported by portico_build_info.
	Version string
	// LatencyBuckets are extra upper bounds for
	// portico_request_duration_seconds: the SLO latency thresholds known at
	// startup. Prometheus histograms cannot change their buckets while the
	// process runs, so a threshold added by a later reload gets its bucket at
	// the next restart (the SLO engine counts latency against its threshold
	// exactly either way; only the exported Prometheus rules need the bucket).
	LatencyBuckets []time.Duration
	// AccessLogBuffer is how many lines may wait for the writer; 0 means
	// 8192. A full buffer drops lines (counted), it never blocks a request.
	AccessLogBuffer int
}

// SLOObserver is what the middleware needs from the SLO engine: a hook per
// route, called once per finished request, that stays valid across reloads.
// ForgetRoute is called when a route leaves the running config.
type SLOObserver interface {
	Observer(route string) func(status int, d time.Duration, end time.Time)
	ForgetRoute(route string)
}

// defaultBuckets are the standard upper bounds (seconds) of
// portico_request_duration_seconds.
var defaultBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// Method labels: every other method is folded to OTHER to bound cardinality.
const (
	mGET = iota
	mHEAD
	mPOST
	mPUT
	mPATCH
	mDELETE
	mOPTIONS
	mOTHER
	numMethods
)

var methodNames = [numMethods]string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "OTHER"}

func methodIndex(m string) int {
	switch m {
	case http.MethodGet:
		return mGET
	case http.MethodHead:
		return mHEAD
	case http.MethodPost:
		return mPOST
	case http.MethodPut:
		return mPUT
	case http.MethodPatch:
		return mPATCH
	case http.MethodDelete:
		return mDELETE
	case http.MethodOptions:
		return mOPTIONS
	}
	return mOTHER
}

// commonCodes get a pre-resolved counter slot per route and method; other
// statuses take the slower labelled lookup.
var commonCodes = [...]int{100, 101, 200, 201, 202, 204, 206, 301, 302, 303, 304, 307, 308,
	400, 401, 403, 404, 405, 406, 408, 409, 410, 411, 412, 413, 414, 415, 416, 417, 421, 422, 425,
	426, 428, 429, 431, 451, 499, 500, 501, 502, 503, 504, 505}

const numCodes = len(commonCodes)

// Telemetry is the process-wide observer. All methods are safe for
// concurrent use.
type Telemetry struct {
	logger  *slog.Logger
	now     func() time.Time
	started time.Time

	reg        *prometheus.Registry
	requests   *prometheus.CounterVec
	duration   *prometheus.HistogramVec
	inflight   *prometheus.GaugeVec
	websockets *prometheus.GaugeVec
	reloadOK   prometheus.Counter
	reloadFail prometheus.Counter
	dropped    prometheus.Counter

	codeIdx   [600]int8
	codeNames [numCodes]string

	mu     sync.Mutex
	routes map[string]*routeState
	slo    SLOObserver

	writers sync.Pool

	alog     *accessLog
	accessOn atomic.Bool
	redact   atomic.Pointer[[]string]

	tracing atomic.Pointer[tracer]
}

// routeState is everything the middleware needs for one route, resolved once
// and kept while the route is in the running config (RetainRoutes).
type routeState struct {
	name      string
	inflightN atomic.Int64
	// retired is set when a reload removed the route; its Prometheus
	// series go when its last in-flight request has finished.
	retired  atomic.Bool
	inflight prometheus.Gauge
	ws       prometheus.Gauge
	hist     prometheus.Observer
	counters [numMethods][numCodes]atomic.Pointer[prometheus.Counter]
	slo      atomic.Pointer[func(int, time.Duration, time.Time)]
	stats    routeStats
}

// New returns the process's Telemetry with its registry and the access-log
// writer goroutine started; Close stops it.
func New(deps Deps) *Telemetry {
	t := &Telemetry{
		logger: deps.Logger,
		now:    deps.Now,
		reg:    prometheus.NewRegistry(),
		routes: make(map[string]*routeState),
	}
	if t.logger == nil {
		t.logger = slog.New(slog.DiscardHandler)
	}
	if t.now == nil {
		t.now = time.Now
	}
	t.started = t.now()
	for i := range t.codeIdx {
		t.codeIdx[i] = -1
	}
	for i, c := range commonCodes {
		t.codeIdx[c] = int8(i)
		t.codeNames[i] = strconv.Itoa(c)
	}

	t.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "portico_build_info", Help: "Build information; the value is always 1.",
	}, []string{"version", "goversion"})
	version := deps.Version
	if version == "" {
		version = "devel" // as the CLI names a build without a version
	}
	build.WithLabelValues(version, runtime.Version()).Set(1)
	reloads := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "portico_config_reloads_total", Help: "Config reloads by result.",
	}, []string{"result"})
	t.reloadOK = reloads.WithLabelValues("success")
	t.reloadFail = reloads.WithLabelValues("failure")
	t.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "portico_requests_total", Help: "Requests served, by route, method and status code.",
	}, []string{"route", "method", "code"})
	t.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "portico_request_duration_seconds", Help: "Time from receiving a request to the end of its response.",
		Buckets: Buckets(deps.LatencyBuckets),
	}, []string{"route"})
	t.inflight = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "portico_inflight_requests", Help: "Requests being served.",
	}, []string{"route"})
	t.websockets = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "portico_websocket_connections", Help: "Open WebSocket (upgraded) connections.",
	}, []string{"route"})
	t.dropped = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "portico_access_log_dropped_total", Help: "Access log lines dropped because the writer fell behind.",
	})
	t.reg.MustRegister(build, reloads, t.requests, t.duration, t.inflight, t.websockets, t.dropped)

	t.writers.New = func() any { return new(statusWriter) }
	out := deps.AccessLog
	if out == nil {
		out = os.Stdout
	}
	size := deps.AccessLogBuffer
	if size <= 0 {
		size = 8192
	}
	t.alog = newAccessLog(out, size, t.dropped)
	t.accessOn.Store(true)
	t.tracing.Store(lightTracer())
	return t
}

// Buckets returns the histogram bounds: the standard ones (1 ms to 10 s) plus the extra
// thresholds, sorted and without duplicates.
func Buckets(extra []time.Duration) []float64 {
	b := append([]float64(nil), defaultBuckets...)
	for _, d := range extra {
		if d > 0 {
			b = append(b, d.Seconds())
		}
	}
	sort.Float64s(b)
	out := b[:0]
	for i, v := range b {
		if i == 0 || v != b[i-1] {
			out = append(out, v)
		}
	}
	return out
}

// Registerer is where other packages register their collectors.
func (t *Telemetry) Registerer() prometheus.Registerer { return t.reg }

// Gatherer exposes the registry for tests and tools.
func (t *Telemetry) Gatherer() prometheus.Gatherer { return t.reg }

// MetricsHandler serves the Prometheus exposition of the registry.
func (t *Telemetry) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(t.reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(t.logger.Handler(), slog.LevelError)})
}

// ConfigReload counts a reload attempt.
func (t *Telemetry) ConfigReload(ok bool) {
	if ok {
		t.reloadOK.Inc()
	} else {
		t.reloadFail.Inc()
	}
}

// SetSLO connects the SLO engine. Routes compiled afterwards (and those
// compiled before, on their next Middleware call) feed it.
func (t *Telemetry) SetSLO(o SLOObserver) {
	t.mu.Lock()
	t.slo = o
	routes := make([]*routeState, 0, len(t.routes))
	for _, rs := range t.routes {
		routes = append(routes, rs)
	}
	t.mu.Unlock()
	for _, rs := range routes {
		t.attachSLO(rs, o)
	}
}

func (t *Telemetry) attachSLO(rs *routeState, o SLOObserver) {
	if o == nil {
		rs.slo.Store(nil)
		return
	}
	f := o.Observer(rs.name)
	rs.slo.Store(&f)
}

// route returns the state of route name, creating it on first use.
func (t *Telemetry) route(name string) *routeState {
	t.mu.Lock()
	rs, ok := t.routes[name]
	if !ok {
		rs = &routeState{
			name:     name,
			inflight: t.inflight.WithLabelValues(name),
			ws:       t.websockets.WithLabelValues(name),
			hist:     t.duration.WithLabelValues(name),
		}
		t.routes[name] = rs
	}
	o := t.slo
	t.mu.Unlock()
	if !ok && o != nil {
		t.attachSLO(rs, o)
	}
	return rs
}

// UnmatchedRoute is the route name of requests that match no route; its
// state is kept whatever RetainRoutes is told.
const UnmatchedRoute = "unmatched"

// RetainRoutes tells which routes the running config has. The gateway calls
// it after it swapped in a newly compiled runtime, and after a compile that
// failed, with the names of the running runtime's routes and BFF
// endpoints. A route not among them (removed or renamed by the reload, or
// registered by a reload that failed) leaves /admin/stats and the
// dashboard at once, and the SLO engine forgets it; a route
// among them keeps its state, so statistics carry on across reloads. Requests still in flight on the old runtime finish
// against the removed route's state, which nothing reads any more.
//
// The Prometheus series of a removed route (its portico_requests_total,
// duration histogram, in-flight and WebSocket gauges) are deleted once its
// last in-flight request has finished. Prometheus usually keeps counters for
// the life of the process, but DESIGN.md bounds label sets by the config:
// without this every rename would leave a route's method x code counters and
// histogram buckets behind until the next restart. A rate() over the deleted
// series ends where it was last scraped, as after a restart; what the route
// counted after that last scrape is lost, at most one scrape interval of a
// route that no longer exists. A route that comes back gets new series.
func (t *Telemetry) RetainRoutes(names []string) {
	keep := make(map[string]struct{}, len(names))
	for _, n := range names {
		keep[n] = struct{}{}
	}
	t.mu.Lock()
	var removed []*routeState
	for name, rs := range t.routes {
		if _, ok := keep[name]; ok || name == UnmatchedRoute {
			continue
		}
		delete(t.routes, name)
		removed = append(removed, rs)
		if t.slo != nil {
			// Under t.mu, so that no route of the same name is being
			// created meanwhile; the engine never calls back into t.
			t.slo.ForgetRoute(name)
		}
	}
	t.mu.Unlock()
	for _, rs := range removed {
		// finish deletes the series when the last in-flight request ends;
		// with none in flight now, nobody else will. Both may do it: it
		// is idempotent.
		rs.retired.Store(true)
		if rs.inflightN.Load() == 0 {
			t.dropSeries(rs)
		}
	}
}

// dropSeries deletes the Prometheus series of a removed route, unless a
// later config brought the name back: those series are the new route's now.
// Holding t.mu orders this against route creating them again.
func (t *Telemetry) dropSeries(rs *routeState) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, back := t.routes[rs.name]; back {
		return
	}
	t.requests.DeletePartialMatch(prometheus.Labels{"route": rs.name})
	t.duration.DeleteLabelValues(rs.name)
	t.inflight.DeleteLabelValues(rs.name)
	t.websockets.DeleteLabelValues(rs.name)
}

func (t *Telemetry) counter(rs *routeState, method, status int) prometheus.Counter {
	ci := int8(-1)
	if status >= 0 && status < len(t.codeIdx) {
		ci = t.codeIdx[status]
	}
	if ci < 0 {
		return t.requests.WithLabelValues(rs.name, methodNames[method], strconv.Itoa(status))
	}
	p := &rs.counters[method][ci]
	if c := p.Load(); c != nil {
		return *c
	}
	c := t.requests.WithLabelValues(rs.name, methodNames[method], t.codeNames[ci])
	p.Store(&c)
	return c
}

// Close flushes the access log and the trace exporter and stops the writer
// goroutine. Requests must have stopped. A log writer that stays blocked
// (a stdout nobody reads) is given up on after 5 s, with an error, so that
// the process can still exit.
func (t *Telemetry) Close() error {
	err := t.alog.close()
	return errors.Join(err, t.tracing.Load().shutdown())
}
