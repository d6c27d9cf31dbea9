package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/portico-gw/portico/internal/config"
	"github.com/portico-gw/portico/internal/problem"
	"github.com/portico-gw/portico/internal/reqctx"
	"github.com/portico-gw/portico/internal/router"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// upstream starts an httptest backend and returns a Backend pointing at it.
func upstream(t testing.TB, name string, h http.HandlerFunc) Backend {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return backendFor(t, name, srv.URL)
}

func backendFor(t testing.TB, name, rawURL string) Backend {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return Backend{Name: name, Weight: 1, Transport: tr, Target: u}
}

// gateway is what internal/gateway does before the proxy runs: clean the
// path, match the route (for params) and store a reqctx.Info.
type gateway struct {
	pattern string // route pattern for params; "" means none
	info    atomic.Pointer[reqctx.Info]
}

func front(t testing.TB, cfg Config, gw *gateway) (*httptest.Server, *gateway) {
	t.Helper()
	return frontWith(t, cfg, gw, nil)
}

// frontWith is front with the gateway's http.Server set up by setup (nil:
// httptest's defaults) before it starts.
func frontWith(t testing.TB, cfg Config, gw *gateway, setup func(*http.Server)) (*httptest.Server, *gateway) {
	t.Helper()
	h, err := New(cfg, Deps{})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if gw == nil {
		gw = &gateway{}
	}
	var rt *router.Router[int]
	if gw.pattern != "" {
		rt, err = router.New([]router.Entry[int]{{Spec: router.Spec{Path: gw.pattern}}})
		if err != nil {
			t.Fatal(err)
		}
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		dec, esc, err := router.CleanPath(r.URL.EscapedPath())
		if err != nil {
			var pe *problem.Error
			errors.As(err, &pe)
			problem.Write(w, r, pe)
			return
		}
		router.SetPath(r.URL, dec, esc)
		info := &reqctx.Info{RequestID: "rid-1"}
		if rt != nil {
			_, info.Params, _ = rt.Match(r, esc, nil)
		}
		gw.info.Store(info)
		h.ServeHTTP(w, r.WithContext(reqctx.With(r.Context(), info)))
	}))
	if setup != nil {
		setup(srv.Config)
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv, gw
}

func client(t testing.TB) *http.Client {
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// seen records what an upstream received.
type seen struct {
	mu  sync.Mutex
	req *http.Request
	uri string
}

func (s *seen) handler(status int, body string, hdr ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.req, s.uri = r, r.RequestURI
		s.mu.Unlock()
		for i := 0; i+1 < len(hdr); i += 2 {
			w.Header().Add(hdr[i], hdr[i+1])
		}
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	}
}

func (s *seen) get() (*http.Request, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.req, s.uri
}

func do(t *testing.T, c *http.Client, method, target string, body io.Reader, hdr ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, target, body)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i] == "Host" {
			req.Host = hdr[i+1]
			continue
		}
		req.Header.Add(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("reading body: %v", err)
	}
	return resp, string(b)
}

