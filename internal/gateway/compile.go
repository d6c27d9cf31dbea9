package gateway

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/portico-gw/portico/internal/aggregate"
	"github.com/portico-gw/portico/internal/auth"
	"github.com/portico-gw/portico/internal/compress"
	"github.com/portico-gw/portico/internal/config"
	"github.com/portico-gw/portico/internal/cors"
	"github.com/portico-gw/portico/internal/proxy"
	"github.com/portico-gw/portico/internal/ratelimit"
	"github.com/portico-gw/portico/internal/reqctx"
	"github.com/portico-gw/portico/internal/router"
	"github.com/portico-gw/portico/internal/telemetry"
	"github.com/portico-gw/portico/internal/upstream"
)

// middleware is the one edge shape (STYLE.md habit 1).
type middleware = func(http.Handler) http.Handler

// chain applies mws so that the first one is the outermost.
func chain(h http.Handler, mws ...middleware) http.Handler {
	for i := len(mws) - 1; i >= 0; i-- {
		if mws[i] != nil {
			h = mws[i](h)
		}
	}
	return h
}

// compileErrors collects every compile problem, each naming its config
// position, so one reload reports all of them.
type compileErrors struct {
	cfg  *config.Config
	errs []error
}

func (c *compileErrors) add(field string, err error) {
	if err == nil {
		return
	}
	c.errs = append(c.errs, fmt.Errorf("%s: %s: %w", c.cfg.Where(field), field, err))
}

func (c *compileErrors) err() error { return errors.Join(c.errs...) }

// compile builds a runtime from cfg. The long-lived registries (upstream
// pools, auth key sets, rate-limit policies, SLOs) keep state by name
// across reloads; each prepares a plan first, the routes are built from the
// plans, and the plans are committed only once nothing else can fail, so a
// refused config leaves every registry as the running config needs it.
func (g *Gateway) compile(cfg *config.Config) (*runtime, error) {
	ce := &compileErrors{cfg: cfg}
	trusted := make([]netip.Prefix, 0, len(cfg.Server.TrustedProxies))
	for i, s := range cfg.Server.TrustedProxies {
		p, err := parsePrefix(s)
		ce.add(fmt.Sprintf("server.trusted_proxies[%d]", i), err)
		trusted = append(trusted, p)
	}

	upPlan, err := g.ups.Prepare(cfg.Upstreams)
	if err != nil {
		return nil, fmt.Errorf("upstreams: %w", err)
	}
	pools := upPlan.Pools()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	authPlan, err := g.auths.Prepare(ctx, cfg.Auth)
	if err != nil {
		return nil, fmt.Errorf("auth: %w", err)
	}
	authSet := authPlan.Set()
	limits, err := g.rl.Prepare(cfg.RateLimits.Policies, cfg.RateLimits)
	if err != nil {
		return nil, fmt.Errorf("rate_limits: %w", err)
	}
	sloPlan, err := g.slo.Prepare(cfg.SLOs)
	if err != nil {
		return nil, fmt.Errorf("slos: %w", err)
	}

	transports := make(map[string]http.RoundTripper, len(pools))
	for name, p := range pools {
		transports[name] = g.tel.TraceTransport(name, p)
	}
	stripIdentity := auth.StripIdentityHeaders(authSet.IdentityHeaders())
	recover := recoverer(g.log)

	rt := &runtime{cfg: cfg, trusted: trusted}
	var entries []router.Entry[http.Handler]

	for i, r := range cfg.Routes {
		field := fmt.Sprintf("routes[%d]", i)
		h, err := g.routeHandler(cfg, r, pools, transports, trusted)
		if err != nil {
			ce.add(field, err)
			continue
		}
		edge, err := g.edge(r.Name, field, edgeSpec{
			auth: r.Auth, public: r.Public, scopes: r.Scopes, rateLimit: r.RateLimit,
			cors: r.CORS, compression: r.Compression, minBytes: int64(r.CompressionMinBytes),
		}, authSet, limits)
		if err != nil {
			ce.add(field, err)
			continue
		}
		mws := []middleware{g.tel.Middleware(r.Name), recover, routeNameMW(r.Name), stripIdentity,
			stripForeignKeys(cfg, r.Auth)}
		mws = append(mws, edge...)
		entries = append(entries, router.Entry[http.Handler]{
			Spec: router.Spec{Host: r.Match.Host, Path: r.Match.Path, Methods: r.Match.Methods,
				Headers: r.Match.Headers, Query: r.Match.Query},
			Value: chain(h, mws...),
		})
		ups := slices.Clone([]string{r.Upstream})
		if r.Upstream == "" {
			ups = ups[:0]
			for _, w := range r.Upstreams {
				ups = append(ups, w.Name)
			}
		}
		rt.routes = append(rt.routes, RouteInfo{Name: r.Name, Kind: "route", Host: r.Match.Host, Path: r.Match.Path,
			Methods: r.Match.Methods, Upstreams: ups, Auth: r.Auth, Public: r.Public, RateLimit: r.RateLimit})
	}

	for _, name := range sortedKeys(cfg.BFFs) {
		b := cfg.BFFs[name]
		for j, ep := range b.Endpoints {
			field := fmt.Sprintf("bffs.%s.endpoints[%d]", name, j)
			epName := b.Name + "/" + ep.Name
			h, err := aggregate.NewEndpoint(b, ep, aggregate.Deps{Logger: g.log, Upstreams: transports, Now: g.opts.Now})
			if err != nil {
				ce.add(field, err)
				continue
			}
			edge, err := g.edge(epName, field, edgeSpec{
				auth: b.Auth, public: b.Public, scopes: b.Scopes, rateLimit: b.RateLimit,
				cors: b.CORS, compression: b.Compression, minBytes: int64(b.CompressionMinBytes),
			}, authSet, limits)
			if err != nil {
				ce.add(field, err)
				continue
			}
			mws := []middleware{g.tel.Middleware(epName), recover, routeNameMW(epName), stripIdentity,
				stripForeignKeys(cfg, b.Auth)}
			mws = append(mws, edge...)
			path := joinPath(b.Prefix, ep.Path)
			method := ep.Method
			if method == "" {
				method = http.MethodGet
			}
			entries = append(entries, router.Entry[http.Handler]{
				Spec:  router.Spec{Host: b.Host, Path: path, Methods: []string{method}},
				Value: chain(h, mws...),
			})
			var ups []string
			for _, be := range ep.Backends {
				if !slices.Contains(ups, be.Upstream) {
					ups = append(ups, be.Upstream)
				}
			}
			rt.routes = append(rt.routes, RouteInfo{Name: epName, Kind: "bff", Host: b.Host, Path: path,
				Methods: []string{method}, Upstreams: ups, Auth: b.Auth, Public: b.Public, RateLimit: b.RateLimit, Owner: b.Owner})
		}
	}
	if err := ce.err(); err != nil {
		return nil, err
	}
	rtr, err := router.New(entries)
	if err != nil {
		return nil, err
	}
	rt.router = rtr
	rt.notFound = chain(unmatchedHandler(), g.tel.Middleware(telemetry.UnmatchedRoute), recover, stripIdentity)
	// What is process-wide changes last, once nothing else can fail: a
	// config refused above must not drop an upstream the running config
	// routes to, stop its key sets refreshing, turn the access log off, or
	// stop redacting a credential parameter the running config reads.
	// ApplyTracing fails only without changing anything; the commits only
	// when the gateway is closing.
	if err := g.tel.ApplyTracing(cfg.Tracing); err != nil {
		return nil, fmt.Errorf("tracing: %w", err)
	}
	if err := upPlan.Commit(); err != nil {
		return nil, fmt.Errorf("upstreams: %w", err)
	}
	if err := authPlan.Commit(); err != nil {
		return nil, fmt.Errorf("auth: %w", err)
	}
	limits.Commit()
	sloPlan.Commit()
	g.tel.SetAccessLog(cfg.Logging.AccessLog == nil || *cfg.Logging.AccessLog)
	g.tel.SetRedactedQueryParams(credentialQueryParams(cfg))
	return rt, nil
}

