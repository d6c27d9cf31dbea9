package auth

// Edge cases of the auth stage as a client, an identity provider and an
// upstream see them: every test runs over real HTTP, with a JWKS server
// and an upstream that echoes what it received.

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jws/jwsbb"

	"github.com/portico-gw/portico/internal/auth/authtest"
	"github.com/portico-gw/portico/internal/config"
	"github.com/portico-gw/portico/internal/proxy"
	"github.com/portico-gw/portico/internal/reqctx"
)

// front serves one route as the gateway builds it (identity headers
// stripped, then the route's auth) before an echo upstream.
func (e *env) front(set *Set, route string, providers, scopes []string) string {
	e.t.Helper()
	mw := mustMW(e.t, set, route, providers, scopes)
	strip := StripIdentityHeaders(set.IdentityHeaders())
	return gatewayFront(e.t, echoUpstream(e.t), func(h http.Handler) http.Handler { return strip(mw(h)) }).URL
}

// answer is what a client got back.
type answer struct {
	status int
	header http.Header
	body   string
	echoed echoed // what the upstream received, when status is 200
}

// send makes one request on a connection of its own. It may run outside
// the test goroutine, so a failure is status 0 with the error as body.
func send(req *http.Request) answer {
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return answer{body: err.Error()}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return answer{body: err.Error()}
	}
	a := answer{status: resp.StatusCode, header: resp.Header, body: string(b)}
	if a.status == http.StatusOK {
		if err := json.Unmarshal(b, &a.echoed); err != nil {
			return answer{body: fmt.Sprintf("upstream answer %q: %v", b, err)}
		}
	}
	return a
}

func newReq(t *testing.T, u string, hdr http.Header) *http.Request {
	t.Helper()
	r, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, vs := range hdr {
		r.Header[k] = vs // verbatim: the client writes names as given
	}
	return r
}

