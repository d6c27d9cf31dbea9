package auth

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sort"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/portico-gw/portico/internal/identity"
	"github.com/portico-gw/portico/internal/problem"
	"github.com/portico-gw/portico/internal/reqctx"
)

// realm is the WWW-Authenticate realm of every challenge (RFC 9110 11.5).
const realm = "portico"

// reason is why a request was refused; its name is the metric label.
type reason uint8

const (
	reasonNone reason = iota
	reasonMissing
	reasonMalformed
	reasonBadSignature
	reasonExpired
	reasonNotYetValid
	reasonWrongIssuer
	reasonWrongAudience
	reasonUnknownKey
	reasonForbidden
	reasonUnavailable
	numReasons
)

var reasonNames = [numReasons]string{
	"", "missing", "malformed", "bad_signature", "expired", "not_yet_valid",
	"wrong_issuer", "wrong_audience", "unknown_key", "forbidden", "unavailable",
}

func (r reason) String() string { return reasonNames[r] }

// failure is a refused credential; retryAfter (seconds) goes with
// reasonUnavailable.
type failure struct {
	reason     reason
	retryAfter int
}

// verified is what an accepted credential yields, built once per token or
// key and shared by every request that presents it (read-only).
type verified struct {
	id      *identity.Identity
	headers []headerValue
}

// headerValue is one identity header to set upstream. vals is shared by all
// requests with this credential; it has length and capacity 1, so an append
// by a later stage copies instead of writing into it.
type headerValue struct {
	name string
	vals []string
}

// provider is one compiled auth provider, as the route middleware uses it.
type provider interface {
	// credential returns the presented credential, if any.
	credential(r *http.Request) (string, bool)
	// authenticate checks a presented credential.
	authenticate(ctx context.Context, cred string) (*verified, failure)
	// scheme is the WWW-Authenticate auth-scheme.
	scheme() string
	// challenge is the WWW-Authenticate value when no credential came.
	challenge() string
	// invalidChallenge is the value when this provider's credential failed.
	invalidChallenge(reason) string
	// invalidProblem is the problem code and public detail for a failure.
	invalidProblem(reason) (code, detail string)
	// stripAfterAccept removes this provider's credential before
	// forwarding, as configured; winner is the provider that accepted the
	// request (maybe this one).
	stripAfterAccept(r *http.Request, winner provider)
	// identityHeaders are the headers it may set upstream (canonical).
	identityHeaders() []string
}

var (
	_ provider = (*jwtProvider)(nil)
	_ provider = (*apiKeyProvider)(nil)
)

func (p *jwtProvider) credential(r *http.Request) (string, bool) { return p.from.get(r) }

func (p *jwtProvider) scheme() string { return "Bearer" }

func (p *jwtProvider) challenge() string { return `Bearer realm="` + realm + `"` }

// invalidChallenge follows RFC 6750 section 3.1. The description never says
// why a signature or key check failed: only expiry, which the client can
// act on by refreshing, is named.
func (p *jwtProvider) invalidChallenge(r reason) string {
	_, detail := p.invalidProblem(r)
	return `Bearer realm="` + realm + `", error="invalid_token", error_description="` + detail + `"`
}

func (p *jwtProvider) invalidProblem(r reason) (code, detail string) {
	switch r {
	case reasonExpired:
		return "invalid_token", "token expired"
	case reasonNotYetValid:
		return "invalid_token", "token not yet valid"
	}
	return "invalid_token", "invalid token"
}

// stripAfterAccept removes the token when this provider accepted the
// request and forward_token is false, and whenever another provider
// accepted it: a token that failed, lacked a scope or was never tried was
// not verified, and an upstream that trusts what the gateway forwards would
// take a forged token sent beside a valid API key for a checked one. It is
// kept when the winner forwards the same credential, and a credential that
// is not a token of this provider (Authorization: Basic) is left alone.
func (p *jwtProvider) stripAfterAccept(r *http.Request, winner provider) {
	if winner == provider(p) {
		if !p.forward {
			p.from.strip(r)
		}
		return
	}
	if w, ok := winner.(*jwtProvider); ok && w.forward && w.from == p.from {
		return
	}
	if _, ok := p.from.get(r); ok {
		p.from.strip(r)
	}
}

