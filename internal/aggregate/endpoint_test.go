package aggregate

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	"go.uber.org/goleak"

	"github.com/portico-gw/portico/internal/config"
	"github.com/portico-gw/portico/internal/identity"
	"github.com/portico-gw/portico/internal/problem"
	"github.com/portico-gw/portico/internal/reqctx"
	"github.com/portico-gw/portico/internal/upstream"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// hostRT is test scaffolding standing in for upstream.Pool: it points the
// request at one httptest server.
type hostRT struct {
	host string
	t    *http.Transport
}

func (h hostRT) RoundTrip(r *http.Request) (*http.Response, error) {
	r2 := r.Clone(r.Context())
	r2.URL.Scheme, r2.URL.Host, r2.Host = "http", h.host, h.host
	return h.t.RoundTrip(r2)
}

// serve starts one httptest server per upstream and returns round trippers
// for them.
func serve(t testing.TB, handlers map[string]http.HandlerFunc) map[string]http.RoundTripper {
	t.Helper()
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	t.Cleanup(tr.CloseIdleConnections)
	rts := make(map[string]http.RoundTripper, len(handlers))
	for name, h := range handlers {
		srv := httptest.NewServer(h)
		t.Cleanup(srv.Close)
		rts[name] = hostRT{host: srv.Listener.Addr().String(), t: tr}
	}
	return rts
}

type serveFunc func(t testing.TB, handlers map[string]http.HandlerFunc) map[string]http.RoundTripper

// bothModes runs a test over both ways an endpoint calls its backends: round
// trippers on workers (hostRT), and the upstream pools, whose requests the
// handler's goroutine writes itself before it reads the answers in order.
func bothModes(t *testing.T, test func(t *testing.T, serve serveFunc)) {
	t.Run("workers", func(t *testing.T) { test(t, serve) })
	t.Run("pools", func(t *testing.T) { test(t, servePools) })
}

// servePools starts one httptest server per upstream and returns the
// gateway's upstream pools for them, with the config defaults.
func servePools(t testing.TB, handlers map[string]http.HandlerFunc) map[string]http.RoundTripper {
	t.Helper()
	rts, _ := servePoolsRegistry(t, handlers)
	return rts
}

// servePoolsRegistry is servePools that also returns the pools' registry,
// whose Snapshot shows each upstream's calls in flight.
func servePoolsRegistry(t testing.TB, handlers map[string]http.HandlerFunc) (map[string]http.RoundTripper, *upstream.Registry) {
	t.Helper()
	var yaml strings.Builder
	yaml.WriteString("version: 1\nupstreams:\n")
	for name, h := range handlers {
		srv := httptest.NewServer(h)
		t.Cleanup(srv.Close)
		fmt.Fprintf(&yaml, "  %q: {targets: [{url: %q}]}\n", name, srv.URL)
	}
	cfg, err := config.LoadBytes("pools.yaml", []byte(yaml.String()))
	if err != nil {
		t.Fatalf("%v\n%s", err, yaml.String())
	}
	rts, reg := applyPoolsRegistry(t, cfg.Upstreams)
	for name, rt := range rts {
		if !rt.(*upstream.Pool).CanSend(http.MethodGet) {
			t.Fatalf("pool %s cannot send: the test would not cover sending", name)
		}
	}
	return rts, reg
}

// applyPools builds the gateway's upstream pools for ups, closed when the
// test ends.
func applyPools(t testing.TB, ups map[string]*config.Upstream) map[string]http.RoundTripper {
	t.Helper()
	rts, _ := applyPoolsRegistry(t, ups)
	return rts
}

// applyPoolsRegistry is applyPools that also returns the registry.
func applyPoolsRegistry(t testing.TB, ups map[string]*config.Upstream) (map[string]http.RoundTripper, *upstream.Registry) {
	t.Helper()
	reg := upstream.NewRegistry(upstream.Deps{})
	t.Cleanup(reg.Close)
	pools, err := reg.Apply(ups)
	if err != nil {
		t.Fatal(err)
	}
	rts := make(map[string]http.RoundTripper, len(pools))
	for name, p := range pools {
		rts[name] = p
	}
	return rts, reg
}

func jsonHandler(body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, body)
	}
}

func gatewayRequest(method, target string, params ...reqctx.Param) *http.Request {
	r := httptest.NewRequest(method, target, nil)
	info := &reqctx.Info{
		Start:     time.Now(),
		RequestID: "req-1",
		Route:     "mobile/feed",
		Params:    params,
		Identity:  &identity.Identity{Provider: "users-jwt", Subject: "u42", Claims: map[string]any{"sub": "u42", "org": "acme/west?x"}},
	}
	return r.WithContext(reqctx.With(r.Context(), info))
}

func newEndpoint(t testing.TB, ep *config.Endpoint, rts map[string]http.RoundTripper) http.Handler {
	t.Helper()
	h, err := NewEndpoint(&config.BFF{Name: "mobile"}, ep, Deps{Upstreams: rts})
	if err != nil {
		t.Fatalf("NewEndpoint: %v", err)
	}
	return h
}

func do(h http.Handler, r *http.Request) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, r)
	return rec
}

func TestParallelFanOut(t *testing.T) {
	bothModes(t, func(t *testing.T, serve serveFunc) {
		slow := func(body string) http.HandlerFunc {
			return func(w http.ResponseWriter, r *http.Request) {
				select {
				case <-time.After(150 * time.Millisecond): // the upstream's own latency
				case <-r.Context().Done():
				}
				jsonHandler(body)(w, r)
			}
		}
		rts := serve(t, map[string]http.HandlerFunc{
			"a": slow(`{"v":1}`), "b": slow(`{"v":2}`), "c": slow(`{"v":3}`),
		})
		h := newEndpoint(t, &config.Endpoint{Name: "feed", Timeout: config.Duration(2 * time.Second), Backends: []*config.Backend{
			{Upstream: "a", Path: "/a", Into: "a"},
			{Upstream: "b", Path: "/b", Into: "b"},
			{Upstream: "c", Path: "/c", Into: "c"},
		}}, rts)
		// Run one to three times: in series the three calls take 450ms or more
		// every time, so one run under 250ms proves the fan-out, and the retries
		// only absorb a scheduling hiccup on a loaded machine.
		var elapsed []time.Duration
		for range 3 {
			start := time.Now()
			rec := do(h, gatewayRequest("GET", "/mobile/feed"))
			took := time.Since(start)
			if rec.Code != 200 {
				t.Fatalf("status %d: %s", rec.Code, rec.Body)
			}
			if got, want := rec.Body.String(), `{"a":{"v":1},"b":{"v":2},"c":{"v":3}}`; got != want {
				t.Fatalf("body %s, want %s", got, want)
			}
			if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
				t.Fatalf("Content-Type %q", ct)
			}
			if took < 250*time.Millisecond {
				return
			}
			elapsed = append(elapsed, took)
		}
		t.Fatalf("three 150ms backends took %v; they did not run in parallel", elapsed)
	})
}