// signRaw signs header and payload JSON texts as given, for what a map
// cannot express (repeated names).
func signRaw(t *testing.T, k *authtest.Key, header, payload string) string {
	t.Helper()
	enc := base64.RawURLEncoding.EncodeToString
	input := enc([]byte(header)) + "." + enc([]byte(payload))
	sig, err := jwsbb.Sign(k.Private, k.Alg, []byte(input), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return input + "." + enc(sig)
}

// forged is an unsigned token for an admin: what a client would like an
// upstream to read.
func forged(t *testing.T, e *env) string {
	return authtest.Compact(t, map[string]any{"alg": "none"}, e.claims(map[string]any{"sub": "admin"}), nil)
}

// TestIdentityHeaderVariantsAreStripped: the spellings of an identity
// header that an upstream may read as that header never get through: with
// underscores for dashes (CGI-style servers map X_User_Id and X-User-Id to
// the same HTTP_X_USER_ID), and as request trailers, which the gateway's
// proxy forwards. Other headers and trailers pass untouched.
func TestIdentityHeaderVariantsAreStripped(t *testing.T) {
	e := newEnv(t)
	jwks := authtest.NewJWKSServer(t, rsaKey1)
	set := e.apply(map[string]*config.AuthProvider{"users": jwtProviderCfg(jwks.URL(), nil)})
	strip := StripIdentityHeaders(set.IdentityHeaders())
	mw := mustMW(t, set, "api", []string{"users"}, nil)
	tok := authtest.Sign(t, rsaKey1, e.claims(map[string]any{"scope": nil}))
	identity := []string{"X-User-Id", "X-User-Scopes"}

	t.Run("underscores", func(t *testing.T) {
		up := echoUpstream(t)
		public := gatewayFront(t, up, strip).URL
		authed := gatewayFront(t, up, func(h http.Handler) http.Handler { return strip(mw(h)) }).URL
		spoof := http.Header{
			"X_User_Id":     {"admin"},
			"x_user_scopes": {"admin:all"},
			"X-User_ID":     {"root"},
			"X_Request_Tag": {"kept"},
		}
		for _, tc := range []struct {
			name, url, authz, wantSub string
		}{
			{"public route", public, "", ""},
			{"authenticated route", authed, "Bearer " + tok, "user-42"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				h := spoof.Clone()
				if tc.authz != "" {
					h.Set("Authorization", tc.authz)
				}
				a := send(newReq(t, tc.url+"/x", h))
				if a.status != http.StatusOK {
					t.Fatalf("status %d: %s", a.status, a.body)
				}
				for k, v := range a.echoed.Header {
					for _, id := range identity {
						if sameFieldForCGI(k, id) && !(k == "X-User-Id" && len(v) == 1 && v[0] == tc.wantSub) {
							t.Errorf("%s: %q reached the upstream", k, v)
						}
					}
				}
				if got := a.echoed.Header.Get("X-User-Id"); got != tc.wantSub {
					t.Errorf("X-User-Id %q, want %q", got, tc.wantSub)
				}
				if got := a.echoed.Header.Get("X_request_tag"); got != "kept" {
					t.Errorf("an unrelated underscore header was dropped: %v", a.echoed.Header)
				}
			})
		}
	})

	t.Run("trailers", func(t *testing.T) {
		// The gateway's own proxy, which passes request trailers on.
		got := make(chan http.Header, 1)
		up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			got <- r.Trailer.Clone()
			_, _ = io.WriteString(w, "{}")
		}))
		t.Cleanup(up.Close)
		target, _ := url.Parse(up.URL)
		tr := &http.Transport{}
		t.Cleanup(tr.CloseIdleConnections)
		px, err := proxy.New(proxy.Config{Backends: []proxy.Backend{{Name: "u", Weight: 1, Transport: tr, Target: target}}}, proxy.Deps{})
		if err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			name  string
			chain http.Handler
			authz string
		}{
			{"public route", strip(px), ""},
			{"authenticated route", strip(mw(px)), "Bearer " + tok},
		} {
			t.Run(tc.name, func(t *testing.T) {
				front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					tc.chain.ServeHTTP(w, r.WithContext(reqctx.With(r.Context(), &reqctx.Info{RequestID: "t"})))
				}))
				defer front.Close()
				// A reader the client cannot measure, so the body is
				// chunked and can carry trailers.
				req, _ := http.NewRequest(http.MethodPost, front.URL+"/x", io.MultiReader(strings.NewReader("payload")))
				req.Trailer = http.Header{"X-User-Id": {"admin"}, "X_User_Scopes": {"admin:all"}, "X-Sum": {"42"}}
				if tc.authz != "" {
					req.Header.Set("Authorization", tc.authz)
				}
				if a := send(req); a.status != http.StatusOK {
					t.Fatalf("status %d: %s", a.status, a.body)
				}
				tl := <-got
				if tl.Get("X-Sum") != "42" {
					t.Fatalf("an unrelated trailer was lost: %v", tl)
				}
				for k, v := range tl {
					for _, id := range identity {
						if sameFieldForCGI(k, id) {
							t.Errorf("trailer %s: %q reached the upstream", k, v)
						}
					}
				}
			})
		}
	})
}