func (p *jwtProvider) identityHeaders() []string {
	out := make([]string, 0, len(p.claimHeaders))
	for _, c := range p.claimHeaders {
		out = append(out, c.header)
	}
	return out
}

// Set is the auth stage compiled from one config: immutable, safe for
// concurrent use, cheap to drop (its key sets and caches belong to the
// Registry).
type Set struct {
	reg             *Registry
	providers       map[string]provider
	identityHeaders []string
}

func (s *Set) collectIdentityHeaders() []string {
	seen := map[string]bool{}
	var out []string
	for _, p := range s.providers {
		for _, h := range p.identityHeaders() {
			if !seen[h] {
				seen[h] = true
				out = append(out, h)
			}
		}
	}
	sort.Strings(out)
	return out
}

// IdentityHeaders returns every header name (canonical, sorted) that some
// provider's forward_claims or forward_id sets. The gateway strips inbound
// copies on every route, public ones too, with StripIdentityHeaders: an
// upstream must be able to trust them.
func (s *Set) IdentityHeaders() []string {
	return append([]string(nil), s.identityHeaders...)
}

// StripIdentityHeaders returns a middleware that deletes the named headers
// from every request, so a client cannot spoof an identity header on any
// route. Names are canonicalised once here, not per request.
//
// Spellings with underscores for dashes (X_User_Id) go too: CGI-style
// servers (PHP, WSGI, Rack) read both as HTTP_X_USER_ID, so either could
// pass for the gateway's header. So do request trailers of these names,
// which the proxy forwards.
func StripIdentityHeaders(names []string) func(http.Handler) http.Handler {
	seen := map[string]bool{}
	var s identityStrip
	for _, n := range names {
		c := http.CanonicalHeaderKey(strings.TrimSpace(n))
		if c != "" && !seen[c] {
			seen[c] = true
			s.names = append(s.names, c)
			s.underscore = s.underscore || strings.IndexByte(c, '_') >= 0
		}
	}
	return func(next http.Handler) http.Handler {
		if len(s.names) == 0 {
			return next
		}
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			s.strip(r.Header)
			if c := r.Header["Connection"]; len(c) > 0 {
				s.stripConnection(r.Header, c)
			}
			if r.Trailer != nil {
				s.strip(r.Trailer)
				// The server fills the trailer in when the body ends,
				// after this stage has run: strip it again then.
				if r.Body != nil && r.Body != http.NoBody {
					r.Body = &trailerStrip{ReadCloser: r.Body, trailer: r.Trailer, s: &s}
				}
			}
			next.ServeHTTP(w, r)
		})
	}
}

// identityStrip deletes identity header names from a header map.
type identityStrip struct {
	names      []string // canonical
	underscore bool     // some name has an underscore
}

func (s *identityStrip) strip(h http.Header) {
	for _, n := range s.names {
		delete(h, n)
	}
	for k := range h {
		if !s.underscore && strings.IndexByte(k, '_') < 0 {
			continue
		}
		for _, n := range s.names {
			if sameFieldForCGI(k, n) {
				delete(h, k)
				break
			}
		}
	}
}

// stripConnection removes identity names from the Connection header. A
// proxy deletes the fields named there (RFC 9110 section 7.6.1), and the
// identity headers are set after this stage by the gateway itself: a client
// naming them would make the upstream get none at all. It allocates only
// when a name is found ("Connection: keep-alive" costs a scan).
func (s *identityStrip) stripConnection(h http.Header, vals []string) {
	if !s.namedIn(vals) {
		return
	}
	var kept []string
	for _, v := range vals {
		for tok := range strings.SplitSeq(v, ",") {
			if tok = strings.Trim(tok, " \t"); tok != "" && !s.isIdentity(tok) {
				kept = append(kept, tok)
			}
		}
	}
	if len(kept) == 0 {
		delete(h, "Connection")
		return
	}
	h["Connection"] = []string{strings.Join(kept, ", ")}
}

