// Package cors is the gateway's Cross-Origin Resource Sharing stage (the
// Fetch standard's CORS protocol): it answers preflight requests itself and
// adds the Access-Control-* headers to actual responses.
//
// Origins are matched exactly (scheme, host and port, case-insensitively),
// by a wildcard subdomain pattern ("https://*.example.com" matches
// "https://a.example.com" and "https://a.b.example.com" but not
// "https://example.com"), or by "*" (any origin).
//
// A preflight (OPTIONS with Origin and Access-Control-Request-Method) never
// reaches the upstream: an allowed one gets 204 with the allow headers, a
// disallowed one (origin, method or a requested header not allowed) 403
// problem+json. An actual request from an allowed origin gets
// Access-Control-Allow-Origin (the origin itself, or "*" when "*" is
// configured and credentials are off), Access-Control-Allow-Credentials and
// Access-Control-Expose-Headers as configured; a request from another
// origin is passed on without them, and the browser withholds the response
// from the page; a WebSocket handshake from another origin (which browsers
// do not check) gets 403 problem+json. Responses that depend on Origin
// carry "Vary: Origin", so a shared cache never hands one origin's answer
// to another; with "*" none depends on it: every response, with or without
// Origin, carries "*".
//
// When the route has a CORS stage the gateway owns these headers: the proxy
// should drop the upstream's own Access-Control-* response headers
// (proxy.Config.StripUpstreamCORS) or the browser sees them twice.
package cors

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/net/http/httpguts"

	"github.com/portico-gw/portico/internal/config"
	"github.com/portico-gw/portico/internal/problem"
)

// defaultMethods are allowed when the config names none: the CORS-safelisted
// methods.
var defaultMethods = []string{http.MethodGet, http.MethodHead, http.MethodPost}

type policy struct {
	anyOrigin   bool
	exact       map[string]bool // lower-case origins
	wildcards   []wildcard
	credentials bool

	methods    map[string]bool
	anyHeader  bool
	headers    map[string]bool // lower-case
	allowMeth  []string        // precomputed header values, cap 1
	allowHdrs  []string
	expose     []string
	maxAge     []string
	credsValue []string
	star       []string
	varyOrigin []string
	varyPre    []string
}

// wildcard is "scheme://*.suffix[:port]" split around the '*'.
type wildcard struct {
	prefix string // "https://"
	suffix string // ".example.com" or ".example.com:8443"
}

// New builds the CORS stage for cfg. A nil cfg gives a stage that passes
// every request on untouched.
func New(cfg *config.CORS) (func(http.Handler) http.Handler, error) {
	if cfg == nil {
		return func(next http.Handler) http.Handler { return next }, nil
	}
	p, err := compile(cfg)
	if err != nil {
		return nil, err
	}
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			p.serve(w, r, next)
		})
	}, nil
}

func compile(cfg *config.CORS) (*policy, error) {
	if len(cfg.Origins) == 0 {
		return nil, errors.New("cors: origins: at least one origin (or \"*\") is required")
	}
	p := &policy{
		exact:       map[string]bool{},
		methods:     map[string]bool{},
		headers:     map[string]bool{},
		credentials: cfg.AllowCredentials,
		credsValue:  []string{"true"},
		star:        []string{"*"},
		varyOrigin:  []string{"Origin"},
		varyPre:     []string{"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"},
	}
	for _, o := range cfg.Origins {
		lo := strings.ToLower(strings.TrimSpace(o))
		if !printableASCII(lo) {
			// A browser serialises an origin in ASCII (RFC 6454 section 6.2,
			// internationalised hosts in punycode), so a pattern with other
			// bytes would never match; Unicode case folding would also let
			// different invalid bytes compare equal.
			return nil, fmt.Errorf("cors: origin %q: only printable ASCII (write internationalised hosts in punycode, xn--...)", o)
		}
		switch {
		case lo == "*":
			p.anyOrigin = true
		case strings.Contains(lo, "*"):
			w, err := parseWildcard(lo)
			if err != nil {
				return nil, fmt.Errorf("cors: origin %q: %w", o, err)
			}
			p.wildcards = append(p.wildcards, w)
		default:
			if err := checkOrigin(lo); err != nil {
				return nil, fmt.Errorf("cors: origin %q: %w", o, err)
			}
			p.exact[lo] = true
		}
	}
	if p.anyOrigin && p.credentials {
		// Reflecting any origin with credentials would let every site read
		// authenticated responses; the Fetch standard forbids "*" there.
		return nil, errors.New(`cors: origins "*" cannot be combined with allow_credentials: list the origins`)
	}
	methods := cfg.Methods
	if len(methods) == 0 {
		methods = defaultMethods
	}
	var names []string
	for _, m := range methods {
		m = strings.ToUpper(strings.TrimSpace(m))
		if !httpguts.ValidHeaderFieldName(m) {
			return nil, fmt.Errorf("cors: invalid method %q", m)
		}
		if !p.methods[m] {
			p.methods[m] = true
			names = append(names, m)
		}
	}
	p.allowMeth = []string{strings.Join(names, ", ")}
	names = names[:0]
	for _, h := range cfg.Headers {
		h = strings.TrimSpace(h)
		if h == "*" {
			p.anyHeader = true
			continue
		}
		if !httpguts.ValidHeaderFieldName(h) {
			return nil, fmt.Errorf("cors: invalid header name %q", h)
		}
		if !p.headers[strings.ToLower(h)] {
			p.headers[strings.ToLower(h)] = true
			names = append(names, http.CanonicalHeaderKey(h))
		}
	}
	if len(names) > 0 {
		p.allowHdrs = []string{strings.Join(names, ", ")}
	}
	var expose []string
	for _, h := range cfg.ExposeHeaders {
		h = strings.TrimSpace(h)
		if h != "*" && !httpguts.ValidHeaderFieldName(h) {
			return nil, fmt.Errorf("cors: invalid expose header %q", h)
		}
		expose = append(expose, h)
	}
	if len(expose) > 0 {
		p.expose = []string{strings.Join(expose, ", ")}
	}
	if cfg.MaxAge < 0 {
		return nil, errors.New("cors: max_age must not be negative")
	}
	if s := int64(cfg.MaxAge.D().Seconds()); s > 0 {
		p.maxAge = []string{strconv.FormatInt(s, 10)}
	}
	return p, nil
}