func wantProblem(t *testing.T, resp *http.Response, body string, status int, code string) {
	t.Helper()
	if resp.StatusCode != status {
		t.Fatalf("status %d, want %d; body %s", resp.StatusCode, status, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("content type %q, want problem+json", ct)
	}
	var p struct {
		Type      string `json:"type"`
		Status    int    `json:"status"`
		RequestID string `json:"request_id"`
	}
	if err := json.Unmarshal([]byte(body), &p); err != nil {
		t.Fatalf("problem body %q: %v", body, err)
	}
	if p.Type != "urn:portico:problem:"+code || p.Status != status || p.RequestID != "rid-1" {
		t.Fatalf("problem %+v, want code %s status %d request_id rid-1", p, code, status)
	}
}

func TestForwardsRequest(t *testing.T) {
	var s seen
	be := upstream(t, "posts", s.handler(200, "hello", "X-Request-Id", "from-upstream", "Content-Type", "text/plain"))
	srv, gw := front(t, Config{Route: "r", Backends: []Backend{be}}, nil)
	c := client(t)

	resp, body := do(t, c, "GET", srv.URL+"/a//b/./c?x=1&y=%20z", nil, "X-Request-Id", "client-id", "X-Custom", "v")
	if resp.StatusCode != 200 || body != "hello" {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
	r, uri := s.get()
	if uri != "/a/b/c?x=1&y=%20z" {
		t.Fatalf("upstream saw %q", uri)
	}
	if r.Host != be.Target.Host {
		t.Fatalf("upstream Host %q, want the target's %q", r.Host, be.Target.Host)
	}
	if got := r.Header.Values("X-Request-Id"); len(got) != 1 || got[0] != "rid-1" {
		t.Fatalf("upstream X-Request-Id %q, want [rid-1]", got)
	}
	if r.Header.Get("X-Custom") != "v" {
		t.Fatalf("custom header lost")
	}
	if got := resp.Header.Values("X-Request-Id"); len(got) != 1 || got[0] != "rid-1" {
		t.Fatalf("response X-Request-Id %q, want [rid-1]", got)
	}
	if got := gw.info.Load().Upstream; got != "posts" {
		t.Fatalf("Info.Upstream %q", got)
	}
	if r.Header.Get("X-Forwarded-Proto") != "http" || r.Header.Get("X-Forwarded-Host") != strings.TrimPrefix(srv.URL, "http://") {
		t.Fatalf("forwarded proto/host %q %q", r.Header.Get("X-Forwarded-Proto"), r.Header.Get("X-Forwarded-Host"))
	}
}

func TestRequestIDNotDuplicated(t *testing.T) {
	var s seen
	be := upstream(t, "u", s.handler(200, "", "X-Request-Id", "rid-1"))
	h, err := New(Config{Backends: []Backend{be}}, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The gateway's request-id stage already answered with the id.
		w.Header().Set("X-Request-Id", "rid-1")
		h.ServeHTTP(w, r.WithContext(reqctx.With(r.Context(), &reqctx.Info{RequestID: "rid-1"})))
	}))
	defer srv.Close()
	resp, _ := do(t, client(t), "GET", srv.URL+"/", nil)
	if got := resp.Header.Values("X-Request-Id"); len(got) != 1 || got[0] != "rid-1" {
		t.Fatalf("X-Request-Id %q, want exactly [rid-1]", got)
	}
}

func TestXForwardedFor(t *testing.T) {
	tests := []struct {
		name            string
		trusted         []netip.Prefix
		in              []string // inbound X-Forwarded-For lines
		inProto, inHost string
		want            string
		wantProto       string
		wantHost        string
	}{
		{"no chain, untrusted", nil, nil, "", "", "127.0.0.1", "http", ""},
		{"chain from untrusted peer is replaced", []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
			[]string{"1.1.1.1, 2.2.2.2"}, "https", "evil.test", "127.0.0.1", "http", ""},
		{"chain from trusted peer is kept", []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
			[]string{"1.1.1.1, 2.2.2.2"}, "https", "public.test", "1.1.1.1, 2.2.2.2, 127.0.0.1", "https", "public.test"},
		{"several lines are joined", []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")},
			[]string{"1.1.1.1", "2.2.2.2"}, "", "", "1.1.1.1, 2.2.2.2, 127.0.0.1", "http", ""},
		{"trusted peer without chain", []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
			nil, "", "", "127.0.0.1", "http", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var s seen
			be := upstream(t, "u", s.handler(200, ""))
			srv, _ := front(t, Config{Backends: []Backend{be}, TrustedProxies: tc.trusted}, nil)
			var hdr []string
			for _, v := range tc.in {
				hdr = append(hdr, "X-Forwarded-For", v)
			}
			if tc.inProto != "" {
				hdr = append(hdr, "X-Forwarded-Proto", tc.inProto, "X-Forwarded-Host", tc.inHost)
			}
			hdr = append(hdr, "Forwarded", "for=6.6.6.6")
			do(t, client(t), "GET", srv.URL+"/", nil, hdr...)
			r, _ := s.get()
			if got := r.Header.Values("X-Forwarded-For"); len(got) != 1 || got[0] != tc.want {
				t.Fatalf("X-Forwarded-For %q, want %q", got, tc.want)
			}
			if got := r.Header.Get("X-Forwarded-Proto"); got != tc.wantProto {
				t.Fatalf("X-Forwarded-Proto %q, want %q", got, tc.wantProto)
			}
			wantHost := tc.wantHost
			if wantHost == "" {
				wantHost = strings.TrimPrefix(srv.URL, "http://")
			}
			if got := r.Header.Get("X-Forwarded-Host"); got != wantHost {
				t.Fatalf("X-Forwarded-Host %q, want %q", got, wantHost)
			}
			if r.Header.Get("Forwarded") != "" {
				t.Fatalf("client's Forwarded header was passed on")
			}
		})
	}
}

