package proxy

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"testing"

	"github.com/portico-gw/portico/internal/config"
	"github.com/portico-gw/portico/internal/reqctx"
)

// discardWriter is a ResponseWriter that keeps nothing but a reused header
// map, so the benchmark counts the proxy's allocations, not a recorder's.
type discardWriter struct {
	h    http.Header
	code int
}

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *discardWriter) WriteHeader(code int)        { w.code = code }

// BenchmarkProxy measures one proxied GET with a 100-byte answer: the
// handler, ReverseProxy and the client transport, against a real upstream
// on loopback (whose own cost is in the figure too).
func BenchmarkProxy(b *testing.B) {
	body := []byte(`{"id":42,"name":"portico","tags":["a","b","c"],"text":"a hundred bytes of json for the bench"}`)
	be := upstream(b, "posts", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	})
	be.Transport.(*http.Transport).MaxIdleConnsPerHost = 64
	for _, bc := range []struct {
		name string
		cfg  Config
	}{
		{"plain", Config{Route: "r", Backends: []Backend{be}}},
		{"features", Config{Route: "r", Backends: []Backend{be},
			Rewrite:         &config.Rewrite{Path: "/v1/posts/{id}"},
			RequestHeaders:  &config.HeaderRules{Set: map[string]string{"X-From": "portico"}, Remove: []string{"Cookie"}},
			ResponseHeaders: &config.HeaderRules{Set: map[string]string{"X-Frame-Options": "DENY"}},
			Timeout:         config.Duration(5e9), MaxBodyBytes: 1 << 20,
			TrustedProxies: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			h, err := New(bc.cfg, Deps{BufferPool: NewBufferPool()})
			if err != nil {
				b.Fatal(err)
			}
			info := &reqctx.Info{RequestID: "bench-1", Params: []reqctx.Param{{Key: "id", Value: "42"}}}
			r := httptest.NewRequest("GET", "http://gw.test/api/posts/42?x=1", nil)
			r.RemoteAddr = "192.0.2.7:5555"
			r = r.WithContext(reqctx.With(r.Context(), info))
			w := &discardWriter{h: http.Header{}}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				clear(w.h)
				h.ServeHTTP(w, r)
				if w.code != 200 {
					b.Fatalf("status %d", w.code)
				}
			}
		})
	}
	// The same exchange without the proxy: the transport calling the
	// upstream directly. The difference to "plain" is the proxy's cost.
	b.Run("direct", func(b *testing.B) {
		req, _ := http.NewRequest("GET", be.Target.String()+"/api/posts/42?x=1", nil)
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			resp, err := be.Transport.RoundTrip(req)
			if err != nil {
				b.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	})
}

// cannedTransport answers every request with the same small response,
// without a network, so measurements show the proxy's own cost.
type cannedTransport struct{ body []byte }

func (c *cannedTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	return &http.Response{
		StatusCode: 200, ProtoMajor: 1, ProtoMinor: 1, Request: r, ContentLength: int64(len(c.body)),
		Header: http.Header{"Content-Type": {"application/json"}},
		Body:   io.NopCloser(bytes.NewReader(c.body)),
	}, nil
}

func cannedHandler(tb testing.TB, cfg Config) (http.Handler, *http.Request) {
	u, _ := url.Parse("http://127.0.0.1:9")
	cfg.Backends = []Backend{{Name: "posts", Weight: 1, Transport: &cannedTransport{body: make([]byte, 100)}, Target: u}}
	h, err := New(cfg, Deps{BufferPool: NewBufferPool()})
	if err != nil {
		tb.Fatal(err)
	}
	info := &reqctx.Info{RequestID: "bench-1", Params: []reqctx.Param{{Key: "id", Value: "42"}}}
	r := httptest.NewRequest("GET", "http://gw.test/api/posts/42?x=1", nil)
	r.RemoteAddr = "192.0.2.7:5555"
	return h, r.WithContext(reqctx.With(r.Context(), info))
}

// BenchmarkProxyOverhead is the handler plus ReverseProxy against a
// transport that answers at once: the cost the gateway adds per request.
func BenchmarkProxyOverhead(b *testing.B) {
	h, r := cannedHandler(b, Config{Route: "r"})
	w := &discardWriter{h: http.Header{}}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		clear(w.h)
		h.ServeHTTP(w, r)
	}
}

// TestAllocationBudget keeps the proxy's per-request allocations (its own
// and ReverseProxy's, without the network) from creeping up.
func TestAllocationBudget(t *testing.T) {
	for _, tc := range []struct {
		name   string
		cfg    Config
		budget float64
	}{
		{"plain", Config{}, 14},
		{"timeout and rewrite", Config{Timeout: config.Duration(5e9), Rewrite: &config.Rewrite{Path: "/v1/{id}"}}, 19},
	} {
		h, r := cannedHandler(t, tc.cfg)
		w := &discardWriter{h: http.Header{}}
		allocs := testing.AllocsPerRun(200, func() {
			clear(w.h)
			h.ServeHTTP(w, r)
		})
		t.Logf("%s: %v allocs per request", tc.name, allocs)
		if allocs > tc.budget {
			t.Errorf("%s: %v allocs per request, budget %v", tc.name, allocs, tc.budget)
		}
	}
}
