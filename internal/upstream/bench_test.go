package upstream

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/portico-gw/portico/internal/config"
)

// BenchmarkRoundTrip compares a request through a Pool (balancer, breaker,
// passive health, retry bookkeeping, per-attempt timer, metrics) with the
// same request on a bare tuned http.Transport to the same loopback server.
func BenchmarkRoundTrip(b *testing.B) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ok")
	}))
	defer srv.Close()
	reg := NewRegistry(Deps{})
	defer reg.Close()
	pools, err := reg.Apply(map[string]*config.Upstream{"u": {
		Targets: targets(srv.URL), Retries: ptr(1), Timeout: config.Duration(5 * time.Second), MaxInflight: 1000,
		Passive:        &config.Passive{ConsecutiveFailures: 5, Ejection: config.Duration(30 * time.Second)},
		CircuitBreaker: &config.CircuitBreaker{FailureRatio: 0.5, MinRequests: 20, OpenFor: config.Duration(10 * time.Second)},
	}})
	if err != nil {
		b.Fatal(err)
	}
	direct := newTransports(transportSpec{connectTimeout: time.Second}).std
	defer direct.CloseIdleConnections()
	for _, bc := range []struct {
		name string
		rt   http.RoundTripper
	}{{"direct", direct}, {"pool", pools["u"]}} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				req, _ := http.NewRequest(http.MethodGet, srv.URL+"/x", nil)
				res, err := bc.rt.RoundTrip(req)
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, res.Body)
				res.Body.Close()
			}
		})
	}
}
