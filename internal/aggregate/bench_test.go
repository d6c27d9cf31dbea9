package aggregate

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/portico-gw/portico/internal/config"
	"github.com/portico-gw/portico/internal/reqctx"
)

// feedBody builds a posts-service body of about size bytes.
func feedBody(size int) []byte {
	var b strings.Builder
	b.WriteString(`{"items":[`)
	for i := 0; b.Len() < size-200; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"id":%d,"text":"post number %d with some text \"quoted\" and unicode \u00e9","created_at":"2026-11-28T07:00:00Z",`+
			`"author":{"id":"u%d","name":"Author %d","avatar_url":"https://cdn.example/a/%d.png"},"likes":%d,"reposts":%d,"replies":%d,`+
			`"media":[{"url":"https://cdn.example/m/%d.jpg","w":640,"h":480}],"tags":["go","api","bff"]}`,
			1<<62+i, i, i, i, i, i*3, i*2, i, i)
	}
	b.WriteString(`],"next_cursor":"abc"}`)
	return []byte(b.String())
}

func BenchmarkShape50KB(b *testing.B) {
	body := feedBody(50 << 10)
	sh, err := compileShape(shapeSpec{
		Fields: []string{"items[].id", "items[].text", "items[].author.name"},
		Rename: map[string]string{"items[].text": "body"},
	})
	if err != nil {
		b.Fatal(err)
	}
	s := &scanner{}
	out := make([]byte, 0, len(body))
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		out, err = sh.apply(s, body, out[:0])
		if err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkValidate50KB(b *testing.B) {
	body := feedBody(50 << 10)
	sh, _ := compileShape(shapeSpec{})
	s := &scanner{}
	out := make([]byte, 0, len(body))
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		var err error
		if out, err = sh.apply(s, body, out[:0]); err != nil {
			b.Fatal(err)
		}
	}
}

// discardWriter is a ResponseWriter that keeps nothing, so the benchmark
// counts the handler's allocations only.
type discardWriter struct {
	h    http.Header
	code int
}

func (d *discardWriter) Header() http.Header         { return d.h }
func (d *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (d *discardWriter) WriteHeader(code int)        { d.code = code }

func BenchmarkFanOut6(b *testing.B) {
	handlers := map[string]http.HandlerFunc{}
	var backends []*config.Backend
	for i := range 6 {
		name := fmt.Sprintf("svc%d", i)
		handlers[name] = jsonHandler(fmt.Sprintf(`{"id":%d,"name":"svc %d","status":"ok","items":[1,2,3,4,5,6,7],"nested":{"a":{"b":"c"}}}`, i, i))
		backends = append(backends, &config.Backend{Upstream: name, Path: "/item/{claims.sub}", Into: name, Fields: []string{"id", "name", "status"}})
	}
	rts := serve(b, handlers)
	h := newEndpoint(b, &config.Endpoint{Name: "feed", Timeout: config.Duration(5 * time.Second), Backends: backends}, rts)
	r := gatewayRequest("GET", "/feed")
	info := reqctx.From(r.Context())
	w := &discardWriter{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		info.Start = time.Now() // the endpoint's deadline runs from here
		clear(w.h)
		h.ServeHTTP(w, r)
		if w.code != http.StatusOK {
			b.Fatalf("status %d: %v", w.code, w.h)
		}
	}
}

// memRT answers every request with one canned JSON body, without a network:
// scaffolding that isolates the handler's own cost (it allocates 3 objects
// per call itself: the response, its reader and the body wrapper).
type memRT struct{ body []byte }

func (m memRT) RoundTrip(r *http.Request) (*http.Response, error) {
	return &http.Response{StatusCode: 200, Header: jsonHeader, Body: io.NopCloser(bytes.NewReader(m.body)), ContentLength: int64(len(m.body)), Request: r}, nil
}

var jsonHeader = http.Header{"Content-Type": {"application/json"}}

func BenchmarkFanOut6InMemory(b *testing.B) {
	rts := map[string]http.RoundTripper{}
	var backends []*config.Backend
	for i := range 6 {
		name := fmt.Sprintf("svc%d", i)
		rts[name] = memRT{body: []byte(fmt.Sprintf(`{"id":%d,"name":"svc %d","status":"ok","items":[1,2,3,4,5,6,7],"nested":{"a":{"b":"c"}}}`, i, i))}
		backends = append(backends, &config.Backend{Upstream: name, Path: "/item/{claims.sub}", Into: name, Fields: []string{"id", "name", "status"}})
	}
	h := newEndpoint(b, &config.Endpoint{Name: "feed", Timeout: config.Duration(5 * time.Second), Backends: backends}, rts)
	r := gatewayRequest("GET", "/feed")
	r.Header.Set("X-User-Id", "u42")
	r.Header.Set("Traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
	info := reqctx.From(r.Context())
	w := &discardWriter{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		info.Start = time.Now()
		clear(w.h)
		h.ServeHTTP(w, r)
		if w.code != http.StatusOK {
			b.Fatalf("status %d: %v", w.code, w.h)
		}
	}
}

// TestAllocationBudget keeps the handler's allocations per request in
// check: a six-backend fan-out with shaping, against in-memory backends
// (whose own three allocations per call are included).
func TestAllocationBudget(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops objects at random under the race detector")
	}
	rts := map[string]http.RoundTripper{}
	var backends []*config.Backend
	for i := range 6 {
		name := fmt.Sprintf("svc%d", i)
		rts[name] = memRT{body: []byte(fmt.Sprintf(`{"id":%d,"name":"svc %d","status":"ok","items":[1,2,3]}`, i, i))}
		backends = append(backends, &config.Backend{Upstream: name, Path: "/item/{claims.sub}?q={query.q}", Into: name, Fields: []string{"id", "name"}})
	}
	h := newEndpoint(t, &config.Endpoint{Name: "feed", Timeout: config.Duration(5 * time.Second), Backends: backends}, rts)
	r := gatewayRequest("GET", "/feed?q=1")
	info := reqctx.From(r.Context())
	w := &discardWriter{h: http.Header{}}
	const budget = 50 // measured 34: 18 are the in-memory backends', and the user is the same each time, so the targets' strings are reused
	got := testing.AllocsPerRun(200, func() {
		info.Start = time.Now()
		clear(w.h)
		h.ServeHTTP(w, r)
	})
	if w.code != http.StatusOK {
		t.Fatalf("status %d", w.code)
	}
	if got > budget {
		t.Fatalf("%.0f allocations per request, budget %d", got, budget)
	}
	t.Logf("%.0f allocations per six-backend request", got)
}

// BenchmarkShape50KBViaMaps is the baseline the token-level shaper
// replaces: decode into maps (UseNumber, so ids survive), select the same
// fields, encode again. Only for comparison.
func BenchmarkShape50KBViaMaps(b *testing.B) {
	body := feedBody(50 << 10)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.UseNumber()
		var doc map[string]any
		if err := dec.Decode(&doc); err != nil {
			b.Fatal(err)
		}
		items, _ := doc["items"].([]any)
		out := make([]any, 0, len(items))
		for _, it := range items {
			m, _ := it.(map[string]any)
			author, _ := m["author"].(map[string]any)
			out = append(out, map[string]any{"id": m["id"], "body": m["text"], "author": map[string]any{"name": author["name"]}})
		}
		if _, err := json.Marshal(map[string]any{"items": out}); err != nil {
			b.Fatal(err)
		}
	}
}

// backendProcessEnv makes the test binary, started again by
// startBackendProcess, serve backends instead of running tests: its value
// is "N,DELAY".
const backendProcessEnv = "PORTICO_AGGREGATE_BACKENDS"

// TestBackendProcess only serves, in the child process that
// startBackendProcess starts: N JSON backends that each wait DELAY before
// answering about 100 bytes. It prints their addresses on one line and
// exits when its standard input closes.
func TestBackendProcess(t *testing.T) {
	spec := os.Getenv(backendProcessEnv)
	if spec == "" {
		t.Skip("only serves as the benchmarks' backend process")
	}
	ns, ds, _ := strings.Cut(spec, ",")
	n, err := strconv.Atoi(ns)
	if err != nil {
		t.Fatal(err)
	}
	delay, err := time.ParseDuration(ds)
	if err != nil {
		t.Fatal(err)
	}
	addrs := make([]string, n)
	for i := range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		body := fmt.Sprintf(`{"id":%d,"name":"svc %d","status":"ok","items":[1,2,3,4,5,6,7],"nested":{"a":{"b":"c"}},"pad":"xx"}`, i, i)
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			time.Sleep(delay)
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, body)
		})}
		go func() { _ = srv.Serve(ln) }()
		addrs[i] = ln.Addr().String()
	}
	fmt.Println(strings.Join(addrs, " "))
	_, _ = io.Copy(io.Discard, os.Stdin)
	os.Exit(0)
}

// startBackendProcess runs n backends answering after delay in a child
// process, so that this process's CPU time is the gateway side's alone.
func startBackendProcess(b *testing.B, n int, delay time.Duration) []string {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestBackendProcess$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%d,%s", backendProcessEnv, n, delay))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = stdin.Close()
		_ = cmd.Wait()
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		b.Fatalf("backend process: %v", err)
	}
	addrs := strings.Fields(line)
	if len(addrs) != n {
		b.Fatalf("backend process printed %q", line)
	}
	return addrs
}

// BenchmarkFanOut6Sleep5ms prices one merged request as the gateway pays
// for it: six backends in another process that each take 5ms (so every
// backend call parks on the network, as in production), 16 concurrent
// clients. cpu-ns/op is this process's CPU time per merged request. The
// -1client variants send one request at a time and report its latency.
//
//   - pools: the endpoint over the real upstream pools with the config
//     defaults, as the gateway runs it: the handler's goroutine writes the
//     six requests, then reads the answers in turn;
//   - workers: the same pools used as plain round trippers, each call on a
//     parked worker goroutine (the design before pools could send), which
//     prices sending;
//   - goroutines: as workers, with a goroutine started per backend call
//     instead, which prices the workers;
//   - transport: the endpoint over one bare http.Transport, which prices the
//     endpoint's own work apart from the pools';
//   - floor: the least a Go fan-out can cost: six fresh goroutines, each a
//     Transport.RoundTrip and io.ReadAll, and the bodies appended.
func BenchmarkFanOut6Sleep5ms(b *testing.B) {
	addrs := startBackendProcess(b, 6, 5*time.Millisecond)
	tr := &http.Transport{MaxIdleConnsPerHost: 1024}
	b.Cleanup(tr.CloseIdleConnections)

	// The pools, as the gateway builds them from a config with defaults.
	var yaml strings.Builder
	yaml.WriteString("version: 1\nupstreams:\n")
	for i, a := range addrs {
		fmt.Fprintf(&yaml, "  svc%d: {targets: [{url: \"http://%s\"}]}\n", i, a)
	}
	yaml.WriteString("bffs:\n  mobile:\n    prefix: /mobile\n    public: true\n    endpoints:\n" +
		"      - {name: feed, path: /feed, method: GET, timeout: 5s, backends: [\n")
	for i := range addrs {
		fmt.Fprintf(&yaml, "          {upstream: svc%d, path: \"/item/{claims.sub}\", into: svc%d, fields: [id, name, status]},\n", i, i)
	}
	yaml.WriteString("        ]}\n")
	cfg, err := config.LoadBytes("bench.yaml", []byte(yaml.String()))
	if err != nil {
		b.Fatalf("%v\n%s", err, yaml.String())
	}
	rts := applyPools(b, cfg.Upstreams)
	bff := cfg.BFFs["mobile"]
	// Behind roundTripOnly a pool cannot send, so every call goes to a
	// worker.
	rtOnly := make(map[string]http.RoundTripper, len(rts))
	for name, rt := range rts {
		rtOnly[name] = roundTripOnly{rt}
	}
	endpointOver := func(b *testing.B, rts map[string]http.RoundTripper) *endpoint {
		h, err := NewEndpoint(bff, bff.Endpoints[0], Deps{Upstreams: rts})
		if err != nil {
			b.Fatal(err)
		}
		return h.(*endpoint)
	}

	cases := []struct {
		name    string
		handler func(b *testing.B) http.Handler
	}{
		{"pools", func(b *testing.B) http.Handler { return endpointOver(b, rts) }},
		{"workers", func(b *testing.B) http.Handler { return endpointOver(b, rtOnly) }},
		{"goroutines", func(b *testing.B) http.Handler {
			e := endpointOver(b, rtOnly)
			e.workers = nil
			return e
		}},
		{"transport", func(b *testing.B) http.Handler {
			// The endpoint puts the upstream's name where the host goes, so
			// naming each upstream by its address lets a bare Transport serve.
			rts := map[string]http.RoundTripper{}
			var backends []*config.Backend
			for i, a := range addrs {
				rts[a] = tr
				backends = append(backends, &config.Backend{Upstream: a, Path: "/item/{claims.sub}",
					Into: fmt.Sprintf("svc%d", i), Fields: []string{"id", "name", "status"}})
			}
			return newEndpoint(b, &config.Endpoint{Name: "feed", Timeout: config.Duration(5 * time.Second), Backends: backends}, rts)
		}},
		{"floor", func(b *testing.B) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				bodies := make([][]byte, len(addrs))
				var wg sync.WaitGroup
				for i, a := range addrs {
					wg.Add(1)
					go func() {
						defer wg.Done()
						req, err := http.NewRequestWithContext(r.Context(), "GET", "http://"+a+"/item/u42", nil)
						if err != nil {
							return
						}
						resp, err := tr.RoundTrip(req)
						if err != nil {
							return
						}
						bodies[i], _ = io.ReadAll(resp.Body)
						resp.Body.Close()
					}()
				}
				wg.Wait()
				out := []byte{'{'}
				for i, body := range bodies {
					if body == nil {
						w.WriteHeader(http.StatusBadGateway)
						return
					}
					if i > 0 {
						out = append(out, ',')
					}
					out = append(out, fmt.Sprintf("%q:", addrs[i])...)
					out = append(out, body...)
				}
				out = append(out, '}')
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusOK)
				_, _ = w.Write(out)
			})
		}},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) { benchClients(b, c.handler(b)) })
	}
	for _, c := range cases {
		b.Run(c.name+"-1client", func(b *testing.B) { benchOneClient(b, c.handler(b)) })
	}
}

// roundTripOnly hides every method of a round tripper but RoundTrip.
type roundTripOnly struct{ rt http.RoundTripper }

func (r roundTripOnly) RoundTrip(req *http.Request) (*http.Response, error) {
	return r.rt.RoundTrip(req)
}

// benchOneClient drives h from one client, a request at a time, and reports
// the median and 99th percentile of its latency: the added latency at one
// connection that the BFF target is about, without the front server.
func benchOneClient(b *testing.B, h http.Handler) {
	r := gatewayRequest("GET", "/mobile/feed")
	r.Header.Set("Traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
	info := reqctx.From(r.Context())
	w := &discardWriter{h: http.Header{}}
	var took []time.Duration
	for b.Loop() {
		start := time.Now()
		info.Start = start
		clear(w.h)
		h.ServeHTTP(w, r)
		took = append(took, time.Since(start))
		if w.code != http.StatusOK {
			b.Fatalf("status %d: %v", w.code, w.h)
		}
	}
	slices.Sort(took)
	b.ReportMetric(float64(took[len(took)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(took[len(took)*99/100].Microseconds()), "p99-µs")
}

// benchClients drives h from 16 concurrent clients and reports this
// process's CPU time per request.
func benchClients(b *testing.B, h http.Handler) {
	b.SetParallelism(max(1, 16/runtime.GOMAXPROCS(0)))
	b.ReportAllocs()
	cpu0, ok := processCPU()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		r := gatewayRequest("GET", "/mobile/feed")
		r.Header.Set("Traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
		info := reqctx.From(r.Context())
		w := &discardWriter{h: http.Header{}}
		for pb.Next() {
			info.Start = time.Now()
			clear(w.h)
			h.ServeHTTP(w, r)
			if w.code != http.StatusOK {
				b.Errorf("status %d: %v", w.code, w.h)
				return
			}
		}
	})
	b.StopTimer()
	if cpu1, ok1 := processCPU(); ok && ok1 && b.N > 0 {
		b.ReportMetric(float64(cpu1-cpu0)/float64(b.N), "cpu-ns/op")
	}
}
