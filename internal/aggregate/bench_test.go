package aggregate

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
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
	const budget = 100 // measured 76 (18 of them the in-memory backends')
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