func TestAfterAndDependencyTemplates(t *testing.T) {
	bothModes(t, func(t *testing.T, serve serveFunc) {
		var userDone atomic.Bool
		var adsPath, adsQuery string
		var adsSawUser bool
		rts := serve(t, map[string]http.HandlerFunc{
			"users": func(w http.ResponseWriter, r *http.Request) {
				defer userDone.Store(true)
				jsonHandler(`{"id":"u/42?","profile":{"tier":12345678901234567890},"name":"Ann"}`)(w, r)
			},
			"ads": func(w http.ResponseWriter, r *http.Request) {
				adsSawUser = userDone.Load()
				adsPath, adsQuery = r.URL.EscapedPath(), r.URL.RawQuery
				jsonHandler(`{"slots":[1],"tracking":{"p":1}}`)(w, r)
			},
		})
		h := newEndpoint(t, &config.Endpoint{Name: "feed", Timeout: config.Duration(time.Second), Backends: []*config.Backend{
			{Name: "ads", Upstream: "ads", Path: "/slots/{user.id}?user={user.id}&tier={user.profile.tier}", After: "user", Into: "ads", Drop: []string{"tracking"}},
			{Upstream: "users", Path: "/users/{claims.sub}", Into: "user", Fields: []string{"name"}},
		}}, rts)
		rec := do(h, gatewayRequest("GET", "/mobile/feed"))
		if rec.Code != 200 {
			t.Fatalf("status %d: %s", rec.Code, rec.Body)
		}
		if !adsSawUser {
			t.Fatal("ads was called before users answered")
		}
		if adsPath != "/slots/u%2F42%3F" || adsQuery != "user=u%2F42%3F&tier=12345678901234567890" {
			t.Fatalf("ads got path %q query %q", adsPath, adsQuery)
		}
		// Config order decides the response order.
		if got, want := rec.Body.String(), `{"ads":{"slots":[1]},"user":{"name":"Ann"}}`; got != want {
			t.Fatalf("body %s, want %s", got, want)
		}
	})
}

func TestTemplateEscaping(t *testing.T) {
	bothModes(t, func(t *testing.T, serve serveFunc) {
		var gotPath, gotQuery string
		rts := serve(t, map[string]http.HandlerFunc{
			"svc": func(w http.ResponseWriter, r *http.Request) {
				gotPath, gotQuery = r.URL.EscapedPath(), r.URL.RawQuery
				jsonHandler(`{}`)(w, r)
			},
		})
		h := newEndpoint(t, &config.Endpoint{Name: "e", Path: "/e/{id}", Backends: []*config.Backend{
			{Upstream: "svc", Path: "/p/{id}/{claims.org}?q={query.q}&h={header.X-Thing}&fixed=1", Into: "x"},
		}}, rts)
		r := gatewayRequest("GET", "/e/x?q=a%26b%3Dc+d", reqctx.Param{Key: "id", Value: "a/b?c d"})
		r.Header.Set("X-Thing", "é/?")
		rec := do(h, r)
		if rec.Code != 200 {
			t.Fatalf("status %d: %s", rec.Code, rec.Body)
		}
		if want := "/p/a%2Fb%3Fc%20d/acme%2Fwest%3Fx"; gotPath != want {
			t.Fatalf("path %q, want %q", gotPath, want)
		}
		if want := "q=a%26b%3Dc%20d&h=%C3%A9%2F%3F&fixed=1"; gotQuery != want {
			t.Fatalf("query %q, want %q", gotQuery, want)
		}

		// A missing value fails the backend with a message naming it.
		rec = do(h, gatewayRequest("GET", "/e/x", reqctx.Param{Key: "id", Value: "1"}))
		if rec.Code != 400 || !strings.Contains(rec.Body.String(), "query parameter q") {
			t.Fatalf("missing query: status %d body %s", rec.Code, rec.Body)
		}
		// A dot segment could walk the upstream's path.
		rec = do(h, gatewayRequest("GET", "/e/x?q=1", reqctx.Param{Key: "id", Value: ".."}))
		if rec.Code != 400 {
			t.Fatalf("dot-dot param: status %d body %s", rec.Code, rec.Body)
		}
	})
}