func TestHopByHopRemovedBothWays(t *testing.T) {
	var s seen
	be := upstream(t, "u", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.req = r
		s.mu.Unlock()
		h := w.Header()
		h.Set("Connection", "X-Upstream-Hop")
		h.Set("X-Upstream-Hop", "secret")
		h.Set("Keep-Alive", "timeout=5")
		h.Set("Proxy-Authenticate", "Basic")
		h.Set("Upgrade", "foo")
		h.Set("X-End-To-End", "kept")
		w.WriteHeader(200)
	})
	srv, _ := front(t, Config{Backends: []Backend{be}}, nil)
	resp, _ := do(t, client(t), "GET", srv.URL+"/", nil,
		"Connection", "X-Client-Hop, keep-alive", "X-Client-Hop", "secret", "Keep-Alive", "timeout=5",
		"Proxy-Authorization", "Basic abc", "Te", "gzip", "X-End-To-End", "kept")
	r, _ := s.get()
	for _, k := range []string{"X-Client-Hop", "Keep-Alive", "Proxy-Authorization", "Te", "Upgrade"} {
		if v := r.Header.Get(k); v != "" {
			t.Errorf("upstream received hop-by-hop %s: %q", k, v)
		}
	}
	if r.Header.Get("X-End-To-End") != "kept" {
		t.Errorf("end-to-end request header lost")
	}
	for _, k := range []string{"X-Upstream-Hop", "Keep-Alive", "Proxy-Authenticate", "Upgrade"} {
		if v := resp.Header.Get(k); v != "" {
			t.Errorf("client received hop-by-hop %s: %q", k, v)
		}
	}
	if resp.Header.Get("X-End-To-End") != "kept" {
		t.Errorf("end-to-end response header lost")
	}
}

func TestPathRewrite(t *testing.T) {
	tests := []struct {
		name, pattern string
		rewrite       *config.Rewrite
		target        string
		basePath      string
		want          string
	}{
		{"no rewrite keeps escaping", "/api/{id}", nil, "/api/a%2Fb?q=1", "", "/api/a%2Fb?q=1"},
		{"no rewrite unicode", "/*", nil, "/caf%C3%A9/%7Euser", "", "/caf%C3%A9/%7Euser"},
		{"template with param", "/api/posts/{id}", &config.Rewrite{Path: "/v1/posts/{id}"}, "/api/posts/42?x=y", "", "/v1/posts/42?x=y"},
		{"template param with slash", "/api/posts/{id}", &config.Rewrite{Path: "/v1/p/{id}/raw"}, "/api/posts/a%2Fb", "", "/v1/p/a%2Fb/raw"},
		{"template with rest", "/api/*", &config.Rewrite{Path: "/v2/{*}"}, "/api/x/y%2Fz", "", "/v2/x/y%2Fz"},
		{"template with rest empty", "/api/*", &config.Rewrite{Path: "/v2/{*}"}, "/api", "", "/v2/"},
		{"strip prefix", "/api/*", &config.Rewrite{StripPrefix: "/api"}, "/api/x/y?k=v", "", "/x/y?k=v"},
		{"strip prefix to root", "/api/*", &config.Rewrite{StripPrefix: "/api/"}, "/api", "", "/"},
		{"strip prefix encoded", "/api/*", &config.Rewrite{StripPrefix: "/api"}, "/%61pi/a%2Fb", "", "/a%2Fb"},
		{"strip prefix no match", "/*", &config.Rewrite{StripPrefix: "/api"}, "/apix/y", "", "/apix/y"},
		{"target base path", "/*", nil, "/x", "/base/", "/base/x"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var s seen
			be := upstream(t, "u", s.handler(200, ""))
			be.Target.Path = tc.basePath
			srv, _ := front(t, Config{Backends: []Backend{be}, Rewrite: tc.rewrite}, &gateway{pattern: tc.pattern})
			resp, body := do(t, client(t), "GET", srv.URL+tc.target, nil)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d %s", resp.StatusCode, body)
			}
			if _, uri := s.get(); uri != tc.want {
				t.Fatalf("upstream saw %q, want %q", uri, tc.want)
			}
		})
	}
}