// TestRepeatedCredentialIsRefused: a credential header or query parameter
// sent twice is refused (401, malformed) whichever occurrence is valid: an
// upstream that reads another occurrence (the last, say) than the one
// checked would take an unchecked token for a checked one. Cookies are the
// exception: browsers send two cookies of one name (set for two paths or
// domains), so the first counts, as net/http and RFC 6265 section 5.4
// order them.
func TestRepeatedCredentialIsRefused(t *testing.T) {
	e := newEnv(t)
	jwks := authtest.NewJWKSServer(t, rsaKey1)
	from := func(src *config.TokenSource) func(*config.AuthProvider) {
		return func(p *config.AuthProvider) { p.TokenFrom = src }
	}
	set := e.apply(map[string]*config.AuthProvider{
		"bearer": jwtProviderCfg(jwks.URL(), nil),
		"header": jwtProviderCfg(jwks.URL(), from(&config.TokenSource{Header: "X-Token"})),
		"query":  jwtProviderCfg(jwks.URL(), from(&config.TokenSource{Query: "access_token"})),
		"cookie": jwtProviderCfg(jwks.URL(), from(&config.TokenSource{Cookie: "session"})),
		"keys":   {Type: "api_key", Query: "api_key", Keys: []config.APIKey{{ID: "acme", SHA256: authtest.KeyHash("k-acme")}}},
	})
	fronts := map[string]string{}
	for _, p := range []string{"bearer", "header", "query", "cookie", "keys"} {
		fronts[p] = e.front(set, "rep-"+p, []string{p}, nil)
	}
	good := authtest.Sign(t, rsaKey1, e.claims(nil))
	bad := forged(t, e)
	tests := []struct {
		name, provider, query string
		hdr                   http.Header
		reason                string // "" for 200
	}{
		{"one Authorization", "bearer", "", http.Header{"Authorization": {"Bearer " + good}}, ""},
		{"Authorization twice, good first", "bearer", "", http.Header{"Authorization": {"Bearer " + good, "Bearer " + bad}}, "malformed"},
		{"Authorization twice, good last", "bearer", "", http.Header{"Authorization": {"Bearer " + bad, "Bearer " + good}}, "malformed"},
		{"token header twice", "header", "", http.Header{"X-Token": {good, bad}}, "malformed"},
		{"query parameter once", "query", "a=1&access_token=" + good + "&b=2", nil, ""},
		{"query parameter twice", "query", "access_token=" + good + "&access_token=" + bad, nil, "malformed"},
		{"query parameter twice, once escaped", "query", "access_token=" + good + "&access%5Ftoken=" + bad, nil, "malformed"},
		{"API key parameter twice", "keys", "api_key=k-acme&api_key=k-acme", nil, "unknown_key"},
		{"two cookies, the first valid", "cookie", "", http.Header{"Cookie": {"session=" + good + "; session=" + bad}}, ""},
		{"two cookies, the first forged", "cookie", "", http.Header{"Cookie": {"session=" + bad + "; session=" + good}}, "malformed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			route := "rep-" + tc.provider
			var before float64
			if tc.reason != "" {
				before = e.failures(route, tc.reason)
			}
			u := fronts[tc.provider] + "/x"
			if tc.query != "" {
				u += "?" + tc.query
			}
			a := send(newReq(t, u, tc.hdr))
			if tc.reason == "" {
				if a.status != http.StatusOK {
					t.Fatalf("status %d: %s", a.status, a.body)
				}
				return
			}
			if a.status != http.StatusUnauthorized {
				t.Fatalf("status %d, want 401: %s", a.status, a.body)
			}
			if d := e.failures(route, tc.reason) - before; d != 1 {
				t.Fatalf("failures{reason=%s} grew by %v, want 1", tc.reason, d)
			}
		})
	}
}

