package auth

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"testing"

	"github.com/portico-gw/portico/internal/auth/authtest"
	"github.com/portico-gw/portico/internal/config"
	"github.com/portico-gw/portico/internal/identity"
	"github.com/portico-gw/portico/internal/reqctx"
)

// echoUpstream is a real upstream that answers with the headers and query
// it received, as JSON.
func echoUpstream(t *testing.T) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(map[string]any{"header": r.Header, "query": r.URL.RawQuery})
	}))
	t.Cleanup(srv.Close)
	return srv
}

// gatewayFront wraps the upstream in a reverse proxy behind chain, and
// serves it on a real listener, with a reqctx.Info per request.
func gatewayFront(t *testing.T, upstream *httptest.Server, chain func(http.Handler) http.Handler) *httptest.Server {
	t.Helper()
	target, _ := url.Parse(upstream.URL)
	proxy := &httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) { pr.SetURL(target) }}
	h := chain(proxy)
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r = r.WithContext(reqctx.With(r.Context(), &reqctx.Info{RequestID: "front"}))
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(front.Close)
	return front
}

type echoed struct {
	Header http.Header `json:"header"`
	Query  string      `json:"query"`
}

func get(t *testing.T, c *http.Client, u string, hdr map[string][]string) (int, echoed) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, u, nil)
	for k, vs := range hdr {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var e echoed
	if resp.StatusCode == 200 {
		if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
			t.Fatal(err)
		}
	}
	return resp.StatusCode, e
}

