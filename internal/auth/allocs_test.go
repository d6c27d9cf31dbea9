package auth

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/portico-gw/portico/internal/auth/authtest"
	"github.com/portico-gw/portico/internal/config"
	"github.com/portico-gw/portico/internal/reqctx"
)

// TestCachedPathAllocations is the allocation budget of the hot path: a
// cached token or an API key through the route middleware allocates
// nothing.
func TestCachedPathAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are not meaningful under the race detector")
	}
	e := newEnv(t)
	srv := authtest.NewJWKSServer(t, rsaKey1)
	set := e.apply(map[string]*config.AuthProvider{
		"users": jwtProviderCfg(srv.URL(), nil),
		"keys": {Type: "api_key", Header: "X-API-Key", ForwardID: "X-Consumer-Id",
			Keys: []config.APIKey{{ID: "acme", SHA256: authtest.KeyHash("k"), Scopes: []string{"posts:read"}}}},
	})
	next := http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})
	h := StripIdentityHeaders(set.IdentityHeaders())(mustMW(t, set, "allocs", []string{"users", "keys"}, []string{"posts:read"})(next))
	w := httptest.NewRecorder()
	info := &reqctx.Info{}
	tok := []string{"Bearer " + authtest.Sign(t, rsaKey1, e.claims(nil))}
	key := []string{"k"}
	keepAlive := []string{"keep-alive"}
	tests := []struct {
		name string
		set  func(r *http.Request)
	}{
		{"cached JWT", func(r *http.Request) { r.Header["Authorization"] = tok }},
		{"API key", func(r *http.Request) { r.Header["X-Api-Key"] = key }},
		{"cached JWT, Connection: keep-alive", func(r *http.Request) {
			r.Header["Authorization"] = tok
			r.Header["Connection"] = keepAlive
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "/", nil)
			r = r.WithContext(reqctx.With(r.Context(), info))
			tc.set(r)
			h.ServeHTTP(w, r)
			if info.Identity == nil {
				t.Fatal("not authenticated")
			}
			allocs := testing.AllocsPerRun(200, func() {
				tc.set(r)
				h.ServeHTTP(w, r)
			})
			if allocs != 0 {
				t.Fatalf("%v allocations per request, want 0", allocs)
			}
		})
	}
}