// TestForwardTokenFalseWhoeverWins: with forward_token: false the upstream
// never sees that provider's token, also when another provider accepted
// the request (the token was invalid, lacked a scope, or came after the
// winner), but a credential that is not its token stays, and so does a
// token that the winning provider forwards. With forward_token: true a
// token is forwarded only when its provider accepted the request: beside
// an API key that won, a forged (or never checked) token would reach an
// upstream that trusts what the gateway forwards.
func TestForwardTokenFalseWhoeverWins(t *testing.T) {
	e := newEnv(t)
	jwks := authtest.NewJWKSServer(t, rsaKey1)
	set := e.apply(map[string]*config.AuthProvider{
		"hidden": jwtProviderCfg(jwks.URL(), func(p *config.AuthProvider) { p.ForwardToken = boolp(false) }),
		"shown":  jwtProviderCfg(jwks.URL(), func(p *config.AuthProvider) { p.ForwardToken = boolp(true) }),
		"hidden-cookie": jwtProviderCfg(jwks.URL(), func(p *config.AuthProvider) {
			p.ForwardToken = boolp(false)
			p.TokenFrom = &config.TokenSource{Cookie: "session"}
		}),
		"partners": {Type: "api_key", Header: "X-API-Key", Keys: []config.APIKey{
			{ID: "acme", SHA256: authtest.KeyHash("k-acme"), Scopes: []string{"posts:read"}}}},
	})
	scoped := []string{"posts:read"}
	tokenThenKey := e.front(set, "tk", []string{"hidden", "partners"}, scoped)
	keyThenToken := e.front(set, "kt", []string{"partners", "hidden", "hidden-cookie"}, scoped)
	shownFirst := e.front(set, "sh", []string{"shown", "hidden"}, scoped)
	shownThenKey := e.front(set, "sk", []string{"shown", "partners"}, scoped)
	keyThenShown := e.front(set, "ks", []string{"partners", "shown"}, scoped)
	good := authtest.Sign(t, rsaKey1, e.claims(nil))
	noScope := authtest.Sign(t, rsaKey1, e.claims(map[string]any{"scope": "feed:read"}))
	tests := []struct {
		name, url  string
		hdr        http.Header
		provider   string
		wantAuthz  string // Authorization the upstream must get ("" none)
		wantCookie string
	}{
		{"forged token, key wins", tokenThenKey, http.Header{"Authorization": {"Bearer " + forged(t, e)}, "X-Api-Key": {"k-acme"}}, "partners", "", ""},
		{"token without the scope, key wins", tokenThenKey, http.Header{"Authorization": {"Bearer " + noScope}, "X-Api-Key": {"k-acme"}}, "partners", "", ""},
		{"valid token after the winning key", keyThenToken, http.Header{"Authorization": {"Bearer " + good}, "X-Api-Key": {"k-acme"},
			"Cookie": {"a=1; session=" + good + "; b=2"}}, "partners", "", "a=1; b=2"},
		{"Basic credentials are not the token", tokenThenKey, http.Header{"Authorization": {"Basic dXNlcjpwdw=="}, "X-Api-Key": {"k-acme"}}, "partners", "Basic dXNlcjpwdw==", ""},
		{"the winner forwards the same header", shownFirst, http.Header{"Authorization": {"Bearer " + good}}, "shown", "Bearer " + good, ""},
		{"forwarding provider: forged token, key wins", shownThenKey, http.Header{"Authorization": {"Bearer " + forged(t, e)}, "X-Api-Key": {"k-acme"}}, "partners", "", ""},
		{"forwarding provider: unchecked token after the winning key", keyThenShown, http.Header{"Authorization": {"Bearer " + good}, "X-Api-Key": {"k-acme"}}, "partners", "", ""},
		{"forwarding provider: two tokens, key wins", keyThenShown, http.Header{"Authorization": {"Bearer " + good, "Bearer " + forged(t, e)}, "X-Api-Key": {"k-acme"}}, "partners", "", ""},
		{"forwarding provider: Basic credentials stay", keyThenShown, http.Header{"Authorization": {"Basic dXNlcjpwdw=="}, "X-Api-Key": {"k-acme"}}, "partners", "Basic dXNlcjpwdw==", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := send(newReq(t, tc.url+"/x", tc.hdr))
			if a.status != http.StatusOK {
				t.Fatalf("status %d: %s", a.status, a.body)
			}
			if got := strings.Join(a.echoed.Header["Authorization"], ", "); got != tc.wantAuthz {
				t.Errorf("upstream Authorization %q, want %q", got, tc.wantAuthz)
			}
			if got := a.echoed.Header.Get("Cookie"); got != tc.wantCookie {
				t.Errorf("upstream Cookie %q, want %q", got, tc.wantCookie)
			}
			if _, ok := a.echoed.Header["X-Api-Key"]; ok {
				t.Error("API key forwarded")
			}
		})
	}
}

// kidless is k without a key id, in its JWK and in the tokens it signs.
func kidless(k *authtest.Key) *authtest.Key { return &authtest.Key{Alg: k.Alg, Private: k.Private} }

// withOps is k's JWK with key_ops in place of use.
func withOps(k *authtest.Key, ops ...string) map[string]any {
	m := k.JWK()
	delete(m, "use")
	m["key_ops"] = ops
	return m
}