// routeNameMW records the matched route in the request's Info, for the
// stages and logs that follow.
func routeNameMW(name string) middleware {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if in := reqctx.From(r.Context()); in != nil {
				in.Route = name
			}
			next.ServeHTTP(w, r)
		})
	}
}

type edgeSpec struct {
	auth, scopes, rateLimit []string
	public                  bool
	cors                    *config.CORS
	compression             []string
	minBytes                int64
}

// edge builds the stages between telemetry and the handler, in the order of
// DESIGN.md section 2: CORS, rate limits keyed before authentication, auth,
// rate limits keyed by identity, compression.
func (g *Gateway) edge(route, field string, s edgeSpec, authSet *auth.Set, limits *ratelimit.Plan) ([]middleware, error) {
	var mws []middleware
	if s.cors != nil {
		mw, err := cors.New(s.cors)
		if err != nil {
			return nil, fmt.Errorf("cors: %w", err)
		}
		mws = append(mws, mw)
	}
	if len(s.rateLimit) > 0 {
		mw, err := limits.Middleware(route, s.rateLimit, ratelimit.PreAuth)
		if err != nil {
			return nil, fmt.Errorf("rate_limit: %w", err)
		}
		mws = append(mws, mw)
	}
	if !s.public {
		mw, err := authSet.Middleware(route, s.auth, s.scopes)
		if err != nil {
			return nil, fmt.Errorf("auth: %w", err)
		}
		mws = append(mws, mw)
	}
	if len(s.rateLimit) > 0 {
		mw, err := limits.Middleware(route, s.rateLimit, ratelimit.PostAuth)
		if err != nil {
			return nil, fmt.Errorf("rate_limit: %w", err)
		}
		mws = append(mws, mw)
	}
	if len(s.compression) > 0 {
		mw, err := compress.Middleware(s.compression, s.minBytes, compress.Deps{Logger: g.log})
		if err != nil {
			return nil, fmt.Errorf("compression: %w", err)
		}
		mws = append(mws, mw)
	}
	return mws, nil
}

