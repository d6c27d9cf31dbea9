package upstream

import (
	"bufio"
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

// BenchmarkRequestHead compares the lean client's writing of a proxied
// GET's head (scanRequest and writeRequest) with Request.Write, for a
// browser-like request as the reverse proxy forwards it.
func BenchmarkRequestHead(b *testing.B) {
	req, _ := http.NewRequest(http.MethodGet, "http://10.0.0.7:8080/api/v1/posts/42?limit=20&cursor=abc", nil)
	req.Header = http.Header{
		"Accept":            {"application/json"},
		"Accept-Encoding":   {"gzip, deflate, br"},
		"Accept-Language":   {"en-GB,en;q=0.9"},
		"Authorization":     {"Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.c2lnbmF0dXJl"},
		"Cookie":            {"session=abc123; theme=dark"},
		"Referer":           {"https://app.example.com/feed"},
		"User-Agent":        {""},
		"X-Forwarded-For":   {"203.0.113.9"},
		"X-Forwarded-Host":  {"api.example.com"},
		"X-Forwarded-Proto": {"https"},
		"X-Request-Id":      {"3f2a9c1e-0b7d-4e7a-9a51-2c6f1d8e4b03"},
	}
	bw := bufio.NewWriterSize(io.Discard, 4<<10)
	b.Run("lean", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var f headFields
			if lean, err := scanRequest(req, &f); !lean || err != nil {
				b.Fatal(lean, err)
			}
			if err := writeRequest(bw, req, &f); err != nil {
				b.Fatal(err)
			}
			bw.Flush()
		}
	})
	b.Run("Request.Write", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := req.Write(bw); err != nil {
				b.Fatal(err)
			}
			bw.Flush()
		}
	})
}