func TestForwardedHeaders(t *testing.T) {
	bothModes(t, func(t *testing.T, serve serveFunc) {
		var got http.Header
		rts := serve(t, map[string]http.HandlerFunc{
			"svc": func(w http.ResponseWriter, r *http.Request) {
				got = r.Header.Clone()
				jsonHandler(`{}`)(w, r)
			},
		})
		h := newEndpoint(t, &config.Endpoint{Name: "e", Backends: []*config.Backend{{Upstream: "svc", Path: "/x", Into: "x"}}}, rts)
		r := gatewayRequest("GET", "/e")
		r.Header.Set("X-User-Id", "u42")
		r.Header.Set("Traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
		r.Header.Set("Cookie", "session=secret")
		r.Header.Set("X-Request-Id", "spoofed")
		r.Header.Set("Connection", "X-Private")
		r.Header.Set("X-Private", "hop")
		r.Header.Set("If-None-Match", `"abc"`)
		r.Header.Set("X-Forwarded-For", "6.6.6.6")
		r.Host = "api.example.com"
		reqctx.From(r.Context()).ClientIP = netip.MustParseAddr("203.0.113.7")
		if rec := do(h, r); rec.Code != 200 {
			t.Fatalf("status %d", rec.Code)
		}
		want := map[string]string{
			"X-User-Id":       "u42",
			"Traceparent":     "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
			"X-Request-Id":    "req-1",
			"Accept-Encoding": "gzip",
			"Cookie":          "",
			"X-Private":       "",
			"If-None-Match":   "",
			// The gateway's resolved client address, never the client's claim.
			"X-Forwarded-For":   "203.0.113.7",
			"X-Forwarded-Proto": "http",
			"X-Forwarded-Host":  "api.example.com",
		}
		for k, v := range want {
			if g := got.Get(k); g != v {
				t.Errorf("%s = %q, want %q", k, g, v)
			}
		}
	})
}

// TestForwardedProtoFromTrustedPeer: behind a trusted proxy that
// terminated TLS, backends get the scheme and host it forwarded, as a
// route's upstream does; from any other peer the client's claims are
// ignored.
func TestForwardedProtoFromTrustedPeer(t *testing.T) {
	bothModes(t, func(t *testing.T, serve serveFunc) {
		var got http.Header
		rts := serve(t, map[string]http.HandlerFunc{
			"svc": func(w http.ResponseWriter, r *http.Request) {
				got = r.Header.Clone()
				jsonHandler(`{}`)(w, r)
			},
		})
		h := newEndpoint(t, &config.Endpoint{Name: "e", Backends: []*config.Backend{{Upstream: "svc", Path: "/x", Into: "x"}}}, rts)
		for _, tc := range []struct {
			trusted     bool
			proto, host string
		}{{false, "http", "gw.internal"}, {true, "https", "api.example.com"}} {
			r := gatewayRequest("GET", "/e")
			r.Host = "gw.internal"
			r.Header.Set("X-Forwarded-Proto", "https")
			r.Header.Set("X-Forwarded-Host", "api.example.com")
			reqctx.From(r.Context()).PeerTrusted = tc.trusted
			if rec := do(h, r); rec.Code != 200 {
				t.Fatalf("status %d", rec.Code)
			}
			if p, h := got.Get("X-Forwarded-Proto"), got.Get("X-Forwarded-Host"); p != tc.proto || h != tc.host {
				t.Errorf("peer trusted %v: X-Forwarded-Proto %q, X-Forwarded-Host %q; want %q and %q", tc.trusted, p, h, tc.proto, tc.host)
			}
		}
	})
}

func TestGzipAndNonJSON(t *testing.T) {
	bothModes(t, func(t *testing.T, serve serveFunc) {
		rts := serve(t, map[string]http.HandlerFunc{
			"gz": func(w http.ResponseWriter, r *http.Request) {
				if r.Header.Get("Accept-Encoding") != "gzip" {
					t.Errorf("Accept-Encoding %q", r.Header.Get("Accept-Encoding"))
				}
				w.Header().Set("Content-Type", "application/json")
				w.Header().Set("Content-Encoding", "gzip")
				zw := gzip.NewWriter(w)
				_, _ = io.WriteString(zw, `{"n":1,"secret":2}`)
				_ = zw.Close()
			},
			"text": func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/plain")
				_, _ = io.WriteString(w, "hello \"world\"\n\xff")
			},
		})
		h := newEndpoint(t, &config.Endpoint{Name: "e", Backends: []*config.Backend{
			{Upstream: "gz", Path: "/x", Fields: []string{"n"}},
			{Upstream: "text", Path: "/t"},
		}}, rts)
		rec := do(h, gatewayRequest("GET", "/e"))
		if want := `{"n":1,"text":"hello \"world\"\n` + "\ufffd" + `"}`; rec.Code != 200 || rec.Body.String() != want {
			t.Fatalf("status %d body %s, want %s", rec.Code, rec.Body, want)
		}

		// Shaping a non-JSON body fails that backend.
		h = newEndpoint(t, &config.Endpoint{Name: "e", Backends: []*config.Backend{
			{Upstream: "text", Path: "/t", Into: "t", Fields: []string{"a"}},
		}}, rts)
		rec = do(h, gatewayRequest("GET", "/e"))
		if rec.Code != 502 || !strings.Contains(rec.Body.String(), "not JSON") {
			t.Fatalf("status %d body %s", rec.Code, rec.Body)
		}
	})
}

func TestMergeWithoutInto(t *testing.T) {
	bothModes(t, func(t *testing.T, serve serveFunc) {
		rts := serve(t, map[string]http.HandlerFunc{
			"a": jsonHandler(`{"x":1,"y":{"z":2}}`),
			"b": jsonHandler(`{"y":"later","w":3}`),
			"c": jsonHandler(`[1,2]`),
		})
		h := newEndpoint(t, &config.Endpoint{Name: "e", Backends: []*config.Backend{
			{Upstream: "a", Path: "/"},
			{Upstream: "b", Path: "/"},
			{Upstream: "c", Path: "/", Optional: true},
			{Name: "w-again", Upstream: "a", Path: "/", Into: "w", Pick: "x"},
		}}, rts)
		rec := do(h, gatewayRequest("GET", "/e"))
		// An earlier backend's key is never overwritten; c yields no object
		// and has no into, so it fails (optional: left out).
		if want := `{"x":1,"y":{"z":2},"w":3}`; rec.Code != 200 || rec.Body.String() != want {
			t.Fatalf("status %d body %s, want %s", rec.Code, rec.Body, want)
		}
		if p := rec.Header().Get("Portico-Partial"); p != "c" {
			t.Fatalf("Portico-Partial %q", p)
		}
	})
}

type problemBody struct {
	Type      string `json:"type"`
	Status    int    `json:"status"`
	Detail    string `json:"detail"`
	RequestID string `json:"request_id"`
	Backend   string `json:"backend"`
}