func TestIdentityHeadersAreStripped(t *testing.T) {
	e := newEnv(t)
	jwks := authtest.NewJWKSServer(t, rsaKey1)
	set := e.apply(map[string]*config.AuthProvider{
		"users": jwtProviderCfg(jwks.URL(), nil),
		"partners": {Type: "api_key", Header: "X-API-Key", ForwardID: "x-consumer-id",
			Keys: []config.APIKey{{ID: "acme", SHA256: authtest.KeyHash("k-acme")}}},
	})
	if got := set.IdentityHeaders(); len(got) != 3 || got[0] != "X-Consumer-Id" || got[1] != "X-User-Id" || got[2] != "X-User-Scopes" {
		t.Fatalf("IdentityHeaders %q", got)
	}
	up := echoUpstream(t)
	mw, err := set.Middleware("api", []string{"users"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	strip := StripIdentityHeaders(set.IdentityHeaders())
	authed := gatewayFront(t, up, func(h http.Handler) http.Handler { return strip(mw(h)) })
	public := gatewayFront(t, up, func(h http.Handler) http.Handler { return strip(h) })
	c := &http.Client{Transport: &http.Transport{}}
	defer c.CloseIdleConnections()

	spoof := map[string][]string{
		"X-User-Id":     {"admin"},
		"x-user-scopes": {"admin:all"},
		"X-Consumer-Id": {"acme", "other"},
	}
	t.Run("public route", func(t *testing.T) {
		code, got := get(t, c, public.URL+"/p", spoof)
		if code != 200 {
			t.Fatal(code)
		}
		for _, h := range []string{"X-User-Id", "X-User-Scopes", "X-Consumer-Id"} {
			if v, ok := got.Header[h]; ok {
				t.Fatalf("%s reached the upstream: %q", h, v)
			}
		}
	})
	t.Run("authenticated route", func(t *testing.T) {
		// The token has no scope claim: X-User-Scopes must be absent, not
		// the spoofed value.
		tok := authtest.Sign(t, rsaKey1, e.claims(map[string]any{"scope": nil}))
		hdr := map[string][]string{"Authorization": {"Bearer " + tok}}
		for k, v := range spoof {
			hdr[k] = v
		}
		code, got := get(t, c, authed.URL+"/a", hdr)
		if code != 200 {
			t.Fatal(code)
		}
		if v := got.Header["X-User-Id"]; len(v) != 1 || v[0] != "user-42" {
			t.Fatalf("X-User-Id %q", v)
		}
		for _, h := range []string{"X-User-Scopes", "X-Consumer-Id"} {
			if v, ok := got.Header[h]; ok {
				t.Fatalf("%s reached the upstream: %q", h, v)
			}
		}
	})
}

func TestAPIKeys(t *testing.T) {
	e := newEnv(t)
	set := e.apply(map[string]*config.AuthProvider{
		"partners": {Type: "api_key", Header: "X-API-Key", ForwardID: "X-Consumer-Id", Keys: []config.APIKey{
			{ID: "acme", SHA256: authtest.KeyHash("key-acme"), Scopes: []string{"posts:read"}},
			{ID: "globex", SHA256: authtest.KeyHash("key-globex")},
		}},
		"by-query": {Type: "api_key", Query: "api_key", ForwardID: "X-Consumer-Id", Keys: []config.APIKey{
			{ID: "initech", SHA256: authtest.KeyHash("key-initech"), Scopes: []string{"posts:read"}},
		}},
	})
	up := echoUpstream(t)
	mw, err := set.Middleware("partners", []string{"partners", "by-query"}, []string{"posts:read"})
	if err != nil {
		t.Fatal(err)
	}
	front := gatewayFront(t, up, func(h http.Handler) http.Handler { return StripIdentityHeaders(set.IdentityHeaders())(mw(h)) })
	c := &http.Client{Transport: &http.Transport{}}
	defer c.CloseIdleConnections()

	tests := []struct {
		name     string
		path     string
		hdr      map[string][]string
		status   int
		consumer string
		query    string
		reason   string
	}{
		{"header hit", "/x?a=1", map[string][]string{"X-Api-Key": {"key-acme"}}, 200, "acme", "a=1", ""},
		{"query hit, key removed, other params kept as sent", "/x?a=%2F&api_key=key-initech&b=2", nil, 200, "initech", "a=%2F&b=2", ""},
		{"escaped query name", "/x?api%5Fkey=key-initech", nil, 200, "initech", "", ""},
		{"header miss", "/x", map[string][]string{"X-Api-Key": {"nope"}}, 401, "", "", "unknown_key"},
		{"query miss", "/x?api_key=nope", nil, 401, "", "", "unknown_key"},
		{"no key", "/x", nil, 401, "", "", "missing"},
		{"key without the scope", "/x", map[string][]string{"X-Api-Key": {"key-globex"}}, 403, "", "", "forbidden"},
		{"bad header key, good query key", "/x?api_key=key-initech", map[string][]string{"X-Api-Key": {"nope"}}, 200, "initech", "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var before float64
			if tc.reason != "" {
				before = e.failures("partners", tc.reason)
			}
			code, got := get(t, c, front.URL+tc.path, tc.hdr)
			if code != tc.status {
				t.Fatalf("status %d, want %d", code, tc.status)
			}
			if tc.reason != "" {
				if d := e.failures("partners", tc.reason) - before; d != 1 {
					t.Fatalf("failures{%s} grew by %v", tc.reason, d)
				}
				return
			}
			if v := got.Header.Get("X-Consumer-Id"); v != tc.consumer {
				t.Fatalf("X-Consumer-Id %q, want %q", v, tc.consumer)
			}
			if _, ok := got.Header["X-Api-Key"]; ok {
				t.Fatal("the API key header was forwarded")
			}
			if got.Query != tc.query {
				t.Fatalf("upstream query %q, want %q", got.Query, tc.query)
			}
		})
	}
	t.Run("keys never logged", func(t *testing.T) {
		for _, k := range []string{"key-acme", "key-initech", "key-globex", "nope"} {
			if contains(e.logs.String(), k) {
				t.Fatalf("log mentions %q: %s", k, e.logs.String())
			}
		}
	})
	t.Run("challenges", func(t *testing.T) {
		rec := do(mustMW(t, set, "partners", []string{"partners", "by-query"}, nil)(http.NotFoundHandler()),
			httptest.NewRequest(http.MethodGet, "/x", nil))
		www := rec.Header().Values("WWW-Authenticate")
		want := []string{`APIKey realm="portico", header="X-Api-Key"`, `APIKey realm="portico", query="api_key"`}
		if len(www) != 2 || www[0] != want[0] || www[1] != want[1] {
			t.Fatalf("WWW-Authenticate %q, want %q", www, want)
		}
	})
}

func mustMW(t *testing.T, s *Set, route string, providers, scopes []string) func(http.Handler) http.Handler {
	t.Helper()
	mw, err := s.Middleware(route, providers, scopes)
	if err != nil {
		t.Fatal(err)
	}
	return mw
}

func TestSeveralProviders(t *testing.T) {
	e := newEnv(t)
	jwks := authtest.NewJWKSServer(t, rsaKey1)
	set := e.apply(map[string]*config.AuthProvider{
		"users": jwtProviderCfg(jwks.URL(), nil),
		"partners": {Type: "api_key", Header: "X-API-Key", ForwardID: "X-Consumer-Id", Keys: []config.APIKey{
			{ID: "acme", SHA256: authtest.KeyHash("key-acme"), Scopes: []string{"posts:read"}},
			{ID: "noscope", SHA256: authtest.KeyHash("key-noscope")},
		}},
	})
	var s seen
	h := e.chain(set, "multi", []string{"users", "partners"}, []string{"posts:read"}, s.handler())
	good := authtest.Sign(t, rsaKey1, e.claims(nil))
	bad := tamper(good, 2, func(b []byte) []byte { b[3] ^= 1; return b })
	noScope := authtest.Sign(t, rsaKey1, e.claims(map[string]any{"scope": "other"}))
	req := func(tok, key string) *http.Request {
		r := httptest.NewRequest(http.MethodGet, "/m", nil)
		if tok != "" {
			r.Header.Set("Authorization", "Bearer "+tok)
		}
		if key != "" {
			r.Header.Set("X-API-Key", key)
		}
		return r
	}
	tests := []struct {
		name     string
		r        *http.Request
		status   int
		provider string
		www      []string
		reason   string
	}{
		{"nothing: every challenge", req("", ""), 401, "", []string{`Bearer realm="portico"`, `APIKey realm="portico", header="X-Api-Key"`}, "missing"},
		{"jwt wins", req(good, ""), 200, "users", nil, ""},
		{"both valid: first listed wins", req(good, "key-acme"), 200, "users", nil, ""},
		{"bad jwt, good key: key wins", req(bad, "key-acme"), 200, "partners", nil, ""},
		{"bad jwt, bad key: the first failure", req(bad, "nope"), 401, "",
			[]string{`Bearer realm="portico", error="invalid_token", error_description="invalid token"`, `APIKey realm="portico", header="X-Api-Key"`}, "bad_signature"},
		{"bad key only", req("", "nope"), 401, "",
			[]string{`APIKey realm="portico", header="X-Api-Key", error="invalid_key"`, `Bearer realm="portico"`}, "unknown_key"},
		{"jwt lacks scope, key has it: key wins", req(noScope, "key-acme"), 200, "partners", nil, ""},
		{"bad jwt, key lacks scope: 403 beats 401", req(bad, "key-noscope"), 403, "",
			[]string{`APIKey realm="portico", error="insufficient_scope", scope="posts:read"`}, "forbidden"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var before float64
			if tc.reason != "" {
				before = e.failures("multi", tc.reason)
			}
			rec := do(h, tc.r)
			if rec.Code != tc.status {
				t.Fatalf("status %d, want %d: %s", rec.Code, tc.status, rec.Body.String())
			}
			if tc.status == 200 {
				s.mu.Lock()
				defer s.mu.Unlock()
				if s.id.Provider != tc.provider {
					t.Fatalf("provider %q, want %q", s.id.Provider, tc.provider)
				}
				if _, ok := s.header["X-Api-Key"]; ok {
					t.Fatal("API key forwarded")
				}
				return
			}
			www := rec.Header().Values("WWW-Authenticate")
			if len(www) != len(tc.www) {
				t.Fatalf("WWW-Authenticate %q, want %q", www, tc.www)
			}
			for i := range www {
				if www[i] != tc.www[i] {
					t.Fatalf("WWW-Authenticate %q, want %q", www, tc.www)
				}
			}
			if d := e.failures("multi", tc.reason) - before; d != 1 {
				t.Fatalf("failures{%s} grew by %v", tc.reason, d)
			}
		})
	}
}

