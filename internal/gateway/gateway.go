// Package gateway turns a configuration into a running gateway: it compiles
// a config into an immutable runtime (a router whose entries are fully built
// handler chains), swaps runtimes atomically on reload, serves the public and
// admin listeners and drains them on shutdown.
//
// State that must survive a reload (upstream health and breakers, JWKS caches,
// rate-limit counters, SLO buckets, metrics) lives in long-lived registries
// owned by the Gateway, outside the compiled runtime; a runtime only refers
// to them.
package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/portico-gw/portico/internal/auth"
	"github.com/portico-gw/portico/internal/config"
	"github.com/portico-gw/portico/internal/listener"
	"github.com/portico-gw/portico/internal/problem"
	"github.com/portico-gw/portico/internal/proxy"
	"github.com/portico-gw/portico/internal/ratelimit"
	"github.com/portico-gw/portico/internal/reqctx"
	"github.com/portico-gw/portico/internal/router"
	"github.com/portico-gw/portico/internal/slo"
	"github.com/portico-gw/portico/internal/telemetry"
	"github.com/portico-gw/portico/internal/upstream"
)

// Options configure a Gateway beyond its config.
type Options struct {
	// Paths are the config files or directories; Reload reads them again.
	Paths []string
	// Logger receives the process log; nil discards.
	Logger *slog.Logger
	// AccessLog receives access-log lines; nil means stdout.
	AccessLog io.Writer
	// Version is reported by portico_build_info.
	Version string
	// NodeID names this node in shared state (rate-limit heartbeats, SLO
	// leases); empty means hostname-pid.
	NodeID string
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Gateway is one running Portico process.
type Gateway struct {
	opts Options
	log  *slog.Logger
	now  func() time.Time

	tel   *telemetry.Telemetry
	ups   *upstream.Registry
	auths *auth.Registry
	rl    *ratelimit.Service
	slo   *slo.Engine
	store *storeSet

	certs    *listener.CertStore // nil without TLS
	tlsCfg   *tls.Config
	loader   config.Loader // keeps parsed files, so a reload re-parses only changed ones
	ids      *reqctx.RequestIDs
	buffers  httputil.BufferPool // shared by every route's proxy
	current  atomic.Pointer[runtime]
	reloadMu sync.Mutex
	draining atomic.Bool
	released atomic.Pointer[listener.IdleReleaser] // nil unless idle connections are released
	servers  atomic.Pointer[publicServers]         // nil unless serving
}

// runtime is one compiled config. It is immutable once built: requests read
// it concurrently without locks, and a reload replaces it as a whole.
type runtime struct {
	cfg      *config.Config
	router   *router.Router[http.Handler]
	notFound http.Handler
	trusted  []netip.Prefix
	routes   []RouteInfo
}

// RouteInfo describes one compiled route for /admin/routes.
type RouteInfo struct {
	Name      string   `json:"name"`
	Kind      string   `json:"kind"` // route | bff
	Host      string   `json:"host,omitempty"`
	Path      string   `json:"path"`
	Methods   []string `json:"methods,omitempty"`
	Upstreams []string `json:"upstreams,omitempty"`
	Auth      []string `json:"auth,omitempty"`
	Public    bool     `json:"public,omitempty"`
	RateLimit []string `json:"rate_limit,omitempty"`
	Owner     string   `json:"owner,omitempty"`
}

// New builds a gateway from a loaded config. It creates the long-lived
// registries and compiles the first runtime; it does not listen yet.
func New(cfg *config.Config, opts Options) (*Gateway, error) {
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	if opts.NodeID == "" {
		opts.NodeID = defaultNodeID()
	}
	g := &Gateway{opts: opts, log: logger, now: now, ids: reqctx.NewRequestIDs(""), buffers: proxy.NewBufferPool()}

	g.tel = telemetry.New(telemetry.Deps{
		Logger:         logger,
		AccessLog:      opts.AccessLog,
		Now:            opts.Now,
		Version:        opts.Version,
		LatencyBuckets: sloThresholds(cfg),
	})
	reg := g.tel.Registerer()
	store, err := newStoreSet(cfg.RateLimits, opts.NodeID, logger)
	if err != nil {
		g.tel.Close()
		return nil, err
	}
	g.store = store
	g.ups = upstream.NewRegistry(upstream.Deps{Logger: logger, Registerer: reg, Now: opts.Now})
	g.auths = auth.NewRegistry(auth.Deps{Logger: logger, Registerer: reg, Now: opts.Now})
	g.rl, err = ratelimit.NewService(cfg.RateLimits, ratelimit.Deps{
		Logger:     logger,
		Registerer: reg,
		Now:        opts.Now,
		Store:      store.exact,
		LeaseStore: store.lease,
		Nodes:      store.nodes,
	})
	if err != nil {
		g.closeRegistries()
		return nil, err
	}
	g.slo = slo.NewEngine(slo.Deps{
		Logger:     logger,
		Registerer: reg,
		Now:        opts.Now,
		Redis:      store.redisClient(),
		NodeID:     opts.NodeID,
	})
	g.tel.SetSLO(g.slo)
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "portico_idle_connections_released",
		Help: "Idle keep-alive connections holding no goroutine or buffers until their next request (server.idle_release_after).",
	}, func() float64 {
		if l := g.released.Load(); l != nil {
			return float64(l.Released())
		}
		return 0
	}))

	if cfg.Server.TLS != nil {
		g.certs, g.tlsCfg, err = listener.TLSConfig(cfg.Server.TLS)
		if err != nil {
			g.closeRegistries()
			return nil, fmt.Errorf("%s: server.tls: %w", cfg.Where("server.tls"), err)
		}
	}
	rt, err := g.compile(cfg)
	if err != nil {
		g.closeRegistries()
		return nil, err
	}
	g.current.Store(rt)
	return g, nil
}