// routeHandler builds the proxy handler of a plain route.
func (g *Gateway) routeHandler(cfg *config.Config, r *config.Route, pools map[string]*upstream.Pool,
	transports map[string]http.RoundTripper, trusted []netip.Prefix) (http.Handler, error) {
	split := r.Upstreams
	if r.Upstream != "" {
		split = []config.WeightedUpstream{{Name: r.Upstream, Weight: 1}}
	}
	backends := make([]proxy.Backend, 0, len(split))
	for _, s := range split {
		up, ok := cfg.Upstreams[s.Name]
		if !ok || pools[s.Name] == nil {
			return nil, fmt.Errorf("upstream %q is not defined", s.Name)
		}
		target, err := url.Parse(up.Targets[0].URL)
		if err != nil {
			return nil, fmt.Errorf("upstream %q: %w", s.Name, err)
		}
		backends = append(backends, proxy.Backend{
			Name: s.Name, Weight: s.Weight, Transport: transports[s.Name], Target: target, PreserveHost: up.PreserveHost,
		})
	}
	maxBody := cfg.Server.MaxBodyBytes
	if r.MaxBodyBytes > 0 {
		maxBody = r.MaxBodyBytes
	}
	return proxy.New(proxy.Config{
		Route:           r.Name,
		Backends:        backends,
		Rewrite:         r.Rewrite,
		RequestHeaders:  r.RequestHeaders,
		ResponseHeaders: r.ResponseHeaders,
		Timeout:         r.Timeout,
		MaxBodyBytes:    maxBody,
		TrustedProxies:  trusted,
		WebSocket:       r.WebSocket,
		// With a CORS stage at the gateway, an upstream's own CORS headers
		// would make browsers see two answers.
		StripUpstreamCORS: r.CORS != nil,
	}, proxy.Deps{Logger: g.log, BufferPool: g.buffers})
}

func parsePrefix(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("invalid CIDR %q", s)
	}
	return netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()), nil
}

// stripForeignKeys removes the API keys of providers a route does not use.
// The auth stage removes the credentials of the route's own providers;
// a key sent to any other route (public, or guarded by a JWT) must not reach
// the upstream either. Nil when there is nothing to remove.
func stripForeignKeys(cfg *config.Config, routeAuth []string) middleware {
	var headers, params []string
	for _, name := range sortedKeys(cfg.Auth) {
		p := cfg.Auth[name]
		if p.Type != "api_key" || slices.Contains(routeAuth, name) {
			continue
		}
		if p.Header != "" {
			headers = append(headers, http.CanonicalHeaderKey(p.Header))
		}
		if p.Query != "" {
			params = append(params, p.Query)
		}
	}
	if len(headers) == 0 && len(params) == 0 {
		return nil
	}
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			for _, h := range headers {
				delete(r.Header, h)
			}
			if len(params) > 0 && r.URL.RawQuery != "" {
				r.URL.RawQuery = dropQueryParams(r.URL.RawQuery, params)
			}
			next.ServeHTTP(w, r)
		})
	}
}

// dropQueryParams removes the named parameters from a raw query, keeping
// every other pair exactly as the client wrote it. It allocates only when
// a named parameter is present.
func dropQueryParams(raw string, names []string) string {
	// A name may arrive percent-encoded, so any escape means a closer look.
	present := strings.IndexByte(raw, '%') >= 0
	for _, n := range names {
		if present || strings.Contains(raw, n) {
			present = true
			break
		}
	}
	if !present {
		return raw
	}
	var b strings.Builder
	for pair := range strings.SplitSeq(raw, "&") {
		key, _, _ := strings.Cut(pair, "=")
		if k, err := url.QueryUnescape(key); err == nil && slices.Contains(names, k) {
			continue
		}
		if b.Len() > 0 {
			b.WriteByte('&')
		}
		b.WriteString(pair)
	}
	return b.String()
}

// credentialQueryParams names the query parameters that carry credentials
// in this config, so the access log redacts their values.
func credentialQueryParams(cfg *config.Config) []string {
	var names []string
	for _, p := range cfg.Auth {
		if p.Query != "" {
			names = append(names, p.Query)
		}
		if p.TokenFrom != nil && p.TokenFrom.Query != "" {
			names = append(names, p.TokenFrom.Query)
		}
	}
	return names
}

func joinPath(prefix, p string) string {
	if prefix == "" || prefix == "/" {
		return p
	}
	if len(prefix) > 0 && prefix[len(prefix)-1] == '/' {
		prefix = prefix[:len(prefix)-1]
	}
	return prefix + p
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