func TestFailurePolicy(t *testing.T) {
	bothModes(t, func(t *testing.T, serve serveFunc) {
		refused := func() string {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			addr := l.Addr().String()
			l.Close()
			return addr
		}()
		block := make(chan struct{})
		var blockOnce sync.Once
		t.Cleanup(func() { blockOnce.Do(func() { close(block) }) })
		big := `{"a":"` + strings.Repeat("x", 2000) + `"}`
		rts := serve(t, map[string]http.HandlerFunc{
			"ok":  jsonHandler(`{"v":1}`),
			"404": func(w http.ResponseWriter, r *http.Request) { http.Error(w, "no", 404) },
			"500": func(w http.ResponseWriter, r *http.Request) { http.Error(w, "boom", 500) },
			"slow": func(w http.ResponseWriter, r *http.Request) {
				select {
				case <-block:
				case <-r.Context().Done():
				}
			},
			"big":  jsonHandler(big),
			"deep": jsonHandler(strings.Repeat("[", 65) + strings.Repeat("]", 65)),
			"bad":  jsonHandler(`{"a":`),
		})
		tr := &http.Transport{}
		t.Cleanup(tr.CloseIdleConnections)
		rts["refused"] = hostRT{host: refused, t: tr}

		tests := []struct {
			name     string
			backend  config.Backend
			status   int
			code     string
			body     string
			partial  string
			maxBytes config.Size
		}{
			{"optional 500 left out", config.Backend{Upstream: "500", Into: "x", Optional: true}, 200, "", `{"ok":{"v":1}}`, "x", 0},
			{"optional 404 left out", config.Backend{Upstream: "404", Into: "x", Optional: true}, 200, "", `{"ok":{"v":1}}`, "x", 0},
			{"optional timeout left out", config.Backend{Upstream: "slow", Into: "x", Optional: true, Timeout: config.Duration(50 * time.Millisecond)}, 200, "", `{"ok":{"v":1}}`, "x", 0},
			{"optional refused left out", config.Backend{Upstream: "refused", Into: "x", Optional: true}, 200, "", `{"ok":{"v":1}}`, "x", 0},
			{"required 404 passes status", config.Backend{Upstream: "404", Into: "x"}, 404, "backend_rejected", "", "", 0},
			{"required 500 is 502", config.Backend{Upstream: "500", Into: "x"}, 502, "backend_error", "", "", 0},
			{"required refused is 502", config.Backend{Upstream: "refused", Into: "x"}, 502, "backend_unreachable", "", "", 0},
			{"required timeout is 504", config.Backend{Upstream: "slow", Into: "x", Timeout: config.Duration(50 * time.Millisecond)}, 504, "backend_timeout", "", "", 0},
			{"required endpoint deadline is 504", config.Backend{Upstream: "slow", Into: "x"}, 504, "backend_timeout", "", "", 0},
			{"required body cap is 502", config.Backend{Upstream: "big", Into: "x"}, 502, "backend_bad_body", "", "", 1000},
			{"optional body cap left out", config.Backend{Upstream: "big", Into: "x", Optional: true}, 200, "", `{"ok":{"v":1}}`, "x", 1000},
			{"body at cap passes", config.Backend{Upstream: "big", Into: "x", Pick: "b"}, 200, "", `{"ok":{"v":1},"x":null}`, "", config.Size(len(big))},
			{"required depth cap is 502", config.Backend{Upstream: "deep", Into: "x"}, 502, "backend_bad_body", "", "", 0},
			{"required invalid JSON is 502", config.Backend{Upstream: "bad", Into: "x"}, 502, "backend_bad_body", "", "", 0},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				b := tc.backend
				b.Path = "/x"
				ep := &config.Endpoint{Name: "e", Timeout: config.Duration(300 * time.Millisecond), Backends: []*config.Backend{
					{Upstream: "ok", Path: "/ok", Into: "ok"}, &b,
				}}
				h, err := NewEndpoint(&config.BFF{Name: "mobile", MaxBackendBodyBytes: tc.maxBytes}, ep, Deps{Upstreams: rts})
				if err != nil {
					t.Fatal(err)
				}
				start := time.Now()
				rec := do(h, gatewayRequest("GET", "/e"))
				// The endpoint stops waiting 10ms before its 300ms deadline; the
				// slack covers scheduling on a loaded machine (the race detector
				// and parallel test packages on two cores), while the slow
				// backends would otherwise block until the test ends.
				if took := time.Since(start); took >= 600*time.Millisecond {
					t.Errorf("took %v: the endpoint must answer by its 300ms deadline", took)
				}
				if rec.Code != tc.status {
					t.Fatalf("status %d, want %d: %s", rec.Code, tc.status, rec.Body)
				}
				if got := rec.Header().Get("Portico-Partial"); got != tc.partial {
					t.Fatalf("Portico-Partial %q, want %q", got, tc.partial)
				}
				if tc.partial != "" && rec.Header().Get("Cache-Control") != "no-store" {
					t.Fatalf("partial response without Cache-Control: no-store")
				}
				if tc.status == 200 {
					if rec.Body.String() != tc.body {
						t.Fatalf("body %s, want %s", rec.Body, tc.body)
					}
					return
				}
				if ct := rec.Header().Get("Content-Type"); ct != "application/problem+json" {
					t.Fatalf("Content-Type %q", ct)
				}
				var p problemBody
				if err := json.Unmarshal(rec.Body.Bytes(), &p); err != nil {
					t.Fatalf("problem body: %v: %s", err, rec.Body)
				}
				if p.Type != "urn:portico:problem:"+tc.code || p.Backend != "x" || !strings.Contains(p.Detail, "backend x") || p.RequestID != "req-1" {
					t.Fatalf("problem %+v, want code %s naming backend x", p, tc.code)
				}
			})
		}
	})
}