// TestKeySelection: which key of a JWKS verifies a token. A token without
// kid, or with a kid the set does not have, uses a key only when exactly
// one candidate fits (never several in turn); a key whose key_ops leave
// out "verify" is not a signature key (RFC 7517 section 4.3), as one with
// use other than sig is not.
func TestKeySelection(t *testing.T) {
	keys(t)
	doc := func(jwks ...map[string]any) []byte { return mustJSON(map[string]any{"keys": jwks}) }
	tests := []struct {
		name   string
		jwks   []byte
		tok    func(t *testing.T, e *env) string
		status int
		reason string
	}{
		{"no kid, one RSA key among others", authtest.JWKS(rsaKey1, ecKey1, edKey1),
			func(t *testing.T, e *env) string { return authtest.Sign(t, kidless(rsaKey1), e.claims(nil)) }, 200, ""},
		{"no kid, two RSA keys", authtest.JWKS(rsaKey1, rsaKey2),
			func(t *testing.T, e *env) string { return authtest.Sign(t, kidless(rsaKey1), e.claims(nil)) }, 401, "unknown_key"},
		{"unknown kid, the only key has a kid", authtest.JWKS(rsaKey1),
			func(t *testing.T, e *env) string {
				return authtest.SignHeader(t, rsaKey1, map[string]any{"alg": "RS256", "kid": "other"}, e.claims(nil))
			}, 401, "unknown_key"},
		{"unknown kid, one key without kid", authtest.JWKS(kidless(rsaKey1), ecKey1),
			func(t *testing.T, e *env) string {
				return authtest.SignHeader(t, rsaKey1, map[string]any{"alg": "RS256", "kid": "other"}, e.claims(nil))
			}, 200, ""},
		{"unknown kid, two keys without kid", authtest.JWKS(kidless(rsaKey1), kidless(rsaKey2)),
			func(t *testing.T, e *env) string {
				return authtest.SignHeader(t, rsaKey2, map[string]any{"alg": "RS256", "kid": "other"}, e.claims(nil))
			}, 401, "unknown_key"},
		{"key_ops verify", doc(withOps(rsaKey1, "verify"), ecKey1.JWK()),
			func(t *testing.T, e *env) string { return authtest.Sign(t, rsaKey1, e.claims(nil)) }, 200, ""},
		{"key_ops encrypt only", doc(withOps(rsaKey1, "encrypt", "wrapKey"), ecKey1.JWK()),
			func(t *testing.T, e *env) string { return authtest.Sign(t, rsaKey1, e.claims(nil)) }, 401, "unknown_key"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			srv := authtest.NewJWKSServer(t)
			srv.SetBody(tc.jwks)
			set := e.apply(map[string]*config.AuthProvider{"users": jwtProviderCfg(srv.URL(), nil)})
			u := e.front(set, "sel", []string{"users"}, nil)
			a := send(newReq(t, u+"/x", http.Header{"Authorization": {"Bearer " + tc.tok(t, e)}}))
			if a.status != tc.status {
				t.Fatalf("status %d, want %d: %s", a.status, tc.status, a.body)
			}
			if tc.reason != "" && e.failures("sel", tc.reason) != 1 {
				t.Fatalf("not counted as %s", tc.reason)
			}
		})
	}
}

// gatedJWKS is a JWKS server whose answers after the first wait for
// release, announcing each such request on arrived.
type gatedJWKS struct {
	*httptest.Server
	first, later []byte
	n            atomic.Int64
	arrived      chan struct{}
	release      chan struct{}
	releaseOnce  sync.Once
}

// Release lets every waiting and later answer go.
func (g *gatedJWKS) Release() { g.releaseOnce.Do(func() { close(g.release) }) }

func newGatedJWKS(t *testing.T, first, later []byte) *gatedJWKS {
	g := &gatedJWKS{first: first, later: later, arrived: make(chan struct{}, 8), release: make(chan struct{})}
	g.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if g.n.Add(1) == 1 {
			_, _ = w.Write(g.first)
			return
		}
		g.arrived <- struct{}{}
		<-g.release // not r.Context(): the gateway's own deadline must end it
		_, _ = w.Write(g.later)
	}))
	t.Cleanup(g.Close)   // runs second: Close waits for handlers
	t.Cleanup(g.Release) // runs first
	return g
}

// joinSignal is a request context that reports the first call of Done:
// the auth stage calls it only to wait for a key fetch under way.
type joinSignal struct {
	context.Context
	once   sync.Once
	called chan struct{}
}

func (c *joinSignal) Done() <-chan struct{} {
	c.once.Do(func() { close(c.called) })
	return c.Context.Done()
}

