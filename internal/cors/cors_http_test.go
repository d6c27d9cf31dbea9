package cors

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/portico-gw/portico/internal/config"
)

// serveHTTP starts a real HTTP server (127.0.0.1) with the stage for cfg in
// front of a handler that answers 200 and counts its calls.
func serveHTTP(t *testing.T, cfg *config.CORS) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	mw, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	var reached atomic.Int32
	srv := httptest.NewServer(mw(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached.Add(1)
		_, _ = io.WriteString(w, "ok")
	})))
	t.Cleanup(srv.Close)
	return srv, &reached
}

// do sends one request with the given header pairs and returns the
// response with its body drained.
func do(t *testing.T, srv *httptest.Server, method string, hdr ...string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, srv.URL+"/api/x", nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Add(hdr[i], hdr[i+1])
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp
}

// With origins "*" the stage sends no Vary: Origin, so the response to a
// request without Origin (a navigation, a server-side client) must be the
// one a CORS request gets: a shared cache hands it to both.
func TestHTTPAnyOriginSameAnswerWithoutOrigin(t *testing.T) {
	t.Parallel()
	srv, _ := serveHTTP(t, &config.CORS{Origins: []string{"*"}, ExposeHeaders: []string{"X-Request-Id"}})
	plain := do(t, srv, "GET")
	cross := do(t, srv, "GET", "Origin", "https://x.test")
	for _, name := range []string{"Access-Control-Allow-Origin", "Access-Control-Expose-Headers", "Vary"} {
		if p, c := plain.Header.Values(name), cross.Header.Values(name); strings.Join(p, ",") != strings.Join(c, ",") {
			t.Errorf("%s: %q without Origin, %q with it, yet the response does not vary by Origin", name, p, c)
		}
	}
	if got := plain.Header.Get("Access-Control-Allow-Origin"); got != "*" {
		t.Fatalf("Allow-Origin %q without Origin, want *", got)
	}
}

// Wildcard subdomain patterns accept host labels only: no empty label, no
// bytes a host cannot hold, no other registrable domain ending in the
// suffix.
func TestHTTPWildcardOriginLookalikes(t *testing.T) {
	t.Parallel()
	srv, _ := serveHTTP(t, &config.CORS{Origins: []string{"https://*.example.org"}})
	tests := []struct {
		origin string
		allow  bool
	}{
		{"https://A.Example.ORG", true},
		{"https://a-b.c.example.org", true},
		{"https://evil-example.org", false},
		{"https://a.example.org.evil.test", false},
		{"https://a..example.org", false},
		{"https://.a.example.org", false},
		{"https://a_b.example.org", false},
		{"https://evil.test@a.example.org", false},
		{"https://a.example.org:443", false},
	}
	for _, tc := range tests {
		resp := do(t, srv, "GET", "Origin", tc.origin)
		if got := resp.Header.Get("Access-Control-Allow-Origin"); (got == tc.origin) != tc.allow || (!tc.allow && got != "") {
			t.Errorf("%s: Allow-Origin %q, want allowed=%v", tc.origin, got, tc.allow)
		}
		if !strings.Contains(strings.Join(resp.Header.Values("Vary"), ","), "Origin") {
			t.Errorf("%s: Vary %q lacks Origin", tc.origin, resp.Header.Values("Vary"))
		}
	}
}

// With credentials a literal "*" in Access-Control-Allow-Headers names a
// header called "*" (Fetch standard), so headers: ["*"] must reflect the
// requested names; the preflight is answered 204 without reaching the
// upstream.
func TestHTTPPreflightAnyHeaderWithCredentials(t *testing.T) {
	t.Parallel()
	srv, reached := serveHTTP(t, &config.CORS{
		Origins: []string{"https://app.example.com"}, Headers: []string{"*"}, AllowCredentials: true,
	})
	resp := do(t, srv, "OPTIONS", "Origin", "https://app.example.com",
		"Access-Control-Request-Method", "POST", "Access-Control-Request-Headers", "authorization,x-custom")
	if resp.StatusCode != http.StatusNoContent || reached.Load() != 0 {
		t.Fatalf("status %d, upstream reached %d times", resp.StatusCode, reached.Load())
	}
	h := resp.Header
	if got := h.Get("Access-Control-Allow-Headers"); got != "authorization,x-custom" {
		t.Fatalf("Allow-Headers %q, want the requested names", got)
	}
	if h.Get("Access-Control-Allow-Origin") != "https://app.example.com" || h.Get("Access-Control-Allow-Credentials") != "true" {
		t.Fatalf("Allow-Origin %q, Allow-Credentials %q", h.Get("Access-Control-Allow-Origin"), h.Get("Access-Control-Allow-Credentials"))
	}
}

