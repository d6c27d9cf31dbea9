package telemetry

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	coltrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/portico-gw/portico/internal/config"
	"github.com/portico-gw/portico/internal/reqctx"
	"github.com/portico-gw/portico/internal/upstream"
)

// otlpReceiver is an OTLP/HTTP trace endpoint that decodes what it gets.
type otlpReceiver struct {
	mu       sync.Mutex
	requests int
	spans    []string // span names
	kinds    []int32
	bad      []string
}

func (o *otlpReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	o.mu.Lock()
	defer o.mu.Unlock()
	o.requests++
	if r.URL.Path != "/v1/traces" || r.Header.Get("Content-Type") != "application/x-protobuf" || len(body) == 0 {
		o.bad = append(o.bad, r.URL.Path+" "+r.Header.Get("Content-Type"))
	}
	var req coltrace.ExportTraceServiceRequest
	if err := proto.Unmarshal(body, &req); err != nil {
		o.bad = append(o.bad, err.Error())
	}
	for _, rs := range req.ResourceSpans {
		for _, ss := range rs.ScopeSpans {
			for _, s := range ss.Spans {
				o.spans = append(o.spans, s.Name)
				o.kinds = append(o.kinds, int32(s.Kind))
			}
		}
	}
	w.WriteHeader(200)
}

// tracedGateway: a route that calls an upstream through TraceTransport and
// reports the traceparent the upstream saw and the request's trace id.
type tracedGateway struct {
	srv, upstream *httptest.Server
	mu            sync.Mutex
	seen          []string // traceparent at the upstream
	traceIDs      []string // reqctx.Info.TraceID
}

// The upstream is called with RoundTrip, or, viaSend, through an upstream
// pool's Send and Wait as a BFF calls its backends.
func newTracedGateway(t *testing.T, tel *Telemetry, viaSend bool) *tracedGateway {
	g := &tracedGateway{}
	g.upstream = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		g.mu.Lock()
		g.seen = append(g.seen, r.Header.Get("Traceparent"))
		g.mu.Unlock()
	}))
	rt, target := tel.TraceTransport("posts", http.DefaultTransport), g.upstream.URL
	if viaSend {
		cfg, err := config.LoadBytes("pools.yaml", []byte("version: 1\nupstreams:\n  posts: {targets: [{url: \""+g.upstream.URL+"\"}]}\n"))
		if err != nil {
			t.Fatal(err)
		}
		reg := upstream.NewRegistry(upstream.Deps{})
		t.Cleanup(reg.Close)
		pools, err := reg.Apply(cfg.Upstreams)
		if err != nil {
			t.Fatal(err)
		}
		rt, target = tel.TraceTransport("posts", pools["posts"]), "http://posts/"
	}
	route := tel.Middleware("posts-api")(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req, _ := http.NewRequestWithContext(r.Context(), "GET", target, nil)
		req.Header.Set("Traceparent", r.Header.Get("Traceparent")) // as a proxy copies it
		var resp *http.Response
		var err error
		if viaSend {
			s := rt.(upstream.Sender)
			c, ok := s.Send(req)
			if !ok {
				t.Error("the traced pool did not send")
				return
			}
			resp, err = c.Wait()
		} else {
			resp, err = rt.RoundTrip(req)
		}
		if err != nil {
			t.Error(err)
			return
		}
		resp.Body.Close()
		g.mu.Lock()
		g.traceIDs = append(g.traceIDs, reqctx.From(r.Context()).TraceID)
		g.mu.Unlock()
	}))
	g.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		route.ServeHTTP(w, r.WithContext(reqctx.With(r.Context(), &reqctx.Info{})))
	}))
	return g
}

func (g *tracedGateway) close() { g.srv.Close(); g.upstream.Close() }

func (g *tracedGateway) get(t *testing.T, traceparent string) {
	req, _ := http.NewRequest("GET", g.srv.URL, nil)
	if traceparent != "" {
		req.Header.Set("Traceparent", traceparent)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
}

const inbound = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

func checkPropagation(t *testing.T, g *tracedGateway) {
	t.Helper()
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.seen) != 2 {
		t.Fatalf("upstream saw %d requests", len(g.seen))
	}
	// Continued: same trace id, our own parent id, sampled flag kept.
	p := strings.Split(g.seen[0], "-")
	if len(p) != 4 || p[1] != "4bf92f3577b34da6a3ce929d0e0e4736" || p[2] == "00f067aa0ba902b7" || p[3] != "01" {
		t.Errorf("continued traceparent = %q", g.seen[0])
	}
	if g.traceIDs[0] != "4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Errorf("info.TraceID = %q", g.traceIDs[0])
	}
	// Started: a fresh valid trace, the same id in reqctx.
	p = strings.Split(g.seen[1], "-")
	if len(p) != 4 || len(p[1]) != 32 || p[1] != g.traceIDs[1] || p[1] == "4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Errorf("started traceparent = %q, trace id %q", g.seen[1], g.traceIDs[1])
	}
}

