package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/portico-gw/portico/internal/config"
)

// harness is a gateway serving on real loopback listeners.
type harness struct {
	gw     *Gateway
	base   string // public listener, http://127.0.0.1:PORT
	admin  string
	cancel context.CancelFunc
	done   chan error
	dir    string
}

// start writes yaml to a config file, loads it with the real loader and
// serves it on 127.0.0.1:0 listeners.
func start(t *testing.T, yaml string) *harness {
	t.Helper()
	return startWith(t, yaml, Options{})
}

// startWith is start with opts (a Logger, an AccessLog to read); Paths is
// set here, and AccessLog defaults to io.Discard.
func startWith(t *testing.T, yaml string, opts Options) *harness {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "gateway.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	opts.Paths = []string{path}
	if opts.AccessLog == nil {
		opts.AccessLog = io.Discard
	}
	gw, err := New(cfg, opts)
	if err != nil {
		t.Fatalf("new gateway: %v", err)
	}
	ls, err := gw.Listen()
	if err != nil {
		gw.Close()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &harness{gw: gw, base: "http://" + ls.Public.Addr().String(), admin: "http://" + ls.Admin.Addr().String(),
		cancel: cancel, done: make(chan error, 1), dir: dir}
	go func() { h.done <- gw.Serve(ctx, ls) }()
	t.Cleanup(func() { h.stop(t) })
	return h
}

func (h *harness) stop(t *testing.T) {
	if h.cancel == nil {
		return
	}
	h.cancel()
	h.cancel = nil
	select {
	case err := <-h.done:
		if err != nil {
			t.Errorf("serve: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Error("serve did not return after shutdown")
	}
	h.gw.Close()
}

// rewrite replaces the config file and reloads through the admin API.
func (h *harness) rewrite(t *testing.T, yaml string) *http.Response {
	t.Helper()
	if err := os.WriteFile(filepath.Join(h.dir, "gateway.yaml"), []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Post(h.admin+"/admin/reload", "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

const baseConfig = `version: 1
server: {listen: "127.0.0.1:0", shutdown_timeout: 5s}
admin: {listen: "127.0.0.1:0"}
logging: {access_log: false}
upstreams:
  echo: {targets: [{url: "%s"}]}
routes:
  - name: echo
    match: {path: "/api/*"}
    upstream: echo
    public: true
`

// echoUpstream answers with what it received, as JSON.
func echoUpstream(t *testing.T, name string) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if d, err := time.ParseDuration(r.URL.Query().Get("sleep")); err == nil {
			time.Sleep(d)
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{
			"upstream": name, "path": r.URL.EscapedPath(), "request_id": r.Header.Get("X-Request-Id"),
			"xff": r.Header.Get("X-Forwarded-For"), "host": r.Host,
		})
	}))
	t.Cleanup(s.Close)
	return s
}

type echoed struct {
	Upstream  string `json:"upstream"`
	Path      string `json:"path"`
	RequestID string `json:"request_id"`
	XFF       string `json:"xff"`
}

func getJSON(t *testing.T, url string, hdr map[string]string, v any) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	for k, val := range hdr {
		req.Header.Set(k, val)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if v != nil {
		if err := json.Unmarshal(body, v); err != nil {
			t.Fatalf("GET %s: %d %q: %v", url, resp.StatusCode, body, err)
		}
	}
	return resp
}

func TestProxyRequestIDAndErrors(t *testing.T) {
	up := echoUpstream(t, "a")
	h := start(t, fmt.Sprintf(baseConfig, up.URL))

	var e echoed
	resp := getJSON(t, h.base+"/api/x?q=1", nil, &e)
	if resp.StatusCode != 200 || e.Path != "/api/x" {
		t.Fatalf("proxied: %d %+v", resp.StatusCode, e)
	}
	if id := resp.Header.Get("X-Request-Id"); id == "" || id != e.RequestID {
		t.Errorf("generated request id %q not sent upstream (%q)", id, e.RequestID)
	}
	resp = getJSON(t, h.base+"/api/x", map[string]string{"X-Request-Id": "client-id.1"}, &e)
	if resp.Header.Get("X-Request-Id") != "client-id.1" || e.RequestID != "client-id.1" {
		t.Errorf("valid client request id not kept: %q / %q", resp.Header.Get("X-Request-Id"), e.RequestID)
	}
	resp = getJSON(t, h.base+"/api/x", map[string]string{"X-Request-Id": "bad id <script>"}, &e)
	if got := resp.Header.Get("X-Request-Id"); got == "bad id <script>" || e.RequestID != got {
		t.Errorf("invalid client request id kept: %q", got)
	}

	var p map[string]any
	resp = getJSON(t, h.base+"/nowhere", nil, &p)
	if resp.StatusCode != 404 || resp.Header.Get("Content-Type") != "application/problem+json" ||
		p["status"] != float64(404) || p["request_id"] != resp.Header.Get("X-Request-Id") {
		t.Errorf("404: %d %s %v", resp.StatusCode, resp.Header.Get("Content-Type"), p)
	}
}

func TestMethodNotAllowed(t *testing.T) {
	up := echoUpstream(t, "a")
	h := start(t, fmt.Sprintf(`version: 1
server: {listen: "127.0.0.1:0"}
admin: {listen: "127.0.0.1:0"}
logging: {access_log: false}
upstreams:
  echo: {targets: [{url: "%s"}]}
routes:
  - name: read
    match: {path: "/items/{id}", methods: [GET, PUT]}
    upstream: echo
    public: true
`, up.URL))
	req, _ := http.NewRequest(http.MethodDelete, h.base+"/items/7", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 405 || !strings.Contains(resp.Header.Get("Allow"), "PUT") {
		t.Fatalf("DELETE: %d Allow=%q", resp.StatusCode, resp.Header.Get("Allow"))
	}
}

// TestPathTricks sends paths that try to dodge a route: every path is
// cleaned before matching, so a trick either lands on the route its cleaned
// path names (with that route's authentication) or fails; no upstream ever
// receives a dot segment.
func TestPathTricks(t *testing.T) {
	public := echoUpstream(t, "public")
	internal := echoUpstream(t, "internal")
	h := start(t, fmt.Sprintf(`version: 1
server: {listen: "127.0.0.1:0"}
admin: {listen: "127.0.0.1:0"}
logging: {access_log: false}
upstreams:
  public: {targets: [{url: "%s"}]}
  internal: {targets: [{url: "%s"}]}
auth:
  keys: {type: api_key, keys: [{id: ops, sha256: "528bb5eff2608538198b2bb67dc8e62f28dad4bed53603338d9182216da24063"}]}
routes:
  - name: public
    match: {path: "/public/*"}
    upstream: public
    public: true
  - name: internal
    match: {path: "/internal/*"}
    upstream: internal
    auth: [keys]
`, public.URL, internal.URL))
	cases := []struct {
		path     string
		status   int
		upstream string
		upPath   string
	}{
		// Climbing out of /public lands on /internal, which wants a key.
		{"/public/../internal/x", 401, "", ""},
		{"/public/%2e%2e/internal/x", 401, "", ""},
		{"/public/%2E%2e/%2e%2E/internal/x", 401, "", ""},
		{"/public/a/../../internal/x", 401, "", ""},
		{"/public/..%2finternal/x", 200, "public", "/public/..%2finternal/x"},
		{"/public//a//b", 200, "public", "/public/a/b"},
		{"/public/a%2Fb", 200, "public", "/public/a%2Fb"},
		{"/public/it's(1)*!", 200, "public", "/public/it's(1)*!"}, // not re-escaped: a signed path still matches
		{"/public/./a/./b/..", 200, "public", "/public/a/"},
		{"/internal/../public/y", 200, "public", "/public/y"},
		{"/PUBLIC/x", 404, "", ""},
		{"/public/..;/internal/x", 400, "", ""},
		{"/public/%00", 400, "", ""},
	}
	for _, c := range cases {
		t.Run(c.path, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodGet, h.base, nil)
			req.URL.Opaque = c.path // sent exactly as written
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != c.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, c.status, body)
			}
			if c.upstream == "" {
				if resp.Header.Get("Content-Type") != "application/problem+json" {
					t.Errorf("want problem+json, got %q", resp.Header.Get("Content-Type"))
				}
				return
			}
			var e echoed
			if err := json.Unmarshal(body, &e); err != nil {
				t.Fatal(err)
			}
			if e.Upstream != c.upstream || e.Path != c.upPath {
				t.Errorf("reached %s%s, want %s%s", e.Upstream, e.Path, c.upstream, c.upPath)
			}
		})
	}
	// Invalid escapes never get past the HTTP server's own parser (a plain 400).
	resp := rawExchangeStatus(t, strings.TrimPrefix(h.base, "http://"), "GET /public/%zz HTTP/1.1\r\nHost: gw\r\n\r\n")
	if !strings.HasPrefix(resp, "HTTP/1.1 400") {
		t.Errorf("invalid escape: %q", resp)
	}
}