func TestHeaderRules(t *testing.T) {
	var s seen
	be := upstream(t, "u", s.handler(200, "", "Server", "upstream/1.0", "X-Frame-Options", "SAMEORIGIN", "X-Other", "1"))
	srv, _ := front(t, Config{
		Backends:        []Backend{be},
		RequestHeaders:  &config.HeaderRules{Set: map[string]string{"x-from": "portico"}, Remove: []string{"cookie"}},
		ResponseHeaders: &config.HeaderRules{Set: map[string]string{"X-Frame-Options": "DENY"}, Remove: []string{"server"}},
	}, nil)
	resp, _ := do(t, client(t), "GET", srv.URL+"/", nil, "Cookie", "a=b", "X-From", "client")
	r, _ := s.get()
	if got := r.Header.Values("X-From"); len(got) != 1 || got[0] != "portico" {
		t.Fatalf("X-From %q", got)
	}
	if r.Header.Get("Cookie") != "" {
		t.Fatalf("Cookie was forwarded")
	}
	if got := resp.Header.Values("X-Frame-Options"); len(got) != 1 || got[0] != "DENY" {
		t.Fatalf("X-Frame-Options %q", got)
	}
	if resp.Header.Get("Server") != "" || resp.Header.Get("X-Other") != "1" {
		t.Fatalf("response headers %v", resp.Header)
	}

	// Rules apply to the gateway's own errors too.
	dead := backendFor(t, "dead", "http://"+closedAddr(t))
	srv2, _ := front(t, Config{Backends: []Backend{dead},
		ResponseHeaders: &config.HeaderRules{Set: map[string]string{"X-Frame-Options": "DENY"}}}, nil)
	resp, _ = do(t, client(t), "GET", srv2.URL+"/", nil)
	if resp.StatusCode != 502 || resp.Header.Get("X-Frame-Options") != "DENY" {
		t.Fatalf("error response %d %v", resp.StatusCode, resp.Header)
	}
}

func TestStripUpstreamCORS(t *testing.T) {
	for _, strip := range []bool{false, true} {
		t.Run(fmt.Sprint(strip), func(t *testing.T) {
			var s seen
			be := upstream(t, "u", s.handler(200, "", "Access-Control-Allow-Origin", "*", "Access-Control-Max-Age", "5", "X-Kept", "1"))
			srv, _ := front(t, Config{Backends: []Backend{be}, StripUpstreamCORS: strip}, nil)
			resp, _ := do(t, client(t), "GET", srv.URL+"/", nil)
			if got := resp.Header.Get("Access-Control-Allow-Origin") != ""; got == strip {
				t.Fatalf("strip=%v but Access-Control-Allow-Origin present=%v", strip, got)
			}
			if resp.Header.Get("X-Kept") != "1" {
				t.Fatal("other headers lost")
			}
		})
	}
}

func TestPreserveHost(t *testing.T) {
	for _, preserve := range []bool{false, true} {
		t.Run(fmt.Sprint(preserve), func(t *testing.T) {
			var s seen
			be := upstream(t, "u", s.handler(200, ""))
			be.PreserveHost = preserve
			srv, _ := front(t, Config{Backends: []Backend{be}}, nil)
			do(t, client(t), "GET", srv.URL+"/", nil, "Host", "api.example.com")
			r, _ := s.get()
			want := be.Target.Host
			if preserve {
				want = "api.example.com"
			}
			if r.Host != want {
				t.Fatalf("upstream Host %q, want %q", r.Host, want)
			}
		})
	}
}

func TestWeightedSplit(t *testing.T) {
	var hits [2]atomic.Int64
	a := upstream(t, "a", func(w http.ResponseWriter, r *http.Request) { hits[0].Add(1) })
	b := upstream(t, "b", func(w http.ResponseWriter, r *http.Request) { hits[1].Add(1) })
	a.Weight, b.Weight = 3, 1
	srv, gw := front(t, Config{Backends: []Backend{a, b}}, nil)
	c := client(t)
	const n = 400
	names := map[string]int{}
	for i := 0; i < n; i++ {
		do(t, c, "GET", srv.URL+"/", nil)
		names[gw.info.Load().Upstream]++
	}
	share := float64(hits[0].Load()) / n
	// Expected 0.75, standard deviation about 0.022.
	if share < 0.62 || share > 0.88 || hits[1].Load() == 0 {
		t.Fatalf("a got %.2f of the requests (a=%d b=%d), want about 0.75", share, hits[0].Load(), hits[1].Load())
	}
	if int64(names["a"]) != hits[0].Load() || int64(names["b"]) != hits[1].Load() {
		t.Fatalf("Info.Upstream counts %v disagree with hits %d/%d", names, hits[0].Load(), hits[1].Load())
	}
}