// TestSlowJWKS: while a refetch for a new kid hangs on a slow identity
// provider, tokens of known keys pass at once, and other requests for a new
// kid wait for that same fetch (single flight) and then pass, rather than
// failing or starting fetches of their own.
func TestSlowJWKS(t *testing.T) {
	e := newEnv(t)
	// The registry's own 5 s fetch bound, not the shorter test client's,
	// so a slow machine does not end the held fetch early.
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	e.reg.client = &http.Client{Transport: tr}
	g := newGatedJWKS(t, authtest.JWKS(rsaKey1), authtest.JWKS(rsaKey1, rsaKey2))
	set := e.apply(map[string]*config.AuthProvider{"users": jwtProviderCfg(g.URL, nil)})
	mw := mustMW(t, set, "slow", []string{"users"}, nil)
	strip := StripIdentityHeaders(set.IdentityHeaders())
	joined := &joinSignal{called: make(chan struct{})}
	u := gatewayFront(t, echoUpstream(t), func(h http.Handler) http.Handler {
		h = strip(mw(h))
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("X-Test-Follower") != "" {
				joined.Context = r.Context()
				r = r.WithContext(joined)
			}
			h.ServeHTTP(w, r)
		})
	}).URL + "/x"
	p := set.providers["users"].(*jwtProvider)
	e.clk.Advance(refetchInterval + time.Second)

	req := func(key *authtest.Key, sub string, follower bool) *http.Request {
		h := http.Header{"Authorization": {"Bearer " + authtest.Sign(t, key, e.claims(map[string]any{"sub": sub}))}}
		if follower {
			h.Set("X-Test-Follower", "1")
		}
		return newReq(t, u, h)
	}
	leader, known, follower := req(rsaKey2, "leader", false), req(rsaKey1, "known", false), req(rsaKey2, "follower", true)
	type result struct {
		who string
		a   answer
	}
	results := make(chan result, 2)
	go func() { results <- result{"leader", send(leader)} }()
	<-g.arrived

	// A known key, a token not seen before: no wait for the fetch.
	if a := send(known); a.status != 200 {
		t.Fatalf("known key during a slow fetch: %d %s", a.status, a.body)
	}
	p.src.mu.Lock()
	inflight := p.src.inflight != nil
	p.src.mu.Unlock()
	if !inflight {
		t.Fatal("the known-key request waited for the slow fetch to end")
	}

	go func() { results <- result{"follower", send(follower)} }()
	select {
	case <-joined.called: // waiting for the leader's fetch
	case r := <-results:
		t.Fatalf("%s answered %d before the fetch under way ended", r.who, r.a.status)
	case <-g.arrived:
		t.Fatal("a second fetch started while one was under way")
	}
	g.Release()
	for range 2 {
		r := <-results
		if r.a.status != 200 {
			t.Fatalf("%s: status %d: %s", r.who, r.a.status, r.a.body)
		}
		if got := r.a.echoed.Header.Get("X-User-Id"); got != r.who {
			t.Fatalf("%s: X-User-Id %q", r.who, got)
		}
	}
	if n := g.n.Load(); n != 2 {
		t.Fatalf("JWKS fetches %d, want 2 (startup and one refetch)", n)
	}
}

// TestKeyReplacedUnderSameKid: as documented, a key replaced under the
// same kid triggers no refetch: its tokens fail until the background
// refresh; then they pass at once (the remembered signature failure does
// not outlive the key set it was made with) and tokens of the old key stop.
func TestKeyReplacedUnderSameKid(t *testing.T) {
	e := newEnv(t)
	waits, fire := e.manualRefresh()
	srv := authtest.NewJWKSServer(t, rsaKey1)
	set := e.apply(map[string]*config.AuthProvider{"users": jwtProviderCfg(srv.URL(), nil)})
	<-waits
	u := e.front(set, "same-kid", []string{"users"}, nil) + "/x"
	bearerHdr := func(tok string) http.Header { return http.Header{"Authorization": {"Bearer " + tok}} }
	old := authtest.Sign(t, rsaKey1, e.claims(nil))
	if a := send(newReq(t, u, bearerHdr(old))); a.status != 200 {
		t.Fatalf("old key: %d", a.status)
	}

	replaced := &authtest.Key{KID: rsaKey1.KID, Alg: "RS256", Private: rsaKey2.Private}
	srv.SetKeys(replaced)
	e.clk.Advance(refetchInterval + time.Second)
	tok := authtest.Sign(t, replaced, e.claims(map[string]any{"sub": "new"}))
	if a := send(newReq(t, u, bearerHdr(tok))); a.status != 401 || e.failures("same-kid", "bad_signature") != 1 {
		t.Fatalf("new key before the refresh: %d", a.status)
	}
	if n := srv.Requests(); n != 1 {
		t.Fatalf("JWKS fetches %d, want 1: a known kid triggers no refetch", n)
	}

	fire <- time.Time{}
	<-waits // the refresh is done
	if a := send(newReq(t, u, bearerHdr(tok))); a.status != 200 {
		t.Fatalf("new key after the refresh: %d (negative cache outlived the key set)", a.status)
	}
	if a := send(newReq(t, u, bearerHdr(old))); a.status != 401 {
		t.Fatalf("old key after the refresh: %d", a.status)
	}
}

