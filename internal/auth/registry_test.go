package auth

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/portico-gw/portico/internal/auth/authtest"
	"github.com/portico-gw/portico/internal/config"
)

func TestReloadKeepsKeysAndCache(t *testing.T) {
	e := newEnv(t)
	srv := authtest.NewJWKSServer(t, rsaKey1)
	cfg := map[string]*config.AuthProvider{"users": jwtProviderCfg(srv.URL(), nil)}
	s1 := e.apply(cfg)
	tok := authtest.Sign(t, rsaKey1, e.claims(nil))
	p1 := s1.providers["users"].(*jwtProvider)
	v1, f := p1.authenticate(t.Context(), tok)
	if f.reason != reasonNone {
		t.Fatal(f.reason)
	}

	// Same provider again (a reload of an unchanged config): no fetch, and
	// the token is a cache hit in the new Set.
	s2 := e.apply(map[string]*config.AuthProvider{"users": jwtProviderCfg(srv.URL(), nil)})
	if srv.Requests() != 1 {
		t.Fatalf("fetches %d after reload, want 1", srv.Requests())
	}
	p2 := s2.providers["users"].(*jwtProvider)
	if p2.src != p1.src || p2.cache != p1.cache {
		t.Fatal("key source or cache not reused")
	}
	if v2, _ := p2.authenticate(t.Context(), tok); v2 != v1 {
		t.Fatal("verified token not served from the kept cache")
	}

	// A changed audience must not reuse verdicts made under the old one,
	// but the keys are kept.
	s3 := e.apply(map[string]*config.AuthProvider{"users": jwtProviderCfg(srv.URL(), func(p *config.AuthProvider) {
		p.Audiences = []string{"someone-else"}
	})})
	p3 := s3.providers["users"].(*jwtProvider)
	if p3.cache == p1.cache || p3.src != p1.src {
		t.Fatal("a changed audience must get a fresh cache and keep the key source")
	}
	if _, f := p3.authenticate(t.Context(), tok); f.reason != reasonWrongAudience {
		t.Fatalf("reason %v, want wrong_audience", f.reason)
	}

	// Dropping the provider stops its refresher; the old Set keeps working.
	if _, err := e.reg.Apply(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p1.src.stopCh:
	default:
		t.Fatal("refresher of a dropped provider still running")
	}
	if _, f := p1.authenticate(t.Context(), tok); f.reason != reasonNone {
		t.Fatalf("old set after reload: %v", f.reason)
	}
}

func TestJWKSFile(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "jwks.json")
	if err := os.WriteFile(path, authtest.JWKS(ecKey1, edKey1), 0o600); err != nil {
		t.Fatal(err)
	}
	set := e.apply(map[string]*config.AuthProvider{"file": jwtProviderCfg("", func(p *config.AuthProvider) {
		p.JWKSFile = path
	})})
	var s seen
	h := e.chain(set, "file", []string{"file"}, nil, s.handler())
	if rec := do(h, bearer(authtest.Sign(t, edKey1, e.claims(nil)))); rec.Code != 200 {
		t.Fatalf("status %d", rec.Code)
	}
	// An unknown kid with a file source is a plain 401: there is nothing
	// to fetch.
	if rec := do(h, bearer(authtest.Sign(t, rsaKey1, e.claims(nil)))); rec.Code != 401 {
		t.Fatalf("status %d", rec.Code)
	}
}

func TestApplyErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.json")
	_ = os.WriteFile(bad, []byte(`{"keys":[]}`), 0o600)
	tests := []struct {
		name string
		p    *config.AuthProvider
		want string
	}{
		{"unreadable jwks_file", &config.AuthProvider{Type: "jwt", JWKSFile: filepath.Join(dir, "missing.json")}, "jwks_file"},
		{"empty jwks_file", &config.AuthProvider{Type: "jwt", JWKSFile: bad}, "no usable"},
		{"two sources", &config.AuthProvider{Type: "jwt", JWKSURL: "http://127.0.0.1:1/", Secret: "s"}, "exactly one"},
		{"no source", &config.AuthProvider{Type: "jwt"}, "exactly one"},
		{"alg none", &config.AuthProvider{Type: "jwt", Secret: "s", Algorithms: []string{"none"}}, "none is never accepted"},
		{"RS256 with a secret", &config.AuthProvider{Type: "jwt", Secret: "s", Algorithms: []string{"RS256"}}, "needs a key set"},
		{"unknown type", &config.AuthProvider{Type: "basic"}, "type"},
		{"api key bad hash", &config.AuthProvider{Type: "api_key", Header: "X-K", Keys: []config.APIKey{{ID: "a", SHA256: "zz"}}}, "64 hex"},
		{"api key duplicate", &config.AuthProvider{Type: "api_key", Header: "X-K", Keys: []config.APIKey{
			{ID: "a", SHA256: authtest.KeyHash("k")}, {ID: "b", SHA256: authtest.KeyHash("k")}}}, "twice"},
		{"api key no header or query", &config.AuthProvider{Type: "api_key"}, "header or query"},
		{"identity header is a credential header", &config.AuthProvider{Type: "api_key", Header: "X-Key", ForwardID: "x-key"}, "reads its credential"},
		{"claim into Authorization", &config.AuthProvider{Type: "jwt", Secret: string(hsSecret), ForwardClaims: map[string]string{"sub": "authorization"}}, "reads its credential"},
		{"reserved identity header", &config.AuthProvider{Type: "api_key", Header: "X-Key", ForwardID: "Host"}, "cannot be an identity header"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			_, err := e.reg.Apply(context.Background(), map[string]*config.AuthProvider{"p": tc.p})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

func TestRegistryLifecycle(t *testing.T) {
	keys(t)
	promR := prometheus.NewRegistry()
	r1 := NewRegistry(Deps{Registerer: promR})
	// A second registry on the same Registerer reuses the collector
	// instead of failing (tests, embedded gateways).
	r2 := NewRegistry(Deps{Registerer: promR})
	if r1.failures != r2.failures {
		t.Fatal("collector not reused")
	}
	srv := authtest.NewJWKSServer(t, rsaKey1)
	if _, err := r1.Apply(context.Background(), map[string]*config.AuthProvider{"u": jwtProviderCfg(srv.URL(), nil)}); err != nil {
		t.Fatal(err)
	}
	for _, r := range []*Registry{r1, r2} {
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
		if err := r.Close(); err != nil {
			t.Fatal("second Close:", err)
		}
	}
	if _, err := r1.Apply(context.Background(), nil); err == nil {
		t.Fatal("Apply after Close succeeded")
	}
}

func TestJWKSFileReload(t *testing.T) {
	e := newEnv(t)
	path := filepath.Join(t.TempDir(), "jwks.json")
	write := func(keys ...*authtest.Key) {
		if err := os.WriteFile(path, authtest.JWKS(keys...), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg := func() map[string]*config.AuthProvider {
		return map[string]*config.AuthProvider{"file": jwtProviderCfg("", func(p *config.AuthProvider) { p.JWKSFile = path })}
	}
	write(rsaKey1)
	s1 := e.apply(cfg())
	tok := authtest.Sign(t, rsaKey1, e.claims(nil))
	if _, f := s1.providers["file"].(*jwtProvider).authenticate(t.Context(), tok); f.reason != reasonNone {
		t.Fatal(f.reason)
	}
	// Same file: same source. New content: new keys, and the token of the
	// removed key is no longer accepted (no stale cache entry).
	if s2 := e.apply(cfg()); s2.providers["file"].(*jwtProvider).src != s1.providers["file"].(*jwtProvider).src {
		t.Fatal("unchanged file got a new source")
	}
	write(rsaKey2)
	s3 := e.apply(cfg())
	if _, f := s3.providers["file"].(*jwtProvider).authenticate(t.Context(), tok); f.reason != reasonUnknownKey {
		t.Fatalf("token of a removed key: %v", f.reason)
	}
	if _, f := s3.providers["file"].(*jwtProvider).authenticate(t.Context(), authtest.Sign(t, rsaKey2, e.claims(nil))); f.reason != reasonNone {
		t.Fatalf("token of the new key: %v", f.reason)
	}
}

// TestTwoIdentityProviders: on a route accepting two JWT providers, a token
// of the second is refused by the first on its issuer, before any key
// lookup, so it never makes the first provider refetch its key set.
func TestTwoIdentityProviders(t *testing.T) {
	e := newEnv(t)
	idpA := authtest.NewJWKSServer(t, rsaKey1)
	idpB := authtest.NewJWKSServer(t, ecKey1)
	set := e.apply(map[string]*config.AuthProvider{
		"a": jwtProviderCfg(idpA.URL(), func(p *config.AuthProvider) { p.Issuer = "https://a.example.com" }),
		"b": jwtProviderCfg(idpB.URL(), func(p *config.AuthProvider) { p.Issuer = "https://b.example.com" }),
	})
	var s seen
	h := e.chain(set, "two", []string{"a", "b"}, nil, s.handler())
	e.clk.Advance(refetchInterval + time.Second)
	for i := 0; i < 20; i++ {
		tok := authtest.Sign(t, ecKey1, e.claims(map[string]any{"iss": "https://b.example.com", "sub": fmt.Sprint("u", i)}))
		if rec := do(h, bearer(tok)); rec.Code != 200 {
			t.Fatalf("status %d", rec.Code)
		}
		if s.id.Provider != "b" {
			t.Fatalf("provider %q", s.id.Provider)
		}
	}
	if idpA.Requests() != 1 || idpB.Requests() != 1 {
		t.Fatalf("fetches A=%d B=%d, want 1 each (startup only)", idpA.Requests(), idpB.Requests())
	}
}

// The private JWKS client follows redirects, but not from https to plain
// http, where anyone on the path could hand it keys.
func TestJWKSClientRefusesADowngrade(t *testing.T) {
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, `{"keys":[]}`)
	}))
	t.Cleanup(plain.Close)
	secure := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		target := plain.URL
		if r.URL.Path == "/same" {
			target = "/jwks"
		}
		if r.URL.Path == "/jwks" {
			_, _ = io.WriteString(w, `{"keys":[]}`)
			return
		}
		http.Redirect(w, r, target, http.StatusFound)
	}))
	t.Cleanup(secure.Close)
	reg := NewRegistry(Deps{})
	t.Cleanup(func() { _ = reg.Close() })
	reg.client.Transport.(*http.Transport).TLSClientConfig = secure.Client().Transport.(*http.Transport).TLSClientConfig

	if _, err := reg.client.Get(secure.URL + "/down"); err == nil || !strings.Contains(err.Error(), "refusing a redirect from https to http") {
		t.Fatalf("redirect to http: err %v, want a refusal", err)
	}
	res, err := reg.client.Get(secure.URL + "/same")
	if err != nil {
		t.Fatalf("redirect within https: %v", err)
	}
	res.Body.Close()
}