func TestSkippedDependents(t *testing.T) {
	bothModes(t, func(t *testing.T, serve serveFunc) {
		rts := serve(t, map[string]http.HandlerFunc{
			"users": func(w http.ResponseWriter, r *http.Request) { http.Error(w, "down", 503) },
			"ads":   jsonHandler(`{"slots":[]}`),
			"posts": jsonHandler(`{"items":[]}`),
		})
		var adsCalls atomic.Int32
		rts["ads"] = countingRT{rts["ads"], &adsCalls}
		h := newEndpoint(t, &config.Endpoint{Name: "e", Backends: []*config.Backend{
			{Upstream: "posts", Path: "/p", Into: "posts"},
			{Upstream: "users", Path: "/u", Into: "user", Optional: true},
			{Name: "ads", Upstream: "ads", Path: "/slots?user={user.id}", After: "user", Into: "ads", Optional: true},
		}}, rts)
		rec := do(h, gatewayRequest("GET", "/e"))
		if rec.Code != 200 || rec.Body.String() != `{"posts":{"items":[]}}` || rec.Header().Get("Portico-Partial") != "user, ads" {
			t.Fatalf("status %d partial %q body %s", rec.Code, rec.Header().Get("Portico-Partial"), rec.Body)
		}
		if adsCalls.Load() != 0 {
			t.Fatal("a backend after a failed one was called")
		}

		// A required backend after a failed optional one fails the endpoint.
		h = newEndpoint(t, &config.Endpoint{Name: "e", Backends: []*config.Backend{
			{Upstream: "users", Path: "/u", Into: "user", Optional: true},
			{Name: "ads", Upstream: "ads", Path: "/slots?user={user.id}", After: "user", Into: "ads"},
		}}, rts)
		rec = do(h, gatewayRequest("GET", "/e"))
		if rec.Code != 502 || !strings.Contains(rec.Body.String(), "backend ads was skipped because backend user failed") {
			t.Fatalf("status %d body %s", rec.Code, rec.Body)
		}
	})
}

type countingRT struct {
	rt http.RoundTripper
	n  *atomic.Int32
}

func (c countingRT) RoundTrip(r *http.Request) (*http.Response, error) {
	c.n.Add(1)
	return c.rt.RoundTrip(r)
}

// Sent calls and calls on workers mix in one endpoint, either kind
// depending on the other: a sent backend's dependent that cannot be sent
// runs on a worker, a worker's dependent that can be sent is sent.
func TestSentAndWorkerCallsMix(t *testing.T) {
	var sawUser, sawPost atomic.Value
	rts := servePools(t, map[string]http.HandlerFunc{
		"users": jsonHandler(`{"id":"u1"}`),
		"posts": jsonHandler(`{"top":"p9"}`),
		"ads": func(w http.ResponseWriter, r *http.Request) {
			sawUser.Store(r.URL.Query().Get("user"))
			jsonHandler(`{"slot":1}`)(w, r)
		},
		"comments": func(w http.ResponseWriter, r *http.Request) {
			sawPost.Store(r.URL.Query().Get("post"))
			jsonHandler(`{"n":3}`)(w, r)
		},
	})
	var adsCalls, postsCalls atomic.Int32
	// Behind countingRT a pool cannot send: ads and posts run on workers.
	rts["ads"] = countingRT{rts["ads"], &adsCalls}
	rts["posts"] = countingRT{rts["posts"], &postsCalls}
	h := newEndpoint(t, &config.Endpoint{Name: "e", Timeout: config.Duration(2 * time.Second), Backends: []*config.Backend{
		{Upstream: "users", Path: "/u", Into: "user"},
		{Upstream: "ads", Path: "/slots?user={user.id}", After: "user", Into: "ads"},
		{Upstream: "posts", Path: "/p", Into: "posts"},
		{Upstream: "comments", Path: "/c?post={posts.top}", After: "posts", Into: "comments"},
	}}, rts)
	e := h.(*endpoint)
	if e.backends[0].sends == nil || e.backends[3].sends == nil || e.backends[1].sends != nil || e.backends[2].sends != nil {
		t.Fatal("users and comments must send, ads and posts must not")
	}
	for range 3 { // the second and later requests reuse pooled state
		rec := do(h, gatewayRequest("GET", "/e"))
		if got, want := rec.Body.String(), `{"user":{"id":"u1"},"ads":{"slot":1},"posts":{"top":"p9"},"comments":{"n":3}}`; rec.Code != 200 || got != want {
			t.Fatalf("status %d body %s, want %s", rec.Code, got, want)
		}
	}
	if sawUser.Load() != "u1" || sawPost.Load() != "p9" {
		t.Fatalf("ads saw user %v, comments saw post %v", sawUser.Load(), sawPost.Load())
	}
	if adsCalls.Load() != 3 || postsCalls.Load() != 3 {
		t.Fatalf("ads %d and posts %d calls through their round trippers, want 3 each", adsCalls.Load(), postsCalls.Load())
	}
}

// A required backend that fails at once behind a slow one in config order:
// on workers it is seen at once and ends the fan-out; sent calls are read
// in turn, so there it is seen when the slow one's wait ends at the
// endpoint's deadline. Either way its failure (502), not the slow one's
// timeout, is what the endpoint reports, by the deadline.
func TestFailureBehindASlowBackend(t *testing.T) {
	bothModes(t, func(t *testing.T, serve serveFunc) {
		{
			rts := serve(t, map[string]http.HandlerFunc{
				"slow": func(w http.ResponseWriter, r *http.Request) { sleepCtx(r.Context(), 10*time.Second) },
				"500":  func(w http.ResponseWriter, r *http.Request) { http.Error(w, "boom", 500) },
			})
			h := newEndpoint(t, &config.Endpoint{Name: "e", Timeout: config.Duration(300 * time.Millisecond), Backends: []*config.Backend{
				{Upstream: "slow", Path: "/", Into: "slow"},
				{Upstream: "500", Path: "/", Into: "x"},
			}}, rts)
			start := time.Now()
			rec := do(h, gatewayRequest("GET", "/e"))
			if took := time.Since(start); took > 2*time.Second {
				t.Fatalf("took %v: the endpoint must answer by its deadline", took)
			}
			var p problemBody
			_ = json.Unmarshal(rec.Body.Bytes(), &p)
			if rec.Code != http.StatusBadGateway || p.Type != "urn:portico:problem:backend_error" || p.Backend != "x" {
				t.Fatalf("status %d %+v, want 502 backend_error from backend x", rec.Code, p)
			}
		}
	})
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-time.After(d):
	case <-ctx.Done():
	}
}

func TestClientGone(t *testing.T) {
	bothModes(t, func(t *testing.T, serve serveFunc) {
		rts := serve(t, map[string]http.HandlerFunc{
			"slow": func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() },
		})
		h := newEndpoint(t, &config.Endpoint{Name: "e", Timeout: config.Duration(5 * time.Second), Backends: []*config.Backend{
			{Upstream: "slow", Path: "/", Into: "x"},
		}}, rts)
		ctx, cancel := context.WithCancel(context.Background())
		r := gatewayRequest("GET", "/e")
		r = r.WithContext(reqctx.With(ctx, reqctx.From(r.Context())))
		time.AfterFunc(20*time.Millisecond, cancel)
		rec := do(h, r)
		if rec.Code != 499 {
			t.Fatalf("status %d, want 499 (logged only)", rec.Code)
		}
	})
}

