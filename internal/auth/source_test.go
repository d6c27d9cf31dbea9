package auth

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/portico-gw/portico/internal/auth/authtest"
	"github.com/portico-gw/portico/internal/config"
)

// TestBadJWKSResponses: whatever the IdP serves instead of a key set counts
// as a failed fetch: the previous keys stay, new kids get 503.
func TestBadJWKSResponses(t *testing.T) {
	tests := []struct {
		name string
		set  func(s *authtest.JWKSServer)
	}{
		{"503", func(s *authtest.JWKSServer) { s.SetDown(true) }},
		{"not json", func(s *authtest.JWKSServer) { s.SetBody([]byte("<html>")) }},
		{"no keys", func(s *authtest.JWKSServer) { s.SetBody([]byte(`{"keys":[]}`)) }},
		{"over 1 MiB", func(s *authtest.JWKSServer) {
			s.SetBody([]byte(`{"keys":[],"pad":"` + strings.Repeat("x", maxJWKSBytes) + `"}`))
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			srv := authtest.NewJWKSServer(t, rsaKey1)
			set := e.apply(map[string]*config.AuthProvider{"users": jwtProviderCfg(srv.URL(), nil)})
			var s seen
			h := e.chain(set, "bad", []string{"users"}, nil, s.handler())
			tc.set(srv)
			e.clk.Advance(refetchInterval)
			if rec := do(h, bearer(authtest.Sign(t, rsaKey2, e.claims(nil)))); rec.Code != http.StatusServiceUnavailable {
				t.Fatalf("new kid: %d, want 503", rec.Code)
			}
			if srv.Requests() != 2 {
				t.Fatalf("fetches %d, want 2", srv.Requests())
			}
			if rec := do(h, bearer(authtest.Sign(t, rsaKey1, e.claims(nil)))); rec.Code != http.StatusOK {
				t.Fatalf("known kid: %d, want 200", rec.Code)
			}
		})
	}
}

// TestConcurrentVerifyDuringRotation runs cached, cold and unknown-kid
// verifications in parallel with key changes, for the race detector.
func TestConcurrentVerifyDuringRotation(t *testing.T) {
	e := newEnv(t)
	srv := authtest.NewJWKSServer(t, rsaKey1, ecKey1)
	set := e.apply(map[string]*config.AuthProvider{"users": jwtProviderCfg(srv.URL(), nil)})
	var s seen
	h := e.chain(set, "conc", []string{"users"}, nil, s.handler())
	toks := []string{
		authtest.Sign(t, rsaKey1, e.claims(nil)),
		authtest.Sign(t, ecKey1, e.claims(nil)),
		authtest.Sign(t, edKey1, e.claims(nil)),
	}
	p := set.providers["users"].(*jwtProvider)
	var wg sync.WaitGroup
	for g := 0; g < 6; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 60; i++ {
				rec := do(h, bearer(toks[(g+i)%len(toks)]))
				if rec.Code != 200 && rec.Code != 401 {
					t.Errorf("status %d", rec.Code)
					return
				}
			}
		}()
	}
	for i := 0; i < 5; i++ {
		if i%2 == 1 {
			srv.SetKeys(rsaKey1, ecKey1, edKey1)
		} else {
			srv.SetKeys(rsaKey1, ecKey1)
		}
		e.clk.Advance(refetchInterval)
		_ = p.src.fetch(t.Context())
	}
	wg.Wait()
	// After the last change (no Ed25519 key), the cache must not serve the
	// Ed25519 token.
	if rec := do(h, bearer(toks[2])); rec.Code != 401 {
		t.Fatalf("token of a removed key: %d", rec.Code)
	}
	if rec := do(h, bearer(toks[0])); rec.Code != 200 {
		t.Fatalf("token of a kept key: %d", rec.Code)
	}
}

func TestNextWait(t *testing.T) {
	r := &Registry{now: time.Now}
	s := newURLSource(r, "p", "http://127.0.0.1:1/")
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if d := s.nextWait(t0); d != 0 {
		t.Fatalf("never fetched: %v", d)
	}
	s.lastAttempt, s.ok, s.refresh = t0, true, 10*time.Minute
	if d := s.nextWait(t0.Add(time.Minute)); d != 9*time.Minute {
		t.Fatalf("ok: %v", d)
	}
	s.ok = false
	for failures, want := range map[int]time.Duration{1: time.Second, 3: 4 * time.Second, 9: 256 * time.Second, 12: 5 * time.Minute, 40: 5 * time.Minute} {
		s.failures = failures
		if d := s.nextWait(t0); d != want {
			t.Fatalf("%d failures: %v, want %v", failures, d, want)
		}
	}
	s.refresh = minRefresh
	s.failures = 12
	if d := s.nextWait(t0); d != minRefresh {
		t.Fatalf("backoff above the refresh interval: %v", d)
	}
}

// TestStartupFetchHonoursApplyContext: a JWKS endpoint that hangs delays
// Apply only as long as its context allows; the provider then answers 503
// until the keys arrive.
func TestStartupFetchHonoursApplyContext(t *testing.T) {
	e := newEnv(t)
	release := make(chan struct{})
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(hang.Close)
	t.Cleanup(func() { close(release) })
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	set, err := e.reg.Apply(ctx, map[string]*config.AuthProvider{"users": jwtProviderCfg(hang.URL, nil)})
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d >= fetchTimeout {
		t.Fatalf("Apply took %v; the context allowed 200ms", d)
	}
	var s seen
	h := e.chain(set, "hang", []string{"users"}, nil, s.handler())
	if rec := do(h, bearer(authtest.Sign(t, rsaKey1, e.claims(nil)))); rec.Code != http.StatusServiceUnavailable {
		t.Fatalf("status %d, want 503", rec.Code)
	}
}