func TestTraceContextWithoutExport(t *testing.T) {
	for _, viaSend := range []bool{false, true} {
		t.Run(map[bool]string{false: "RoundTrip", true: "Send"}[viaSend], func(t *testing.T) {
			tel := New(Deps{AccessLog: io.Discard})
			defer tel.Close()
			g := newTracedGateway(t, tel, viaSend)
			defer g.close()
			g.get(t, inbound)
			g.get(t, "00-00000000000000000000000000000000-00f067aa0ba902b7-01") // invalid: a new trace
			checkPropagation(t, g)
		})
	}
}

func TestTraceExportOTLP(t *testing.T) {
	for _, tc := range []struct {
		name      string
		ratio     float64
		wantSpans int
		viaSend   bool
	}{
		// Two requests, each a server and a client span. The first request
		// carries a sampled parent, which ParentBased honours at ratio 0.
		{"ratio 1", 1, 4, false},
		{"ratio 0", 0, 2, false},
		{"ratio 1 via Send", 1, 4, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			recv := &otlpReceiver{}
			rs := httptest.NewServer(recv)
			defer rs.Close()
			tel := New(Deps{AccessLog: io.Discard})
			ratio := tc.ratio
			if err := tel.ApplyTracing(&config.Tracing{OTLPEndpoint: rs.URL, SampleRatio: &ratio, ServiceName: "gw-test"}); err != nil {
				t.Fatal(err)
			}
			g := newTracedGateway(t, tel, tc.viaSend)
			g.get(t, inbound)
			g.get(t, "")
			if err := tel.Close(); err != nil { // flushes the exporter
				t.Fatal(err)
			}
			g.close()
			checkPropagation(t, g)
			recv.mu.Lock()
			defer recv.mu.Unlock()
			if len(recv.bad) > 0 {
				t.Errorf("bad exports: %v", recv.bad)
			}
			if len(recv.spans) != tc.wantSpans {
				t.Errorf("exported spans %v, want %d", recv.spans, tc.wantSpans)
			}
			for i, n := range recv.spans {
				if n != "posts-api" && n != "posts" {
					t.Errorf("span %d named %q", i, n)
				}
			}
			rs.CloseClientConnections()
		})
	}
}

// TestReplacingTracingWithTheCollectorFailing: the replaced exporter's
// flush failing (the collector does not answer in time) is logged; the new
// settings are in force and ApplyTracing reports success, so the reload
// is not counted as refused while it changed the tracer.
func TestReplacingTracingWithTheCollectorFailing(t *testing.T) {
	// The collector holds every export until the test ends, so the flush
	// runs out of time.
	release := make(chan struct{})
	stuck := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-release
	}))
	defer stuck.Close()
	defer close(release)
	defer func(d time.Duration) { flushTimeout = d }(flushTimeout)
	flushTimeout = 300 * time.Millisecond
	var logs logBuffer
	tel := New(Deps{AccessLog: io.Discard, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	defer tel.Close()
	if err := tel.ApplyTracing(&config.Tracing{OTLPEndpoint: stuck.URL}); err != nil {
		t.Fatal(err)
	}
	g := newTracedGateway(t, tel, false)
	defer g.close()
	g.get(t, inbound)
	if err := tel.ApplyTracing(nil); err != nil {
		t.Fatalf("replacing the tracer: %v, want success with the flush failure logged", err)
	}
	if tel.tracing.Load().provider != nil {
		t.Error("export still on after ApplyTracing(nil)")
	}
	if !strings.Contains(logs.String(), "flushing the replaced exporter failed") {
		t.Errorf("flush failure not logged: %q", logs.String())
	}
}

func TestApplyTracingErrors(t *testing.T) {
	tel := New(Deps{AccessLog: io.Discard})
	defer tel.Close()
	bad := 1.5
	for _, cfg := range []*config.Tracing{
		{OTLPEndpoint: "127.0.0.1:4318"},
		{OTLPEndpoint: "ftp://x"},
		{OTLPEndpoint: "http://127.0.0.1:4318", SampleRatio: &bad},
	} {
		if err := tel.ApplyTracing(cfg); err == nil {
			t.Errorf("%+v accepted", cfg)
		}
	}
	if err := tel.ApplyTracing(nil); err != nil {
		t.Error(err)
	}
}

func TestParseTraceparent(t *testing.T) {
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{inbound, true},
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", true},
		{"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", true},
		{inbound + "-x", false}, // version 00 has an exact length
		{"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", false},
		{"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", false},
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", false},
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", false},
		{"", false},
	} {
		if _, _, ok := parseTraceparent(tc.in); ok != tc.ok {
			t.Errorf("%q: ok=%v", tc.in, ok)
		}
	}
}
