package config

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"
)

// validator checks a merged, defaulted config and collects every problem.
type validator struct {
	cfg    *Config
	pos    map[string]pos
	failed map[string]bool
	errs   *Errors
}

// errf reports a problem at field, unless field or one of its ancestors
// already failed to decode (its zero value would only repeat that error).
func (v *validator) errf(field, format string, args ...any) {
	for f := field; f != ""; f = parentField(f) {
		if v.failed[f] {
			return
		}
	}
	p, _ := lookupPos(v.pos, field)
	v.errs.add(errAt(p, field, format, args...))
}

// enum reports a value outside allowed.
func (v *validator) enum(field, val string, allowed ...string) {
	if !slices.Contains(allowed, val) {
		v.errf(field, "invalid value %q (one of %s)", val, strings.Join(allowed, ", "))
	}
}

func idx(field string, i int) string { return field + "[" + strconv.Itoa(i) + "]" }

func (v *validator) validate() {
	c := v.cfg
	v.server()
	v.admin()
	v.enum("logging.level", c.Logging.Level, "debug", "info", "warn", "error")
	v.tracing()
	for _, name := range sortedKeys(c.Upstreams) {
		v.upstream("upstreams."+name, name, c.Upstreams[name])
	}
	for _, name := range sortedKeys(c.Auth) {
		v.auth("auth."+name, name, c.Auth[name])
	}
	v.rateLimits()
	routeNames := map[string]string{}
	for i, r := range c.Routes {
		f := idx("routes", i)
		v.route(f, r)
		if r.Name != "" {
			if first, dup := routeNames[r.Name]; dup {
				v.errf(f+".name", "duplicate route %q (first defined at %s)", r.Name, v.where(first+".name"))
			} else {
				routeNames[r.Name] = f
			}
		}
	}
	for _, name := range sortedKeys(c.BFFs) {
		v.bff("bffs."+name, name, c.BFFs[name])
	}
	v.conflicts()
	sloNames := map[string]string{}
	for i, s := range c.SLOs {
		f := idx("slos", i)
		v.slo(f, s)
		if s.Name != "" {
			if first, dup := sloNames[s.Name]; dup {
				v.errf(f+".name", "duplicate SLO %q (first defined at %s)", s.Name, v.where(first+".name"))
			} else {
				sloNames[s.Name] = f
			}
		}
	}
}

func (v *validator) where(field string) string {
	p, _ := lookupPos(v.pos, field)
	return p.String()
}

func sortedKeys[M ~map[string]V, V any](m M) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// name checks a name used in metrics labels, SLO references and errors.
func (v *validator) name(field, kind, name string) {
	if name == "" {
		v.errf(field, "%s name is required", kind)
		return
	}
	ok := len(name) <= 128
	for i := 0; i < len(name) && ok; i++ {
		c := name[i]
		ok = c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || (c == '.' && i > 0)
	}
	if !ok {
		v.errf(field, "invalid %s name %q (letters, digits, '.', '_' and '-')", kind, name)
	}
}

// listen checks a host:port listen address.
func (v *validator) listen(field, addr string) (host string, ok bool) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		v.errf(field, "invalid listen address %q (host:port, e.g. :8080 or 127.0.0.1:9901)", addr)
		return "", false
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		v.errf(field, "invalid port in listen address %q", addr)
		return "", false
	}
	return host, true
}

// url checks an absolute URL with one of schemes and a host.
func (v *validator) url(field, raw string, schemes ...string) {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || !slices.Contains(schemes, u.Scheme) {
		v.errf(field, "invalid URL %q (need an absolute %s URL with a host)", raw, strings.Join(schemes, ", "))
	}
}

func (v *validator) positive(field string, n int64) {
	if n <= 0 {
		v.errf(field, "must be greater than 0")
	}
}

func (v *validator) server() {
	s := &v.cfg.Server
	v.listen("server.listen", s.Listen)
	if s.HTTPRedirectListen != "" {
		v.listen("server.http_redirect_listen", s.HTTPRedirectListen)
		if s.TLS == nil {
			v.errf("server.http_redirect_listen", "needs server.tls (it redirects to https)")
		}
	}
	if t := s.TLS; t != nil {
		v.enum("server.tls.min_version", t.MinVersion, "1.2", "1.3")
		switch {
		case (t.Cert == "") != (t.Key == ""):
			v.errf("server.tls", "cert and key go together")
		case t.Cert == "" && len(t.Certificates) == 0:
			v.errf("server.tls", "needs cert and key, or certificates")
		}
		for i, ck := range t.Certificates {
			if ck.Cert == "" || ck.Key == "" {
				v.errf(idx("server.tls.certificates", i), "cert and key are both required")
			}
		}
	}
	v.positive("server.read_header_timeout", int64(s.ReadHeaderTimeout))
	v.positive("server.max_header_bytes", int64(s.MaxHeaderBytes))
	v.positive("server.max_body_bytes", int64(s.MaxBodyBytes))
	for i, p := range s.TrustedProxies {
		if _, err := netip.ParsePrefix(p); err != nil {
			v.errf(idx("server.trusted_proxies", i), "invalid CIDR %q (e.g. 10.0.0.0/8; one address is 10.1.2.3/32)", p)
		}
	}
}