func (g *Gateway) closeRegistries() {
	if g.slo != nil {
		g.slo.Close()
	}
	if g.auths != nil {
		_ = g.auths.Close()
	}
	if g.ups != nil {
		g.ups.Close()
	}
	if g.store != nil {
		g.store.close()
	}
	if g.tel != nil {
		if err := g.tel.Close(); err != nil {
			// A blocked access-log writer or a trace exporter that could
			// not flush: what was still queued is lost, and says so.
			g.log.Warn("closing telemetry", "err", err.Error())
		}
	}
}

// Close releases every registry (health checkers, JWKS refreshers, Redis
// clients, the access-log writer). Call it after the listeners are closed.
func (g *Gateway) Close() { g.closeRegistries() }

// Config returns the running config.
func (g *Gateway) Config() *config.Config { return g.current.Load().cfg }

// Routes lists the compiled routes of the running config.
func (g *Gateway) Routes() []RouteInfo { return g.current.Load().routes }

// Reload reads the config paths again and applies them. A config that fails
// to load, validate or compile leaves the running one in force; the error
// lists every problem. Changes that need a new socket or store are refused.
func (g *Gateway) Reload() error {
	cfg, err := g.loader.Load(g.opts.Paths...)
	if err != nil {
		g.tel.ConfigReload(false)
		g.log.Error("config reload failed; keeping the running config", "err", err.Error())
		return err
	}
	return g.Apply(cfg)
}

// ErrRestartRequired marks a reload refused because it changes settings
// that only a restart can apply.
var ErrRestartRequired = errors.New("restart required")

// Apply compiles cfg and, when it compiles, makes it the running config.
// In-flight requests finish on the runtime they started with.
func (g *Gateway) Apply(cfg *config.Config) error {
	g.reloadMu.Lock()
	defer g.reloadMu.Unlock()
	old := g.current.Load()
	if err := restartNeeded(old.cfg, cfg); err != nil {
		g.tel.ConfigReload(false)
		g.log.Error("config reload refused; keeping the running config", "err", err.Error())
		return err
	}
	var err error
	if g.certs != nil {
		// Certificates reload with the config; a bad file keeps the old
		// ones. They are read before compiling, since compiling already
		// updates the long-lived registries, and a refused reload must
		// leave the running config wholly in force.
		if _, _, err = listener.TLSConfig(cfg.Server.TLS); err != nil {
			err = fmt.Errorf("%s: server.tls: %w", cfg.Where("server.tls"), err)
		}
	}
	var rt *runtime
	if err == nil {
		rt, err = g.compile(cfg)
	}
	if err == nil && g.certs != nil {
		if err = g.certs.Reload(cfg.Server.TLS); err != nil {
			err = fmt.Errorf("%s: server.tls: %w", cfg.Where("server.tls"), err)
		}
	}
	if err != nil {
		// A config that failed to compile may have registered its new
		// route names; only the running config's stay.
		g.tel.RetainRoutes(old.routeNames())
		g.tel.ConfigReload(false)
		g.log.Error("config reload failed; keeping the running config", "err", err.Error())
		return err
	}
	g.current.Store(rt)
	if rel := g.released.Load(); rel != nil {
		rel.SetDelay(idleReleaseAfter(cfg))
	}
	if ps := g.servers.Load(); ps != nil {
		ps.apply(old.cfg, cfg)
	}
	// Live statistics and series of routes this config no longer has go.
	g.tel.RetainRoutes(rt.routeNames())
	g.tel.ConfigReload(true)
	g.log.Info("config reloaded", "routes", len(rt.routes), "files", cfg.Files)
	return nil
}

func (rt *runtime) routeNames() []string {
	names := make([]string, len(rt.routes))
	for i, ri := range rt.routes {
		names[i] = ri.Name
	}
	return names
}