// checkOrigin accepts "scheme://host[:port]" (an origin serialisation) and
// "null".
func checkOrigin(o string) error {
	if o == "null" {
		return nil
	}
	scheme, host, ok := strings.Cut(o, "://")
	if !ok || scheme == "" || host == "" || strings.ContainsAny(host, "/?#@ ") {
		return errors.New(`want scheme://host[:port], e.g. "https://app.example.com"`)
	}
	return nil
}

func parseWildcard(o string) (wildcard, error) {
	scheme, host, ok := strings.Cut(o, "://")
	if !ok || scheme == "" || !strings.HasPrefix(host, "*.") || strings.Count(host, "*") != 1 ||
		len(host) < 3 || strings.ContainsAny(host, "/?#@ ") {
		return wildcard{}, errors.New(`a wildcard origin is "scheme://*.suffix[:port]", e.g. "https://*.example.com"`)
	}
	return wildcard{prefix: scheme + "://", suffix: host[1:]}, nil
}

// allowed reports whether origin may read responses.
func (p *policy) allowed(origin string) bool {
	if p.anyOrigin {
		return true
	}
	if p.exact[origin] {
		return true
	}
	for _, w := range p.wildcards {
		if w.matches(origin) {
			return true
		}
	}
	if hasUpper(origin) {
		return p.allowed(asciiLower(origin))
	}
	return false
}

