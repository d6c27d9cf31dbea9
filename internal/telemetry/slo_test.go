package telemetry

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/portico-gw/portico/internal/config"
	"github.com/portico-gw/portico/internal/slo"
)

// TestSLOCounting feeds the real SLO engine through the middleware: 5xx and
// slow requests are bad, 429/404 and client disconnects are not, and the
// hook survives an SLO reload.
func TestSLOCounting(t *testing.T) {
	clk := newClock()
	tel := New(Deps{AccessLog: io.Discard, Now: clk.Now})
	defer tel.Close()
	eng := slo.NewEngine(slo.Deps{EvaluateEvery: -1, Registerer: tel.Registerer(), Now: clk.Now})
	defer eng.Close()
	if err := eng.Apply([]*config.SLO{{Name: "api", Route: "api", Objective: 99, Latency: config.Duration(300 * time.Millisecond)}}); err != nil {
		t.Fatal(err)
	}
	h := tel.Middleware("api")(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d, _ := time.ParseDuration(r.URL.Query().Get("d"))
		clk.Advance(d)
		switch r.URL.Query().Get("s") {
		case "503":
			w.WriteHeader(503)
		case "429":
			w.WriteHeader(429)
		case "404":
			w.WriteHeader(404)
		case "gone":
			// the client went away before any status
		default:
			w.WriteHeader(200)
		}
	}))
	tel.SetSLO(eng) // after the route was compiled: the hook attaches anyway
	serve := func(q string, n int) {
		for i := 0; i < n; i++ {
			req := httptest.NewRequest("GET", "/?"+q, nil)
			if q == "s=gone&d=1s" {
				ctx, cancel := context.WithCancel(req.Context())
				cancel()
				req = req.WithContext(ctx)
			}
			h.ServeHTTP(httptest.NewRecorder(), req)
		}
	}
	serve("d=10ms", 90)
	serve("s=503&d=1ms", 3)
	serve("d=400ms", 2) // slow: bad
	serve("s=429&d=1ms", 4)
	serve("s=404&d=1ms", 1)
	serve("s=gone&d=1s", 2) // 499, slow, still not bad
	eng.Evaluate(clk.Now())
	st := eng.Snapshot()[0]
	if st.Bad != 5 || st.Good != 97 {
		t.Errorf("good %d bad %d, want 97 and 5", st.Good, st.Bad)
	}
	got, _ := scrape(t, tel)
	if got[`portico_requests_total{code="499",method="GET",route="api"}`] != 2 {
		t.Errorf("499 count = %v", got[`portico_requests_total{code="499",method="GET",route="api"}`])
	}
	if _, ok := got[`portico_slo_error_budget_remaining_ratio{slo="api"}`]; !ok {
		t.Errorf("SLO gauges are not on the telemetry registry")
	}
	// A reload that moves the SLO to another route detaches this one.
	if err := eng.Apply([]*config.SLO{{Name: "api", Route: "other", Objective: 99}}); err != nil {
		t.Fatal(err)
	}
	serve("s=503&d=1ms", 10)
	eng.Evaluate(clk.Now())
	if st := eng.Snapshot()[0]; st.Bad != 5 {
		t.Errorf("after moving the SLO, bad = %d", st.Bad)
	}
}

// BenchmarkMiddlewareWithSLO is the full per-request cost: metrics, live
// statistics, SLO counting with a latency threshold, access log off.
func BenchmarkMiddlewareWithSLO(b *testing.B) {
	tel := New(Deps{AccessLog: io.Discard})
	defer tel.Close()
	eng := slo.NewEngine(slo.Deps{EvaluateEvery: -1, Registerer: tel.Registerer()})
	defer eng.Close()
	if err := eng.Apply([]*config.SLO{{Name: "a", Route: "bench", Objective: 99.9, Latency: config.Duration(300 * time.Millisecond)}}); err != nil {
		b.Fatal(err)
	}
	tel.SetSLO(eng)
	tel.SetAccessLog(false)
	h := tel.Middleware("bench")(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(200) }))
	req := httptest.NewRequest("GET", "/api/posts/1", nil)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		req := req.Clone(req.Context()) // one request per goroutine, as per connection
		w := &discardWriter{h: http.Header{}}
		for pb.Next() {
			h.ServeHTTP(w, req)
		}
	})
}