// namedIn reports whether a comma-separated list names an identity header.
func (s *identityStrip) namedIn(vals []string) bool {
	for _, v := range vals {
		for v != "" {
			var tok string
			tok, v, _ = strings.Cut(v, ",")
			if s.isIdentity(strings.Trim(tok, " \t")) {
				return true
			}
		}
	}
	return false
}

// isIdentity reports whether a field name is one of the identity names, in
// any case and with '_' for '-'.
func (s *identityStrip) isIdentity(name string) bool {
	for _, n := range s.names {
		if sameFieldForCGI(name, n) {
			return true
		}
	}
	return false
}

// sameFieldForCGI reports whether a and b name the same CGI variable:
// equal but for ASCII case and '_' against '-'.
func sameFieldForCGI(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if x == '_' {
			x = '-'
		}
		if y == '_' {
			y = '-'
		}
		if lowerASCII(x) != lowerASCII(y) {
			return false
		}
	}
	return true
}

func lowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// trailerStrip strips identity names from the request trailer once the
// body is read: the server merges trailer fields into r.Trailer on EOF,
// and the proxy sends that map on after the body.
type trailerStrip struct {
	io.ReadCloser
	trailer http.Header
	s       *identityStrip
}

func (b *trailerStrip) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.s.strip(b.trailer)
	}
	return n, err
}

// Middleware returns the auth middleware of one route. providers are
// alternatives: each one whose credential is present is tried in order and
// the first that accepts (valid credential with every scope in scopes)
// wins. When none does, the answer is, in this order of precedence:
//
//   - 403 insufficient_scope, when some credential was valid but lacked a
//     scope (the first such provider's scheme in WWW-Authenticate);
//   - the failure of the first provider whose credential was presented:
//     503 with Retry-After when its key set is unavailable, else 401 whose
//     first WWW-Authenticate value is that provider's challenge with
//     error="invalid_token" (error="invalid_key" for API keys), followed by
//     the plain challenges of the route's other schemes;
//   - 401 with one WWW-Authenticate value per distinct challenge of the
//     route's providers, in order, when no credential was presented.
//
// Exactly one failure is counted per refused request, with the reason of
// the answer given. On success the identity goes to reqctx.Info.Identity
// (or identity.NewContext when the request has no Info), identity headers
// are replaced by the winner's, API keys of every listed provider are
// removed, and so is the token of every listed provider with forward_token
// false (see jwtProvider.stripAfterAccept).
func (s *Set) Middleware(route string, providers []string, scopes []string) (func(http.Handler) http.Handler, error) {
	if route == "" {
		return nil, errors.New("auth: route name is required")
	}
	if len(providers) == 0 {
		return nil, fmt.Errorf("auth: route %s: no auth provider", route)
	}
	ra := &routeAuth{route: route, scopes: append([]string(nil), scopes...)}
	for _, sc := range scopes {
		if sc == "" || strings.ContainsAny(sc, " \t\"\\") {
			return nil, fmt.Errorf("auth: route %s: invalid scope %q", route, sc)
		}
	}
	seen := map[string]bool{}
	for _, name := range providers {
		p, ok := s.providers[name]
		if !ok {
			return nil, fmt.Errorf("auth: route %s: unknown auth provider %q", route, name)
		}
		if seen[name] {
			continue
		}
		seen[name] = true
		ra.provs = append(ra.provs, p)
		if ch := p.challenge(); !containsString(ra.challenges, ch) {
			ra.challenges = append(ra.challenges, ch)
		}
	}
	ra.identityHeaders = s.identityHeaders
	ra.log = s.reg.log
	for r := reasonMissing; r < numReasons; r++ {
		ra.fails[r] = s.reg.failures.WithLabelValues(route, r.String())
	}
	return func(next http.Handler) http.Handler {
		return &authHandler{ra: ra, next: next}
	}, nil
}

func containsString(list []string, s string) bool {
	for _, e := range list {
		if e == s {
			return true
		}
	}
	return false
}

