package cors

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/portico-gw/portico/internal/config"
)

// run sends one request through the stage and reports whether the next
// handler ran.
func run(t *testing.T, cfg *config.CORS, method string, hdr ...string) (*httptest.ResponseRecorder, bool) {
	t.Helper()
	mw, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	reached := false
	h := mw(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached = true
		w.Header().Add("Vary", "Accept-Encoding")
		w.WriteHeader(200)
	}))
	r := httptest.NewRequest(method, "http://gw.test/api/x", nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Add(hdr[i], hdr[i+1])
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, r)
	return rec, reached
}

var appCfg = &config.CORS{
	Origins:          []string{"https://app.example.com", "https://*.example.org", "http://localhost:3000"},
	Methods:          []string{"GET", "put"},
	Headers:          []string{"Authorization", "x-trace"},
	ExposeHeaders:    []string{"RateLimit", "X-Request-Id"},
	AllowCredentials: true,
	MaxAge:           config.Duration(10 * time.Minute),
}

func TestActualRequests(t *testing.T) {
	tests := []struct {
		name       string
		cfg        *config.CORS
		origin     string
		wantOrigin string
		wantVary   bool
	}{
		{"listed origin", appCfg, "https://app.example.com", "https://app.example.com", true},
		{"listed origin, other case", appCfg, "HTTPS://App.Example.com", "HTTPS://App.Example.com", true},
		{"wildcard subdomain", appCfg, "https://a.example.org", "https://a.example.org", true},
		{"wildcard deep subdomain", appCfg, "https://a.b.example.org", "https://a.b.example.org", true},
		{"wildcard never the apex", appCfg, "https://example.org", "", true},
		{"wildcard other scheme", appCfg, "http://a.example.org", "", true},
		{"wildcard with port", appCfg, "https://a.example.org:8443", "", true},
		{"wildcard lookalike", appCfg, "https://evilexample.org", "", true},
		{"wildcard with path trick", appCfg, "https://a.example.org/.example.org", "", true},
		{"port must match", appCfg, "http://localhost:3001", "", true},
		{"unlisted origin", appCfg, "https://evil.test", "", true},
		{"null origin", appCfg, "null", "", true},
		// Unicode lowering would turn U+212A KELVIN SIGN into "k".
		{"kelvin sign is not k", &config.CORS{Origins: []string{"https://kb.test"}}, "HTTPS://\u212Ab.test", "", true},
		{"no origin", appCfg, "", "", true},
		{"any origin", &config.CORS{Origins: []string{"*"}}, "https://x.test", "*", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var hdr []string
			if tc.origin != "" {
				hdr = []string{"Origin", tc.origin}
			}
			rec, reached := run(t, tc.cfg, "GET", hdr...)
			if !reached || rec.Code != 200 {
				t.Fatalf("next not reached (%d)", rec.Code)
			}
			h := rec.Header()
			if got := h.Get("Access-Control-Allow-Origin"); got != tc.wantOrigin {
				t.Fatalf("Allow-Origin %q, want %q", got, tc.wantOrigin)
			}
			vary := strings.Join(h.Values("Vary"), ",")
			if strings.Contains(vary, "Origin") != tc.wantVary || !strings.Contains(vary, "Accept-Encoding") {
				t.Fatalf("Vary %q (want Origin: %v)", vary, tc.wantVary)
			}
			allowed := tc.wantOrigin != ""
			if got := h.Get("Access-Control-Allow-Credentials"); (got == "true") != (allowed && tc.cfg.AllowCredentials) {
				t.Fatalf("Allow-Credentials %q", got)
			}
			if got := h.Get("Access-Control-Expose-Headers"); (got == "RateLimit, X-Request-Id") != (allowed && tc.cfg == appCfg) {
				t.Fatalf("Expose-Headers %q", got)
			}
			if h.Get("Access-Control-Allow-Methods") != "" {
				t.Fatalf("actual request got preflight headers")
			}
		})
	}
}

