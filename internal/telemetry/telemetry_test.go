package telemetry

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os/exec"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/portico-gw/portico/internal/problem"
	"github.com/portico-gw/portico/internal/reqctx"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// clock is an injected clock that handlers advance, so durations are exact.
type clock struct{ ns atomic.Int64 }

func newClock() *clock {
	c := &clock{}
	c.ns.Store(time.Date(2026, 11, 28, 7, 0, 0, 0, time.UTC).UnixNano())
	return c
}
func (c *clock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *clock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

// scrape returns the exposition of t as series text -> value.
func scrape(t *testing.T, tel *Telemetry) (map[string]float64, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	tel.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 {
		t.Fatalf("metrics: %d", rec.Code)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(rec.Body.String()))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("bad line %q", line)
		}
		out[line[:i]] = v
	}
	return out, rec.Body.String()
}

func statusHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		code, _ := strconv.Atoi(r.URL.Query().Get("status"))
		if code == 0 {
			code = 200
		}
		if code >= 400 {
			problem.WriteStatus(w, r, code, "test", "test status")
			return
		}
		w.WriteHeader(code)
		_, _ = io.WriteString(w, "ok")
	})
}

// gatewayLike mounts routes by path prefix the way the gateway does: each
// route's chain wrapped by its own Middleware, the rest under "unmatched".
func gatewayLike(tel *Telemetry, routes ...string) http.Handler {
	chains := map[string]http.Handler{}
	for _, r := range routes {
		chains["/"+r] = tel.Middleware(r)(statusHandler())
	}
	unmatched := tel.Middleware("unmatched")(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		problem.WriteStatus(w, r, 404, "no_route", "no route")
	}))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		info := &reqctx.Info{Start: time.Now(), RequestID: "rid-1", ClientIP: netip.MustParseAddr("192.0.2.7")}
		r = r.WithContext(reqctx.With(r.Context(), info))
		if h, ok := chains[r.URL.Path]; ok {
			info.Route = strings.TrimPrefix(r.URL.Path, "/")
			h.ServeHTTP(w, r)
			return
		}
		info.Route = "unmatched"
		unmatched.ServeHTTP(w, r)
	})
}

func TestRequestCountsExact(t *testing.T) {
	tel := New(Deps{AccessLog: io.Discard, Version: "test"})
	defer tel.Close()
	srv := httptest.NewServer(gatewayLike(tel, "posts", "users"))
	defer srv.Close()

	mix := []struct {
		method, path string
		status, n    int
	}{
		{"GET", "/posts", 200, 7},
		{"POST", "/posts", 201, 2},
		{"GET", "/posts", 404, 3},
		{"DELETE", "/users", 503, 2},
		{"BREW", "/users", 200, 1}, // folded to OTHER
		{"GET", "/users", 429, 4},
		{"GET", "/nowhere", 0, 5},
		{"PUT", "/users", 418, 1}, // not a precomputed code
	}
	for _, m := range mix {
		for i := 0; i < m.n; i++ {
			req, _ := http.NewRequest(m.method, srv.URL+m.path+"?status="+strconv.Itoa(m.status), nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}
	got, _ := scrape(t, tel)
	want := map[string]float64{
		`portico_requests_total{code="200",method="GET",route="posts"}`:     7,
		`portico_requests_total{code="201",method="POST",route="posts"}`:    2,
		`portico_requests_total{code="404",method="GET",route="posts"}`:     3,
		`portico_requests_total{code="503",method="DELETE",route="users"}`:  2,
		`portico_requests_total{code="200",method="OTHER",route="users"}`:   1,
		`portico_requests_total{code="429",method="GET",route="users"}`:     4,
		`portico_requests_total{code="404",method="GET",route="unmatched"}`: 5,
		`portico_requests_total{code="418",method="PUT",route="users"}`:     1,
		`portico_request_duration_seconds_count{route="posts"}`:             12,
		`portico_request_duration_seconds_count{route="users"}`:             8,
		`portico_request_duration_seconds_count{route="unmatched"}`:         5,
		`portico_inflight_requests{route="posts"}`:                          0,
		`portico_access_log_dropped_total`:                                  0,
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	var total float64
	for k, v := range got {
		if strings.HasPrefix(k, "portico_requests_total{") {
			total += v
		}
	}
	if total != 25 {
		t.Errorf("sum of portico_requests_total = %v, want 25 (no stray series)", total)
	}
	if got[`portico_build_info{goversion="`+goVersion()+`",version="test"}`] != 1 {
		t.Errorf("build info missing")
	}

	st := tel.Stats()
	byRoute := map[string]RouteStats{}
	for _, r := range st.Routes {
		byRoute[r.Route] = r
	}
	users := byRoute["users"].Last1m
	if users.Requests != 8 || users.Classes["5xx"] != 2 || users.Classes["4xx"] != 5 || users.Classes["2xx"] != 1 {
		t.Errorf("users stats = %+v", users)
	}
	if math.Abs(users.ErrorRate5xx-0.25) > 1e-9 || math.Abs(users.ErrorRate4xx-5.0/8) > 1e-9 {
		t.Errorf("users error rates = %v %v", users.ErrorRate4xx, users.ErrorRate5xx)
	}
	if byRoute["unmatched"].Last5m.Requests != 5 {
		t.Errorf("unmatched 5m = %+v", byRoute["unmatched"].Last5m)
	}
}

func goVersion() string { return runtime.Version() }

func TestClientGoneCountsAs499(t *testing.T) {
	tel := New(Deps{AccessLog: io.Discard})
	defer tel.Close()
	entered, served := make(chan struct{}), make(chan struct{})
	h := tel.Middleware("slow")(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-r.Context().Done() // returns without writing anything
	}))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(w, r)
		close(served) // the middleware has finished counting
	}))
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL, nil)
	errc := make(chan error, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	<-entered
	cancel()
	<-errc
	<-served
	got, _ := scrape(t, tel)
	if v := got[`portico_requests_total{code="499",method="GET",route="slow"}`]; v != 1 {
		t.Fatalf("499 count = %v", v)
	}
	if s := tel.Stats().Routes[0].Last1m; s.Classes["499"] != 1 || s.ErrorRate4xx != 0 {
		t.Errorf("stats = %+v", s)
	}
}

func TestWebSocketUpgradeGauge(t *testing.T) {
	tel := New(Deps{AccessLog: io.Discard})
	defer tel.Close()
	release, upgraded, served := make(chan struct{}), make(chan struct{}), make(chan struct{})
	h := tel.Middleware("ws")(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// As httputil.ReverseProxy does: hijack, then write the 101 itself.
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: test\r\nConnection: Upgrade\r\n\r\n")
		_ = brw.Flush()
		close(upgraded)
		<-release
	}))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(w, r)
		close(served)
	}))
	defer srv.Close()
	req, _ := http.NewRequest("GET", srv.URL, nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "test")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 101 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	<-upgraded
	if got, _ := scrape(t, tel); got[`portico_websocket_connections{route="ws"}`] != 1 {
		t.Errorf("open websockets = %v", got[`portico_websocket_connections{route="ws"}`])
	}
	close(release)
	<-served
	got, _ := scrape(t, tel)
	if got[`portico_websocket_connections{route="ws"}`] != 0 || got[`portico_requests_total{code="101",method="GET",route="ws"}`] != 1 {
		t.Errorf("after close: ws=%v 101=%v", got[`portico_websocket_connections{route="ws"}`], got[`portico_requests_total{code="101",method="GET",route="ws"}`])
	}
}

func TestQuantilesFromKnownDelays(t *testing.T) {
	clk := newClock()
	tel := New(Deps{AccessLog: io.Discard, Now: clk.Now})
	defer tel.Close()
	h := tel.Middleware("api")(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d, _ := time.ParseDuration(r.URL.Query().Get("delay"))
		clk.Advance(d) // the upstream "takes" d
		w.WriteHeader(200)
	}))
	// 60 x 10ms, 35 x 50ms, 5 x 200ms, interleaved, over 20 s.
	var delays []time.Duration
	for i := 0; i < 60; i++ {
		delays = append(delays, 10*time.Millisecond)
	}
	for i := 0; i < 35; i++ {
		delays = append(delays, 50*time.Millisecond)
	}
	for i := 0; i < 5; i++ {
		delays = append(delays, 200*time.Millisecond)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	rng.Shuffle(len(delays), func(i, j int) { delays[i], delays[j] = delays[j], delays[i] })
	for _, d := range delays {
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/?delay="+d.String(), nil))
		clk.Advance(200 * time.Millisecond)
	}
	st := tel.Stats().Routes[0]
	for _, w := range []struct {
		name string
		ws   WindowStats
	}{{"1m", st.Last1m}, {"5m", st.Last5m}} {
		t.Run(w.name, func(t *testing.T) {
			for _, q := range []struct {
				name      string
				got, want float64
			}{{"p50", w.ws.P50ms, 10}, {"p95", w.ws.P95ms, 50}, {"p99", w.ws.P99ms, 200}} {
				if math.Abs(q.got-q.want)/q.want > sketchAlpha+1e-6 {
					t.Errorf("%s = %vms, want %vms within %v", q.name, q.got, q.want, sketchAlpha)
				}
			}
			if w.ws.Requests != 100 {
				t.Errorf("requests = %d", w.ws.Requests)
			}
		})
	}
	// The 5m window has seen 100 requests over its covered span.
	if st.Last5m.RPS <= 0 || len(st.Series.RPS) != seriesLen {
		t.Errorf("rps %v, series %d", st.Last5m.RPS, len(st.Series.RPS))
	}
}

func TestSketchErrorBound(t *testing.T) {
	rng := rand.New(rand.NewPCG(42, 7))
	for _, dist := range []struct {
		name string
		gen  func() time.Duration
	}{
		{"log-uniform 1us-10min", func() time.Duration {
			return time.Duration(math.Exp(rng.Float64()*math.Log(600e9/1e3)) * 1e3)
		}},
		{"normal 50ms", func() time.Duration {
			return time.Duration(math.Abs(rng.NormFloat64()*10e6 + 50e6))
		}},
		{"bimodal", func() time.Duration {
			if rng.IntN(10) == 0 {
				return time.Duration(rng.Float64()*2e9 + 1e9)
			}
			return time.Duration(rng.Float64()*4e6 + 1e6)
		}},
	} {
		t.Run(dist.name, func(t *testing.T) {
			var h Histogram
			vals := make([]time.Duration, 100000)
			for i := range vals {
				vals[i] = dist.gen()
				h.Add(vals[i])
			}
			sort.Slice(vals, func(i, j int) bool { return vals[i] < vals[j] })
			for _, q := range []float64{0.01, 0.1, 0.5, 0.9, 0.95, 0.99, 0.999, 1} {
				rank := int(math.Ceil(q * float64(len(vals))))
				exact := vals[rank-1]
				got := h.Quantile(q)
				if rel := math.Abs(float64(got-exact)) / float64(exact); rel > sketchAlpha+1e-9 {
					t.Errorf("q%v = %v, exact %v, relative error %.4f > %v", q, got, exact, rel, sketchAlpha)
				}
			}
		})
	}
}

func TestSketchMergesSlots(t *testing.T) {
	// Two sketches merged must answer as one sketch of all values.
	var a, b sketch
	var want Histogram
	for i := 1; i <= 1000; i++ {
		d := time.Duration(i) * time.Millisecond
		if i%2 == 0 {
			a.add(d)
		} else {
			b.add(d)
		}
		want.Add(d)
	}
	var got Histogram
	a.mergeInto(&got)
	b.mergeInto(&got)
	for _, q := range []float64{0.5, 0.9, 0.99} {
		if got.Quantile(q) != want.Quantile(q) {
			t.Errorf("q%v merged %v != direct %v", q, got.Quantile(q), want.Quantile(q))
		}
	}
}

func TestStatsWindowsAge(t *testing.T) {
	clk := newClock()
	tel := New(Deps{AccessLog: io.Discard, Now: clk.Now})
	defer tel.Close()
	h := tel.Middleware("r")(statusHandler())
	for i := 0; i < 10; i++ {
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil))
	}
	clk.Advance(2 * time.Minute)
	for i := 0; i < 3; i++ {
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/?status=500", nil))
	}
	st := tel.Stats().Routes[0]
	if st.Last1m.Requests != 3 || st.Last5m.Requests != 13 {
		t.Errorf("1m=%d 5m=%d, want 3 and 13", st.Last1m.Requests, st.Last5m.Requests)
	}
	if st.Last1m.ErrorRate5xx != 1 {
		t.Errorf("1m 5xx rate %v", st.Last1m.ErrorRate5xx)
	}
	clk.Advance(6 * time.Minute)
	st = tel.Stats().Routes[0]
	if st.Last5m.Requests != 0 {
		t.Errorf("5m after 6 minutes = %d", st.Last5m.Requests)
	}
	// The ring slots are reused after aging out.
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil))
	if st = tel.Stats().Routes[0]; st.Last1m.Requests != 1 {
		t.Errorf("after reuse 1m = %d", st.Last1m.Requests)
	}
}

func TestAccessLog(t *testing.T) {
	pr, pw := io.Pipe()
	lines := make(chan map[string]any, 100)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			var m map[string]any
			if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
				t.Errorf("not JSON: %q: %v", sc.Text(), err)
			}
			lines <- m
		}
		close(lines)
	}()
	tel := New(Deps{AccessLog: pw})
	tel.SetRedactedQueryParams([]string{"X-Custom-Cred"})
	srv := httptest.NewServer(gatewayLike(tel, "posts"))
	defer srv.Close()
	for _, q := range []string{
		"status=201&token=abc&Api_Key=k1&page=2",
		"x-custom-cred=zz&sig=s&q=%22quoted%22",
		"api%5Fkey=esc&password&key=",
	} {
		resp, err := http.Get(srv.URL + "/posts?" + q)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	tel.SetAccessLog(false)
	resp, _ := http.Get(srv.URL + "/posts?hidden=1")
	resp.Body.Close()
	tel.Close()
	pw.Close()
	var got []map[string]any
	for m := range lines {
		got = append(got, m)
	}
	if len(got) != 3 {
		t.Fatalf("got %d lines, want 3 (the 4th was logged while disabled)", len(got))
	}
	wantPaths := []string{
		"/posts?status=201&token=REDACTED&Api_Key=REDACTED&page=2",
		"/posts?x-custom-cred=REDACTED&sig=REDACTED&q=%22quoted%22",
		"/posts?api%5Fkey=REDACTED&password&key=REDACTED",
	}
	for i, m := range got {
		if m["path"] != wantPaths[i] {
			t.Errorf("path %d = %v, want %v", i, m["path"], wantPaths[i])
		}
		for _, f := range []string{"time", "route", "method", "path", "status", "bytes", "duration_ms", "upstream", "request_id", "trace_id", "client_ip"} {
			if _, ok := m[f]; !ok {
				t.Errorf("line %d lacks %q: %v", i, f, m)
			}
		}
		if m["route"] != "posts" || m["request_id"] != "rid-1" || m["client_ip"] != "192.0.2.7" || m["method"] != "GET" {
			t.Errorf("line %d = %v", i, m)
		}
		if tid, _ := m["trace_id"].(string); len(tid) != 32 {
			t.Errorf("trace_id %q", tid)
		}
		if _, err := time.Parse(time.RFC3339Nano, m["time"].(string)); err != nil {
			t.Errorf("time: %v", err)
		}
	}
	if got[0]["status"] != float64(201) || got[0]["bytes"] != float64(2) {
		t.Errorf("status/bytes = %v/%v", got[0]["status"], got[0]["bytes"])
	}
}

func TestJSONEscaping(t *testing.T) {
	for _, s := range []string{"plain", `q"uote\back`, "ctl\x00\x1f\n\t\r\x7f", "utf8 é ✓", "bad \xff\xfe utf8", ""} {
		b := appendJSONString(nil, s)
		var back string
		if err := json.Unmarshal(b, &back); err != nil {
			t.Errorf("%q -> %s: %v", s, b, err)
			continue
		}
		if want := strings.ToValidUTF8(s, "\ufffd"); back != want && !strings.Contains(s, "\xff") {
			t.Errorf("%q round-trips to %q", s, back)
		}
	}
}

// blockingWriter blocks every Write until released.
type blockingWriter struct {
	release chan struct{}
	mu      sync.Mutex
	lines   int
}

func (b *blockingWriter) Write(p []byte) (int, error) {
	<-b.release
	b.mu.Lock()
	b.lines += strings.Count(string(p), "\n")
	b.mu.Unlock()
	return len(p), nil
}

func TestAccessLogSlowWriterDropsWithoutStalling(t *testing.T) {
	bw := &blockingWriter{release: make(chan struct{})}
	const buffer, n = 16, 2000
	tel := New(Deps{AccessLog: bw, AccessLogBuffer: buffer})
	h := tel.Middleware("r")(statusHandler())
	start := time.Now()
	for i := 0; i < n; i++ {
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil))
	}
	if el := time.Since(start); el > 10*time.Second {
		t.Errorf("%d requests took %v with a blocked log writer", n, el)
	}
	got, _ := scrape(t, tel)
	dropped := got["portico_access_log_dropped_total"]
	// Through went at most the channel's lines plus what the writer's 64 KiB
	// buffer took before its first write blocked (lines are over 150 bytes);
	// every other line was dropped and counted.
	if maxThrough := float64(buffer + 1 + 64<<10/150); dropped < n-maxThrough || dropped >= n {
		t.Errorf("dropped = %v of %d with a buffer of %d", dropped, n, buffer)
	}
	close(bw.release)
	tel.Close()
	if int(dropped)+bw.lines != n {
		t.Errorf("dropped %v + written %d != %d", dropped, bw.lines, n)
	}
}

func TestPromtoolCheckMetrics(t *testing.T) {
	path, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not installed (apt-get install prometheus); exposition not linted")
	}
	tel := New(Deps{AccessLog: io.Discard, LatencyBuckets: []time.Duration{300 * time.Millisecond, time.Second}})
	defer tel.Close()
	srv := httptest.NewServer(gatewayLike(tel, "posts"))
	defer srv.Close()
	for _, p := range []string{"/posts", "/posts?status=500", "/x"} {
		resp, err := http.Get(srv.URL + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	tel.ConfigReload(true)
	tel.ConfigReload(false)
	got, text := scrape(t, tel)
	if got[`portico_request_duration_seconds_bucket{route="posts",le="0.3"}`] != 2 {
		t.Errorf("SLO threshold bucket le=0.3 missing or wrong")
	}
	if got[`portico_config_reloads_total{result="failure"}`] != 1 || got[`portico_config_reloads_total{result="success"}`] != 1 {
		t.Errorf("reload counters wrong")
	}
	cmd := exec.Command(path, "check", "metrics")
	cmd.Stdin = strings.NewReader(text)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}
}

func TestBuckets(t *testing.T) {
	b := Buckets([]time.Duration{300 * time.Millisecond, time.Second, 0})
	want := fmt.Sprint([]float64{.001, .0025, .005, .01, .025, .05, .1, .25, .3, .5, 1, 2.5, 5, 10})
	if fmt.Sprint(b) != want {
		t.Errorf("buckets = %v", b)
	}
}

func TestPanicIsCountedAndInflightReleased(t *testing.T) {
	tel := New(Deps{AccessLog: io.Discard})
	defer tel.Close()
	h := tel.Middleware("boom")(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		panic("handler bug")
	}))
	func() {
		defer func() {
			if recover() == nil {
				t.Error("panic swallowed; the recover stage outside must see it")
			}
		}()
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil))
	}()
	got, _ := scrape(t, tel)
	if got[`portico_requests_total{code="500",method="GET",route="boom"}`] != 1 || got[`portico_inflight_requests{route="boom"}`] != 0 {
		t.Errorf("500=%v inflight=%v", got[`portico_requests_total{code="500",method="GET",route="boom"}`], got[`portico_inflight_requests{route="boom"}`])
	}
}