func TestRouteTimeout(t *testing.T) {
	release := make(chan struct{})
	be := upstream(t, "slow", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	})
	defer close(release)
	srv, _ := front(t, Config{Backends: []Backend{be}, Timeout: config.Duration(50 * time.Millisecond)}, nil)
	start := time.Now()
	resp, body := do(t, client(t), "GET", srv.URL+"/", nil)
	wantProblem(t, resp, body, http.StatusGatewayTimeout, "route_timeout")
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("took %v", d)
	}
}

func TestRouteTimeoutDoesNotCutBody(t *testing.T) {
	const timeout = 30 * time.Millisecond
	be := upstream(t, "u", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		_, _ = io.WriteString(w, "first,")
		w.(http.Flusher).Flush()
		// The body outlives the route timeout, which covers headers only.
		select {
		case <-time.After(4 * timeout):
		case <-r.Context().Done():
			return
		}
		_, _ = io.WriteString(w, "second")
	})
	srv, _ := front(t, Config{Backends: []Backend{be}, Timeout: config.Duration(timeout)}, nil)
	resp, body := do(t, client(t), "GET", srv.URL+"/", nil)
	if resp.StatusCode != 200 || body != "first,second" {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
}

// closedAddr returns an address nothing listens on.
func closedAddr(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func TestDialFailure(t *testing.T) {
	be := backendFor(t, "dead", "http://"+closedAddr(t))
	srv, _ := front(t, Config{Backends: []Backend{be}}, nil)
	resp, body := do(t, client(t), "GET", srv.URL+"/", nil)
	wantProblem(t, resp, body, http.StatusBadGateway, "upstream_unreachable")
}

func TestBodyLimit(t *testing.T) {
	var calls atomic.Int64
	var got atomic.Int64
	be := upstream(t, "u", func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		n, _ := io.Copy(io.Discard, r.Body)
		got.Store(n)
	})
	srv, _ := front(t, Config{Backends: []Backend{be}, MaxBodyBytes: 1000}, nil)
	c := client(t)

	t.Run("content-length too large", func(t *testing.T) {
		resp, body := do(t, c, "POST", srv.URL+"/", strings.NewReader(strings.Repeat("x", 1001)))
		wantProblem(t, resp, body, http.StatusRequestEntityTooLarge, "body_too_large")
		if calls.Load() != 0 {
			t.Fatalf("upstream was contacted")
		}
	})
	t.Run("chunked within limit", func(t *testing.T) {
		resp, body := do(t, c, "POST", srv.URL+"/", io.MultiReader(strings.NewReader(strings.Repeat("x", 1000))))
		if resp.StatusCode != 200 || got.Load() != 1000 {
			t.Fatalf("status %d %s, upstream got %d bytes", resp.StatusCode, body, got.Load())
		}
	})
	t.Run("chunked grows too large", func(t *testing.T) {
		// The client keeps sending after the 413: the rest is discarded,
		// and the server must not trip over its own reads (net/http logs
		// "panic serving ... invalid concurrent Body.Read call").
		var logs lockedBuffer
		srv, _ := frontWith(t, Config{Backends: []Backend{be}, MaxBodyBytes: 1000}, nil, func(s *http.Server) {
			s.ErrorLog = log.New(&logs, "", 0)
		})
		defer func() {
			srv.Close()
			if strings.Contains(logs.String(), "panic") {
				t.Errorf("server log: %s", logs.String())
			}
		}()
		// Several times: the misstep is a race.
		for range 8 {
			pr, pw := io.Pipe()
			go func() {
				chunk := []byte(strings.Repeat("y", 300))
				for i := 0; i < 100; i++ {
					if _, err := pw.Write(chunk); err != nil {
						return
					}
				}
				pw.Close()
			}()
			resp, body := do(t, c, "POST", srv.URL+"/", pr)
			pr.Close()
			wantProblem(t, resp, body, http.StatusRequestEntityTooLarge, "body_too_large")
		}
	})
}

// pacedReader produces n bytes and, after the first mark bytes, waits until
// the other side reports that it received data: a proxy that buffered the
// whole body before forwarding it would never let that happen.
type pacedReader struct {
	n, sent, mark int64
	received      <-chan struct{}
}