func TestPreflight(t *testing.T) {
	tests := []struct {
		name     string
		cfg      *config.CORS
		hdr      []string
		status   int
		code     string
		allowHdr string
	}{
		{"allowed", appCfg, []string{"Origin", "https://app.example.com", "Access-Control-Request-Method", "PUT",
			"Access-Control-Request-Headers", "authorization, X-Trace, content-type"}, 204, "", "Authorization, X-Trace, content-type"},
		{"allowed without headers", appCfg, []string{"Origin", "https://a.example.org", "Access-Control-Request-Method", "GET"}, 204, "", "Authorization, X-Trace"},
		{"origin denied", appCfg, []string{"Origin", "https://evil.test", "Access-Control-Request-Method", "GET"}, 403, "cors_origin_denied", ""},
		{"method denied", appCfg, []string{"Origin", "https://app.example.com", "Access-Control-Request-Method", "DELETE"}, 403, "cors_method_denied", ""},
		{"header denied", appCfg, []string{"Origin", "https://app.example.com", "Access-Control-Request-Method", "GET",
			"Access-Control-Request-Headers", "x-trace,x-secret"}, 403, "cors_header_denied", ""},
		{"default methods", &config.CORS{Origins: []string{"*"}}, []string{"Origin", "https://x.test", "Access-Control-Request-Method", "POST"}, 204, "", ""},
		{"default methods deny PUT", &config.CORS{Origins: []string{"*"}}, []string{"Origin", "https://x.test", "Access-Control-Request-Method", "PUT"}, 403, "cors_method_denied", ""},
		{"any header reflected", &config.CORS{Origins: []string{"*"}, Headers: []string{"*"}},
			[]string{"Origin", "https://x.test", "Access-Control-Request-Method", "GET", "Access-Control-Request-Headers", "x-a, x-b"}, 204, "", "x-a, x-b"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec, reached := run(t, tc.cfg, "OPTIONS", tc.hdr...)
			if reached {
				t.Fatal("a preflight reached the next handler")
			}
			if rec.Code != tc.status {
				t.Fatalf("status %d, want %d: %s", rec.Code, tc.status, rec.Body)
			}
			h := rec.Header()
			if !strings.Contains(strings.Join(h.Values("Vary"), ","), "Origin") {
				t.Fatalf("Vary %q", h.Values("Vary"))
			}
			if tc.status == 403 {
				var p struct{ Type string }
				if h.Get("Content-Type") != "application/problem+json" || json.Unmarshal(rec.Body.Bytes(), &p) != nil ||
					p.Type != "urn:portico:problem:"+tc.code {
					t.Fatalf("body %s, want problem %s", rec.Body, tc.code)
				}
				if h.Get("Access-Control-Allow-Origin") != "" {
					t.Fatal("denied preflight carries Allow-Origin")
				}
				return
			}
			origin := tc.hdr[1]
			if tc.cfg.Origins[0] == "*" {
				origin = "*"
			}
			if got := h.Get("Access-Control-Allow-Origin"); got != origin {
				t.Fatalf("Allow-Origin %q, want %q", got, origin)
			}
			wantMethods := "GET, PUT"
			if tc.cfg != appCfg {
				wantMethods = "GET, HEAD, POST"
			}
			if got := h.Get("Access-Control-Allow-Methods"); got != wantMethods {
				t.Fatalf("Allow-Methods %q, want %q", got, wantMethods)
			}
			if got := h.Get("Access-Control-Allow-Headers"); got != tc.allowHdr {
				t.Fatalf("Allow-Headers %q, want %q", got, tc.allowHdr)
			}
			if tc.cfg == appCfg {
				if h.Get("Access-Control-Max-Age") != "600" || h.Get("Access-Control-Allow-Credentials") != "true" {
					t.Fatalf("max age %q credentials %q", h.Get("Access-Control-Max-Age"), h.Get("Access-Control-Allow-Credentials"))
				}
			}
		})
	}
}

