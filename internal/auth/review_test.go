package auth

// Tests from the review of 2026-11-29. Each but TestReloadRevokes failed
// before its fix; TestReloadRevokes pins down reload behaviour that was
// already right.

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/portico-gw/portico/internal/auth/authtest"
	"github.com/portico-gw/portico/internal/config"
	"github.com/portico-gw/portico/internal/proxy"
	"github.com/portico-gw/portico/internal/reqctx"
)

// TestEscapedStringsCostLinearMemory: a token's claims are decoded before
// its signature is checked, so what decoding costs is what anyone can make
// the gateway spend. A 16 KiB token of many short escaped strings ("\n")
// made each one allocate the rest of the payload, about 15 MB per request;
// now decoding allocates in proportion to the token.
func TestEscapedStringsCostLinearMemory(t *testing.T) {
	e := newEnv(t)
	srv := authtest.NewJWKSServer(t, rsaKey1)
	set := e.apply(map[string]*config.AuthProvider{"users": jwtProviderCfg(srv.URL(), nil)})
	u := e.front(set, "escapes", []string{"users"}, nil) + "/x"
	p := set.providers["users"].(*jwtProvider)

	var payload strings.Builder
	fmt.Fprintf(&payload, `{"iss":"https://id.example.com","aud":"portico","exp":%d,"x":[`, e.clk.Now().Unix()+3600)
	for i := 0; i < 2000; i++ {
		if i > 0 {
			payload.WriteByte(',')
		}
		payload.WriteString(`"\n"`)
	}
	payload.WriteString(`]}`)
	// Escaped names in the header take the same path.
	header := `{"alg":"RS256","kid":"rsa-1"` + strings.Repeat(`,"\t":1`, 200) + `}`
	tok := signRaw(t, rsaKey1, header, payload.String())
	forgedTok := tamper(tok, 2, func(b []byte) []byte { b[0] ^= 1; return b })
	if len(forgedTok) > maxTokenBytes {
		t.Fatalf("token of %d bytes is over the limit", len(forgedTok))
	}
	if a := send(newReq(t, u, http.Header{"Authorization": {"Bearer " + forgedTok}})); a.status != http.StatusUnauthorized {
		t.Fatalf("forged token: status %d: %s", a.status, a.body)
	}

	const runs = 20
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for i := 0; i < runs; i++ {
		// A fresh signature each time, as an attacker would send, so
		// the negative cache does not answer.
		f := tamper(tok, 2, func(b []byte) []byte { b[1] ^= byte(i + 1); return b })
		if _, fl := p.authenticate(context.Background(), f); fl.reason != reasonBadSignature {
			t.Fatalf("reason %v, want bad_signature", fl.reason)
		}
	}
	runtime.ReadMemStats(&after)
	per := (after.TotalAlloc - before.TotalAlloc) / runs
	if limit := uint64(32 * len(tok)); per > limit {
		t.Fatalf("a %d-byte token allocated %d bytes to refuse, want at most %d", len(tok), per, limit)
	}
}

// TestConnectionCannotDropIdentityHeaders: a proxy removes the headers a
// client names in Connection (RFC 9110 section 7.6.1). The identity headers
// are the gateway's own, set after the client's copies were stripped, so a
// client naming them there must not make the upstream get none: an
// upstream may read the absence of X-User-Scopes as "not restricted".
func TestConnectionCannotDropIdentityHeaders(t *testing.T) {
	e := newEnv(t)
	jwks := authtest.NewJWKSServer(t, rsaKey1)
	set := e.apply(map[string]*config.AuthProvider{
		"users": jwtProviderCfg(jwks.URL(), nil),
		"partners": {Type: "api_key", Header: "X-API-Key", ForwardID: "X-Consumer-Id", Keys: []config.APIKey{
			{ID: "acme", SHA256: authtest.KeyHash("k-acme")}}},
	})
	strip := StripIdentityHeaders(set.IdentityHeaders())
	mw := mustMW(t, set, "conn", []string{"users", "partners"}, nil)
	tok := authtest.Sign(t, rsaKey1, e.claims(nil))

	up := echoUpstream(t)
	target, _ := url.Parse(up.URL)
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	px, err := proxy.New(proxy.Config{Backends: []proxy.Backend{{Name: "u", Weight: 1, Transport: tr, Target: target}}}, proxy.Deps{})
	if err != nil {
		t.Fatal(err)
	}
	gw := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		strip(mw(px)).ServeHTTP(w, r.WithContext(reqctx.With(r.Context(), &reqctx.Info{RequestID: "c"})))
	}))
	t.Cleanup(gw.Close)
	fronts := map[string]string{
		"gateway proxy": gw.URL,
		"ReverseProxy":  gatewayFront(t, up, func(h http.Handler) http.Handler { return strip(mw(h)) }).URL,
	}
	tests := []struct {
		name       string
		hdr        http.Header
		want       map[string]string
		wantAbsent string
	}{
		{"token", http.Header{
			"Authorization": {"Bearer " + tok},
			"Connection":    {"x-user-scopes, X-Hop", "X-USER-ID"},
			"X-Hop":         {"1"},
		}, map[string]string{"X-User-Id": "user-42", "X-User-Scopes": "posts:read feed:read"}, "X-Hop"},
		{"API key", http.Header{
			"X-Api-Key":  {"k-acme"},
			"Connection": {"keep-alive, X-Consumer-Id,X_User_Id"},
		}, map[string]string{"X-Consumer-Id": "acme"}, ""},
	}
	for fname, u := range fronts {
		for _, tc := range tests {
			t.Run(fname+"/"+tc.name, func(t *testing.T) {
				a := send(newReq(t, u+"/x", tc.hdr))
				if a.status != http.StatusOK {
					t.Fatalf("status %d: %s", a.status, a.body)
				}
				for k, v := range tc.want {
					if got := a.echoed.Header.Get(k); got != v {
						t.Errorf("upstream %s = %q, want %q", k, got, v)
					}
				}
				if tc.wantAbsent != "" {
					if _, ok := a.echoed.Header[tc.wantAbsent]; ok {
						t.Errorf("%s, named in Connection, reached the upstream", tc.wantAbsent)
					}
				}
			})
		}
	}
}