// restartNeeded refuses reloads that change what a running process cannot
// change in place (DESIGN.md section 4, "Signals").
func restartNeeded(old, next *config.Config) error {
	var changed []string
	if old.Server.Listen != next.Server.Listen {
		changed = append(changed, "server.listen")
	}
	if (old.Server.TLS == nil) != (next.Server.TLS == nil) {
		changed = append(changed, "server.tls (enabling or disabling TLS)")
	}
	if old.Server.TLS != nil && next.Server.TLS != nil && tlsMinVersion(old.Server.TLS) != tlsMinVersion(next.Server.TLS) {
		// The listener's tls.Config holds it from the start; only the
		// certificates reload in place.
		changed = append(changed, "server.tls.min_version")
	}
	// DESIGN.md names listen addresses, TLS on or off and the store; these
	// three are refused too, each for its own reason. h2c is in the
	// protocol set Serve computes once at start (it could follow the
	// server rebuild a reload does; not done yet); the redirect listener is a socket of its own, opened at start;
	// and PROXY headers are read by a listener wrapper every connection
	// passes through, so turning it on or off in place would misread the
	// first bytes of connections already accepted.
	if old.Server.H2C != next.Server.H2C {
		changed = append(changed, "server.h2c")
	}
	if old.Server.HTTPRedirectListen != next.Server.HTTPRedirectListen {
		changed = append(changed, "server.http_redirect_listen")
	}
	if old.Server.ProxyProtocol != next.Server.ProxyProtocol {
		changed = append(changed, "server.proxy_protocol")
	}
	if old.Admin.Listen != next.Admin.Listen {
		changed = append(changed, "admin.listen")
	}
	if !sameStore(old.RateLimits.Store, next.RateLimits.Store) {
		changed = append(changed, "rate_limits.store")
	}
	if len(changed) == 0 {
		return nil
	}
	return fmt.Errorf("%w: the reload changes %v; restart the process to apply them", ErrRestartRequired, changed)
}

// tlsMinVersion is min_version with its default, so that writing the
// default out is no change.
func tlsMinVersion(t *config.ServerTLS) string {
	if t.MinVersion == "" {
		return "1.2"
	}
	return t.MinVersion
}

func sameStore(a, b config.Store) bool {
	if a.Type != b.Type || a.URL != b.URL || a.Username != b.Username || a.Password != b.Password ||
		a.Timeout != b.Timeout || len(a.Cluster) != len(b.Cluster) || (a.TLS == nil) != (b.TLS == nil) {
		return false
	}
	for i := range a.Cluster {
		if a.Cluster[i] != b.Cluster[i] {
			return false
		}
	}
	return a.TLS == nil || *a.TLS == *b.TLS
}

// ServeHTTP is the public entry point: it stamps the request (id, client IP,
// start time), cleans the path, matches a route and runs its chain.
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rt := g.current.Load()
	ctx, info := reqctx.NewContext(r.Context())
	info.Start = g.now()
	if id := r.Header.Get("X-Request-Id"); reqctx.ValidRequestID(id) {
		info.RequestID = id
		w.Header()["X-Request-Id"] = r.Header["X-Request-Id"][:1]
	} else {
		info.RequestID = g.ids.Next()
		// One slice serves both maps: neither is appended to in place.
		v := []string{info.RequestID}
		r.Header["X-Request-Id"] = v
		w.Header()["X-Request-Id"] = v
	}
	if g.draining.Load() {
		// Tell HTTP/1.1 clients to reconnect elsewhere while draining;
		// HTTP/2 clients get GOAWAY from Shutdown.
		w.Header().Set("Connection", "close")
	}
	info.ClientIP, info.PeerTrusted = clientIP(r, rt.trusted)
	r = r.WithContext(ctx)

	decoded, escaped, err := router.CleanPath(r.URL.EscapedPath())
	if err != nil {
		info.Route = telemetry.UnmatchedRoute
		rt.notFound.ServeHTTP(w, withProblem(r, problem.FromUpstream(err)))
		return
	}
	router.SetPath(r.URL, decoded, escaped)
	h, params, res := rt.router.Match(r, escaped, nil)
	switch res.Status {
	case router.Found:
		info.Params = params
		h.ServeHTTP(w, r)
	case router.MethodNotAllowed:
		info.Route = telemetry.UnmatchedRoute
		w.Header().Set("Allow", res.Allow)
		rt.notFound.ServeHTTP(w, withProblem(r, problem.New(http.StatusMethodNotAllowed, "method_not_allowed",
			"the route does not accept "+r.Method+"; allowed: "+res.Allow)))
	default:
		info.Route = telemetry.UnmatchedRoute
		rt.notFound.ServeHTTP(w, r)
	}
}

type problemKey struct{}

// withProblem hands an error to the unmatched chain, which renders it after
// telemetry has seen the request.
func withProblem(r *http.Request, e *problem.Error) *http.Request {
	return r.WithContext(context.WithValue(r.Context(), problemKey{}, e))
}

func unmatchedHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if e, ok := r.Context().Value(problemKey{}).(*problem.Error); ok {
			problem.Write(w, r, e)
			return
		}
		problem.Write(w, r, problem.New(http.StatusNotFound, "route_not_found", "no route matches "+r.Method+" "+r.URL.Path))
	})
}