func (w wildcard) matches(origin string) bool {
	if len(origin) <= len(w.prefix)+len(w.suffix) ||
		!strings.HasPrefix(origin, w.prefix) || !strings.HasSuffix(origin, w.suffix) {
		return false
	}
	label := origin[len(w.prefix) : len(origin)-len(w.suffix)]
	// One or more DNS labels: no empty label, nothing but host characters.
	if label[0] == '.' || label[len(label)-1] == '.' || strings.Contains(label, "..") {
		return false
	}
	for i := 0; i < len(label); i++ {
		c := label[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

func (p *policy) serve(w http.ResponseWriter, r *http.Request, next http.Handler) {
	h := w.Header()
	origins := r.Header["Origin"]
	if len(origins) > 0 && r.Method == http.MethodOptions && len(r.Header["Access-Control-Request-Method"]) > 0 {
		p.preflight(w, r, origins[0])
		return
	}
	if !p.anyOrigin {
		addVary(h, p.varyOrigin)
		// Browsers apply no CORS to WebSocket: a page on any site may open
		// one with the user's cookies (cross-site WebSocket hijacking). On
		// a route that lists its origins, a handshake from another is
		// refused; one without Origin is no browser's and passes.
		if len(origins) > 0 && len(r.Header["Upgrade"]) > 0 &&
			httpguts.HeaderValuesContainsToken(r.Header["Upgrade"], "websocket") && !p.allowed(origins[0]) {
			problem.Write(w, r, problem.New(http.StatusForbidden, "cors_origin_denied",
				"WebSocket handshakes from this origin are not allowed"))
			return
		}
	}
	// With "*" the answer must not depend on Origin, since it carries no
	// Vary: Origin: a cache would hand a response without Allow-Origin to a
	// later CORS request (Fetch standard, "CORS protocol and HTTP caches").
	if p.anyOrigin || len(origins) > 0 && p.allowed(origins[0]) {
		p.setOrigin(h, origins)
		if p.expose != nil {
			h["Access-Control-Expose-Headers"] = p.expose[:1:1]
		}
	}
	next.ServeHTTP(w, r)
}

func (p *policy) setOrigin(h http.Header, origins []string) {
	if p.anyOrigin {
		h["Access-Control-Allow-Origin"] = p.star[:1:1]
	} else {
		// The request's own slice, capped so an append copies.
		h["Access-Control-Allow-Origin"] = origins[:1:1]
	}
	if p.credentials {
		h["Access-Control-Allow-Credentials"] = p.credsValue[:1:1]
	}
}

func (p *policy) preflight(w http.ResponseWriter, r *http.Request, origin string) {
	h := w.Header()
	addVary(h, p.varyPre)
	if !p.allowed(origin) {
		problem.Write(w, r, problem.New(http.StatusForbidden, "cors_origin_denied",
			"cross-origin requests from this origin are not allowed"))
		return
	}
	method := strings.TrimSpace(r.Header.Get("Access-Control-Request-Method"))
	if !p.methods[method] {
		problem.Write(w, r, problem.New(http.StatusForbidden, "cors_method_denied",
			"the method "+strconv.Quote(method)+" is not allowed for cross-origin requests"))
		return
	}
	requested := r.Header.Values("Access-Control-Request-Headers")
	if bad := p.firstDeniedHeader(requested); bad != "" {
		problem.Write(w, r, problem.New(http.StatusForbidden, "cors_header_denied",
			"the header "+strconv.Quote(bad)+" is not allowed for cross-origin requests"))
		return
	}
	p.setOrigin(h, r.Header["Origin"])
	h["Access-Control-Allow-Methods"] = p.allowMeth[:1:1]
	switch {
	case p.anyHeader && len(requested) > 0:
		// Reflect rather than send "*", which means a literal header
		// named "*" when credentials are on.
		h["Access-Control-Allow-Headers"] = []string{strings.Join(requested, ", ")}
	default:
		if v := p.allowHeaders(requested); v != nil {
			h["Access-Control-Allow-Headers"] = v
		}
	}
	if p.maxAge != nil {
		h["Access-Control-Max-Age"] = p.maxAge[:1:1]
	}
	w.WriteHeader(http.StatusNoContent)
}

// firstDeniedHeader returns the first requested header that is neither
// allowed nor CORS-safelisted, or "".
func (p *policy) firstDeniedHeader(lines []string) string {
	if p.anyHeader {
		return ""
	}
	for _, line := range lines {
		for _, name := range strings.Split(line, ",") {
			name = strings.ToLower(strings.TrimSpace(name))
			if name == "" || p.headers[name] || safelisted(name) {
				continue
			}
			return name
		}
	}
	return ""
}

// allowHeaders is the Access-Control-Allow-Headers value of an allowed
// preflight: the configured names, plus any safelisted name the browser
// asked for. It asks for one only when the value is not safelisted
// (Content-Type: application/json), and then fails the preflight unless
// the answer names it (Fetch standard, CORS-preflight fetch).
func (p *policy) allowHeaders(requested []string) []string {
	var extra []string
	for _, line := range requested {
		for name := range strings.SplitSeq(line, ",") {
			name = strings.ToLower(strings.TrimSpace(name))
			if safelisted(name) && !p.headers[name] && !slices.Contains(extra, name) {
				extra = append(extra, name)
			}
		}
	}
	switch {
	case extra == nil:
		if p.allowHdrs == nil {
			return nil
		}
		return p.allowHdrs[:1:1]
	case p.allowHdrs != nil:
		extra = append(p.allowHdrs[:1:1], extra...)
	}
	return []string{strings.Join(extra, ", ")}
}

// safelisted are the CORS-safelisted request headers (Fetch standard);
// browsers list them in a preflight only when their value is not
// safelisted (a JSON Content-Type, a multi-range Range).
func safelisted(name string) bool {
	switch name {
	case "accept", "accept-language", "content-language", "content-type", "range":
		return true
	}
	return false
}

// addVary adds the value to Vary, sharing the precomputed slice when Vary
// is not set yet.
func addVary(h http.Header, v []string) {
	if old := h["Vary"]; len(old) > 0 {
		h["Vary"] = append(old, v[0])
		return
	}
	h["Vary"] = v[:1:1]
}

func hasUpper(s string) bool {
	for i := 0; i < len(s); i++ {
		if 'A' <= s[i] && s[i] <= 'Z' {
			return true
		}
	}
	return false
}

// asciiLower lower-cases ASCII letters only: origins are ASCII, and Unicode
// lowering would map other characters onto ASCII ones (U+212A KELVIN SIGN
// to "k") and so match a listed origin the client never sent.
func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] >= 0x7f {
			return false
		}
	}
	return true
}
