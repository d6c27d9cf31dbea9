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
	"time"

	"github.com/portico-gw/portico/internal/auth/authtest"
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
	serveParallel(b, benchGateway(b, b.TempDir(), fmt.Sprintf(baseConfig, up.URL)))
}

// benchGateway loads yaml from a file in dir and builds a gateway from it,
// closed when the benchmark ends.
func benchGateway(b *testing.B, dir, yaml string) *Gateway {
	path := filepath.Join(dir, "gw.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
		b.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		b.Fatal(err)
	}
	gw, err := New(cfg, Options{AccessLog: io.Discard})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(gw.Close)
	return gw
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

// serveParallel sends GET /api/small to h from every benchmark goroutine,
// with the header name and value pairs given.
func serveParallel(b *testing.B, h http.Handler, header ...string) {
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			// A server's request context can be canceled; so is this one,
			// so that what hangs off cancellation (the upstream client's
			// hook) is paid here as in production.
			ctx, cancel := context.WithCancel(context.Background())
			req := httptest.NewRequestWithContext(ctx, http.MethodGet, "http://gw/api/small", nil)
			req.RemoteAddr = "127.0.0.1:12345"
			for i := 0; i+1 < len(header); i += 2 {
				req.Header.Set(header[i], header[i+1])
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, req)
			cancel()
			if w.Code != 200 {
				b.Fatalf("status %d", w.Code)
			}
		}
	})
}

// BenchmarkEdgeRoute is BenchmarkPlainRoute with the full edge pipeline of
// the harness's edge-one-token scenario: a JWT (RS256, one token, so the
// verified-token cache answers) and two memory rate limits that never
// limit. Its ratio to BenchmarkPlainRoute is what the pipeline costs.
func BenchmarkEdgeRoute(b *testing.B) {
	up := benchUpstream(b)
	key := authtest.NewRSAKey(b, "bench", "RS256")
	dir := b.TempDir()
	jwks := filepath.Join(dir, "jwks.json")
	os.WriteFile(jwks, authtest.JWKS(key), 0o644)
	token := authtest.Sign(b, key, map[string]any{
		"iss": "https://id.bench", "aud": "bench", "sub": "user-1", "exp": time.Now().Add(time.Hour).Unix(),
	})
	gw := benchGateway(b, dir, fmt.Sprintf(`version: 1
server: {listen: "127.0.0.1:0"}
admin: {listen: "127.0.0.1:0"}
logging: {access_log: false}
upstreams:
  echo: {targets: [{url: "%s"}]}
auth:
  bench-jwt: {type: jwt, jwks_file: %q, issuer: "https://id.bench", audiences: [bench], algorithms: [RS256]}
rate_limits:
  policies:
    per-ip: {algorithm: token_bucket, rate: 10000000, per: 1s, key: ip}
    per-user: {algorithm: sliding_window_counter, limit: 1000000000, window: 1m, key: "claim:sub"}
routes:
  - name: edge
    match: {path: "/api/*"}
    upstream: echo
    auth: [bench-jwt]
    rate_limit: [per-ip, per-user]
`, up.URL, jwks))
	serveParallel(b, gw, "Authorization", "Bearer "+token)
}