func TestForwardTokenFalse(t *testing.T) {
	e := newEnv(t)
	jwks := authtest.NewJWKSServer(t, rsaKey1)
	off := func(from *config.TokenSource) func(*config.AuthProvider) {
		return func(p *config.AuthProvider) { p.ForwardToken = boolp(false); p.TokenFrom = from }
	}
	set := e.apply(map[string]*config.AuthProvider{
		"hdr":    jwtProviderCfg(jwks.URL(), off(nil)),
		"custom": jwtProviderCfg(jwks.URL(), off(&config.TokenSource{Header: "x-token"})),
		"cookie": jwtProviderCfg(jwks.URL(), off(&config.TokenSource{Cookie: "session"})),
		"query":  jwtProviderCfg(jwks.URL(), off(&config.TokenSource{Query: "access_token"})),
		"keep":   jwtProviderCfg(jwks.URL(), func(p *config.AuthProvider) { p.ForwardToken = boolp(true) }),
	})
	tok := authtest.Sign(t, rsaKey1, e.claims(nil))
	tests := []struct {
		provider string
		build    func(r *http.Request)
		check    func(t *testing.T, s *seen)
	}{
		{"hdr", func(r *http.Request) { r.Header.Set("Authorization", "bearer "+tok) }, func(t *testing.T, s *seen) {
			if _, ok := s.header["Authorization"]; ok {
				t.Fatal("Authorization forwarded")
			}
		}},
		{"custom", func(r *http.Request) { r.Header.Set("X-Token", tok) }, func(t *testing.T, s *seen) {
			if _, ok := s.header["X-Token"]; ok {
				t.Fatal("X-Token forwarded")
			}
		}},
		{"cookie", func(r *http.Request) { r.Header.Set("Cookie", `a=1; session="`+tok+`"; b=2`) }, func(t *testing.T, s *seen) {
			if got := s.header.Get("Cookie"); got != "a=1; b=2" {
				t.Fatalf("Cookie %q", got)
			}
		}},
		// net/http reads "session =" as the cookie "session": so must we,
		// both to accept it and to strip it before the upstream.
		{"cookie", func(r *http.Request) { r.Header.Set("Cookie", "a=1; session ="+tok+"; b=2") }, func(t *testing.T, s *seen) {
			if got := s.header.Get("Cookie"); got != "a=1; b=2" {
				t.Fatalf("Cookie %q", got)
			}
		}},
		{"query", func(r *http.Request) { r.URL.RawQuery = "x=1&access_token=" + tok + "&y=%20" }, func(t *testing.T, s *seen) {
			if s.query != "x=1&y=%20" {
				t.Fatalf("query %q", s.query)
			}
		}},
		{"keep", func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+tok) }, func(t *testing.T, s *seen) {
			if s.header.Get("Authorization") != "Bearer "+tok {
				t.Fatal("Authorization not forwarded with forward_token: true")
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.provider, func(t *testing.T) {
			var s seen
			h := e.chain(set, tc.provider, []string{tc.provider}, nil, s.handler())
			r := httptest.NewRequest(http.MethodGet, "/f", nil)
			tc.build(r)
			if rec := do(h, r); rec.Code != 200 {
				t.Fatalf("status %d: %s", rec.Code, rec.Body.String())
			}
			if s.id == nil || s.id.Provider != tc.provider {
				t.Fatalf("identity %+v", s.id)
			}
			tc.check(t, &s)
		})
	}
}