// TestLargeIntegerClaimsKeepTheirDigits: numeric ids beyond 2^53 (64-bit
// database or snowflake ids) are forwarded, rate-limited on and put in
// templates with the digits the token has. Through a float64 they were
// rounded (9007199254740993 became 9007199254740992: another user).
func TestLargeIntegerClaimsKeepTheirDigits(t *testing.T) {
	e := newEnv(t)
	srv := authtest.NewJWKSServer(t, rsaKey1)
	set := e.apply(map[string]*config.AuthProvider{"users": jwtProviderCfg(srv.URL(), func(p *config.AuthProvider) {
		p.ForwardClaims = map[string]string{"uid": "X-User-Id", "orgs": "X-Orgs", "big": "X-Big", "ratio": "X-Ratio"}
	})})
	u := e.front(set, "ids", []string{"users"}, nil) + "/x"
	now := e.clk.Now().Unix()
	tests := []struct {
		name, claims string
		want         map[string]string
	}{
		{"past 2^53", `"uid":9007199254740993,"orgs":[1311417856476483584,-9223372036854775807,7]`,
			map[string]string{"X-User-Id": "9007199254740993", "X-Orgs": "1311417856476483584 -9223372036854775807 7"}},
		{"past 2^64", `"uid":123456789012345678901234567890`,
			map[string]string{"X-User-Id": "123456789012345678901234567890"}},
		{"small and exact numbers as before", `"uid":42,"big":1000000000000000000000,"ratio":0.5`,
			map[string]string{"X-User-Id": "42", "X-Big": "1000000000000000000000", "X-Ratio": "0.5"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			payload := fmt.Sprintf(`{"iss":"https://id.example.com","aud":"portico","exp":%d,%s}`, now+3600, tc.claims)
			tok := signRaw(t, rsaKey1, `{"alg":"RS256","kid":"rsa-1"}`, payload)
			a := send(newReq(t, u, http.Header{"Authorization": {"Bearer " + tok}}))
			if a.status != http.StatusOK {
				t.Fatalf("status %d: %s", a.status, a.body)
			}
			for k, v := range tc.want {
				if got := a.echoed.Header.Get(k); got != v {
					t.Errorf("upstream %s = %q, want %q", k, got, v)
				}
			}
		})
	}
	t.Run("exp past 2^53 is still a time", func(t *testing.T) {
		tok := signRaw(t, rsaKey1, `{"alg":"RS256","kid":"rsa-1"}`,
			`{"iss":"https://id.example.com","aud":"portico","exp":90071992547409930001,"uid":1}`)
		if a := send(newReq(t, u, http.Header{"Authorization": {"Bearer " + tok}})); a.status != http.StatusOK {
			t.Fatalf("status %d: %s", a.status, a.body)
		}
	})
}

// TestJWKSURLPasswordNotLogged: a JWKS behind basic auth is configured as
// https://user:password@host/...; the key-set log lines name the URL, and
// must not carry the password with it.
func TestJWKSURLPasswordNotLogged(t *testing.T) {
	e := newEnv(t)
	const user, pass = "portico", "s3cret-pw"
	var down atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != user || p != pass {
			http.Error(w, "who are you", http.StatusUnauthorized)
			return
		}
		if down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write(authtest.JWKS(rsaKey1))
	}))
	t.Cleanup(srv.Close)
	jwksURL := strings.Replace(srv.URL, "http://", "http://"+user+":"+pass+"@", 1) + "/jwks"
	set := e.apply(map[string]*config.AuthProvider{"users": jwtProviderCfg(jwksURL, nil)})
	u := e.front(set, "pw", []string{"users"}, nil) + "/x"
	if a := send(newReq(t, u, http.Header{"Authorization": {"Bearer " + authtest.Sign(t, rsaKey1, e.claims(nil))}})); a.status != http.StatusOK {
		t.Fatalf("status %d: %s", a.status, a.body)
	}
	// A failed refetch logs too.
	down.Store(true)
	e.clk.Advance(refetchInterval)
	if a := send(newReq(t, u, http.Header{"Authorization": {"Bearer " + authtest.Sign(t, rsaKey2, e.claims(nil))}})); a.status != http.StatusServiceUnavailable {
		t.Fatalf("unknown kid with the JWKS down: status %d: %s", a.status, a.body)
	}
	logs := e.logs.String()
	if !strings.Contains(logs, "JWKS refresh failed") || !strings.Contains(logs, srv.Listener.Addr().String()) {
		t.Fatalf("the log lines are missing:\n%s", logs)
	}
	if strings.Contains(logs, pass) {
		t.Fatalf("the JWKS password is in the log:\n%s", logs)
	}
}