// TestReloadUnderTraffic swaps configs while clients send requests: none
// may fail, and each response comes from one config or the other.
func TestReloadUnderTraffic(t *testing.T) {
	a := echoUpstream(t, "a")
	b := echoUpstream(t, "b")
	h := start(t, fmt.Sprintf(baseConfig, a.URL))

	var failures, total atomic.Int64
	var seen sync.Map
	stop := make(chan struct{})
	var wg sync.WaitGroup
	client := &http.Client{Timeout: 5 * time.Second}
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; n < 5000; n++ {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := client.Get(h.base + "/api/x")
				total.Add(1)
				if err != nil {
					failures.Add(1)
					continue
				}
				var e echoed
				err = json.NewDecoder(resp.Body).Decode(&e)
				resp.Body.Close()
				if err != nil || resp.StatusCode != 200 {
					failures.Add(1)
					continue
				}
				seen.Store(e.Upstream, true)
			}
		}()
	}
	for i := range 20 {
		url := a.URL
		if i%2 == 0 {
			url = b.URL
		}
		resp := h.rewrite(t, fmt.Sprintf(baseConfig, url))
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("reload %d: status %d", i, resp.StatusCode)
		}
		time.Sleep(20 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	if failures.Load() != 0 {
		t.Fatalf("%d of %d requests failed during reloads", failures.Load(), total.Load())
	}
	for _, name := range []string{"a", "b"} {
		if _, ok := seen.Load(name); !ok {
			t.Errorf("no response from upstream %s: reloads did not take effect", name)
		}
	}
	t.Logf("%d requests, 0 failed, 20 reloads", total.Load())
}