// routeAuth is one route's compiled auth settings.
type routeAuth struct {
	route           string
	provs           []provider
	scopes          []string
	challenges      []string // distinct plain challenges, in provider order
	identityHeaders []string
	fails           [numReasons]prometheus.Counter
	log             *slog.Logger
}

type authHandler struct {
	ra   *routeAuth
	next http.Handler
}

func (h *authHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ra := h.ra
	failAt, forbidAt := -1, -1
	var fail failure
	for i, p := range ra.provs {
		cred, ok := p.credential(r)
		if !ok {
			continue
		}
		v, f := p.authenticate(r.Context(), cred)
		if f.reason != reasonNone {
			if failAt < 0 {
				failAt, fail = i, f
			}
			continue
		}
		if !hasScopes(v.id, ra.scopes) {
			if forbidAt < 0 {
				forbidAt = i
			}
			continue
		}
		hdr := r.Header
		for _, n := range ra.identityHeaders {
			delete(hdr, n)
		}
		for _, hv := range v.headers {
			hdr[hv.name] = hv.vals
		}
		for _, q := range ra.provs {
			q.stripAfterAccept(r, p)
		}
		if in := reqctx.From(r.Context()); in != nil {
			in.Identity = v.id
		} else {
			r = r.WithContext(identity.NewContext(r.Context(), v.id))
		}
		h.next.ServeHTTP(w, r)
		return
	}
	ra.reject(w, r, failAt, fail, forbidAt)
}

func hasScopes(id *identity.Identity, want []string) bool {
	for _, s := range want {
		if !id.HasScope(s) {
			return false
		}
	}
	return true
}

// reject answers a request no provider accepted (see Middleware).
func (ra *routeAuth) reject(w http.ResponseWriter, r *http.Request, failAt int, fail failure, forbidAt int) {
	h := w.Header()
	if ra.log.Enabled(r.Context(), slog.LevelDebug) {
		// Never the credential itself: only why it was refused.
		rsn := reasonMissing
		switch {
		case forbidAt >= 0:
			rsn = reasonForbidden
		case failAt >= 0:
			rsn = fail.reason
		}
		var id string
		if in := reqctx.From(r.Context()); in != nil {
			id = in.RequestID
		}
		ra.log.Debug("auth: request refused", "route", ra.route, "reason", rsn.String(), "request_id", id)
	}
	switch {
	case forbidAt >= 0:
		ra.fails[reasonForbidden].Inc()
		p := ra.provs[forbidAt]
		// RFC 6750 section 3.1: insufficient_scope names the scope needed.
		h.Set("WWW-Authenticate", p.scheme()+` realm="`+realm+`", error="insufficient_scope", scope="`+strings.Join(ra.scopes, " ")+`"`)
		problem.Write(w, r, &problem.Error{
			Status: http.StatusForbidden, Code: "insufficient_scope",
			Detail: "the credential lacks a required scope",
			Extra:  map[string]any{"required_scopes": ra.scopes},
		})
	case failAt >= 0 && fail.reason == reasonUnavailable:
		ra.fails[reasonUnavailable].Inc()
		h.Set("Retry-After", strconv.Itoa(max(fail.retryAfter, 1)))
		problem.Write(w, r, problem.New(http.StatusServiceUnavailable, "auth_unavailable",
			"the signing keys of the identity provider are not available; retry later"))
	case failAt >= 0:
		ra.fails[fail.reason].Inc()
		p := ra.provs[failAt]
		vals := []string{p.invalidChallenge(fail.reason)}
		for _, ch := range ra.challenges {
			if !strings.HasPrefix(ch, p.scheme()+" ") {
				vals = append(vals, ch)
			}
		}
		h["Www-Authenticate"] = vals
		code, detail := p.invalidProblem(fail.reason)
		problem.Write(w, r, problem.New(http.StatusUnauthorized, code, detail))
	default:
		ra.fails[reasonMissing].Inc()
		h["Www-Authenticate"] = append([]string(nil), ra.challenges...)
		problem.Write(w, r, problem.New(http.StatusUnauthorized, "unauthenticated", "authentication required"))
	}
}
