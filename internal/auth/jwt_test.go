package auth

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/portico-gw/portico/internal/auth/authtest"
	"github.com/portico-gw/portico/internal/config"
)

func TestValidTokens(t *testing.T) {
	e := newEnv(t)
	srv := authtest.NewJWKSServer(t, rsaKey1, psK, ecKey1, edKey1)
	set := e.apply(map[string]*config.AuthProvider{
		"users": jwtProviderCfg(srv.URL(), nil),
		"hs": {
			Type: "jwt", Secret: string(hsSecret), Issuer: "https://id.example.com",
			Audiences: []string{"portico"}, Algorithms: []string{"HS256"},
			ForwardClaims: map[string]string{"sub": "X-User-Id"},
		},
	})
	var s seen
	h := e.chain(set, "r", []string{"users", "hs"}, []string{"posts:read"}, s.handler())
	tests := []struct {
		name     string
		tok      string
		provider string
	}{
		{"RS256", authtest.Sign(t, rsaKey1, e.claims(nil)), "users"},
		{"PS256", authtest.Sign(t, psK, e.claims(nil)), "users"},
		{"ES256", authtest.Sign(t, ecKey1, e.claims(nil)), "users"},
		{"EdDSA", authtest.Sign(t, edKey1, e.claims(nil)), "users"},
		{"HS256", authtest.SignHMAC(t, "HS256", hsSecret, "", e.claims(nil)), "hs"},
		{"HS256 with a kid", authtest.SignHMAC(t, "HS256", hsSecret, "any", e.claims(nil)), "hs"},
		{"audience array", authtest.Sign(t, rsaKey1, e.claims(map[string]any{"aud": []string{"other", "portico"}})), "users"},
		{"scp array", authtest.Sign(t, ecKey1, e.claims(map[string]any{"scope": nil, "scp": []string{"posts:read"}})), "users"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec := do(h, bearer(tc.tok))
			if rec.Code != http.StatusOK {
				t.Fatalf("status %d: %s", rec.Code, rec.Body.String())
			}
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.id == nil || s.id.Provider != tc.provider || s.id.Subject != "user-42" || !s.id.HasScope("posts:read") {
				t.Fatalf("identity %+v", s.id)
			}
			if got := s.header.Get("X-User-Id"); got != "user-42" {
				t.Fatalf("X-User-Id %q", got)
			}
			if got := s.header.Get("Authorization"); got != "Bearer "+tc.tok {
				t.Fatalf("token not forwarded (forward_token defaults to true): %q", got)
			}
		})
	}
}

// tamper replaces one part of a token.
func tamper(tok string, part int, f func([]byte) []byte) string {
	parts := strings.Split(tok, ".")
	b, _ := base64.RawURLEncoding.DecodeString(parts[part])
	parts[part] = base64.RawURLEncoding.EncodeToString(f(b))
	return strings.Join(parts, ".")
}

