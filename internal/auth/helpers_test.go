package auth

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"

	"github.com/portico-gw/portico/internal/auth/authtest"
	"github.com/portico-gw/portico/internal/config"
	"github.com/portico-gw/portico/internal/identity"
	"github.com/portico-gw/portico/internal/reqctx"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// Keys are expensive under -race; the package makes them once.
var (
	keysOnce              sync.Once
	rsaKey1, rsaKey2, psK *authtest.Key
	ecKey1, edKey1        *authtest.Key
	hsSecret              = []byte("0123456789abcdef0123456789abcdef")
)

func keys(t testing.TB) {
	keysOnce.Do(func() {
		rsaKey1 = authtest.NewRSAKey(t, "rsa-1", "RS256")
		rsaKey2 = authtest.NewRSAKey(t, "rsa-2", "RS256")
		psK = authtest.NewRSAKey(t, "ps-1", "PS256")
		ecKey1 = authtest.NewECKey(t, "ec-1")
		edKey1 = authtest.NewEdKey(t, "ed-1")
	})
}

// clock is a settable clock; tests move it instead of sleeping.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 11, 28, 6, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// logBuf collects log output for assertions.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

type env struct {
	t     *testing.T
	clk   *clock
	reg   *Registry
	logs  *logBuf
	promR *prometheus.Registry
}

func newEnv(t *testing.T) *env {
	t.Helper()
	keys(t)
	e := &env{t: t, clk: newClock(), logs: &logBuf{}, promR: prometheus.NewRegistry()}
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{}}
	e.reg = NewRegistry(Deps{
		Logger:     slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Registerer: e.promR,
		Now:        e.clk.Now,
		HTTPClient: client,
	})
	// No background refresh unless a test drives it: the fake clock does
	// not move the real timers.
	e.reg.after = func(time.Duration) <-chan time.Time { return nil }
	t.Cleanup(func() {
		_ = e.reg.Close()
		client.CloseIdleConnections()
	})
	return e
}

// manualRefresh puts the background refresh under the test's hand: each
// wait the registry starts is sent on waits, and a send on fire ends it.
func (e *env) manualRefresh() (waits chan time.Duration, fire chan time.Time) {
	waits, fire = make(chan time.Duration, 8), make(chan time.Time)
	e.reg.after = func(d time.Duration) <-chan time.Time {
		waits <- d
		return fire
	}
	return waits, fire
}

func (e *env) apply(providers map[string]*config.AuthProvider) *Set {
	e.t.Helper()
	s, err := e.reg.Apply(context.Background(), providers)
	if err != nil {
		e.t.Fatalf("Apply: %v", err)
	}
	return s
}

// failures reads portico_auth_failures_total{route,reason}.
func (e *env) failures(route, reason string) float64 {
	e.t.Helper()
	var m dto.Metric
	if err := e.reg.failures.WithLabelValues(route, reason).Write(&m); err != nil {
		e.t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// claims returns standard valid claims at the env's clock.
func (e *env) claims(extra map[string]any) map[string]any {
	now := e.clk.Now().Unix()
	c := map[string]any{
		"iss":   "https://id.example.com",
		"aud":   "portico",
		"sub":   "user-42",
		"scope": "posts:read feed:read",
		"iat":   now,
		"exp":   now + 3600,
	}
	for k, v := range extra {
		if v == nil {
			delete(c, k)
			continue
		}
		c[k] = v
	}
	return c
}

func boolp(b bool) *bool { return &b }

func jwtProviderCfg(url string, mut func(*config.AuthProvider)) *config.AuthProvider {
	p := &config.AuthProvider{
		Type:          "jwt",
		JWKSURL:       url,
		Issuer:        "https://id.example.com",
		Audiences:     []string{"portico"},
		Algorithms:    []string{"RS256", "PS256", "ES256", "EdDSA"},
		ForwardClaims: map[string]string{"sub": "X-User-Id", "scope": "X-User-Scopes"},
	}
	if mut != nil {
		mut(p)
	}
	return p
}

// seen is what the protected handler observed.
type seen struct {
	mu     sync.Mutex
	calls  int
	header http.Header
	query  string
	id     *identity.Identity
}

func (s *seen) handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.calls++
		s.header = r.Header.Clone()
		s.query = r.URL.RawQuery
		s.id = reqctx.IdentityFrom(r.Context())
		s.mu.Unlock()
		w.WriteHeader(http.StatusOK)
	})
}

func (e *env) chain(s *Set, route string, providers, scopes []string, next http.Handler) http.Handler {
	e.t.Helper()
	mw, err := s.Middleware(route, providers, scopes)
	if err != nil {
		e.t.Fatalf("Middleware: %v", err)
	}
	return StripIdentityHeaders(s.IdentityHeaders())(mw(next))
}

// do serves one request through h with a reqctx.Info, as the gateway does.
func do(h http.Handler, r *http.Request) *httptest.ResponseRecorder {
	info := &reqctx.Info{RequestID: "req-1", Route: "test"}
	r = r.WithContext(reqctx.With(r.Context(), info))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, r)
	return rec
}

func bearer(tok string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "http://gw.test/api/x", nil)
	r.Header.Set("Authorization", "Bearer "+tok)
	return r
}

// problemOf decodes a problem+json body.
func problemOf(t *testing.T, rec *httptest.ResponseRecorder) map[string]any {
	t.Helper()
	if ct := rec.Header().Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("content-type %q, body %s", ct, rec.Body.String())
	}
	var m map[string]any
	b, _ := io.ReadAll(rec.Body)
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("problem body: %v: %s", err, b)
	}
	return m
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }
