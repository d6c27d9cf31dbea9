package faults

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// A client that gives up while the upstream is slow is counted as 499
// (client gone), not as a gateway failure, and not logged as a warning.
func TestClientGone(t *testing.T) {
	t.Parallel()
	hang := startRaw(t, func(c net.Conn, stop <-chan struct{}) {
		_ = readRequestHead(c)
		<-stop
	})
	p := start(t, header+fmt.Sprintf(`upstreams:
  hang: {targets: [{url: %q}], timeout: 10s, retries: 0}
routes:
  - {name: gone, match: {path: "/*"}, upstream: hang, public: true}
`, hang.URL()))
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.Base+"/x", nil)
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	if resp, err := (&http.Client{Transport: tr}).Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("got %d from a hanging upstream", resp.StatusCode)
	} else if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("client error %v", err)
	}
	var m Metrics
	deadline := time.Now().Add(5 * time.Second)
	for {
		m = scrape(t, p)
		if m.Sum("portico_requests_total", map[string]string{"route": "gone"}) >= 1 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if v := m.Sum("portico_requests_total", map[string]string{"route": "gone", "code": "499"}); v != 1 {
		t.Errorf("portico_requests_total{code=499} = %v:\n%s", v, m.Series("portico_requests_total"))
	}
	if n := len(p.Stderr.Find("proxy exchange failed", nil)); n != 0 {
		t.Errorf("a client going away was logged as a proxy failure (%d lines)", n)
	}
}

// Beyond max_inflight the upstream is shielded: 503 problem+json at once,
// while the requests already in flight complete.
func TestLoadShedding(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	arrived := make(chan struct{}, 8)
	up, err := StartTarget("127.0.0.1:0", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		select {
		case <-release:
		case <-r.Context().Done():
		}
		_, _ = io.WriteString(w, "done")
	}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(up.Kill)
	p := start(t, header+fmt.Sprintf(`upstreams:
  small: {targets: [{url: %q}], max_inflight: 2, timeout: 10s}
routes:
  - {name: shed, match: {path: "/*"}, upstream: small, public: true}
`, up.URL()))
	c := client(t)
	done := make(chan int, 2)
	for i := 0; i < 2; i++ {
		go func() {
			resp, err := c.Get(p.Base + "/slow")
			if err != nil {
				done <- 0
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			done <- resp.StatusCode
		}()
	}
	for i := 0; i < 2; i++ {
		select {
		case <-arrived:
		case <-time.After(10 * time.Second):
			t.Fatal("the first requests never reached the upstream")
		}
	}
	begin := time.Now()
	resp, body := get(t, c, p.Base+"/third", nil)
	if _, err := checkProblem(resp, body, http.StatusServiceUnavailable); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(begin); d > time.Second {
		t.Errorf("shedding took %v, want at once", d)
	}
	close(release)
	for i := 0; i < 2; i++ {
		if s := <-done; s != http.StatusOK {
			t.Errorf("in-flight request: %d", s)
		}
	}
	m := scrape(t, p)
	if v := m.Sum("portico_requests_total", map[string]string{"route": "shed", "code": "503"}); v != 1 {
		t.Errorf("portico_requests_total{code=503} = %v, want 1", v)
	}
}