func TestFailureReasons(t *testing.T) {
	e := newEnv(t)
	srv := authtest.NewJWKSServer(t, rsaKey1, ecKey1)
	set := e.apply(map[string]*config.AuthProvider{
		// HS256 is allowed too, so the RSA-public-key-as-secret attack is
		// stopped by the key family check, not by the allow-list.
		"users": jwtProviderCfg(srv.URL(), func(p *config.AuthProvider) {
			p.Algorithms = []string{"RS256", "ES256", "HS256"}
			p.Leeway = config.Duration(30 * time.Second)
		}),
	})
	var s seen
	h := e.chain(set, "fail-route", []string{"users"}, []string{"posts:read"}, s.handler())
	now := e.clk.Now().Unix()
	good := authtest.Sign(t, rsaKey1, e.claims(nil))
	goodEC := authtest.Sign(t, ecKey1, e.claims(nil))

	tests := []struct {
		name   string
		req    *http.Request
		status int
		reason string
		desc   string // expected error_description, if any
	}{
		{"missing", httptestReq(""), 401, "missing", ""},
		{"basic scheme is not a bearer", httptestReq("Basic dXNlcjpwYXNz"), 401, "missing", ""},
		{"empty bearer", httptestReq("Bearer "), 401, "malformed", "invalid token"},
		{"garbage", bearer("not-a-jwt"), 401, "malformed", "invalid token"},
		{"four parts", bearer(good + ".x"), 401, "malformed", "invalid token"},
		{"bad base64", bearer("e30.e30.!!!"), 401, "malformed", "invalid token"},
		{"header not json", bearer(tamper(good, 0, func([]byte) []byte { return []byte("nope") })), 401, "malformed", "invalid token"},
		{"crit header", bearer(authtest.SignHeader(t, rsaKey1, map[string]any{"alg": "RS256", "kid": "rsa-1", "crit": []string{"x"}, "x": 1}, e.claims(nil))), 401, "malformed", "invalid token"},
		{"no exp", bearer(authtest.Sign(t, rsaKey1, e.claims(map[string]any{"exp": nil}))), 401, "malformed", "invalid token"},
		{"exp not a number", bearer(authtest.Sign(t, rsaKey1, e.claims(map[string]any{"exp": "soon"}))), 401, "malformed", "invalid token"},
		{"alg none", bearer(authtest.Compact(t, map[string]any{"alg": "none"}, e.claims(nil), nil)), 401, "malformed", "invalid token"},
		{"alg none with signature", bearer(authtest.Compact(t, map[string]any{"alg": "none", "kid": "rsa-1"}, e.claims(nil), func([]byte) []byte { return []byte("x") })), 401, "bad_signature", "invalid token"},
		{"header names are case-sensitive", bearer(authtest.SignHeader(t, rsaKey1, map[string]any{"Alg": "RS256", "kid": "rsa-1"}, e.claims(nil))), 401, "malformed", "invalid token"},
		{"kid not a string", bearer(authtest.SignHeader(t, rsaKey1, map[string]any{"alg": "RS256", "kid": 7}, e.claims(nil))), 401, "malformed", "invalid token"},
		{"payload not an object", bearer(authtest.Compact(t, map[string]any{"alg": "RS256"}, nil, func([]byte) []byte { return []byte("x") })), 401, "malformed", "invalid token"},
		{"alg not allowed", bearer(authtest.SignHMAC(t, "HS512", hsSecret, "", e.claims(nil))), 401, "bad_signature", "invalid token"},
		{"HS256 signed with the RSA public key (PEM)", bearer(authtest.SignHMAC(t, "HS256", rsaKey1.PublicPEM(), "rsa-1", e.claims(nil))), 401, "bad_signature", "invalid token"},
		{"HS256 signed with the RSA public key, no kid", bearer(authtest.SignHMAC(t, "HS256", rsaKey1.PublicPEM(), "", e.claims(nil))), 401, "unknown_key", "invalid token"},
		{"tampered payload", bearer(tamper(good, 1, func([]byte) []byte {
			b := []byte(fmt.Sprintf(`{"iss":"https://id.example.com","aud":"portico","sub":"admin","scope":"posts:read","exp":%d}`, now+3600))
			return b
		})), 401, "bad_signature", "invalid token"},
		{"tampered signature", bearer(tamper(good, 2, func(b []byte) []byte { b[10] ^= 1; return b })), 401, "bad_signature", "invalid token"},
		{"tampered EC signature", bearer(tamper(goodEC, 2, func(b []byte) []byte { b[0] ^= 0x80; return b })), 401, "bad_signature", "invalid token"},
		{"expired", bearer(authtest.Sign(t, rsaKey1, e.claims(map[string]any{"exp": now - 31}))), 401, "expired", "token expired"},
		{"exp exactly at the leeway edge", bearer(authtest.Sign(t, rsaKey1, e.claims(map[string]any{"exp": now - 30}))), 401, "expired", "token expired"},
		{"nbf in the future", bearer(authtest.Sign(t, rsaKey1, e.claims(map[string]any{"nbf": now + 31}))), 401, "not_yet_valid", "token not yet valid"},
		{"iat in the future", bearer(authtest.Sign(t, rsaKey1, e.claims(map[string]any{"iat": now + 60}))), 401, "not_yet_valid", "token not yet valid"},
		{"wrong issuer", bearer(authtest.Sign(t, rsaKey1, e.claims(map[string]any{"iss": "https://evil.example.com"}))), 401, "wrong_issuer", "invalid token"},
		{"no issuer", bearer(authtest.Sign(t, rsaKey1, e.claims(map[string]any{"iss": nil}))), 401, "wrong_issuer", "invalid token"},
		{"wrong audience", bearer(authtest.Sign(t, rsaKey1, e.claims(map[string]any{"aud": []string{"a", "b"}}))), 401, "wrong_audience", "invalid token"},
		{"unknown kid", bearer(authtest.SignHeader(t, rsaKey1, map[string]any{"alg": "RS256", "kid": "nobody"}, e.claims(nil))), 401, "unknown_key", "invalid token"},
		{"missing scope", bearer(authtest.Sign(t, rsaKey1, e.claims(map[string]any{"scope": "feed:read"}))), 403, "forbidden", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := e.failures("fail-route", tc.reason)
			rec := do(h, tc.req)
			if rec.Code != tc.status {
				t.Fatalf("status %d, want %d: %s", rec.Code, tc.status, rec.Body.String())
			}
			if got := e.failures("fail-route", tc.reason) - before; got != 1 {
				t.Fatalf("failures{reason=%s} grew by %v, want 1", tc.reason, got)
			}
			p := problemOf(t, rec)
			if p["status"].(float64) != float64(tc.status) || p["request_id"] != "req-1" {
				t.Fatalf("problem %v", p)
			}
			www := rec.Header().Values("WWW-Authenticate")
			switch {
			case tc.status == 403:
				if len(www) != 1 || www[0] != `Bearer realm="portico", error="insufficient_scope", scope="posts:read"` {
					t.Fatalf("WWW-Authenticate %q", www)
				}
			case tc.desc == "":
				if len(www) != 1 || www[0] != `Bearer realm="portico"` {
					t.Fatalf("WWW-Authenticate %q", www)
				}
			default:
				want := `Bearer realm="portico", error="invalid_token", error_description="` + tc.desc + `"`
				if len(www) != 1 || www[0] != want {
					t.Fatalf("WWW-Authenticate %q, want %q", www, want)
				}
			}
			if s.calls != 0 {
				t.Fatal("the protected handler ran")
			}
			if !contains(e.logs.String(), "reason="+tc.reason) {
				t.Fatalf("no debug log with reason=%s", tc.reason)
			}
			if authz := tc.req.Header.Get("Authorization"); len(authz) > 20 && contains(e.logs.String(), authz[7:]) {
				t.Fatal("the token was logged")
			}
		})
	}
}