func TestNewEndpointErrors(t *testing.T) {
	rts := map[string]http.RoundTripper{"u": http.DefaultTransport}
	tests := []struct {
		name     string
		backends []*config.Backend
		want     string
	}{
		{"no backends", nil, "no backends"},
		{"unknown upstream", []*config.Backend{{Upstream: "nope", Path: "/"}}, `unknown upstream "nope"`},
		{"duplicate names", []*config.Backend{{Upstream: "u", Path: "/"}, {Upstream: "u", Path: "/"}}, "used twice"},
		{"duplicate into", []*config.Backend{{Name: "a", Upstream: "u", Path: "/", Into: "k"}, {Name: "b", Upstream: "u", Path: "/", Into: "k"}}, "both use into"},
		{"unknown after", []*config.Backend{{Upstream: "u", Path: "/", After: "x"}}, `no backend named "x"`},
		{"self after", []*config.Backend{{Name: "a", Upstream: "u", Path: "/", After: "a"}}, "itself"},
		{"cycle", []*config.Backend{
			{Name: "a", Upstream: "u", Path: "/", After: "c"},
			{Name: "b", Upstream: "u", Path: "/", After: "a"},
			{Name: "c", Upstream: "u", Path: "/", After: "b"},
		}, "cycle"},
		{"template source", []*config.Backend{{Upstream: "u", Path: "/{other.id}"}}, "not claims, query, header"},
		{"template without after", []*config.Backend{{Name: "a", Upstream: "u", Path: "/"}, {Upstream: "u", Path: "/{a.id}"}}, "not claims, query, header"},
		{"unclosed brace", []*config.Backend{{Upstream: "u", Path: "/{id"}}, "not closed"},
		{"relative path", []*config.Backend{{Upstream: "u", Path: "x"}}, "must start with '/'"},
		{"bad field", []*config.Backend{{Upstream: "u", Path: "/", Fields: []string{"a[1]"}}}, `only "[]"`},
		{"array in dependency path", []*config.Backend{{Name: "a", Upstream: "u", Path: "/"}, {Upstream: "u", Path: "/{a.items[].id}", After: "a"}}, `cannot contain "[]"`},
		{"unknown path parameter", []*config.Backend{{Upstream: "u", Path: "/users/{uid}"}}, "not a parameter of the endpoint path"},
		{"pick removed by fields", []*config.Backend{{Upstream: "u", Path: "/", Fields: []string{"a"}, Pick: "b"}}, "not among fields"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewEndpoint(&config.BFF{Name: "m"}, &config.Endpoint{Name: "e", Path: "/profile/{id}", Backends: tc.backends}, Deps{Upstreams: rts})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
}

// TestMobileFeed runs the DESIGN.md mobile example end to end.
func TestMobileFeed(t *testing.T) {
	bothModes(t, func(t *testing.T, serve serveFunc) {
		var items []string
		for i := range 3 {
			items = append(items, fmt.Sprintf(`{"id":%d,"text":"post %d","created_at":"2026-11-28T00:00:00Z","author":{"id":"u%d","name":"N%d","avatar_url":"x"},"likes":1,"media":[],"tags":["t"]}`, 1<<62+i, i, i, i))
		}
		rts := serve(t, map[string]http.HandlerFunc{
			"users":         jsonHandler(`{"id":"u42","name":"Ann","handle":"ann","avatar_url":"https://a/ann.png","bio":"b","settings":{"x":1}}`),
			"posts":         jsonHandler(`{"items":[` + strings.Join(items, ",") + `],"next_cursor":"n"}`),
			"notifications": jsonHandler(`{"count":7}`),
			"ads":           jsonHandler(`{"slots":[{"id":1}],"tracking":{"p":"x"}}`),
		})
		// The DESIGN.md timeouts (800ms, ads 200ms) are raised here so that a
		// loaded test machine cannot turn the concurrent check into a partial
		// response.
		h := newEndpoint(t, &config.Endpoint{Name: "feed", Path: "/feed", Timeout: config.Duration(10 * time.Second), Backends: []*config.Backend{
			{Upstream: "users", Path: "/users/{claims.sub}", Into: "user", Fields: []string{"name", "avatar_url"}},
			{Upstream: "posts", Path: "/feed/{claims.sub}?limit=20", Into: "posts",
				Fields: []string{"items[].id", "items[].text", "items[].author.name"}, Rename: map[string]string{"items[].text": "body"}},
			{Upstream: "notifications", Path: "/count/{claims.sub}", Into: "unread", Pick: "count", Optional: true},
			{Name: "ads", Upstream: "ads", Path: "/slots?user={user.id}", After: "user", Into: "ads", Drop: []string{"tracking"}, Optional: true, Timeout: config.Duration(5 * time.Second)},
		}}, rts)
		rec := do(h, gatewayRequest("GET", "/mobile/feed"))
		want := `{"user":{"name":"Ann","avatar_url":"https://a/ann.png"},"posts":{"items":[` +
			`{"id":4611686018427387904,"body":"post 0","author":{"name":"N0"}},` +
			`{"id":4611686018427387905,"body":"post 1","author":{"name":"N1"}},` +
			`{"id":4611686018427387906,"body":"post 2","author":{"name":"N2"}}]},"unread":7,"ads":{"slots":[{"id":1}]}}`
		if rec.Code != 200 || rec.Body.String() != want {
			t.Fatalf("status %d\n got %s\nwant %s", rec.Code, rec.Body, want)
		}
		if !json.Valid(rec.Body.Bytes()) || rec.Header().Get("Portico-Partial") != "" {
			t.Fatal("invalid or partial response")
		}
		// The handler is reusable and safe for concurrent requests.
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				rec := do(h, gatewayRequest("GET", "/mobile/feed"))
				if !bytes.Equal(rec.Body.Bytes(), []byte(want)) {
					t.Errorf("concurrent body %s", rec.Body)
				}
			})
		}
		wg.Wait()
	})
}

