package gateway

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/portico-gw/portico/internal/config"
)

// BenchmarkPlainRoute measures the gateway's whole request path for a plain
// public route (request id, client IP, path cleaning, routing, telemetry,
// proxy, upstream pool) against a real upstream over loopback. The HTTP
// server's own cost is left out: the gateway is called as a handler.
func BenchmarkPlainRoute(b *testing.B) {
	body := []byte(`{"id":12345,"name":"portico bench","ok":true,"tags":["a","b"],"note":"one hundred byte body ....."}`)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(body)
	}))
	defer up.Close()
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
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req := httptest.NewRequest(http.MethodGet, "http://gw/api/small", nil)
			req.RemoteAddr = "127.0.0.1:12345"
			w := httptest.NewRecorder()
			gw.ServeHTTP(w, req)
			if w.Code != 200 {
				b.Fatalf("status %d", w.Code)
			}
		}
	})
}