func httptestReq(authz string) *http.Request {
	r := bearer("")
	r.Header.Del("Authorization")
	if authz != "" {
		r.Header.Set("Authorization", authz)
	}
	return r
}

func TestUnknownKidRotation(t *testing.T) {
	e := newEnv(t)
	srv := authtest.NewJWKSServer(t, rsaKey1)
	set := e.apply(map[string]*config.AuthProvider{"users": jwtProviderCfg(srv.URL(), nil)})
	var s seen
	h := e.chain(set, "rot", []string{"users"}, nil, s.handler())
	if n := srv.Requests(); n != 1 {
		t.Fatalf("startup fetches %d, want 1", n)
	}
	old := authtest.Sign(t, rsaKey1, e.claims(nil))
	if rec := do(h, bearer(old)); rec.Code != 200 {
		t.Fatalf("old key: %d", rec.Code)
	}

	// The IdP rotates: key 2 appears. A token signed by it triggers one
	// refetch and then succeeds.
	srv.SetKeys(rsaKey1, rsaKey2)
	e.clk.Advance(refetchInterval + time.Second)
	tok := authtest.Sign(t, rsaKey2, e.claims(nil))
	if rec := do(h, bearer(tok)); rec.Code != 200 {
		t.Fatalf("after rotation: %d %s", rec.Code, rec.Body.String())
	}
	if n := srv.Requests(); n != 2 {
		t.Fatalf("fetches %d, want exactly 2 (startup + one refetch)", n)
	}
	// Another token of key 2, and the old key's token (cache flushed by the
	// key change, so it is verified again): no further fetch.
	for _, tk := range []string{authtest.Sign(t, rsaKey2, e.claims(map[string]any{"sub": "u2"})), old} {
		if rec := do(h, bearer(tk)); rec.Code != 200 {
			t.Fatalf("status %d", rec.Code)
		}
	}
	if n := srv.Requests(); n != 2 {
		t.Fatalf("fetches %d, want 2", n)
	}
	if !contains(e.logs.String(), "JWKS keys loaded") {
		t.Fatalf("no key change log: %s", e.logs.String())
	}
}