func (p *pacedReader) Read(b []byte) (int, error) {
	if p.sent >= p.n {
		return 0, io.EOF
	}
	if p.sent >= p.mark && p.received != nil {
		select {
		case <-p.received:
			p.received = nil
		case <-time.After(20 * time.Second):
			return 0, errors.New("the other side received nothing: the body is being buffered")
		}
	}
	if int64(len(b)) > p.n-p.sent {
		b = b[:p.n-p.sent]
	}
	for i := range b {
		b[i] = byte(p.sent + int64(i))
	}
	p.sent += int64(len(b))
	return len(b), nil
}

// countTo reads r to the end, closing reached once mark bytes arrived.
func countTo(r io.Reader, mark int64, reached chan<- struct{}) (int64, error) {
	buf := make([]byte, 64<<10)
	var n int64
	for {
		k, err := r.Read(buf)
		n += int64(k)
		if n >= mark && reached != nil {
			close(reached)
			reached = nil
		}
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

func TestStreamsRequestBody(t *testing.T) {
	const size, mark = 64 << 20, 1 << 20
	reached := make(chan struct{})
	var got atomic.Int64
	be := upstream(t, "u", func(w http.ResponseWriter, r *http.Request) {
		n, err := countTo(r.Body, mark/2, reached)
		got.Store(n)
		if err != nil {
			w.WriteHeader(500)
		}
	})
	srv, _ := front(t, Config{Backends: []Backend{be}, MaxBodyBytes: 1 << 30}, nil)
	resp, body := do(t, client(t), "PUT", srv.URL+"/", &pacedReader{n: size, mark: mark, received: reached})
	if resp.StatusCode != 200 || got.Load() != size {
		t.Fatalf("status %d %s; upstream got %d of %d bytes", resp.StatusCode, body, got.Load(), size)
	}
}

func TestStreamsResponseBody(t *testing.T) {
	const size, mark = 64 << 20, 1 << 20
	reached := make(chan struct{})
	be := upstream(t, "u", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		_, _ = io.Copy(w, &pacedReader{n: size, mark: mark, received: reached})
	})
	srv, _ := front(t, Config{Backends: []Backend{be}}, nil)
	resp, err := client(t).Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	n, err := countTo(resp.Body, mark/2, reached)
	if err != nil || n != size {
		t.Fatalf("read %d of %d bytes: %v", n, size, err)
	}
}

func TestServerSentEventsFlushImmediately(t *testing.T) {
	next := make(chan struct{})
	be := upstream(t, "u", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, "data: one\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-next:
		case <-r.Context().Done():
			return
		}
		_, _ = io.WriteString(w, "data: two\n\n")
	})
	srv, _ := front(t, Config{Backends: []Backend{be}}, nil)
	resp, err := client(t).Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	line, err := br.ReadString('\n')
	if err != nil || line != "data: one\n" {
		t.Fatalf("first event %q, %v", line, err)
	}
	close(next) // the upstream sends the rest only after we saw the first event
	rest, err := io.ReadAll(br)
	if err != nil || string(rest) != "\ndata: two\n\n" {
		t.Fatalf("rest %q, %v", rest, err)
	}
}

// wsUpstream answers an Upgrade with 101 on the hijacked connection and
// then echoes raw bytes; a plain request gets 200 "plain".
func wsUpstream(t *testing.T) Backend {
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	return upstream(t, "ws", func(w http.ResponseWriter, r *http.Request) {
		if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
			_, _ = io.WriteString(w, "plain")
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		wg.Add(1)
		defer wg.Done()
		defer conn.Close()
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		_ = brw.Flush()
		_, _ = io.Copy(conn, brw)
	})
}

func upgradeRequest(t *testing.T, addr string) (net.Conn, *bufio.Reader, *http.Response) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	_, _ = io.WriteString(conn, "GET /chat HTTP/1.1\r\nHost: gw.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	return conn, br, resp
}

