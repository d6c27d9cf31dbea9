package auth

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"
	"time"

	"github.com/portico-gw/portico/internal/auth/authtest"
	"github.com/portico-gw/portico/internal/config"
	"github.com/portico-gw/portico/internal/reqctx"
)

func writeFile(path string, b []byte) error { return os.WriteFile(path, b, 0o600) }

// benchProvider returns an RS256 provider whose keys come from a file, so
// the benchmark measures verification, not fetching.
func benchProvider(b *testing.B) (*Set, *jwtProvider, string) {
	b.Helper()
	keys(b)
	path := b.TempDir() + "/jwks.json"
	if err := writeFile(path, authtest.JWKS(rsaKey1)); err != nil {
		b.Fatal(err)
	}
	reg := NewRegistry(Deps{Logger: slog.New(slog.DiscardHandler)})
	b.Cleanup(func() { _ = reg.Close() })
	set, err := reg.Apply(context.Background(), map[string]*config.AuthProvider{"users": {
		Type: "jwt", JWKSFile: path, Issuer: "https://id.example.com", Audiences: []string{"portico"},
		Algorithms: []string{"RS256"}, ForwardClaims: map[string]string{"sub": "X-User-Id"},
	}})
	if err != nil {
		b.Fatal(err)
	}
	now := time.Now().Unix()
	tok := authtest.Sign(b, rsaKey1, map[string]any{
		"iss": "https://id.example.com", "aud": "portico", "sub": "user-42",
		"scope": "posts:read feed:read", "iat": now, "exp": now + 3600,
	})
	return set, set.providers["users"].(*jwtProvider), tok
}

// BenchmarkVerifyRS256Cold is the full check of a token never seen:
// parse, claims, key lookup and the RSA-2048 signature.
func BenchmarkVerifyRS256Cold(b *testing.B) {
	_, p, tok := benchProvider(b)
	ctx := context.Background()
	ks := p.src.current()
	h := p.cache.hash(tok)
	b.ReportAllocs()
	reportCPU(b, func() {
		for b.Loop() {
			if _, f := p.verifyCold(ctx, tok, h, time.Now(), ks); f.reason != reasonNone {
				b.Fatal(f.reason)
			}
		}
	})
}

// BenchmarkVerifyRS256Cached is the same token from the verified-token
// cache: hash, shard lookup, generation and expiry checks.
func BenchmarkVerifyRS256Cached(b *testing.B) {
	_, p, tok := benchProvider(b)
	ctx := context.Background()
	if _, f := p.authenticate(ctx, tok); f.reason != reasonNone {
		b.Fatal(f.reason)
	}
	b.ReportAllocs()
	reportCPU(b, func() {
		for b.Loop() {
			if _, f := p.authenticate(ctx, tok); f.reason != reasonNone {
				b.Fatal(f.reason)
			}
		}
	})
}

// BenchmarkMiddlewareCached is the whole route middleware on a cached
// token: extraction, verification, identity headers and the context.
func BenchmarkMiddlewareCached(b *testing.B) {
	set, _, tok := benchProvider(b)
	mw, err := set.Middleware("bench", []string{"users"}, []string{"posts:read"})
	if err != nil {
		b.Fatal(err)
	}
	h := mw(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	r.Header.Set("Authorization", "Bearer "+tok)
	info := &reqctx.Info{}
	r = r.WithContext(reqctx.With(r.Context(), info))
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if info.Identity == nil {
		b.Fatal("not authenticated")
	}
	b.ReportAllocs()
	reportCPU(b, func() {
		for b.Loop() {
			h.ServeHTTP(w, r)
		}
	})
}

// BenchmarkAPIKey is one API key lookup through the middleware.
func BenchmarkAPIKey(b *testing.B) {
	reg := NewRegistry(Deps{})
	b.Cleanup(func() { _ = reg.Close() })
	set, err := reg.Apply(context.Background(), map[string]*config.AuthProvider{"k": {
		Type: "api_key", Header: "X-API-Key", ForwardID: "X-Consumer-Id",
		Keys: []config.APIKey{{ID: "acme", SHA256: authtest.KeyHash("secret-key-value")}},
	}})
	if err != nil {
		b.Fatal(err)
	}
	mw, _ := set.Middleware("bench", []string{"k"}, nil)
	h := mw(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	r = r.WithContext(reqctx.With(r.Context(), &reqctx.Info{}))
	w := httptest.NewRecorder()
	key := []string{"secret-key-value"}
	b.ReportAllocs()
	reportCPU(b, func() {
		for b.Loop() {
			// The key header is stripped on success, so it is set again.
			r.Header["X-Api-Key"] = key
			h.ServeHTTP(w, r)
		}
	})
}