// TestReloadRevokes: a reload that drops an API key, rotates an HMAC
// secret or narrows the algorithms takes effect on the next request on the
// reloaded chain, cached verdicts included; what the reload kept still
// passes. The front swaps its chain atomically, as the gateway does.
func TestReloadRevokes(t *testing.T) {
	e := newEnv(t)
	secretA := strings.Repeat("a", 32)
	secretB := strings.Repeat("b", 32)
	cfg := func(keys []string, secret string, algs []string) map[string]*config.AuthProvider {
		var ks []config.APIKey
		for _, k := range keys {
			ks = append(ks, config.APIKey{ID: k, SHA256: authtest.KeyHash("key-" + k)})
		}
		return map[string]*config.AuthProvider{
			"keys": {Type: "api_key", Header: "X-API-Key", ForwardID: "X-Consumer-Id", Keys: ks},
			"hs": {Type: "jwt", Secret: secret, Issuer: "https://id.example.com", Audiences: []string{"portico"},
				Algorithms: algs, ForwardClaims: map[string]string{"sub": "X-User-Id"}},
		}
	}
	var current atomic.Pointer[http.Handler]
	up := echoUpstream(t)
	load := func(providers map[string]*config.AuthProvider) {
		set := e.apply(providers)
		mw := mustMW(t, set, "reload", []string{"keys", "hs"}, nil)
		strip := StripIdentityHeaders(set.IdentityHeaders())
		target, _ := url.Parse(up.URL)
		tr := &http.Transport{}
		t.Cleanup(tr.CloseIdleConnections)
		px, err := proxy.New(proxy.Config{Backends: []proxy.Backend{{Name: "u", Weight: 1, Transport: tr, Target: target}}}, proxy.Deps{})
		if err != nil {
			t.Fatal(err)
		}
		h := strip(mw(px))
		current.Store(&h)
	}
	gw := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		(*current.Load()).ServeHTTP(w, r.WithContext(reqctx.With(r.Context(), &reqctx.Info{RequestID: "r"})))
	}))
	t.Cleanup(gw.Close)
	status := func(hdr http.Header) int { return send(newReq(t, gw.URL+"/x", hdr)).status }
	key := func(k string) http.Header { return http.Header{"X-Api-Key": {"key-" + k}} }
	bearerHdr := func(tok string) http.Header { return http.Header{"Authorization": {"Bearer " + tok}} }
	tokA := authtest.SignHMAC(t, "HS256", []byte(secretA), "", e.claims(nil))
	tokA384 := authtest.SignHMAC(t, "HS384", []byte(secretA), "", e.claims(nil))
	tokB := authtest.SignHMAC(t, "HS256", []byte(secretB), "", e.claims(nil))

	load(cfg([]string{"acme", "globex"}, secretA, []string{"HS256", "HS384"}))
	for name, h := range map[string]http.Header{"key acme": key("acme"), "key globex": key("globex"),
		"HS256 token": bearerHdr(tokA), "HS384 token": bearerHdr(tokA384)} {
		if s := status(h); s != http.StatusOK {
			t.Fatalf("before the reload, %s: status %d", name, s)
		}
	}

	load(cfg([]string{"acme"}, secretA, []string{"HS256"}))
	for _, tc := range []struct {
		name string
		hdr  http.Header
		want int
	}{
		{"kept key", key("acme"), http.StatusOK},
		{"revoked key", key("globex"), http.StatusUnauthorized},
		{"token of a kept algorithm", bearerHdr(tokA), http.StatusOK},
		{"cached token of a dropped algorithm", bearerHdr(tokA384), http.StatusUnauthorized},
	} {
		if s := status(tc.hdr); s != tc.want {
			t.Errorf("after dropping a key and an algorithm, %s: status %d, want %d", tc.name, s, tc.want)
		}
	}

	load(cfg([]string{"acme"}, secretB, []string{"HS256"}))
	if s := status(bearerHdr(tokA)); s != http.StatusUnauthorized {
		t.Errorf("cached token of the old secret after rotation: status %d, want 401", s)
	}
	if s := status(bearerHdr(tokB)); s != http.StatusOK {
		t.Errorf("token of the new secret: status %d, want 200", s)
	}
}
