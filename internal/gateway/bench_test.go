package gateway

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"testing"

	"github.com/portico-gw/portico/internal/config"
	"github.com/portico-gw/portico/internal/proxy"
	"github.com/portico-gw/portico/internal/upstream"
)

// BenchmarkPlainRoute measures the gateway's whole request path for a plain
// public route (request id, client IP, path cleaning, routing, telemetry,
// proxy, upstream pool) against a real upstream over loopback. The HTTP
// server's own cost is left out: the gateway is called as a handler.
func BenchmarkPlainRoute(b *testing.B) {
	up := benchUpstream(b)
	dir := b.TempDir()
	path := filepath.Join(dir, "gw.yaml")
	os.WriteFile(path, []byte(fmt.Sprintf(baseConfig, up.URL)), 0o644)
	cfg, err := config.Load(path)
	if err != nil {
		b.Fatal(err)
	}
	gw, err := New(cfg, Options{AccessLog: io.Discard})
	if err != nil {
		b.Fatal(err)
	}
	defer gw.Close()
	serveParallel(b, gw)
}

// BenchmarkBareProxy is the floor for BenchmarkPlainRoute: the same proxy
// stage and upstream pool with nothing around them (no request id, routing,
// telemetry, access log). The ratio of the two is what the gateway's edge
// work costs per request.
func BenchmarkBareProxy(b *testing.B) {
	up := benchUpstream(b)
	cfg, err := config.LoadBytes("bench.yaml", []byte(fmt.Sprintf(baseConfig, up.URL)))
	if err != nil {
		b.Fatal(err)
	}
	reg := upstream.NewRegistry(upstream.Deps{})
	defer reg.Close()
	pools, err := reg.Apply(cfg.Upstreams)
	if err != nil {
		b.Fatal(err)
	}
	target, _ := url.Parse(up.URL)
	h, err := proxy.New(proxy.Config{Route: "echo", Backends: []proxy.Backend{{Name: "echo", Weight: 1, Transport: pools["echo"], Target: target}}},
		proxy.Deps{BufferPool: proxy.NewBufferPool()})
	if err != nil {
		b.Fatal(err)
	}
	serveParallel(b, h)
}

// benchUpstream answers every request with a 100-byte JSON body.
func benchUpstream(b *testing.B) *httptest.Server {
	body := []byte(`{"id":12345,"name":"portico bench","ok":true,"tags":["a","b"],"note":"one hundred byte body ....."}`)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(body)
	}))
	b.Cleanup(up.Close)
	return up
}

// serveParallel sends GET /api/small to h from every benchmark goroutine.
func serveParallel(b *testing.B, h http.Handler) {
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			// A server's request context can be canceled; so is this one,
			// so that what hangs off cancellation (the upstream client's
			// hook) is paid here as in production.
			ctx, cancel := context.WithCancel(context.Background())
			req := httptest.NewRequestWithContext(ctx, http.MethodGet, "http://gw/api/small", nil)
			req.RemoteAddr = "127.0.0.1:12345"
			w := httptest.NewRecorder()
			h.ServeHTTP(w, req)
			cancel()
			if w.Code != 200 {
				b.Fatalf("status %d", w.Code)
			}
		}
	})
}