func TestPlainOptionsPassesThrough(t *testing.T) {
	// OPTIONS without Access-Control-Request-Method is not a preflight.
	rec, reached := run(t, appCfg, "OPTIONS", "Origin", "https://app.example.com")
	if !reached || rec.Header().Get("Access-Control-Allow-Origin") != "https://app.example.com" {
		t.Fatalf("reached %v, headers %v", reached, rec.Header())
	}
}

func TestNilConfigPassesThrough(t *testing.T) {
	rec, reached := run(t, nil, "OPTIONS", "Origin", "https://x.test", "Access-Control-Request-Method", "GET")
	if !reached || rec.Header().Get("Access-Control-Allow-Origin") != "" {
		t.Fatalf("reached %v, headers %v", reached, rec.Header())
	}
}

func TestNewRejects(t *testing.T) {
	for name, cfg := range map[string]*config.CORS{
		"no origins":            {},
		"star with credentials": {Origins: []string{"*"}, AllowCredentials: true},
		"not an origin":         {Origins: []string{"app.example.com"}},
		"origin with path":      {Origins: []string{"https://app.example.com/x"}},
		"bad wildcard":          {Origins: []string{"https://a.*.example.com"}},
		"bare wildcard":         {Origins: []string{"https://*"}},
		"non-ASCII origin":      {Origins: []string{"https://café.example"}},
		"invalid UTF-8 origin":  {Origins: []string{"https://\xc2.0"}},
		"bad method":            {Origins: []string{"*"}, Methods: []string{"GE T"}},
		"bad header":            {Origins: []string{"*"}, Headers: []string{"a:b"}},
		"negative max age":      {Origins: []string{"*"}, MaxAge: -1},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := New(cfg); err == nil {
				t.Fatal("New succeeded, want an error")
			}
		})
	}
}

func BenchmarkActualRequest(b *testing.B) {
	mw, err := New(appCfg)
	if err != nil {
		b.Fatal(err)
	}
	h := mw(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	r := httptest.NewRequest("GET", "/", nil)
	r.Header.Set("Origin", "https://a.example.org")
	w := &headerOnly{h: http.Header{}}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		clear(w.h)
		h.ServeHTTP(w, r)
	}
}

type headerOnly struct{ h http.Header }

func (w *headerOnly) Header() http.Header         { return w.h }
func (w *headerOnly) Write(b []byte) (int, error) { return len(b), nil }
func (w *headerOnly) WriteHeader(int)             {}

func FuzzOrigins(f *testing.F) {
	f.Add("https://*.example.com", "https://a.example.com")
	f.Add("http://localhost:3000", "HTTP://LOCALHOST:3000")
	f.Add("*", "null")
	f.Add("https://*.", "https://..")
	f.Fuzz(func(t *testing.T, pattern, origin string) {
		mw, err := New(&config.CORS{Origins: []string{pattern}})
		if err != nil {
			return
		}
		h := mw(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
		for _, method := range []string{"GET", "OPTIONS"} {
			r := httptest.NewRequest(method, "/", nil)
			r.Header.Set("Origin", origin)
			r.Header.Set("Access-Control-Request-Method", "GET")
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, r)
			got := rec.Header().Get("Access-Control-Allow-Origin")
			if got != "" && got != "*" && got != origin {
				t.Fatalf("pattern %q, origin %q: Allow-Origin %q", pattern, origin, got)
			}
			// A listed origin is always allowed, whatever its ASCII case
			// (strings.EqualFold folds Unicode, under which distinct
			// invalid bytes are equal).
			if !strings.Contains(pattern, "*") && asciiLower(strings.TrimSpace(pattern)) == asciiLower(origin) && got == "" {
				t.Fatalf("pattern %q does not allow %q", pattern, origin)
			}
			// A wildcard never allows an origin outside its suffix.
			if w, ok := strings.CutPrefix(strings.ToLower(pattern), "https://*."); ok && got != "" &&
				!strings.HasSuffix(strings.ToLower(origin), "."+w) {
				t.Fatalf("wildcard %q allowed %q", pattern, origin)
			}
		}
	})
}