func TestWebSocketPassThrough(t *testing.T) {
	const timeout = 50 * time.Millisecond
	srv, _ := front(t, Config{Backends: []Backend{wsUpstream(t)}, WebSocket: true, Timeout: config.Duration(timeout)}, nil)
	conn, br, resp := upgradeRequest(t, srv.Listener.Addr().String())
	defer conn.Close()
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Upgrade") != "websocket" {
		t.Fatalf("status %d, Upgrade %q", resp.StatusCode, resp.Header.Get("Upgrade"))
	}
	// A masked text frame "ping" as a browser would send it, then raw bytes:
	// the tunnel carries whatever bytes either side writes.
	frame := []byte{0x81, 0x84, 1, 2, 3, 4, 'p' ^ 1, 'i' ^ 2, 'n' ^ 3, 'g' ^ 4}
	for i, msg := range [][]byte{frame, []byte("raw bytes \x00\xff")} {
		if i == 1 {
			// The route timeout covers the wait for the 101 only; the
			// tunnel outlives it.
			<-time.After(3 * timeout)
		}
		wantEcho(t, conn, br, msg)
	}
}

func TestWebSocketRefusedWhenOff(t *testing.T) {
	srv, _ := front(t, Config{Backends: []Backend{wsUpstream(t)}}, nil)
	conn, br, resp := upgradeRequest(t, srv.Listener.Addr().String())
	defer conn.Close()
	body, _ := io.ReadAll(io.LimitReader(br, 5))
	if resp.StatusCode != 200 || string(body) != "plain" {
		t.Fatalf("status %d body %q: the upgrade was not stripped", resp.StatusCode, body)
	}
}

func TestOnlyWebSocketUpgradesPass(t *testing.T) {
	var s seen
	be := upstream(t, "u", s.handler(200, "plain"))
	srv, _ := front(t, Config{Backends: []Backend{be}, WebSocket: true}, nil)
	resp, body := do(t, client(t), "GET", srv.URL+"/", nil, "Connection", "Upgrade", "Upgrade", "h2c")
	r, _ := s.get()
	if resp.StatusCode != 200 || body != "plain" || r.Header.Get("Upgrade") != "" || r.Header.Get("Connection") != "" {
		t.Fatalf("status %d %q; upstream saw Upgrade %q Connection %q", resp.StatusCode, body, r.Header.Get("Upgrade"), r.Header.Get("Connection"))
	}
}

func TestClientGoneIsNotAnUpstreamError(t *testing.T) {
	started := make(chan struct{})
	be := upstream(t, "u", func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-r.Context().Done()
	})
	h, err := New(Config{Backends: []Backend{be}}, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	req := httptest.NewRequest("GET", "/", nil).WithContext(ctx)
	rec := httptest.NewRecorder()
	done := make(chan struct{})
	go func() {
		h.ServeHTTP(rec, req)
		close(done)
	}()
	<-started
	cancel()
	<-done
	if rec.Code != problem.StatusClientClosed {
		t.Fatalf("status %d, want %d", rec.Code, problem.StatusClientClosed)
	}
}

func TestNewRejects(t *testing.T) {
	u, _ := url.Parse("http://127.0.0.1:1")
	ok := Backend{Name: "u", Weight: 1, Transport: http.DefaultTransport, Target: u}
	for name, cfg := range map[string]Config{
		"no backends":       {},
		"no transport":      {Backends: []Backend{{Name: "u", Target: u}}},
		"relative target":   {Backends: []Backend{{Name: "u", Transport: http.DefaultTransport, Target: &url.URL{Path: "/x"}}}},
		"zero weight split": {Backends: []Backend{ok, {Name: "v", Transport: http.DefaultTransport, Target: u}}},
		"both rewrites":     {Backends: []Backend{ok}, Rewrite: &config.Rewrite{Path: "/a", StripPrefix: "/b"}},
		"bad template":      {Backends: []Backend{ok}, Rewrite: &config.Rewrite{Path: "/a/{id"}},
		"relative template": {Backends: []Backend{ok}, Rewrite: &config.Rewrite{Path: "a/{id}"}},
		"bad strip":         {Backends: []Backend{ok}, Rewrite: &config.Rewrite{StripPrefix: "/"}},
		"strip with dots":   {Backends: []Backend{ok}, Rewrite: &config.Rewrite{StripPrefix: "/a/../b"}},
		"bad header name":   {Backends: []Backend{ok}, RequestHeaders: &config.HeaderRules{Set: map[string]string{"a b": "x"}}},
		"header injection":  {Backends: []Backend{ok}, ResponseHeaders: &config.HeaderRules{Set: map[string]string{"X": "a\r\nB: c"}}},
		"negative timeout":  {Backends: []Backend{ok}, Timeout: -1},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := New(cfg, Deps{}); err == nil {
				t.Fatal("New succeeded, want an error")
			}
		})
	}
}