// TestDeadlineFromInjectedClock checks that backend deadlines are the
// endpoint's remaining time by the injected clock, counted from when the
// gateway received the request.
func TestDeadlineFromInjectedClock(t *testing.T) {
	bothModes(t, func(t *testing.T, serve serveFunc) {
		rts := serve(t, map[string]http.HandlerFunc{
			"slow": func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() },
			"ok":   jsonHandler(`{"v":1}`),
		})
		start := time.Now()
		tests := []struct {
			name    string
			elapsed time.Duration // by the injected clock, since info.Start
			wantMax time.Duration // real time the request may take
			status  int
		}{
			// 1s endpoint, 700ms already spent: about 290ms remain (10ms
			// reserve), where the real clock would leave 990ms.
			{"remaining time", 700 * time.Millisecond, 650 * time.Millisecond, 200},
			// Already past the deadline: nothing can be waited for.
			{"already late", 2 * time.Second, 200 * time.Millisecond, 504},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				backends := []*config.Backend{{Upstream: "slow", Path: "/", Into: "slow", Optional: true}}
				if tc.status == 200 {
					backends = append(backends, &config.Backend{Upstream: "ok", Path: "/", Into: "ok"})
				} else {
					backends = append(backends, &config.Backend{Upstream: "ok", Path: "/", Into: "ok", After: "slow"})
					backends[0].Optional = false
				}
				now := func() time.Time { return start.Add(tc.elapsed) }
				h, err := NewEndpoint(&config.BFF{Name: "m"}, &config.Endpoint{Name: "e", Timeout: config.Duration(time.Second), Backends: backends},
					Deps{Upstreams: rts, Now: now})
				if err != nil {
					t.Fatal(err)
				}
				r := gatewayRequest("GET", "/e")
				reqctx.From(r.Context()).Start = start
				began := time.Now()
				rec := do(h, r)
				took := time.Since(began)
				if rec.Code != tc.status {
					t.Fatalf("status %d, want %d: %s", rec.Code, tc.status, rec.Body)
				}
				if took > tc.wantMax {
					t.Fatalf("took %v, want at most %v: the deadline ignored the injected clock", took, tc.wantMax)
				}
			})
		}
	})
}

// errRT fails every call with err, as upstream.Pool does when it sheds
// load, its breaker is open or its own attempt timeout passes.
type errRT struct{ err error }

func (e errRT) RoundTrip(*http.Request) (*http.Response, error) { return nil, e.err }

// Sent calls whose first target fails have their retries on their way
// together: each of six upstreams answers 503 from its first target, and
// its second target answers only once all six retries reached their
// targets (or after 3s). Retried in turn, each retry would wait for the
// one before it.
func TestSentRetriesOverlap(t *testing.T) {
	const n = 6
	var (
		arrived atomic.Int32
		all     = make(chan struct{})
	)
	waitAll := func(w http.ResponseWriter, r *http.Request) {
		if arrived.Add(1) == n {
			close(all)
		}
		select {
		case <-all:
		case <-time.After(3 * time.Second):
		}
		jsonHandler(`{"ok":true}`)(w, r)
	}
	var yaml strings.Builder
	yaml.WriteString("version: 1\nupstreams:\n")
	ep := &config.Endpoint{Name: "e", Timeout: config.Duration(10 * time.Second)}
	for i := range n {
		bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "overloaded", http.StatusServiceUnavailable)
		}))
		good := httptest.NewServer(http.HandlerFunc(waitAll))
		t.Cleanup(bad.Close)
		t.Cleanup(good.Close)
		// Round robin with equal weights picks the first target first.
		fmt.Fprintf(&yaml, "  u%d: {retries: 1, targets: [{url: %q}, {url: %q}]}\n", i, bad.URL, good.URL)
		ep.Backends = append(ep.Backends, &config.Backend{Upstream: fmt.Sprintf("u%d", i), Path: "/", Into: fmt.Sprintf("b%d", i)})
	}
	cfg, err := config.LoadBytes("pools.yaml", []byte(yaml.String()))
	if err != nil {
		t.Fatalf("%v\n%s", err, yaml.String())
	}
	h := newEndpoint(t, ep, applyPools(t, cfg.Upstreams))
	for _, b := range h.(*endpoint).backends {
		if b.sends == nil {
			t.Fatal("every backend must be sent: the test would not cover sent calls")
		}
	}
	rec := do(h, gatewayRequest("GET", "/e"))
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), `"b5":{"ok":true}`) {
		t.Fatalf("status %d body %s", rec.Code, rec.Body)
	}
	select {
	case <-all:
	default:
		t.Fatalf("only %d of %d retries were on their way before the first was answered", arrived.Load(), n)
	}
}

func TestPoolErrors(t *testing.T) {
	tests := []struct {
		err    error
		status int
		code   string
	}{
		{problem.New(http.StatusServiceUnavailable, "breaker_open", "the upstream's circuit breaker is open"), 502, "backend_breaker_open"},
		{problem.New(http.StatusServiceUnavailable, "upstream_overloaded", "too many requests in flight"), 502, "backend_overloaded"},
		{problem.Wrap(http.StatusGatewayTimeout, "upstream_timeout", "no answer", context.DeadlineExceeded), 504, "backend_timeout"},
		{io.ErrUnexpectedEOF, 502, "backend_error"},
	}
	for _, tc := range tests {
		t.Run(tc.code, func(t *testing.T) {
			h := newEndpoint(t, &config.Endpoint{Name: "e", Backends: []*config.Backend{{Upstream: "u", Path: "/", Into: "x"}}},
				map[string]http.RoundTripper{"u": errRT{tc.err}})
			rec := do(h, gatewayRequest("GET", "/e"))
			var p problemBody
			_ = json.Unmarshal(rec.Body.Bytes(), &p)
			if rec.Code != tc.status || p.Type != "urn:portico:problem:"+tc.code || !strings.HasPrefix(p.Detail, "backend x") {
				t.Fatalf("status %d %+v, want %d %s", rec.Code, p, tc.status, tc.code)
			}
		})
	}
}