func TestBogusKidFloodIsRateLimited(t *testing.T) {
	e := newEnv(t)
	srv := authtest.NewJWKSServer(t, rsaKey1)
	set := e.apply(map[string]*config.AuthProvider{"users": jwtProviderCfg(srv.URL(), nil)})
	var s seen
	h := e.chain(set, "flood", []string{"users"}, nil, s.handler())
	e.clk.Advance(refetchInterval + time.Second)

	// One valid signature under 1,000 different kids: the kid is checked
	// before the signature, so each is a distinct unknown kid.
	claims := e.claims(nil)
	const n = 1000
	toks := make([]string, n)
	for i := range toks {
		toks[i] = authtest.Compact(t, map[string]any{"alg": "RS256", "kid": fmt.Sprintf("bogus-%d", i)}, claims,
			func([]byte) []byte { return []byte("sig") })
	}
	var wg sync.WaitGroup
	codes := make([]int, n)
	sem := make(chan struct{}, 64)
	for i := range toks {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			codes[i] = do(h, bearer(toks[i])).Code
		}()
	}
	wg.Wait()
	for i, c := range codes {
		if c != http.StatusUnauthorized {
			t.Fatalf("request %d: %d", i, c)
		}
	}
	if got := srv.Requests(); got > 2 {
		t.Fatalf("%d JWKS fetches for a flood of %d bogus kids, want at most 2", got, n)
	}
	if got := e.failures("flood", "unknown_key"); got != n {
		t.Fatalf("unknown_key count %v, want %d", got, n)
	}
	// After the interval, one more bogus kid may refetch once.
	e.clk.Advance(refetchInterval)
	before := srv.Requests()
	for i := 0; i < 10; i++ {
		do(h, bearer(toks[i]))
	}
	if got := srv.Requests() - before; got != 1 {
		t.Fatalf("fetches after the interval %d, want 1", got)
	}
}

func TestJWKSDownAtStart(t *testing.T) {
	e := newEnv(t)
	srv := authtest.NewJWKSServer(t, rsaKey1)
	srv.SetDown(true)
	set := e.apply(map[string]*config.AuthProvider{"users": jwtProviderCfg(srv.URL(), nil)})
	var s seen
	h := e.chain(set, "down", []string{"users"}, nil, s.handler())
	if !contains(e.logs.String(), "JWKS not available") {
		t.Fatalf("no startup warning: %s", e.logs.String())
	}
	tok := authtest.Sign(t, rsaKey1, e.claims(nil))
	e.clk.Advance(2 * time.Second)
	rec := do(h, bearer(tok))
	if rec.Code != http.StatusServiceUnavailable {
		t.Fatalf("status %d, want 503", rec.Code)
	}
	if ra := rec.Header().Get("Retry-After"); ra != "3" {
		t.Fatalf("Retry-After %q, want 3 (the next refetch is 3 s away)", ra)
	}
	if p := problemOf(t, rec); p["type"] != "urn:portico:problem:auth_unavailable" {
		t.Fatalf("problem %v", p)
	}
	if e.failures("down", "unavailable") != 1 {
		t.Fatal("unavailable not counted")
	}
	// The IdP comes back: the next request after the interval fetches and passes.
	srv.SetDown(false)
	e.clk.Advance(refetchInterval)
	if rec := do(h, bearer(tok)); rec.Code != 200 {
		t.Fatalf("after recovery: %d %s", rec.Code, rec.Body.String())
	}
}