func TestIdentityWithoutInfo(t *testing.T) {
	e := newEnv(t)
	set := e.apply(map[string]*config.AuthProvider{
		"partners": {Type: "api_key", Header: "X-API-Key", Keys: []config.APIKey{{ID: "acme", SHA256: authtest.KeyHash("k")}}},
	})
	var got *identity.Identity
	h := mustMW(t, set, "r", []string{"partners"}, nil)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = identity.FromContext(r.Context())
	}))
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	r.Header.Set("X-API-Key", "k")
	h.ServeHTTP(httptest.NewRecorder(), r)
	if got == nil || got.Consumer != "acme" || got.Provider != "partners" {
		t.Fatalf("identity %+v", got)
	}
}

func TestMiddlewareErrors(t *testing.T) {
	e := newEnv(t)
	set := e.apply(map[string]*config.AuthProvider{
		"p": {Type: "api_key", Header: "X-API-Key"},
	})
	for _, tc := range []struct {
		name      string
		route     string
		providers []string
		scopes    []string
	}{
		{"no route", "", []string{"p"}, nil},
		{"no providers", "r", nil, nil},
		{"unknown provider", "r", []string{"nope"}, nil},
		{"scope with a quote", "r", []string{"p"}, []string{`a"b`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := set.Middleware(tc.route, tc.providers, tc.scopes); err == nil {
				t.Fatal("no error")
			}
		})
	}
}