// TestBadReloadKeepsRunningConfig: a config with errors is refused with
// every error, counted, and traffic still uses the old config.
func TestBadReloadKeepsRunningConfig(t *testing.T) {
	a := echoUpstream(t, "a")
	h := start(t, fmt.Sprintf(baseConfig, a.URL))
	resp := h.rewrite(t, `version: 1
server: {listen: "127.0.0.1:0"}
admin: {listen: "127.0.0.1:0"}
routes:
  - name: broken
    match: {path: "/api/*"}
    upstream: missing
    public: true
    bogus_key: 1
`)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode < 400 || !strings.Contains(string(body), "gateway.yaml:") {
		t.Fatalf("bad reload answered %d %s", resp.StatusCode, body)
	}
	var e echoed
	if r := getJSON(t, h.base+"/api/x", nil, &e); r.StatusCode != 200 || e.Upstream != "a" {
		t.Fatalf("after a bad reload: %d %+v", r.StatusCode, e)
	}
	m, _ := http.Get(h.admin + "/metrics")
	mb, _ := io.ReadAll(m.Body)
	m.Body.Close()
	if !strings.Contains(string(mb), `portico_config_reloads_total{result="failure"} 1`) {
		t.Errorf("failed reload not counted:\n%s", grepLines(string(mb), "portico_config_reloads_total"))
	}
}

func TestReloadRefusesRestartOnlyChanges(t *testing.T) {
	a := echoUpstream(t, "a")
	h := start(t, fmt.Sprintf(baseConfig, a.URL))
	changed := strings.Replace(fmt.Sprintf(baseConfig, a.URL), `admin: {listen: "127.0.0.1:0"}`, `admin: {listen: "127.0.0.1:1"}`, 1)
	resp := h.rewrite(t, changed)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode < 400 || !strings.Contains(string(body), "admin.listen") || !strings.Contains(string(body), "restart") {
		t.Fatalf("restart-only change: %d %s", resp.StatusCode, body)
	}
}

