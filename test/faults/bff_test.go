package faults

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// BFF endpoints facing misbehaving backends: an optional backend that hangs
// is left out and named in Portico-Partial within the endpoint timeout; a
// required backend that answers garbage, or JSON nested deeper than the
// limit, fails the endpoint with 502 problem+json naming it.
func TestBFFBackendFaults(t *testing.T) {
	t.Parallel()
	good, err := StartTarget("127.0.0.1:0", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if r.URL.Path == "/deep" {
			_, _ = io.WriteString(w, strings.Repeat("[", 200)+strings.Repeat("]", 200))
			return
		}
		_, _ = io.WriteString(w, `{"id":9007199254740993,"name":"Ada"}`)
	}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(good.Kill)
	hang := startRaw(t, func(c net.Conn, stop <-chan struct{}) {
		_ = readRequestHead(c)
		<-stop
	})
	garbage := startRaw(t, func(c net.Conn, _ <-chan struct{}) {
		if readRequestHead(c) == nil {
			_, _ = io.WriteString(c, "\x16\x03\x01 definitely not http\r\n\r\n")
		}
	})
	p := start(t, header+fmt.Sprintf(`upstreams:
  good: {targets: [{url: %q}]}
  hang: {targets: [{url: %q}], retries: 0}
  garbage: {targets: [{url: %q}], retries: 0}
bffs:
  app:
    prefix: /app
    public: true
    endpoints:
      - name: partial
        path: /partial
        timeout: 1s
        backends:
          - {upstream: good, path: /u, into: user}
          - {name: slow, upstream: hang, path: /x, into: slow, optional: true}
      - name: broken
        path: /broken
        backends:
          - {upstream: good, path: /u, into: user}
          - {name: bad, upstream: garbage, path: /x, into: bad}
      - name: deep
        path: /deep
        backends:
          - {name: nested, upstream: good, path: /deep, into: d}
`, good.URL(), hang.URL(), garbage.URL()))
	c := client(t)

	t.Run("optional backend hangs", func(t *testing.T) {
		begin := time.Now()
		resp, body := get(t, c, p.Base+"/app/partial", nil)
		took := time.Since(begin)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%d %s", resp.StatusCode, body)
		}
		if got := resp.Header.Get("Portico-Partial"); got != "slow" {
			t.Errorf("Portico-Partial %q, want slow", got)
		}
		var v map[string]json.RawMessage
		if err := json.Unmarshal(body, &v); err != nil {
			t.Fatalf("body %q: %v", body, err)
		}
		if _, ok := v["slow"]; ok {
			t.Errorf("the failed optional backend is in the body: %s", body)
		}
		// The 64-bit id keeps its exact digits (no float64 round trip).
		if !strings.Contains(string(v["user"]), "9007199254740993") {
			t.Errorf("user %s", v["user"])
		}
		if took > 2500*time.Millisecond {
			t.Errorf("answered after %v with a 1s endpoint timeout", took)
		}
	})
	for _, tc := range []struct{ path, backend string }{{"/app/broken", "bad"}, {"/app/deep", "nested"}} {
		t.Run(tc.path, func(t *testing.T) {
			resp, body := get(t, c, p.Base+tc.path, nil)
			pb, err := checkProblem(resp, body, http.StatusBadGateway)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(pb.Detail, tc.backend) {
				t.Errorf("detail %q does not name backend %s", pb.Detail, tc.backend)
			}
		})
	}
	m := scrape(t, p)
	if v := m.Sum("portico_requests_total", map[string]string{"route": "app/broken", "code": "502"}); v != 1 {
		t.Errorf("portico_requests_total{route=app/broken,code=502} = %v:\n%s", v, m.Series("portico_requests_total"))
	}
}