func TestStripIdentityHeaders(t *testing.T) {
	tests := []struct {
		name  string
		names []string
		in    http.Header
		want  http.Header
	}{
		{"nothing configured", nil, http.Header{"X-User-Id": {"a"}}, http.Header{"X-User-Id": {"a"}}},
		{"canonicalised once", []string{"x-user-id", " X-USER-ID ", "x-consumer-id"},
			http.Header{"X-User-Id": {"a", "b"}, "X-Consumer-Id": {"c"}, "X-Other": {"d"}},
			http.Header{"X-Other": {"d"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got http.Header
			h := StripIdentityHeaders(tc.names)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				got = r.Header.Clone()
			}))
			r := httptest.NewRequest(http.MethodGet, "/", nil)
			r.Header = tc.in
			h.ServeHTTP(httptest.NewRecorder(), r)
			if len(got) != len(tc.want) {
				t.Fatalf("headers %v, want %v", got, tc.want)
			}
			for k, v := range tc.want {
				if got.Get(k) != v[0] {
					t.Fatalf("headers %v, want %v", got, tc.want)
				}
			}
		})
	}
}

// TestSeriesResolvedAtCompile: every reason of a route exists (at zero) as
// soon as its middleware is built, so dashboards and alerts see the series
// before the first failure.
func TestSeriesResolvedAtCompile(t *testing.T) {
	e := newEnv(t)
	set := e.apply(map[string]*config.AuthProvider{
		"p": {Type: "api_key", Header: "X-API-Key", Keys: []config.APIKey{{ID: "a", SHA256: authtest.KeyHash("k")}}},
	})
	mustMW(t, set, "compiled", []string{"p"}, nil)
	mfs, err := e.promR.Gather()
	if err != nil {
		t.Fatal(err)
	}
	reasons := map[string]bool{}
	for _, mf := range mfs {
		if mf.GetName() != "portico_auth_failures_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			var route, reason string
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "route":
					route = l.GetValue()
				case "reason":
					reason = l.GetValue()
				}
			}
			if route == "compiled" {
				reasons[reason] = true
			}
		}
	}
	for r := reasonMissing; r < numReasons; r++ {
		if !reasons[r.String()] {
			t.Errorf("series reason=%s missing", r)
		}
	}
	if len(reasons) != int(numReasons)-1 {
		t.Errorf("reasons %v", reasons)
	}
}