// TestGracefulShutdown: a slow request in flight when shutdown starts
// completes; /readyz turns 503 at once; Serve returns nil.
func TestGracefulShutdown(t *testing.T) {
	a := echoUpstream(t, "a")
	h := start(t, strings.Replace(fmt.Sprintf(baseConfig, a.URL), "shutdown_timeout: 5s", "shutdown_timeout: 5s, drain_delay: 300ms", 1))

	result := make(chan error, 1)
	go func() {
		resp, err := http.Get(h.base + "/api/slow?sleep=800ms")
		if err != nil {
			result <- err
			return
		}
		defer resp.Body.Close()
		var e echoed
		if err := json.NewDecoder(resp.Body).Decode(&e); err != nil || resp.StatusCode != 200 {
			result <- fmt.Errorf("slow request: %d %v", resp.StatusCode, err)
			return
		}
		result <- nil
	}()
	time.Sleep(100 * time.Millisecond) // let the slow request reach the upstream
	h.cancel()
	h.cancel = nil
	time.Sleep(50 * time.Millisecond)
	if resp, err := http.Get(h.admin + "/readyz"); err != nil || resp.StatusCode != 503 {
		t.Errorf("readyz while draining: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	// Still served during drain_delay, with Connection: close.
	if resp, err := http.Get(h.base + "/api/x"); err != nil || resp.StatusCode != 200 || !resp.Close {
		t.Errorf("request during drain: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	if err := <-result; err != nil {
		t.Fatalf("in-flight request during shutdown: %v", err)
	}
	select {
	case err := <-h.done:
		if err != nil {
			t.Fatalf("serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not return")
	}
	h.gw.Close()
}

func TestMetricsCountRequests(t *testing.T) {
	a := echoUpstream(t, "a")
	h := start(t, fmt.Sprintf(baseConfig, a.URL))
	for range 3 {
		getJSON(t, h.base+"/api/x", nil, nil)
	}
	getJSON(t, h.base+"/missing", nil, nil)
	resp, err := http.Get(h.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	text := string(b)
	for _, want := range []string{
		`portico_requests_total{code="200",method="GET",route="echo"} 3`,
		`portico_requests_total{code="404",method="GET",route="unmatched"} 1`,
		`portico_build_info{`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics lack %s\n%s", want, grepLines(text, "portico_requests_total"))
		}
	}
	rr, err := http.Get(h.admin + "/admin/routes")
	if err != nil {
		t.Fatal(err)
	}
	var routes []RouteInfo
	_ = json.NewDecoder(rr.Body).Decode(&routes)
	rr.Body.Close()
	if len(routes) != 1 || routes[0].Name != "echo" {
		t.Errorf("/admin/routes: %+v", routes)
	}
}

func grepLines(text, substr string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestAdminTokenGuardsAndRotates: /admin/* and /debug/pprof/ sit behind the
// admin token, /metrics does not, and a reload that changes the token
// rotates it at once: the old one is refused, the new one accepted.
func TestAdminTokenGuardsAndRotates(t *testing.T) {
	a := echoUpstream(t, "a")
	withToken := func(tok string) string {
		return strings.Replace(fmt.Sprintf(baseConfig, a.URL), `admin: {listen: "127.0.0.1:0"}`, `admin: {listen: "127.0.0.1:0", token: "`+tok+`"}`, 1)
	}
	h := start(t, withToken("first-token"))
	call := func(method, path, tok string) int {
		t.Helper()
		req, _ := http.NewRequest(method, h.admin+path, nil)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode == http.StatusUnauthorized && resp.Header.Get("WWW-Authenticate") == "" {
			t.Errorf("%s %s: 401 without WWW-Authenticate", method, path)
		}
		return resp.StatusCode
	}
	check := func(step, tok string, want int) {
		t.Helper()
		for _, path := range []string{"/admin/stats", "/debug/pprof/cmdline"} {
			if got := call(http.MethodGet, path, tok); got != want {
				t.Errorf("%s: %s with token %q: %d, want %d", step, path, tok, got, want)
			}
		}
	}
	check("before", "", 401)
	check("before", "first-token", 200)
	if got := call(http.MethodGet, "/metrics", ""); got != 200 {
		t.Errorf("/metrics must not need the token: %d", got)
	}

	if err := os.WriteFile(filepath.Join(h.dir, "gateway.yaml"), []byte(withToken("second-token")), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := call(http.MethodPost, "/admin/reload", "first-token"); got != 200 {
		t.Fatalf("reload: %d", got)
	}
	check("after rotation", "first-token", 401)
	check("after rotation", "second-token", 200)
}

// TestReloadDropsRemovedRoutesFromStats: after a reload that removes a
// route, /admin/stats and /metrics no longer show it, and the route that
// stayed keeps what it had counted.
func TestReloadDropsRemovedRoutesFromStats(t *testing.T) {
	a := echoUpstream(t, "a")
	twoRoutes := fmt.Sprintf(baseConfig, a.URL) + `  - name: old
    match: {path: "/old/*"}
    upstream: echo
    public: true
`
	h := start(t, twoRoutes)
	for range 2 {
		getJSON(t, h.base+"/api/x", nil, nil)
		getJSON(t, h.base+"/old/x", nil, nil)
	}
	stats := func() map[string]uint64 {
		t.Helper()
		var snap struct {
			Routes []struct {
				Route  string `json:"route"`
				Last5m struct {
					Requests uint64 `json:"requests"`
				} `json:"last_5m"`
			} `json:"routes"`
		}
		getJSON(t, h.admin+"/admin/stats", nil, &snap)
		out := map[string]uint64{}
		for _, r := range snap.Routes {
			out[r.Route] = r.Last5m.Requests
		}
		return out
	}
	if s := stats(); s["echo"] != 2 || s["old"] != 2 {
		t.Fatalf("before the reload: %v, want echo and old at 2", s)
	}
	resp := h.rewrite(t, fmt.Sprintf(baseConfig, a.URL))
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("reload: %d", resp.StatusCode)
	}
	s := stats()
	if _, ok := s["old"]; ok {
		t.Errorf("after the reload /admin/stats still lists the removed route: %v", s)
	}
	if s["echo"] != 2 {
		t.Errorf("after the reload echo counts %d, want the 2 from before it", s["echo"])
	}
	mresp, err := http.Get(h.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(mresp.Body)
	mresp.Body.Close()
	if strings.Contains(string(b), `route="old"`) {
		t.Errorf("/metrics still has series of the removed route:\n%s", grepLines(string(b), `route="old"`))
	}
	if !strings.Contains(string(b), `portico_requests_total{code="200",method="GET",route="echo"} 2`) {
		t.Errorf("/metrics lost the kept route's count:\n%s", grepLines(string(b), "portico_requests_total"))
	}
}

// TestFailedCompileLeavesNoStats: a config that validates but fails to
// compile part-way (its first route compiled, its second did not) adds
// nothing to /admin/stats: the running config's routes are all it lists.
func TestFailedCompileLeavesNoStats(t *testing.T) {
	a := echoUpstream(t, "a")
	h := start(t, fmt.Sprintf(baseConfig, a.URL))
	cfg, err := config.LoadBytes("next.yaml", []byte(fmt.Sprintf(baseConfig, a.URL)+`  - name: compiled-first
    match: {path: "/first/*"}
    upstream: echo
    public: true
  - name: fails-second
    match: {path: "/second/*"}
    upstream: echo
    public: true
`))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Routes[2].Upstream = "no-such-upstream" // past validation, so compile is what fails
	if err := h.gw.Apply(cfg); err == nil {
		t.Fatal("Apply of a route with an unknown upstream succeeded")
	}
	var snap struct {
		Routes []struct {
			Route string `json:"route"`
		} `json:"routes"`
	}
	getJSON(t, h.admin+"/admin/stats", nil, &snap)
	for _, r := range snap.Routes {
		if r.Route != "echo" && r.Route != "unmatched" {
			t.Errorf("/admin/stats lists %q from a config that never ran", r.Route)
		}
	}
}