// TestBufferReuse runs many concurrent requests mixing unshaped bodies
// (used in place), shaped ones and gzip, so that a pooled buffer handed out
// twice would show up as a corrupted response.
func TestBufferReuse(t *testing.T) {
	bothModes(t, func(t *testing.T, serve serveFunc) {
		big := `{"items":[` + strings.Repeat(`{"id":12345678901234567,"text":"some text here"},`, 60) + `{"id":1}]}`
		rts := serve(t, map[string]http.HandlerFunc{
			"raw":    jsonHandler("  \n" + big + "\n "),
			"shaped": jsonHandler(big),
			"small":  jsonHandler(`{"a":1}`),
			"gz": func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Encoding", "gzip")
				zw := gzip.NewWriter(w)
				_, _ = io.WriteString(zw, big)
				_ = zw.Close()
			},
		})
		h := newEndpoint(t, &config.Endpoint{Name: "e", Backends: []*config.Backend{
			{Upstream: "raw", Path: "/", Into: "raw"},
			{Upstream: "shaped", Path: "/", Into: "ids", Pick: "items[].id"},
			{Upstream: "small", Path: "/"},
			{Upstream: "gz", Path: "/", Into: "gz", Drop: []string{"items[].text"}},
		}}, rts)
		want := do(h, gatewayRequest("GET", "/e")).Body.String()
		if !json.Valid([]byte(want)) || !strings.HasPrefix(want, `{"raw":{"items":[{"id":12345678901234567,"text"`) || !strings.Contains(want, `"a":1`) {
			t.Fatalf("unexpected body %.200s", want)
		}
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				for range 10 {
					if got := do(h, gatewayRequest("GET", "/e")).Body.String(); got != want {
						t.Errorf("concurrent response differs: %.200s", got)
						return
					}
				}
			})
		}
		wg.Wait()
	})
}

// TestBodyCapCountsDecodedBytes: a small gzip body that inflates past the
// cap (a "zip bomb") fails like a large one, and so does a chunked body
// without Content-Length.
func TestBodyCapCountsDecodedBytes(t *testing.T) {
	bothModes(t, func(t *testing.T, serve serveFunc) {
		var gz bytes.Buffer
		zw := gzip.NewWriter(&gz)
		_, _ = zw.Write([]byte(`{"a":"`))
		_, _ = zw.Write(bytes.Repeat([]byte("x"), 1<<20))
		_, _ = zw.Write([]byte(`"}`))
		_ = zw.Close()
		rts := serve(t, map[string]http.HandlerFunc{
			"bomb": func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Encoding", "gzip")
				_, _ = w.Write(gz.Bytes())
			},
			"chunked": func(w http.ResponseWriter, r *http.Request) {
				for range 64 {
					_, _ = w.Write(bytes.Repeat([]byte(" "), 1024))
					w.(http.Flusher).Flush() // no Content-Length: chunked
				}
				_, _ = w.Write([]byte(`{}`))
			},
		})
		for _, up := range []string{"bomb", "chunked"} {
			t.Run(up, func(t *testing.T) {
				if up == "bomb" && gz.Len() > 16<<10 {
					t.Fatalf("the compressed body is %d bytes; it should be far below the cap", gz.Len())
				}
				h, err := NewEndpoint(&config.BFF{Name: "m", MaxBackendBodyBytes: 32 << 10},
					&config.Endpoint{Name: "e", Backends: []*config.Backend{{Upstream: up, Path: "/", Into: "x"}}}, Deps{Upstreams: rts})
				if err != nil {
					t.Fatal(err)
				}
				rec := do(h, gatewayRequest("GET", "/e"))
				if rec.Code != 502 || !strings.Contains(rec.Body.String(), "max_backend_body_bytes") {
					t.Fatalf("status %d body %s", rec.Code, rec.Body)
				}
			})
		}
	})
}

// TestConcurrentRequestsKeepTheirOwn: the per-backend request state kept
// from one request to the next (URL, header) never leaks between requests,
// also when a backend's call fails mid-flight (the optional slow one runs
// out of time on every request).
func TestConcurrentRequestsKeepTheirOwn(t *testing.T) {
	bothModes(t, func(t *testing.T, serve serveFunc) {
		echo := func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"rid":%q,"path":%q,"user":%q}`, r.Header.Get("X-Request-Id"), r.URL.Path, r.Header.Get("X-User-Id"))
		}
		rts := serve(t, map[string]http.HandlerFunc{
			"a": echo, "b": echo, "c": echo,
			"slow": func(w http.ResponseWriter, r *http.Request) {
				select {
				case <-time.After(time.Second):
				case <-r.Context().Done():
				}
				echo(w, r)
			},
		})
		var backends []*config.Backend
		for _, name := range []string{"a", "b", "c"} {
			backends = append(backends, &config.Backend{Upstream: name, Path: "/item/{claims.sub}", Into: name})
		}
		backends = append(backends, &config.Backend{Upstream: "slow", Path: "/item/{claims.sub}", Into: "slow",
			Optional: true, Timeout: config.Duration(5 * time.Millisecond)})
		h := newEndpoint(t, &config.Endpoint{Name: "e", Timeout: config.Duration(5 * time.Second), Backends: backends}, rts)
		var wg sync.WaitGroup
		for g := range 4 {
			wg.Go(func() {
				for i := range 25 {
					user := fmt.Sprintf("u%d-%d", g, i)
					r := gatewayRequest("GET", "/e")
					info := reqctx.From(r.Context())
					info.RequestID = "req-" + user
					info.Identity.Claims["sub"] = user
					r.Header.Set("X-User-Id", user)
					rec := do(h, r)
					one := fmt.Sprintf(`{"rid":"req-%s","path":"/item/%s","user":"%s"}`, user, user, user)
					want := `{"a":` + one + `,"b":` + one + `,"c":` + one + `}`
					if rec.Code != http.StatusOK || rec.Body.String() != want || rec.Header().Get("Portico-Partial") != "slow" {
						t.Errorf("status %d partial %q:\n%s\nwant\n%s", rec.Code, rec.Header().Get("Portico-Partial"), rec.Body, want)
						return
					}
				}
			})
		}
		wg.Wait()
	})
}