func TestJWKSDownLaterKeepsCachedKeys(t *testing.T) {
	e := newEnv(t)
	srv := authtest.NewJWKSServer(t, rsaKey1)
	set := e.apply(map[string]*config.AuthProvider{"users": jwtProviderCfg(srv.URL(), nil)})
	var s seen
	h := e.chain(set, "later", []string{"users"}, nil, s.handler())
	srv.SetDown(true)
	e.clk.Advance(refetchInterval + time.Second)

	// A known kid keeps working (a token never seen, so not from the cache).
	if rec := do(h, bearer(authtest.Sign(t, rsaKey1, e.claims(map[string]any{"sub": "fresh"})))); rec.Code != 200 {
		t.Fatalf("known kid: %d", rec.Code)
	}
	// A new kid cannot be fetched: 503, and the log says why.
	rec := do(h, bearer(authtest.Sign(t, rsaKey2, e.claims(nil))))
	if rec.Code != http.StatusServiceUnavailable || rec.Header().Get("Retry-After") == "" {
		t.Fatalf("new kid while down: %d %q", rec.Code, rec.Header().Get("Retry-After"))
	}
	if !contains(e.logs.String(), "cached keys stay in use") {
		t.Fatalf("no log line explaining new kids fail: %s", e.logs.String())
	}
	// Known kids still work after the failed refetch.
	if rec := do(h, bearer(authtest.Sign(t, rsaKey1, e.claims(map[string]any{"sub": "fresh2"})))); rec.Code != 200 {
		t.Fatalf("known kid after failed refetch: %d", rec.Code)
	}
}

func TestVerifiedTokenCache(t *testing.T) {
	e := newEnv(t)
	srv := authtest.NewJWKSServer(t, rsaKey1)
	set := e.apply(map[string]*config.AuthProvider{"users": jwtProviderCfg(srv.URL(), nil)})
	p := set.providers["users"].(*jwtProvider)
	ctx := t.Context()
	now := e.clk.Now().Unix()

	t.Run("hit returns the same result", func(t *testing.T) {
		tok := authtest.Sign(t, rsaKey1, e.claims(map[string]any{"exp": now + 3600, "sub": "c1"}))
		v1, f := p.authenticate(ctx, tok)
		if f.reason != reasonNone {
			t.Fatal(f.reason)
		}
		v2, _ := p.authenticate(ctx, tok)
		if v1 != v2 {
			t.Fatal("second call was not served from the cache")
		}
		// At most five minutes, even though exp is an hour away.
		e.clk.Advance(cacheMaxTTL + time.Second)
		v3, f := p.authenticate(ctx, tok)
		if f.reason != reasonNone || v3 == v1 {
			t.Fatalf("after 5m: reason %v, same=%v", f.reason, v3 == v1)
		}
	})
	t.Run("entry ends at exp", func(t *testing.T) {
		now := e.clk.Now().Unix()
		tok := authtest.Sign(t, rsaKey1, e.claims(map[string]any{"iat": now, "exp": now + 60, "sub": "c2"}))
		if _, f := p.authenticate(ctx, tok); f.reason != reasonNone {
			t.Fatal(f.reason)
		}
		e.clk.Advance(60 * time.Second)
		if _, f := p.authenticate(ctx, tok); f.reason != reasonExpired {
			t.Fatalf("reason %v, want expired", f.reason)
		}
	})
	t.Run("negative entry for bad signatures", func(t *testing.T) {
		now := e.clk.Now().Unix()
		good := authtest.Sign(t, rsaKey1, e.claims(map[string]any{"iat": now, "exp": now + 3600, "sub": "c3"}))
		bad := tamper(good, 2, func(b []byte) []byte { b[0] ^= 1; return b })
		n := p.cache.len()
		if _, f := p.authenticate(ctx, bad); f.reason != reasonBadSignature {
			t.Fatal(f.reason)
		}
		if p.cache.len() != n+1 {
			t.Fatal("failure not cached")
		}
		hb := p.cache.hash(bad)
		if _, r, ok := p.cache.get(hb, bad, e.clk.Now().UnixNano(), p.src.current().gen); !ok || r != reasonBadSignature {
			t.Fatal("negative entry missing")
		}
		e.clk.Advance(negativeTTL)
		if _, _, ok := p.cache.get(hb, bad, e.clk.Now().UnixNano(), p.src.current().gen); ok {
			t.Fatal("negative entry outlived negativeTTL")
		}
	})
	t.Run("bounded", func(t *testing.T) {
		c := newTokenCache(64)
		for i := 0; i < 1000; i++ {
			tok := fmt.Sprint(i)
			c.put(c.hash(tok), tok, &verified{}, reasonNone, 0, 1<<62, 1)
		}
		if c.len() > 64 {
			t.Fatalf("cache holds %d entries, bound 64", c.len())
		}
	})
	t.Run("a hash collision is not a hit", func(t *testing.T) {
		c := newTokenCache(64)
		v := &verified{}
		c.put(c.hash("tok-a"), "tok-a", v, reasonNone, 0, 1<<62, 1)
		// Force tok-b under tok-a's hash: the stored token must differ.
		if _, _, ok := c.get(c.hash("tok-a"), "tok-b", 1, 1); ok {
			t.Fatal("a different token hit the entry")
		}
		if got, _, ok := c.get(c.hash("tok-a"), "tok-a", 1, 1); !ok || got != v {
			t.Fatal("the real token missed")
		}
		if _, _, ok := c.get(c.hash("tok-a"), "tok-a", 1, 2); ok {
			t.Fatal("an entry of an older key generation hit")
		}
		long := strings.Repeat("x", maxCachedToken+1)
		c.put(c.hash(long), long, v, reasonNone, 0, 1<<62, 1)
		if _, _, ok := c.get(c.hash(long), long, 1, 1); ok {
			t.Fatal("an over-long token was cached")
		}
	})
}

