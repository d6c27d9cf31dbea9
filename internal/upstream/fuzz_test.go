package upstream

import (
	"net/http"
	"testing"

	"github.com/portico-gw/portico/internal/config"
)

// FuzzConfigParsers feeds arbitrary target URLs and hash keys to the
// parsers Apply relies on: they must reject or accept, never panic, and an
// accepted target must be usable by the balancers.
func FuzzConfigParsers(f *testing.F) {
	f.Add("http://127.0.0.1:8080", "header:X-User-Id")
	f.Add("h2c://[::1]:9000", "ip")
	f.Add("HTTPS://api.example.com", "claim:sub")
	f.Add("http://", "header:")
	f.Fuzz(func(t *testing.T, rawURL, key string) {
		pt, err := parseTarget(config.Target{URL: rawURL, Weight: 1})
		if err == nil && (pt.host == "" || (pt.scheme != "http" && pt.scheme != "https")) {
			t.Fatalf("accepted %q as %+v", rawURL, pt)
		}
		hk, err := parseHashKey(key)
		if err != nil {
			return
		}
		r := newRingHash([]int{1, 2}, []string{"a", "b"}, hk)
		req, _ := http.NewRequest(http.MethodGet, "http://x/", nil)
		req.Header.Set("X-User-Id", key)
		ts := testTargets(2)
		if i := r.pick(req, pickCtx{targets: ts}); i < 0 || i > 1 {
			t.Fatalf("pick %d", i)
		}
	})
}