// TestCacheKeyIsTheWholeToken: a token with a forged signature and the
// valid one with the same header and payload are different tokens to the
// cache, in either order: a verdict on one is never served for the other.
func TestCacheKeyIsTheWholeToken(t *testing.T) {
	e := newEnv(t)
	srv := authtest.NewJWKSServer(t, rsaKey1)
	set := e.apply(map[string]*config.AuthProvider{"users": jwtProviderCfg(srv.URL(), nil)})
	u := e.front(set, "whole", []string{"users"}, nil) + "/x"
	forge := func(tok string) string { return tamper(tok, 2, func(b []byte) []byte { b[7] ^= 1; return b }) }
	for _, forgedFirst := range []bool{true, false} {
		t.Run(fmt.Sprint("forged first: ", forgedFirst), func(t *testing.T) {
			good := authtest.Sign(t, rsaKey1, e.claims(map[string]any{"sub": fmt.Sprint("order-", forgedFirst)}))
			steps := []struct {
				tok    string
				status int
			}{{forge(good), 401}, {good, 200}, {forge(good), 401}, {good, 200}}
			if !forgedFirst {
				steps = steps[1:]
			}
			for i, s := range steps {
				if a := send(newReq(t, u, http.Header{"Authorization": {"Bearer " + s.tok}})); a.status != s.status {
					t.Fatalf("step %d: status %d, want %d", i, a.status, s.status)
				}
			}
		})
	}
}

// TestTimeBoundaries: the edges of exp, nbf and iat with leeway, as the
// docs state them (now < exp + leeway; nbf and iat <= now + leeway), with
// fractional times kept, and a cached token ending exactly at exp + leeway.
func TestTimeBoundaries(t *testing.T) {
	e := newEnv(t)
	srv := authtest.NewJWKSServer(t, rsaKey1)
	set := e.apply(map[string]*config.AuthProvider{"users": jwtProviderCfg(srv.URL(), func(p *config.AuthProvider) {
		p.Leeway = config.Duration(30 * time.Second)
	})})
	u := e.front(set, "time", []string{"users"}, nil) + "/x"
	now := float64(e.clk.Now().Unix())
	tests := []struct {
		name   string
		claims map[string]any
		status int
	}{
		{"nbf at now + leeway", map[string]any{"nbf": now + 30}, 200},
		{"nbf just after", map[string]any{"nbf": now + 30.5}, 401},
		{"iat at now + leeway", map[string]any{"iat": now + 30}, 200},
		{"iat just after", map[string]any{"iat": now + 30.5}, 401},
		{"fractional exp half a second inside the leeway", map[string]any{"exp": now - 29.5}, 200},
		{"exp far away, as a float", map[string]any{"exp": 1e12}, 200},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tok := authtest.Sign(t, rsaKey1, e.claims(tc.claims))
			if a := send(newReq(t, u, http.Header{"Authorization": {"Bearer " + tok}})); a.status != tc.status {
				t.Fatalf("status %d, want %d: %s", a.status, tc.status, a.body)
			}
		})
	}
	t.Run("cached until exp + leeway", func(t *testing.T) {
		tok := authtest.Sign(t, rsaKey1, e.claims(map[string]any{"exp": now + 60, "sub": "cached"}))
		hdr := http.Header{"Authorization": {"Bearer " + tok}}
		for _, step := range []struct {
			advance time.Duration
			status  int
		}{{0, 200}, {89 * time.Second, 200}, {time.Second, 401}} {
			e.clk.Advance(step.advance)
			if a := send(newReq(t, u, hdr)); a.status != step.status {
				t.Fatalf("%v after exp: status %d, want %d", e.clk.Now().Sub(time.Unix(int64(now)+60, 0)), a.status, step.status)
			}
		}
	})
}