func TestBackgroundRefresh(t *testing.T) {
	e := newEnv(t)
	waits, fire := e.manualRefresh()
	srv := authtest.NewJWKSServer(t, rsaKey1)
	srv.SetMaxAge(120)
	set := e.apply(map[string]*config.AuthProvider{"users": jwtProviderCfg(srv.URL(), nil)})
	var s seen
	h := e.chain(set, "bg", []string{"users"}, nil, s.handler())
	if d := <-waits; d != 120*time.Second {
		t.Fatalf("refresh wait %v, want the max-age 2m0s", d)
	}
	tok := authtest.Sign(t, rsaKey1, e.claims(nil))
	if rec := do(h, bearer(tok)); rec.Code != 200 {
		t.Fatalf("status %d", rec.Code)
	}

	// The IdP drops key 1 and says max-age=5 (clamped to a minute). The
	// background refresh picks it up and flushes the verified-token cache,
	// so the cached token of the removed key stops working at once.
	srv.SetKeys(rsaKey2)
	srv.SetMaxAge(5)
	fire <- time.Time{}
	if d := <-waits; d != minRefresh {
		t.Fatalf("refresh wait %v, want the clamp %v", d, minRefresh)
	}
	if srv.Requests() != 2 {
		t.Fatalf("fetches %d, want 2", srv.Requests())
	}
	if rec := do(h, bearer(tok)); rec.Code != http.StatusUnauthorized {
		t.Fatalf("token of a removed key: %d", rec.Code)
	}

	// A failing refresh backs off from one second.
	srv.SetDown(true)
	fire <- time.Time{}
	if d := <-waits; d != time.Second {
		t.Fatalf("backoff %v, want 1s", d)
	}
	fire <- time.Time{}
	if d := <-waits; d != 2*time.Second {
		t.Fatalf("backoff %v, want 2s", d)
	}
}

func TestRefreshInterval(t *testing.T) {
	tests := []struct {
		cc   string
		want time.Duration
	}{
		{"", defaultRefresh},
		{"public, max-age=600", 10 * time.Minute},
		{"max-age=0", minRefresh},
		{"no-store", minRefresh},
		{"max-age=9999999999", maxRefresh},
		{`max-age="300"`, 5 * time.Minute},
		{"max-age=abc", defaultRefresh},
		{"s-maxage=10", defaultRefresh},
	}
	for _, tc := range tests {
		t.Run(tc.cc, func(t *testing.T) {
			if got := clampRefresh(maxAge(tc.cc)); got != tc.want {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}
