package aggregate

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/portico-gw/portico/internal/config"
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
type discardWriter struct{ h http.Header }

func (d *discardWriter) Header() http.Header         { return d.h }
func (d *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (d *discardWriter) WriteHeader(int)             {}

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
	w := &discardWriter{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		clear(w.h)
		h.ServeHTTP(w, r)
	}
}
