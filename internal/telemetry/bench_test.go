package telemetry

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"
	"time"

	"github.com/portico-gw/portico/internal/reqctx"
)

// discardWriter is a ResponseWriter that costs nothing, so the benchmark
// measures the middleware and not a recorder.
type discardWriter struct{ h http.Header }

func (d *discardWriter) Header() http.Header         { return d.h }
func (d *discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (d *discardWriter) WriteHeader(int)             {}

// nopSLO stands in for the SLO engine's hook (the slo package benchmarks
// its own observer).
type nopSLO struct{}

func (nopSLO) Observer(string) func(int, time.Duration, time.Time) {
	return func(int, time.Duration, time.Time) {}
}

func (nopSLO) ForgetRoute(string) {}

func BenchmarkMiddleware(b *testing.B) {
	body := []byte("ok")
	bare := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		_, _ = w.Write(body)
	})
	for _, bc := range []struct {
		name      string
		wrap      bool
		accessLog bool
	}{
		{"bare", false, false},
		{"telemetry", true, false},
		{"telemetry+accesslog", true, true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			tel := New(Deps{AccessLog: io.Discard, AccessLogBuffer: 1 << 16})
			defer tel.Close()
			tel.SetSLO(nopSLO{})
			tel.SetAccessLog(bc.accessLog)
			var h http.Handler = bare
			if bc.wrap {
				h = tel.Middleware("bench")(bare)
			}
			req := httptest.NewRequest("GET", "/api/posts/1?token=secret&page=2", nil)
			info := &reqctx.Info{RequestID: "0123456789abcdef", ClientIP: netip.MustParseAddr("192.0.2.1"), Upstream: "posts"}
			req = req.WithContext(reqctx.With(req.Context(), info))
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				// Each goroutine owns its request, as each connection does:
				// the stage writes the traceparent into the inbound headers.
				req := req.Clone(req.Context())
				w := &discardWriter{h: http.Header{}}
				for pb.Next() {
					h.ServeHTTP(w, req)
				}
			})
		})
	}
}

// BenchmarkStatsRecord is the live-statistics share of a request.
func BenchmarkStatsRecord(b *testing.B) {
	var rs routeStats
	now := time.Now()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			i++
			rs.record(now, 200, time.Duration(i%1000)*time.Microsecond)
		}
	})
}

// BenchmarkMiddlewareGRPC is the stage on a gRPC call over HTTP/2 whose
// grpc-status arrives as a trailer: reading and mapping it must not
// allocate.
func BenchmarkMiddlewareGRPC(b *testing.B) {
	status := []string{"5"} // NOT_FOUND; shared so the handler allocates nothing
	h := func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		w.Header()[trailerGRPCStatus] = status
	}
	tel := New(Deps{AccessLog: io.Discard})
	defer tel.Close()
	tel.SetSLO(nopSLO{})
	tel.SetAccessLog(false)
	mw := tel.Middleware("bench")(http.HandlerFunc(h))
	req := httptest.NewRequest("POST", "/pkg.Svc/Method", nil)
	req.ProtoMajor, req.ProtoMinor, req.Proto = 2, 0, "HTTP/2.0"
	req.Header.Set("Content-Type", "application/grpc")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		req := req.Clone(req.Context())
		w := &discardWriter{h: http.Header{}}
		for pb.Next() {
			mw.ServeHTTP(w, req)
		}
	})
}
