package admin

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"go.uber.org/goleak"

	"github.com/portico-gw/portico/internal/problem"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func testDeps(ready *atomic.Bool, reloadErr *atomic.Pointer[error]) Deps {
	return Deps{
		Token:   func() string { return "s3cret" },
		Metrics: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "portico_up 1\n") }),
		Ready:   ready.Load,
		Reload: func() error {
			if p := reloadErr.Load(); p != nil {
				return *p
			}
			return nil
		},
		Routes:    func() any { return []map[string]string{{"name": "posts-api"}} },
		Upstreams: func() any { return map[string]any{"posts": map[string]any{"targets": []any{}}} },
		Stats:     func() any { return map[string]any{"routes": []any{}} },
		SLO:       func() any { return []any{} },
	}
}

func TestEndpointsAndToken(t *testing.T) {
	var ready atomic.Bool
	ready.Store(true)
	var reloadErr atomic.Pointer[error]
	srv := httptest.NewServer(New(testDeps(&ready, &reloadErr)))
	defer srv.Close()
	type tc struct {
		method, path, auth string
		want               int
		ctype              string
		body               string
	}
	const ok = "Bearer s3cret"
	cases := []tc{
		{"GET", "/healthz", "", 200, "application/json", `"ok"`},
		{"GET", "/readyz", "", 200, "application/json", `"ready"`},
		{"GET", "/metrics", "", 200, "", "portico_up 1"},
		{"GET", "/admin/routes", ok, 200, "application/json", "posts-api"},
		{"GET", "/admin/upstreams", ok, 200, "application/json", `"posts"`},
		{"GET", "/admin/stats", ok, 200, "application/json", `"routes"`},
		{"GET", "/admin/slo", ok, 200, "application/json", `[]`},
		{"POST", "/admin/reload", ok, 200, "application/json", `"reloaded"`},
		{"GET", "/dashboard/", ok, 200, "text/html", "<title>Portico dashboard</title>"},
		{"GET", "/dashboard/?token=s3cret", "", 200, "text/html", "<script>"},
		{"GET", "/admin/stats", "bearer s3cret", 200, "application/json", ""}, // scheme is case-insensitive
		// The token rule.
		{"GET", "/admin/routes", "", 401, "application/problem+json", "unauthorized"},
		{"GET", "/admin/stats", "Bearer wrong", 401, "application/problem+json", ""},
		{"GET", "/admin/slo", "Basic czNjcmV0", 401, "application/problem+json", ""},
		{"GET", "/admin/upstreams", "Bearer s3cret2", 401, "application/problem+json", ""},
		{"POST", "/admin/reload", "", 401, "application/problem+json", ""},
		{"GET", "/dashboard/", "", 401, "application/problem+json", ""},
		{"GET", "/dashboard/?token=nope", "", 401, "application/problem+json", ""},
		{"GET", "/admin/stats?token=s3cret", "", 401, "application/problem+json", ""}, // query token is for the page only
		// Methods and unknown paths.
		{"GET", "/admin/reload", ok, 405, "", ""},
		{"POST", "/admin/stats", ok, 405, "", ""},
		{"GET", "/nope", "", 404, "application/problem+json", "not_found"},
	}
	for _, c := range cases {
		t.Run(c.method+" "+c.path+" "+c.auth, func(t *testing.T) {
			req, _ := http.NewRequest(c.method, srv.URL+c.path, nil)
			if c.auth != "" {
				req.Header.Set("Authorization", c.auth)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != c.want {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, c.want, body)
			}
			if c.ctype != "" && !strings.HasPrefix(resp.Header.Get("Content-Type"), c.ctype) {
				t.Errorf("content type %q", resp.Header.Get("Content-Type"))
			}
			if !strings.Contains(string(body), c.body) {
				t.Errorf("body lacks %q: %s", c.body, body)
			}
			if c.want == 401 && !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("401 without WWW-Authenticate")
			}
		})
	}
	t.Run("readyz draining", func(t *testing.T) {
		ready.Store(false)
		defer ready.Store(true)
		resp, err := http.Get(srv.URL + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 503 {
			t.Errorf("readyz while draining = %d", resp.StatusCode)
		}
	})
	t.Run("dashboard headers", func(t *testing.T) {
		resp, err := http.Get(srv.URL + "/dashboard?token=s3cret")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		csp := resp.Header.Get("Content-Security-Policy")
		if !strings.Contains(csp, "script-src 'sha256-") || !strings.Contains(csp, "connect-src 'self'") || resp.Header.Get("Referrer-Policy") != "no-referrer" {
			t.Errorf("CSP %q, referrer %q", csp, resp.Header.Get("Referrer-Policy"))
		}
	})
}

func TestReloadErrors(t *testing.T) {
	var ready atomic.Bool
	var reloadErr atomic.Pointer[error]
	srv := httptest.NewServer(New(testDeps(&ready, &reloadErr)))
	defer srv.Close()
	for _, c := range []struct {
		name   string
		err    error
		status int
		check  func(t *testing.T, body map[string]any)
	}{
		{"validation", errors.New("gw.yaml:3:5: routes[0].upstream: unknown upstream \"nope\"\ngw.yaml:9:1: slos[0].objective: must be below 100"), 400,
			func(t *testing.T, b map[string]any) {
				errs, _ := b["errors"].([]any)
				if len(errs) != 2 || !strings.Contains(fmt.Sprint(errs[0]), "routes[0].upstream") || b["type"] != "urn:portico:problem:invalid_config" {
					t.Errorf("body %v", b)
				}
			}},
		{"internal", fmt.Errorf("compile: %w", problem.New(500, "reload_failed", "building the runtime failed")), 500,
			func(t *testing.T, b map[string]any) {
				if b["type"] != "urn:portico:problem:reload_failed" {
					t.Errorf("body %v", b)
				}
			}},
	} {
		t.Run(c.name, func(t *testing.T) {
			reloadErr.Store(&c.err)
			req, _ := http.NewRequest("POST", srv.URL+"/admin/reload", nil)
			req.Header.Set("Authorization", "Bearer s3cret")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != c.status || resp.Header.Get("Content-Type") != "application/problem+json" {
				t.Fatalf("status %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
			}
			var body map[string]any
			if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
				t.Fatal(err)
			}
			c.check(t, body)
		})
	}
}

func TestNoTokenAndMissingViews(t *testing.T) {
	srv := httptest.NewServer(New(Deps{}))
	defer srv.Close()
	for path, want := range map[string]int{"/admin/stats": 503, "/metrics": 503, "/readyz": 200, "/dashboard/": 200} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("%s = %d, want %d", path, resp.StatusCode, want)
		}
	}
}

// TestViewThatCannotBeEncoded: a view JSON cannot hold (a NaN from a rate
// with nothing to divide) is answered like every other admin error:
// problem+json carrying the request id.
func TestViewThatCannotBeEncoded(t *testing.T) {
	srv := httptest.NewServer(New(Deps{Stats: func() any { return map[string]float64{"rps": math.NaN()} }}))
	defer srv.Close()
	req, _ := http.NewRequest("GET", srv.URL+"/admin/stats", nil)
	req.Header.Set("X-Request-Id", "view-nan-1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 500 || resp.Header.Get("Content-Type") != "application/problem+json" ||
		body["request_id"] != "view-nan-1" || body["status"] != float64(500) {
		t.Errorf("status %d %q: %v", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
}
