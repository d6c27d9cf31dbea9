package compress

import (
	"net/http"
	"slices"
	"strings"
	"testing"
)

func FuzzNegotiate(f *testing.F) {
	for _, s := range []string{"gzip, br;q=0.9, zstd;q=0.95", "*;q=0", "identity;q=0, *;q=0.1", "x-gzip;q=1.000", "br;q=0.", ";;,", "gzip;q=0.5;q=1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, ae string) {
		got := Negotiate(ae, all)
		if got != "" && !slices.Contains(all, got) {
			t.Fatalf("Negotiate(%q) = %q, not a preference", ae, got)
		}
		if ae == "" && got != "" {
			t.Fatalf("no header gave %q", got)
		}
		// A chosen coding must be acceptable: named or covered by "*".
		if got != "" {
			lower := strings.ToLower(ae)
			if !strings.Contains(lower, got) && !strings.Contains(lower, "*") {
				t.Fatalf("Negotiate(%q) = %q, which the client never accepted", ae, got)
			}
		}
		// Reordering the preferences never picks a coding the client
		// refused outright.
		rev := slices.Clone(all)
		slices.Reverse(rev)
		if g2 := Negotiate(ae, rev); (g2 == "") != (got == "") {
			t.Fatalf("Negotiate(%q): %q with %v but %q with %v", ae, got, all, g2, rev)
		}
	})
}

type discardWriter struct{ h http.Header }

func (d *discardWriter) Header() http.Header         { return d.h }
func (d *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (d *discardWriter) WriteHeader(int)             {}

func BenchmarkMiddleware(b *testing.B) {
	body := []byte(`{"items":[` + strings.Repeat(`{"id":1234567890123,"text":"hello world, this is a post","author":{"name":"Ann"}},`, 120) + `{"id":0}]}`)
	for _, coding := range []string{Zstd, Brotli, Gzip, "identity"} {
		b.Run(coding, func(b *testing.B) {
			h := middleware(b, all, 1024)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				_, _ = w.Write(body)
			}))
			r, _ := http.NewRequest("GET", "/", nil)
			r.Header.Set("Accept-Encoding", coding)
			w := &discardWriter{h: http.Header{}}
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				clear(w.h)
				h.ServeHTTP(w, r)
			}
		})
	}
}

func BenchmarkNegotiate(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		Negotiate("gzip, deflate, br;q=0.9, zstd;q=0.95", all)
	}
}

// TestAllocationBudget: with pooled encoders and writers, a compressed
// response costs only a handful of small allocations (header values).
func TestAllocationBudget(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops objects at random under the race detector")
	}
	h := middleware(t, all, 1024)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(jsonBody)
	}))
	for _, coding := range all {
		r, _ := http.NewRequest("GET", "/", nil)
		r.Header.Set("Accept-Encoding", coding)
		w := &discardWriter{h: http.Header{}}
		h.ServeHTTP(w, r) // warm the pools
		got := testing.AllocsPerRun(50, func() {
			clear(w.h)
			h.ServeHTTP(w, r)
		})
		if got > 8 {
			t.Errorf("%s: %.0f allocations per response, budget 8", coding, got)
		}
	}
}