func (v *validator) admin() {
	a := &v.cfg.Admin
	host, ok := v.listen("admin.listen", a.Listen)
	if ok && a.Token == "" && !v.failed["admin.token"] && !isLoopback(host) {
		v.errf("admin.listen", "%q is not a loopback address, so admin.token is required", a.Listen)
	}
	// Header values lose surrounding whitespace and cannot hold control
	// characters, so such a token (often a secret file's trailing newline,
	// through ${VAR}) would refuse every request.
	if t := a.Token; t != strings.TrimSpace(t) || !httpguts.ValidHeaderFieldValue(t) {
		v.errf("admin.token", "has surrounding whitespace or control characters (a trailing newline from a secret file?): "+
			"no Authorization header can carry it, so every admin request would be refused")
	}
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

func (v *validator) tracing() {
	t := v.cfg.Tracing
	if t == nil {
		return
	}
	if t.OTLPEndpoint == "" {
		v.errf("tracing.otlp_endpoint", "is required when tracing is configured")
	} else {
		v.url("tracing.otlp_endpoint", t.OTLPEndpoint, "http", "https")
	}
	if r := *t.SampleRatio; r < 0 || r > 1 {
		v.errf("tracing.sample_ratio", "must be between 0 and 1, got %v", r)
	}
}

// MaxWeight bounds target and split weights: the balancers sum weights in
// an int and draw below the sum, so a sum that overflows would make every
// pick panic.
const MaxWeight = 1_000_000

func (v *validator) upstream(f, name string, u *Upstream) {
	v.name(f, "upstream", name)
	if len(u.Targets) == 0 {
		v.errf(f+".targets", "at least one target is required")
	}
	urls := map[string]int{}
	for i, t := range u.Targets {
		tf := idx(f+".targets", i)
		if t.URL == "" {
			v.errf(tf+".url", "is required")
		} else {
			v.url(tf+".url", t.URL, "http", "https", "h2c")
			// The upstream pool keys health and ejection state by URL and
			// refuses a repeat when it compiles; a heavier share is weight.
			if first, dup := urls[t.URL]; dup {
				v.errf(tf+".url", "%q is listed twice (first at %s; use weight for a larger share)", t.URL, v.where(idx(f+".targets", first)+".url"))
			} else {
				urls[t.URL] = i
			}
		}
		switch {
		case t.Weight < 0:
			v.errf(tf+".weight", "must not be negative")
		case t.Weight > MaxWeight:
			v.errf(tf+".weight", "must be at most %d", MaxWeight)
		}
	}
	v.enum(f+".balance", u.Balance, "round_robin", "least_request", "random", "consistent_hash")
	v.enum(f+".http1_client", u.HTTP1Client, "lean", "standard")
	switch {
	case u.Balance == "consistent_hash" && u.HashKey == "":
		v.errf(f+".hash_key", "is required with balance consistent_hash (ip, header:NAME or claim:NAME)")
	case u.Balance != "consistent_hash" && u.HashKey != "":
		v.errf(f+".hash_key", "only applies to balance consistent_hash")
	case u.HashKey != "":
		if err := checkKeyPart(u.HashKey, false); err != nil {
			v.errf(f+".hash_key", "%s", err.Error())
		}
	}
	if *u.Retries < 0 || *u.Retries > 10 {
		v.errf(f+".retries", "must be between 0 and 10")
	}
	if b := *u.RetryBudget; b < 0 || b > 1 {
		v.errf(f+".retry_budget", "must be between 0 and 1 (a share of requests)")
	}
	if u.MaxInflight < 0 {
		v.errf(f+".max_inflight", "must not be negative (0 means the default, 1000)")
	}
	if d := u.ReadIdleTimeout; d != nil && *d != 0 && *d < Duration(time.Second) {
		// One lost segment stalls a healthy body for a retransmission
		// timeout, up to 1 s before the first RTT sample (RFC 6298 2.1).
		v.errf(f+".read_idle_timeout", "must be 0 (off) or at least 1s, got %s", *d)
	}
	if h := u.HealthCheck; h != nil {
		hf := f + ".health_check"
		if !strings.HasPrefix(h.Path, "/") {
			v.errf(hf+".path", "must start with /")
		}
		if h.Timeout > h.Interval {
			v.errf(hf+".timeout", "must not exceed interval (%s)", h.Interval)
		}
		if h.ExpectStatus < 100 || h.ExpectStatus > 599 {
			v.errf(hf+".expect_status", "must be an HTTP status (100-599)")
		}
		if h.UnhealthyThreshold < 1 {
			v.errf(hf+".unhealthy_threshold", "must be at least 1")
		}
		if h.HealthyThreshold < 1 {
			v.errf(hf+".healthy_threshold", "must be at least 1")
		}
		v.enum(hf+".all_unhealthy", h.AllUnhealthy, "fail", "ignore")
	}
	if p := u.Passive; p != nil && p.ConsecutiveFailures < 1 {
		v.errf(f+".passive.consecutive_failures", "must be at least 1")
	}
	if b := u.CircuitBreaker; b != nil {
		if b.FailureRatio <= 0 || b.FailureRatio > 1 {
			v.errf(f+".circuit_breaker.failure_ratio", "must be in (0, 1]")
		}
		if b.MinRequests < 1 {
			v.errf(f+".circuit_breaker.min_requests", "must be at least 1")
		}
	}
	if t := u.TLS; t != nil && (t.Cert == "") != (t.Key == "") {
		v.errf(f+".tls", "cert and key go together")
	}
}

func (v *validator) auth(f, name string, a *AuthProvider) {
	v.name(f, "auth provider", name)
	switch a.Type {
	case "jwt":
		v.jwt(f, a)
	case "api_key":
		v.apiKey(f, a)
	case "":
		v.errf(f+".type", "is required (jwt or api_key)")
	default:
		v.errf(f+".type", "invalid value %q (one of jwt, api_key)", a.Type)
	}
}

func (v *validator) jwt(f string, a *AuthProvider) {
	n := 0
	for _, s := range []string{a.JWKSURL, a.JWKSFile, a.Secret} {
		if s != "" {
			n++
		}
	}
	if n != 1 {
		v.errf(f, "a jwt provider needs exactly one of jwks_url, jwks_file and secret")
	}
	if a.JWKSURL != "" {
		v.url(f+".jwks_url", a.JWKSURL, "http", "https")
	}
	if a.Secret != "" && len(a.Secret) < 32 {
		v.errf(f+".secret", "must be at least 32 bytes (RFC 7518 section 3.2)")
	}
	for i, alg := range a.Algorithms {
		af := idx(f+".algorithms", i)
		switch {
		case !isJWTAlgorithm(alg):
			v.errf(af, "unknown algorithm %q (one of %s)", alg, strings.Join(jwtAlgorithms, ", "))
		case IsHMAC(alg) && a.Secret == "" && n == 1:
			v.errf(af, "%s needs secret (HMAC algorithms never verify with a key set)", alg)
		case !IsHMAC(alg) && a.Secret != "":
			v.errf(af, "%s cannot be used with secret (only HS256, HS384 and HS512)", alg)
		}
	}
	if t := a.TokenFrom; t != nil {
		set := 0
		for _, s := range []string{t.Header, t.Cookie, t.Query} {
			if s != "" {
				set++
			}
		}
		if set != 1 {
			v.errf(f+".token_from", "needs exactly one of header, cookie and query")
		}
		if t.Header != "" && !httpguts.ValidHeaderFieldName(t.Header) {
			v.errf(f+".token_from.header", "invalid header name %q", t.Header)
		}
	}
	for _, claim := range sortedKeys(a.ForwardClaims) {
		if h := a.ForwardClaims[claim]; !httpguts.ValidHeaderFieldName(h) {
			v.errf(f+".forward_claims."+claim, "invalid header name %q", h)
		}
	}
	for key, set := range map[string]bool{"header": a.Header != "", "query": a.Query != "", "keys": a.Keys != nil, "forward_id": a.ForwardID != ""} {
		if set {
			v.errf(f+"."+key, "only applies to type api_key")
		}
	}
}

func (v *validator) apiKey(f string, a *AuthProvider) {
	for key, set := range map[string]bool{
		"jwks_url": a.JWKSURL != "", "jwks_file": a.JWKSFile != "", "secret": a.Secret != "",
		"issuer": a.Issuer != "", "audiences": a.Audiences != nil, "algorithms": a.Algorithms != nil,
		"leeway": a.Leeway != 0, "token_from": a.TokenFrom != nil, "forward_token": a.ForwardToken != nil,
		"forward_claims": a.ForwardClaims != nil,
	} {
		if set {
			v.errf(f+"."+key, "only applies to type jwt")
		}
	}
	if a.Header != "" && a.Query != "" {
		v.errf(f, "an api_key provider reads the key from header or query, not both")
	}
	if a.Header != "" && !httpguts.ValidHeaderFieldName(a.Header) {
		v.errf(f+".header", "invalid header name %q", a.Header)
	}
	if a.ForwardID != "" && !httpguts.ValidHeaderFieldName(a.ForwardID) {
		v.errf(f+".forward_id", "invalid header name %q", a.ForwardID)
	}
	if len(a.Keys) == 0 {
		v.errf(f+".keys", "at least one key is required")
	}
	ids, hashes := map[string]int{}, map[string]int{}
	for i, k := range a.Keys {
		kf := idx(f+".keys", i)
		if k.ID == "" {
			v.errf(kf+".id", "is required")
		} else if first, dup := ids[k.ID]; dup {
			v.errf(kf+".id", "duplicate key id %q (first defined at %s)", k.ID, v.where(idx(f+".keys", first)+".id"))
		} else {
			ids[k.ID] = i
		}
		if !isHex64(k.SHA256) {
			v.errf(kf+".sha256", "must be the 64 hex digits of the key's SHA-256 (plaintext keys never go in config)")
		} else if first, dup := hashes[strings.ToLower(k.SHA256)]; dup {
			// One key cannot name two consumers; the auth stage refuses it.
			v.errf(kf+".sha256", "the same key as keys[%d] (at %s)", first, v.where(idx(f+".keys", first)+".sha256"))
		} else {
			hashes[strings.ToLower(k.SHA256)] = i
		}
	}
}

func isHex64(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}

var (
	modes         = []string{"exact", "lease"}
	storeErrModes = []string{"local", "fail_open", "fail_closed"}
)

func (v *validator) rateLimits() {
	rl := &v.cfg.RateLimits
	const f = "rate_limits"
	s := &rl.Store
	switch s.Type {
	case "memory":
		for key, set := range map[string]bool{"url": s.URL != "", "cluster": s.Cluster != nil, "username": s.Username != "", "password": s.Password != "", "tls": s.TLS != nil} {
			if set {
				v.errf(f+".store."+key, "only applies to type redis")
			}
		}
	case "redis":
		switch {
		case s.URL == "" && len(s.Cluster) == 0:
			v.errf(f+".store", "a redis store needs url or cluster")
		case s.URL != "" && len(s.Cluster) > 0:
			v.errf(f+".store", "a redis store takes url or cluster, not both")
		case s.URL != "":
			v.url(f+".store.url", s.URL, "redis", "rediss")
		}
		for i, a := range s.Cluster {
			if _, _, err := net.SplitHostPort(a); err != nil {
				v.errf(idx(f+".store.cluster", i), "invalid address %q (host:port)", a)
			}
		}
		if t := s.TLS; t != nil && (t.Cert == "") != (t.Key == "") {
			v.errf(f+".store.tls", "cert and key go together")
		}
	default:
		v.errf(f+".store.type", "invalid value %q (one of memory, redis)", s.Type)
	}
	if rl.ExpectedNodes < 1 {
		v.errf(f+".expected_nodes", "must be at least 1")
	}
	v.enum(f+".mode", rl.Mode, modes...)
	v.enum(f+".on_store_error", rl.OnStoreError, storeErrModes...)
	v.enum(f+".headers", rl.Headers, "ietf", "legacy", "none")
	for _, name := range sortedKeys(rl.Policies) {
		v.policy(f+".policies."+name, name, rl.Policies[name])
	}
}

// MaxSlidingWindowLogLimit bounds sliding_window_log, which stores one
// timestamp per request in the window.
const MaxSlidingWindowLogLimit = 1000

func (v *validator) policy(f, name string, p *Policy) {
	v.name(f, "policy", name)
	windowed := false
	switch p.Algorithm {
	case "fixed_window", "sliding_window_log", "sliding_window_counter":
		windowed = true
		v.positive(f+".limit", p.Limit)
		v.positive(f+".window", int64(p.Window))
		if p.Algorithm == "sliding_window_log" && p.Limit > MaxSlidingWindowLogLimit {
			v.errf(f+".limit", "sliding_window_log keeps one entry per request: limit must be at most %d (use sliding_window_counter)", MaxSlidingWindowLogLimit)
		}
		for key, set := range map[string]bool{"rate": p.Rate != 0, "per": p.Per != 0, "burst": p.Burst != 0, "max_delay": p.MaxDelay != 0} {
			if set {
				v.errf(f+"."+key, "only applies to token_bucket and leaky_bucket")
			}
		}
	case "token_bucket", "leaky_bucket":
		v.positive(f+".rate", p.Rate)
		v.positive(f+".per", int64(p.Per))
		if p.Burst < 1 {
			v.errf(f+".burst", "must be at least 1")
		}
		if p.MaxDelay != 0 && p.Algorithm != "leaky_bucket" {
			v.errf(f+".max_delay", "only applies to leaky_bucket")
		}
		for key, set := range map[string]bool{"limit": p.Limit != 0, "window": p.Window != 0} {
			if set {
				v.errf(f+"."+key, "only applies to fixed_window, sliding_window_log and sliding_window_counter")
			}
		}
	case "":
		v.errf(f+".algorithm", "is required (fixed_window, sliding_window_log, sliding_window_counter, token_bucket or leaky_bucket)")
		return
	default:
		v.errf(f+".algorithm", "invalid value %q (one of fixed_window, sliding_window_log, sliding_window_counter, token_bucket, leaky_bucket)", p.Algorithm)
		return
	}
	if err := checkKeyExpr(p.Key); err != nil {
		v.errf(f+".key", "%s", err.Error())
	}
	// An inherited bad value is reported once, at rate_limits.
	if rl := &v.cfg.RateLimits; p.Mode != rl.Mode {
		v.enum(f+".mode", p.Mode, modes...)
	}
	if rl := &v.cfg.RateLimits; p.OnStoreError != rl.OnStoreError {
		v.enum(f+".on_store_error", p.OnStoreError, storeErrModes...)
	}
	v.enum(f+".on_missing_key", p.OnMissingKey, "deny", "skip", "shared")
	if p.Cost < 1 {
		v.errf(f+".cost", "must be at least 1")
	}
	v.policyBounds(f, p, nil)
	if limit, what := p.Limit, "limit"; windowed || p.Burst > 0 {
		if !windowed {
			limit, what = p.Burst, "burst"
		}
		if limit > 0 && p.Cost > limit {
			v.errf(f+".cost", "%d exceeds the %s %d: no request could ever pass", p.Cost, what, limit)
		}
	}
	if len(p.Overrides) > 0 && checkKeyExpr(p.Key) == nil && !needsIdentity(p.Key) {
		v.errf(f+".overrides", "overrides are chosen by consumer or claim value, so key must include consumer or claim:NAME (it is %q)", p.Key)
	}
	for _, who := range sortedKeys(p.Overrides) {
		o := p.Overrides[who]
		of := f + ".overrides." + who
		v.policyBounds(of, p, o)
		if windowed {
			if o.Rate != 0 || o.Per != 0 || o.Burst != 0 {
				v.errf(of, "%s overrides take limit and window", p.Algorithm)
			}
			if o.Limit < 0 {
				v.errf(of+".limit", "must not be negative")
			}
			if p.Algorithm == "sliding_window_log" && o.Limit > MaxSlidingWindowLogLimit {
				v.errf(of+".limit", "must be at most %d for sliding_window_log", MaxSlidingWindowLogLimit)
			}
		} else {
			if o.Limit != 0 || o.Window != 0 {
				v.errf(of, "%s overrides take rate, per and burst", p.Algorithm)
			}
			if o.Rate < 0 || o.Burst < 0 {
				v.errf(of, "rate and burst must not be negative")
			}
		}
	}
}

// The rate limiter keeps its arithmetic exact (below 2^53) and refuses a
// policy outside these bounds when it compiles; they are checked here too,
// so that a config that validates also runs. They are algo.MaxLimit,
// algo.MaxWindow and algo.MaxProduct, copied because algo imports this
// package; TestPolicyBoundsMatchRateLimiter keeps the two in step.
const (
	maxPolicyLimit    = int64(1) << 40 // limit; burst and rate for buckets
	maxPolicyWindowUS = int64(1) << 45 // window, or per/rate for buckets, in µs (about 407d)
	maxPolicyProduct  = int64(1) << 50 // burst times per/rate, and max_delay, in µs (about 35 years)
)

// policyBounds checks the numbers a policy compiles to: the policy's own
// when o is nil, else those of override o (its unset values come from the
// policy, as the rate limiter takes them), reported at f. Values that are
// zero or negative are reported elsewhere.
func (v *validator) policyBounds(f string, p *Policy, o *PolicyOverride) {
	const longWindow = "is longer than the rate limiter supports (about 407d)"
	switch p.Algorithm {
	case "fixed_window", "sliding_window_log", "sliding_window_counter":
		limit, window := p.Limit, p.Window
		if o != nil {
			limit, window = o.Limit, o.Window
		}
		if limit > maxPolicyLimit {
			v.errf(f+".limit", "must be at most %d", maxPolicyLimit)
		}
		if us := window.D().Microseconds(); window > 0 && us < 1 {
			v.errf(f+".window", "must be at least 1µs")
		} else if us > maxPolicyWindowUS {
			v.errf(f+".window", "%s %s", window, longWindow)
		}
	case "token_bucket", "leaky_bucket":
		rate, per, burst := p.Rate, p.Per, p.Burst
		at := func(key string) string { return f + "." + key }
		if o != nil {
			// As the rate limiter compiles an override: a token bucket
			// whose burst followed its rate follows the new rate.
			followsRate := p.Algorithm == "token_bucket" && p.Burst == p.Rate
			if o.Rate > 0 {
				rate = o.Rate
				if followsRate && o.Burst == 0 {
					burst = rate
				}
			}
			if o.Per > 0 {
				per = o.Per
			}
			if o.Burst > 0 {
				burst = o.Burst
			}
			if o.Rate <= 0 && o.Per <= 0 && o.Burst <= 0 {
				return // nothing of its own
			}
			at = func(string) string { return f }
		}
		if rate <= 0 || per <= 0 || burst <= 0 {
			return
		}
		perUS := per.D().Microseconds()
		switch {
		case rate > maxPolicyLimit:
			v.errf(at("rate"), "rate %d must be at most %d", rate, maxPolicyLimit)
			return
		case burst > maxPolicyLimit:
			v.errf(at("burst"), "burst %d must be at most %d", burst, maxPolicyLimit)
			return
		case perUS < 1:
			v.errf(at("per"), "per %s must be at least 1µs", per)
			return
		}
		interval := perUS / rate // µs per request, rounded up as the limiter does
		if perUS%rate != 0 {
			interval++
		}
		switch {
		case interval > maxPolicyWindowUS:
			v.errf(at("per"), "one request every %s %s", time.Duration(interval)*time.Microsecond, longWindow)
		case burst > maxPolicyProduct/interval:
			v.errf(at("burst"), "burst %d refills at one per %s, which takes longer than the rate limiter supports (about 35 years)",
				burst, time.Duration(interval)*time.Microsecond)
		}
		if o == nil && p.MaxDelay.D().Microseconds() > maxPolicyProduct {
			v.errf(f+".max_delay", "%s is longer than the rate limiter supports (about 35 years)", p.MaxDelay)
		}
	}
}

// access checks the auth/public/scopes/rate_limit block shared by routes and BFFs.
func (v *validator) access(f string, auth []string, public bool, scopes, limits []string) {
	switch {
	case len(auth) == 0 && !public:
		v.errf(f, "needs auth or public: true (neither is set)")
	case len(auth) > 0 && public:
		v.errf(f+".public", "public: true cannot be combined with auth")
	}
	for i, a := range auth {
		if _, ok := v.cfg.Auth[a]; !ok {
			v.errf(idx(f+".auth", i), "unknown auth provider %q", a)
		}
	}
	if len(scopes) > 0 && len(auth) == 0 {
		v.errf(f+".scopes", "scopes need auth")
	}
	for i, p := range limits {
		pol, ok := v.cfg.RateLimits.Policies[p]
		switch {
		case !ok:
			v.errf(idx(f+".rate_limit", i), "unknown rate-limit policy %q", p)
		case len(auth) == 0 && pol.OnMissingKey == "deny" && needsIdentity(pol.Key):
			// Without auth there is no claim and no consumer, so a deny
			// policy would answer 429 to every request.
			v.errf(idx(f+".rate_limit", i), "policy %q keys on %q, which a request without auth never has: every request would be denied (add auth, or set on_missing_key: skip or shared)", p, pol.Key)
		}
	}
}

// needsIdentity reports whether a rate-limit key reads the authenticated
// identity (a claim or the API key consumer).
func needsIdentity(key string) bool {
	for part := range strings.SplitSeq(key, "+") {
		part = strings.TrimSpace(part)
		if part == "consumer" || strings.HasPrefix(part, "claim:") {
			return true
		}
	}
	return false
}

func (v *validator) compression(f string, list []string) {
	seen := map[string]bool{}
	for i, c := range list {
		cf := idx(f, i)
		switch {
		case c != "zstd" && c != "br" && c != "gzip":
			v.errf(cf, "invalid value %q (one of zstd, br, gzip)", c)
		case seen[c]:
			v.errf(cf, "%q is listed twice", c)
		}
		seen[c] = true
	}
}

// originForm refuses what url.Parse lets through but the gateway's CORS
// stage (internal/cors) refuses when it compiles, so that a config that
// validates also runs: bytes outside printable ASCII (browsers send hosts
// in punycode), userinfo, a path (even "/": browsers send none), a query
// or fragment marker, and a '*' anywhere but a leading "*." label.
func originForm(o string, u *url.URL) bool {
	for i := 0; i < len(o); i++ {
		if o[i] <= ' ' || o[i] >= 0x7f {
			return false
		}
	}
	if strings.ContainsAny(o, "@?#") {
		return false
	}
	if n := strings.Count(u.Host, "*"); n > 0 {
		return n == 1 && strings.HasPrefix(u.Host, "*.") && len(u.Host) > 2 && u.Host[2] != ':'
	}
	return true
}

// maxCompressionMin mirrors the compression stage's bound: it buffers up
// to this much of each response, and refuses a larger minimum when it
// compiles.
const maxCompressionMin = 64 << 20

func (v *validator) compressionMin(f string, list []string, minBytes Size) {
	if len(list) > 0 && minBytes > maxCompressionMin {
		v.errf(f+".compression_min_bytes", "%d bytes is over 64MiB, which would be buffered per response", int64(minBytes))
	}
}

func (v *validator) cors(f string, c *CORS) {
	if c == nil {
		return
	}
	if len(c.Origins) == 0 {
		v.errf(f+".origins", "at least one origin is required")
	}
	for i, o := range c.Origins {
		if o == "*" {
			if c.AllowCredentials {
				v.errf(idx(f+".origins", i), `"*" cannot be combined with allow_credentials (the Fetch standard forbids it)`)
			}
			continue
		}
		u, err := url.Parse(o)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Path != "" || u.RawQuery != "" ||
			!originForm(o, u) {
			v.errf(idx(f+".origins", i), "invalid origin %q (scheme://host[:port] or *)", o)
		}
	}
	for i, m := range c.Methods {
		if !isMethod(m) {
			v.errf(idx(f+".methods", i), "invalid method %q (upper-case, e.g. GET)", m)
		}
	}
	for i, h := range c.Headers {
		if !httpguts.ValidHeaderFieldName(h) {
			v.errf(idx(f+".headers", i), "invalid header name %q", h)
		}
	}
	for i, h := range c.ExposeHeaders {
		if !httpguts.ValidHeaderFieldName(h) {
			v.errf(idx(f+".expose_headers", i), "invalid header name %q", h)
		}
	}
}

func (v *validator) headerRules(f string, h *HeaderRules) {
	if h == nil {
		return
	}
	for _, name := range sortedKeys(h.Set) {
		if !httpguts.ValidHeaderFieldName(name) {
			v.errf(f+".set."+name, "invalid header name %q", name)
		}
	}
	for i, name := range h.Remove {
		if !httpguts.ValidHeaderFieldName(name) {
			v.errf(idx(f+".remove", i), "invalid header name %q", name)
		}
	}
}

func (v *validator) upstreamRef(f, name string) {
	if name == "" {
		v.errf(f, "is required")
	} else if _, ok := v.cfg.Upstreams[name]; !ok {
		v.errf(f, "unknown upstream %q", name)
	}
}

func (v *validator) route(f string, r *Route) {
	v.name(f+".name", "route", r.Name)
	m := &r.Match
	if err := checkPathPattern(m.Path); err != nil {
		v.errf(f+".match.path", "%s", err.Error())
	}
	if m.Host != "" {
		if err := checkHost(m.Host); err != nil {
			v.errf(f+".match.host", "%s", err.Error())
		}
	}
	v.methods(f+".match.methods", m.Methods)
	for _, h := range sortedKeys(m.Headers) {
		if !httpguts.ValidHeaderFieldName(h) {
			v.errf(f+".match.headers."+h, "invalid header name %q", h)
		}
	}
	if _, empty := m.Query[""]; empty {
		v.errf(f+".match.query", "a query parameter name is empty")
	}
	switch {
	case r.Upstream == "" && len(r.Upstreams) == 0:
		v.errf(f, "needs upstream or upstreams")
	case r.Upstream != "" && len(r.Upstreams) > 0:
		v.errf(f+".upstreams", "upstream and upstreams cannot both be set")
	case r.Upstream != "":
		v.upstreamRef(f+".upstream", r.Upstream)
	}
	for i, w := range r.Upstreams {
		wf := idx(f+".upstreams", i)
		v.upstreamRef(wf+".name", w.Name)
		switch {
		case w.Weight <= 0:
			v.errf(wf+".weight", "must be greater than 0")
		case w.Weight > MaxWeight:
			v.errf(wf+".weight", "must be at most %d", MaxWeight)
		}
	}
	if r.WebSocket {
		v.websocketUpstreams(f, r)
	}
	if rw := r.Rewrite; rw != nil {
		v.rewrite(f+".rewrite", rw, m.Path)
	}
	v.access(f, r.Auth, r.Public, r.Scopes, r.RateLimit)
	v.cors(f+".cors", r.CORS)
	if r.MaxBodyBytes < 0 {
		v.errf(f+".max_body_bytes", "must not be negative")
	}
	v.headerRules(f+".request_headers", r.RequestHeaders)
	v.headerRules(f+".response_headers", r.ResponseHeaders)
	v.compression(f+".compression", r.Compression)
	v.compressionMin(f, r.Compression, r.CompressionMinBytes)
}

// websocketUpstreams refuses a WebSocket route that can reach an h2c://
// target. Such a target speaks HTTP/2 with prior knowledge, where a
// handshake's Upgrade and Connection headers do not exist (RFC 9113
// section 8.2.2), so every handshake sent to it fails with 502. An
// upstream with h2c:// targets among others is refused too: the balancer
// would send them their share of handshakes, each failing, and nothing in
// the config says which share. The same holds for each upstream of a
// weighted split.
func (v *validator) websocketUpstreams(f string, r *Route) {
	names := make([]string, 0, 1+len(r.Upstreams))
	if r.Upstream != "" {
		names = append(names, r.Upstream)
	}
	for _, w := range r.Upstreams {
		names = append(names, w.Name)
	}
	for k, name := range names {
		u := v.cfg.Upstreams[name]
		if u == nil || slices.Contains(names[:k], name) {
			continue // unknown (reported as such) or said already
		}
		var h2c []string
		for i, t := range u.Targets {
			if p, err := url.Parse(t.URL); err == nil && p.Scheme == "h2c" {
				h2c = append(h2c, "targets["+strconv.Itoa(i)+"]")
			}
		}
		switch {
		case len(h2c) == 0:
		case len(h2c) == len(u.Targets):
			v.errf(f+".websocket", "upstream %q has only h2c:// targets: HTTP/2 with prior knowledge has no "+
				"HTTP/1.1 Upgrade, so every WebSocket handshake sent to it would fail with 502 (use http:// or https:// targets)", name)
		default:
			v.errf(f+".websocket", "upstream %q has h2c:// targets (%s): HTTP/2 with prior knowledge has no "+
				"HTTP/1.1 Upgrade, so the WebSocket handshakes balanced to them would fail with 502 (use http:// or https:// targets)",
				name, strings.Join(h2c, ", "))
		}
	}
}

func (v *validator) methods(f string, methods []string) {
	seen := map[string]bool{}
	for i, mth := range methods {
		switch {
		case !isMethod(mth):
			v.errf(idx(f, i), "invalid method %q (upper-case, e.g. GET)", mth)
		case seen[mth]:
			v.errf(idx(f, i), "%s is listed twice", mth)
		}
		seen[mth] = true
	}
}

func (v *validator) rewrite(f string, rw *Rewrite, matchPath string) {
	switch {
	case rw.Path == "" && rw.StripPrefix == "":
		v.errf(f, "needs path or strip_prefix")
	case rw.Path != "" && rw.StripPrefix != "":
		v.errf(f, "path and strip_prefix cannot both be set")
	}
	if rw.StripPrefix != "" {
		if !strings.HasPrefix(rw.StripPrefix, "/") {
			v.errf(f+".strip_prefix", "must start with /")
		} else if strings.Trim(rw.StripPrefix, "/") == "" {
			// The proxy refuses it when it compiles: stripping nothing is
			// a mistake, not a no-op to accept silently.
			v.errf(f+".strip_prefix", "%q strips nothing; name at least one segment (e.g. /api)", rw.StripPrefix)
		} else if !strings.HasPrefix(matchPath, rw.StripPrefix) {
			v.errf(f+".strip_prefix", "%q is not a prefix of match.path %q", rw.StripPrefix, matchPath)
		}
	}
	if rw.Path == "" {
		return
	}
	if !strings.HasPrefix(rw.Path, "/") {
		v.errf(f+".path", "must start with /")
		return
	}
	params, prefix := PathParams(matchPath)
	refs, _, err := templateRefs(rw.Path)
	if err != nil {
		v.errf(f+".path", "%s", err.Error())
		return
	}
	for _, ref := range refs {
		switch {
		case ref == "*":
			if !prefix {
				v.errf(f+".path", "{*} needs a prefix match.path ending in /*")
			}
		case !slices.Contains(params, ref):
			v.errf(f+".path", "{%s} is not a parameter of match.path %q", ref, matchPath)
		}
	}
}

func (v *validator) bff(f, name string, b *BFF) {
	v.name(f, "BFF", name)
	if b.Prefix == "" && b.Host == "" {
		v.errf(f, "a BFF needs prefix or host")
	}
	if b.Prefix != "" {
		if err := checkPathPattern(b.Prefix); err != nil {
			v.errf(f+".prefix", "%s", err.Error())
		} else if strings.ContainsAny(b.Prefix, "{*") || (len(b.Prefix) > 1 && strings.HasSuffix(b.Prefix, "/")) {
			v.errf(f+".prefix", "%q must be a literal path without a trailing / (e.g. /mobile)", b.Prefix)
		}
	}
	if b.Host != "" {
		if err := checkHost(b.Host); err != nil {
			v.errf(f+".host", "%s", err.Error())
		}
	}
	v.access(f, b.Auth, b.Public, b.Scopes, b.RateLimit)
	v.compression(f+".compression", b.Compression)
	v.compressionMin(f, b.Compression, b.CompressionMinBytes)
	v.cors(f+".cors", b.CORS)
	if len(b.Endpoints) == 0 {
		v.errf(f+".endpoints", "at least one endpoint is required")
	}
	names := map[string]int{}
	for i, e := range b.Endpoints {
		ef := idx(f+".endpoints", i)
		v.name(ef+".name", "endpoint", e.Name)
		if e.Name != "" {
			if first, dup := names[e.Name]; dup {
				v.errf(ef+".name", "duplicate endpoint %q (first defined at %s)", e.Name, v.where(idx(f+".endpoints", first)+".name"))
			} else {
				names[e.Name] = i
			}
		}
		v.endpoint(ef, e)
	}
}

func (v *validator) endpoint(f string, e *Endpoint) {
	pathOK := true
	if err := checkPathPattern(e.Path); err != nil {
		v.errf(f+".path", "%s", err.Error())
		pathOK = false
	}
	if !isMethod(e.Method) {
		v.errf(f+".method", "invalid method %q (upper-case, e.g. GET)", e.Method)
	}
	if len(e.Backends) == 0 {
		v.errf(f+".backends", "at least one backend is required")
	}
	params, _ := PathParams(e.Path)
	byName := map[string]int{}
	intos := map[string]int{}
	for i, b := range e.Backends {
		bf := idx(f+".backends", i)
		if first, dup := byName[b.Name]; dup && b.Name != "" {
			v.errf(bf, "duplicate backend name %q (also backends[%d]; set name or into to tell them apart)", b.Name, first)
			continue
		}
		byName[b.Name] = i
		// Two backends writing one key would overwrite each other; the
		// aggregation stage refuses that when it compiles.
		if first, dup := intos[b.Into]; dup && b.Into != "" {
			v.errf(bf+".into", "backends[%d] already writes into %q (each backend needs its own key)", first, b.Into)
		} else {
			intos[b.Into] = i
		}
	}
	for i, b := range e.Backends {
		bf := idx(f+".backends", i)
		v.upstreamRef(bf+".upstream", b.Upstream)
		if !isMethod(b.Method) {
			v.errf(bf+".method", "invalid method %q (upper-case, e.g. GET)", b.Method)
		}
		if b.After != "" {
			if _, ok := byName[b.After]; !ok {
				v.errf(bf+".after", "unknown backend %q in this endpoint", b.After)
			} else if b.After == b.Name {
				v.errf(bf+".after", "a backend cannot run after itself")
			}
		}
		switch {
		case b.Path == "":
			v.errf(bf+".path", "is required")
		case !strings.HasPrefix(b.Path, "/"):
			v.errf(bf+".path", "must start with /")
		case pathOK:
			v.template(bf+".path", b, params)
		}
		if e.Timeout > 0 && b.Timeout > e.Timeout {
			v.errf(bf+".timeout", "%s exceeds the endpoint timeout %s", b.Timeout, e.Timeout)
		}
		if b.Into != "" && !isKeyName(b.Into) {
			v.errf(bf+".into", "invalid key %q (one JSON key, no dots or brackets)", b.Into)
		}
		for j, p := range b.Fields {
			if err := checkFieldPath(p); err != nil {
				v.errf(idx(bf+".fields", j), "%s", err.Error())
			}
		}
		for j, p := range b.Drop {
			if err := checkFieldPath(p); err != nil {
				v.errf(idx(bf+".drop", j), "%s", err.Error())
			}
		}
		for _, from := range sortedKeys(b.Rename) {
			if err := checkFieldPath(from); err != nil {
				v.errf(bf+".rename."+from, "%s", err.Error())
			} else if to := b.Rename[from]; !isKeyName(to) {
				v.errf(bf+".rename."+from, "invalid new name %q (one JSON key; rename keeps the key where it is)", to)
			}
		}
		if b.Pick != "" {
			if err := checkFieldPath(b.Pick); err != nil {
				v.errf(bf+".pick", "%s", err.Error())
			}
		}
	}
	// after cycles: follow each chain; a chain longer than the backend count loops.
	for i, b := range e.Backends {
		seen := 0
		cur := b
		for cur.After != "" && seen <= len(e.Backends) {
			j, ok := byName[cur.After]
			if !ok || cur.After == cur.Name {
				break
			}
			cur = e.Backends[j]
			seen++
		}
		if seen > len(e.Backends) {
			v.errf(idx(f+".backends", i)+".after", "backend %q is part of an after cycle", b.Name)
		}
	}
}

// template checks the {...} references of a backend path.
func (v *validator) template(f string, b *Backend, params []string) {
	refs, skeleton, err := templateRefs(b.Path)
	if err != nil {
		v.errf(f, "%s", err.Error())
		return
	}
	for _, ref := range refs {
		head, rest, dotted := strings.Cut(ref, ".")
		switch {
		case !dotted:
			if !slices.Contains(params, ref) {
				v.errf(f, "{%s} is not a parameter of the endpoint path", ref)
			}
		case rest == "":
			v.errf(f, "{%s} names no field", ref)
		case head == "claims" || head == "query" || head == "header":
			// any claim, query parameter or header name
		case head == b.After:
			if strings.ContainsAny(rest, "[]") {
				// One value goes into the path; [] would name many.
				v.errf(f, "{%s}: a template reads one value, so its field path cannot contain []", ref)
			} else if err := checkFieldPath(rest); err != nil {
				v.errf(f, "{%s}: %s", ref, err.Error())
			}
		default:
			v.errf(f, "{%s}: %q is neither claims, query, header nor the backend named in after", ref, head)
		}
	}
	// The literal text is sent as written, so with each {...} standing for
	// one character it must be a request target, as the aggregation stage
	// requires when it compiles.
	if u, err := url.ParseRequestURI(skeleton); err != nil || u.Fragment != "" || strings.Contains(skeleton, "#") {
		v.errf(f, "%q is not a valid request path (no fragment, no bytes a URL cannot hold)", b.Path)
	}
}

// conflicts reports routes and BFF endpoints that claim the same host, path
// and method, naming both.
func (v *validator) conflicts() {
	// A claim names its route or endpoint; the strings for the message are
	// only built when there is a conflict.
	type claim struct {
		route    int    // index in Routes, or -1 for an endpoint
		bff      string // for an endpoint
		endpoint int
		methods  []string // empty: every method
	}
	describe := func(c claim) (what, field string) {
		if c.route >= 0 {
			return fmt.Sprintf("route %q", v.cfg.Routes[c.route].Name), idx("routes", c.route) + ".match"
		}
		e := v.cfg.BFFs[c.bff].Endpoints[c.endpoint]
		return fmt.Sprintf("endpoint %q", c.bff+"/"+e.Name), idx("bffs."+c.bff+".endpoints", c.endpoint)
	}
	byKey := make(map[string][]claim, len(v.cfg.Routes))
	add := func(host, path string, c claim) {
		if checkPathPattern(path) != nil {
			return // already reported
		}
		key := strings.ToLower(host) + " " + normalizePattern(path)
		for _, prev := range byKey[key] {
			if m, overlap := overlapMethod(prev.methods, c.methods); overlap {
				what, field := describe(c)
				prevWhat, prevField := describe(prev)
				v.errf(field, "%s has the same host, path and method (%s) as %s at %s", what, m, prevWhat, v.where(prevField))
				return
			}
		}
		byKey[key] = append(byKey[key], c)
	}
	for i, r := range v.cfg.Routes {
		add(r.Match.Host, r.Match.Path, claim{route: i, methods: r.Match.Methods})
	}
	for _, name := range sortedKeys(v.cfg.BFFs) {
		b := v.cfg.BFFs[name]
		for i, e := range b.Endpoints {
			p := e.Path
			if b.Prefix != "" {
				p = b.Prefix + e.Path
				if e.Path == "/" {
					p = b.Prefix
				}
			}
			add(b.Host, p, claim{route: -1, bff: name, endpoint: i, methods: []string{e.Method}})
		}
	}
}

// overlapMethod returns a method both lists accept (an empty list accepts
// every method).
func overlapMethod(a, b []string) (string, bool) {
	switch {
	case len(a) == 0 && len(b) == 0:
		return "any", true
	case len(a) == 0:
		return firstUnlistedTakes(b)
	case len(b) == 0:
		return firstUnlistedTakes(a)
	}
	for _, m := range a {
		if slices.Contains(b, m) {
			return m, true
		}
	}
	return "", false
}

// firstUnlistedTakes returns the first of methods that a route listing no
// methods takes too: every one but CONNECT and TRACE (see router.Spec).
func firstUnlistedTakes(methods []string) (string, bool) {
	for _, m := range methods {
		if m != "CONNECT" && m != "TRACE" {
			return m, true
		}
	}
	return "", false
}

func (v *validator) slo(f string, s *SLO) {
	v.name(f+".name", "SLO", s.Name)
	switch {
	case s.Route == "":
		v.errf(f+".route", "is required (a route name or BFF/ENDPOINT)")
	case strings.Contains(s.Route, "/"):
		bff, ep, _ := strings.Cut(s.Route, "/")
		b, ok := v.cfg.BFFs[bff]
		if !ok || !slices.ContainsFunc(b.Endpoints, func(e *Endpoint) bool { return e.Name == ep }) {
			v.errf(f+".route", "unknown BFF endpoint %q", s.Route)
		}
	default:
		if !slices.ContainsFunc(v.cfg.Routes, func(r *Route) bool { return r.Name == s.Route }) {
			v.errf(f+".route", "unknown route %q", s.Route)
		}
	}
	// The SLO stage keeps per-minute counts and refuses a shorter window
	// when it compiles.
	if s.Window < Duration(time.Minute) {
		v.errf(f+".window", "must be at least 1m, got %s", s.Window)
	}
	if s.Objective <= 0 || s.Objective >= 100 {
		v.errf(f+".objective", "must be a percentage strictly between 0 and 100, e.g. 99.9")
	}
	if s.AlertWebhook != "" {
		v.url(f+".alert_webhook", s.AlertWebhook, "http", "https")
	}
}