// TestRepeatedNames: a repeated name in the header or the claims keeps its
// last value (RFC 7515 section 4, RFC 7519 section 4 allow this), for the
// checks and for what is forwarded alike: a disallowed alg cannot hide
// behind an allowed one.
func TestRepeatedNames(t *testing.T) {
	e := newEnv(t)
	srv := authtest.NewJWKSServer(t, rsaKey1)
	set := e.apply(map[string]*config.AuthProvider{"users": jwtProviderCfg(srv.URL(), nil)})
	u := e.front(set, "dup", []string{"users"}, nil) + "/x"
	now := e.clk.Now().Unix()
	payload := func(extra string) string {
		return fmt.Sprintf(`{"iss":"https://id.example.com","aud":"portico","scope":"posts:read","exp":%d,%s}`, now+3600, extra)
	}
	tests := []struct {
		name, header, payload string
		status                int
		sub                   string
	}{
		{"sub twice", `{"alg":"RS256","kid":"rsa-1"}`, payload(`"sub":"first","sub":"last"`), 200, "last"},
		{"aud twice, the last foreign", `{"alg":"RS256","kid":"rsa-1"}`, payload(`"sub":"a","aud":"elsewhere"`), 401, ""},
		{"exp twice, the last past", `{"alg":"RS256","kid":"rsa-1"}`, payload(fmt.Sprintf(`"sub":"a","exp":%d`, now-3600)), 401, ""},
		{"alg twice, the last none", `{"alg":"RS256","kid":"rsa-1","alg":"none"}`, payload(`"sub":"a"`), 401, ""},
		{"alg twice, the last allowed", `{"alg":"none","kid":"rsa-1","alg":"RS256"}`, payload(`"sub":"a"`), 200, "a"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tok := signRaw(t, rsaKey1, tc.header, tc.payload)
			a := send(newReq(t, u, http.Header{"Authorization": {"Bearer " + tok}}))
			if a.status != tc.status {
				t.Fatalf("status %d, want %d: %s", a.status, tc.status, a.body)
			}
			if got := a.echoed.Header.Get("X-User-Id"); got != tc.sub {
				t.Fatalf("X-User-Id %q, want %q", got, tc.sub)
			}
		})
	}
}

// TestRefusalsLookAlike: every refused token whose problem is not its
// time gets the same answer, byte for byte, so a client cannot learn
// whether the signature, the key, the issuer, the audience or the shape
// was wrong (only "expired" and "not yet valid" are named, which a client
// can act on).
func TestRefusalsLookAlike(t *testing.T) {
	e := newEnv(t)
	srv := authtest.NewJWKSServer(t, rsaKey1)
	set := e.apply(map[string]*config.AuthProvider{"users": jwtProviderCfg(srv.URL(), func(p *config.AuthProvider) {
		p.Algorithms = []string{"RS256", "HS256"}
	})})
	u := e.front(set, "alike", []string{"users"}, nil) + "/x"
	good := authtest.Sign(t, rsaKey1, e.claims(nil))
	toks := map[string]string{
		"bad signature":       tamper(good, 2, func(b []byte) []byte { b[0] ^= 1; return b }),
		"unknown kid":         authtest.Sign(t, rsaKey2, e.claims(nil)),
		"wrong issuer":        authtest.Sign(t, rsaKey1, e.claims(map[string]any{"iss": "https://evil.example.com"})),
		"wrong audience":      authtest.Sign(t, rsaKey1, e.claims(map[string]any{"aud": "other"})),
		"malformed":           "a.b.c",
		"alg none":            forged(t, e),
		"HS256 with the PEM":  authtest.SignHMAC(t, "HS256", rsaKey1.PublicPEM(), "rsa-1", e.claims(nil)),
		"alg not allowed":     authtest.SignHMAC(t, "HS512", hsSecret, "", e.claims(nil)),
		"crit":                authtest.SignHeader(t, rsaKey1, map[string]any{"alg": "RS256", "kid": "rsa-1", "crit": []string{"exp"}}, e.claims(nil)),
		"over 16 KiB":         good + strings.Repeat("A", maxTokenBytes),
		"wrong key for a kid": authtest.SignHeader(t, ecKey1, map[string]any{"alg": "ES256", "kid": "rsa-1"}, e.claims(nil)),
	}
	type shape struct{ status, www, ctype, body string }
	var first shape
	var firstName string
	for name, tok := range toks {
		a := send(newReq(t, u, http.Header{"Authorization": {"Bearer " + tok}}))
		s := shape{fmt.Sprint(a.status), strings.Join(a.header.Values("WWW-Authenticate"), " | "), a.header.Get("Content-Type"), a.body}
		if firstName == "" {
			first, firstName = s, name
			want := `Bearer realm="portico", error="invalid_token", error_description="invalid token"`
			if s.status != "401" || s.www != want || s.ctype != "application/problem+json" {
				t.Fatalf("%s: %+v", name, s)
			}
			continue
		}
		if s != first {
			t.Errorf("%s answered\n%+v\nbut %s answered\n%+v", name, s, firstName, first)
		}
	}
}