// TestWebSocketHandshakeOrigin: a WebSocket handshake from an origin the
// route does not list is refused (browsers do not apply CORS to it, so a
// page on any site could otherwise open one with the user's cookies); one
// from a listed origin, one without Origin (not a browser), a plain request
// from another origin, and any handshake under "*" pass.
func TestWebSocketHandshakeOrigin(t *testing.T) {
	listed, reachedListed := serveHTTP(t, &config.CORS{Origins: []string{"https://app.example.com"}})
	star, reachedStar := serveHTTP(t, &config.CORS{Origins: []string{"*"}})
	ws := []string{"Connection", "Upgrade", "Upgrade", "websocket", "Sec-WebSocket-Version", "13", "Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="}
	for _, c := range []struct {
		name    string
		srv     *httptest.Server
		reached *atomic.Int32
		hdr     []string
		want    int
	}{
		{"other origin", listed, reachedListed, append([]string{"Origin", "https://evil.example"}, ws...), http.StatusForbidden},
		{"other origin, token list", listed, reachedListed, []string{"Origin", "https://evil.example", "Upgrade", "foo, WebSocket"}, http.StatusForbidden},
		{"listed origin", listed, reachedListed, append([]string{"Origin", "https://app.example.com"}, ws...), http.StatusOK},
		{"no origin", listed, reachedListed, ws, http.StatusOK},
		{"plain request from another origin", listed, reachedListed, []string{"Origin", "https://evil.example"}, http.StatusOK},
		{"any origin", star, reachedStar, append([]string{"Origin", "https://evil.example"}, ws...), http.StatusOK},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := c.reached.Load()
			resp := do(t, c.srv, http.MethodGet, c.hdr...)
			if resp.StatusCode != c.want {
				t.Fatalf("status %d, want %d", resp.StatusCode, c.want)
			}
			passed := c.reached.Load() != before
			if passed != (c.want == http.StatusOK) {
				t.Fatalf("reached the handler: %v", passed)
			}
			if c.want == http.StatusForbidden && !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/problem+json") {
				t.Errorf("refusal Content-Type %q", resp.Header.Get("Content-Type"))
			}
		})
	}
}

// A browser lists a safelisted header in Access-Control-Request-Headers
// only when its value is not safelisted (Content-Type: application/json,
// a multi-range Range), and then fails the preflight unless
// Access-Control-Allow-Headers names it (Fetch standard, CORS-preflight
// fetch step 7.6). The stage allows such names, so it must also say so.
func TestHTTPPreflightNamesSafelistedHeadersAskedFor(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		headers   []string
		requested string
	}{
		{"json body, listed headers", []string{"Authorization"}, "authorization,content-type"},
		{"json body, no headers configured", nil, "content-type"},
		{"several safelisted", []string{"X-Trace"}, "accept, Content-Type,range, x-trace"},
		{"listed in the config too", []string{"Content-Type"}, "content-type"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv, reached := serveHTTP(t, &config.CORS{Origins: []string{"https://app.example.com"}, Headers: tc.headers, Methods: []string{"POST"}})
			resp := do(t, srv, "OPTIONS", "Origin", "https://app.example.com",
				"Access-Control-Request-Method", "POST", "Access-Control-Request-Headers", tc.requested)
			if resp.StatusCode != http.StatusNoContent || reached.Load() != 0 {
				t.Fatalf("status %d, upstream reached %d times", resp.StatusCode, reached.Load())
			}
			allowed := map[string]int{}
			for _, line := range resp.Header.Values("Access-Control-Allow-Headers") {
				for name := range strings.SplitSeq(line, ",") {
					allowed[strings.ToLower(strings.TrimSpace(name))]++
				}
			}
			for name := range strings.SplitSeq(tc.requested, ",") {
				if name = strings.ToLower(strings.TrimSpace(name)); allowed[name] != 1 {
					t.Errorf("Allow-Headers %q names %q %d times, want once: the browser fails the preflight",
						resp.Header.Values("Access-Control-Allow-Headers"), name, allowed[name])
				}
			}
		})
	}
}