func TestResponseWriterKeepsInterfaces(t *testing.T) {
	tel := New(Deps{AccessLog: io.Discard})
	defer tel.Close()
	h := tel.Middleware("stream")(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		if err := rc.SetWriteDeadline(time.Now().Add(time.Minute)); err != nil {
			t.Errorf("SetWriteDeadline through the wrapper: %v", err)
		}
		if err := rc.EnableFullDuplex(); err != nil {
			t.Errorf("EnableFullDuplex through the wrapper: %v", err)
		}
		w.Header().Set("Content-Type", "text/event-stream")
		for i := 0; i < 3; i++ {
			fmt.Fprintf(w, "data: %d\n\n", i)
			if err := rc.Flush(); err != nil {
				t.Errorf("flush: %v", err)
			}
		}
	}))
	srv := httptest.NewServer(h)
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "data: 0\n\ndata: 1\n\ndata: 2\n\n" {
		t.Errorf("body %q", body)
	}
	if _, ok := any(&statusWriter{}).(interface{ Unwrap() http.ResponseWriter }); !ok {
		t.Error("no Unwrap")
	}
}

func TestDurationFromInfoStart(t *testing.T) {
	clk := newClock()
	tel := New(Deps{AccessLog: io.Discard, Now: clk.Now})
	defer tel.Close()
	h := tel.Middleware("r")(statusHandler())
	// The gateway stamped the request 250ms ago (routing, queueing).
	info := &reqctx.Info{Start: clk.Now().Add(-250 * time.Millisecond)}
	req := httptest.NewRequest("GET", "/", nil)
	h.ServeHTTP(httptest.NewRecorder(), req.WithContext(reqctx.With(req.Context(), info)))
	if p := tel.Stats().Routes[0].Last1m.P50ms; math.Abs(p-250)/250 > sketchAlpha {
		t.Errorf("p50 = %vms, want 250ms measured from Info.Start", p)
	}
}

func TestCloseWhileServing(t *testing.T) {
	var out strings.Builder
	var mu sync.Mutex
	tel := New(Deps{AccessLog: writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return out.Write(p)
	})})
	h := tel.Middleware("r")(statusHandler())
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil))
			}
		}()
	}
	tel.Close() // lines racing Close are written or discarded, never a panic
	wg.Wait()
	_ = tel.Close()
	mu.Lock()
	defer mu.Unlock()
	for _, l := range strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n") {
		if l != "" && !json.Valid([]byte(l)) {
			t.Fatalf("torn line %q", l)
		}
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// TestStatsConcurrentRotation records from several goroutines while the clock
// moves slots on under them and Stats reads: no count may be lost or doubled.
func TestStatsConcurrentRotation(t *testing.T) {
	clk := newClock()
	tel := New(Deps{AccessLog: io.Discard, Now: clk.Now})
	defer tel.Close()
	tel.SetAccessLog(false)
	h := tel.Middleware("r")(statusHandler())
	const workers, each = 4, 2000
	var wg sync.WaitGroup
	stop, readerDone := make(chan struct{}), make(chan struct{})
	go func() { // a reader, as the dashboard polls
		defer close(readerDone)
		for {
			select {
			case <-stop:
				return
			default:
				_ = tel.Stats()
			}
		}
	}()
	for g := 0; g < workers; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < each; i++ {
				if g == 0 && i%40 == 0 {
					clk.Advance(time.Second) // 50 s in all: ten slot changes
				}
				h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil))
			}
		}(g)
	}
	wg.Wait()
	close(stop)
	<-readerDone
	if got := tel.Stats().Routes[0].Last5m.Requests; got != workers*each {
		t.Errorf("5m window counts %d, want %d", got, workers*each)
	}
}
