package faults

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync/atomic"
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

// A failing upstream opens its breaker: the upstream then sees nothing and
// clients get 503 breaker_open at once; after open_for a probe that
// succeeds closes it again.
func TestCircuitBreaker(t *testing.T) {
	t.Parallel()
	var failing atomic.Bool
	failing.Store(true)
	var hits atomic.Int64
	up, err := StartTarget("127.0.0.1:0", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if failing.Load() {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		_, _ = io.WriteString(w, "ok")
	}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(up.Kill)
	p := start(t, header+fmt.Sprintf(`upstreams:
  flaky:
    targets: [{url: %q}]
    retries: 0
    circuit_breaker: {failure_ratio: 0.5, min_requests: 5, open_for: 1s}
routes:
  - {name: flaky, match: {path: "/*"}, upstream: flaky, public: true}
`, up.URL()))
	c := client(t)
	// Upstream 500s pass through as they are until the breaker opens.
	opened := false
	for i := 0; i < 20 && !opened; i++ {
		resp, body := get(t, c, p.Base+"/x", nil)
		switch resp.StatusCode {
		case http.StatusInternalServerError:
		case http.StatusServiceUnavailable:
			pb, err := checkProblem(resp, body, http.StatusServiceUnavailable)
			if err != nil {
				t.Fatal(err)
			}
			if pb.Type != "urn:portico:problem:breaker_open" {
				t.Fatalf("503 of type %q", pb.Type)
			}
			opened = true
		default:
			t.Fatalf("status %d %s", resp.StatusCode, body)
		}
	}
	if !opened {
		t.Fatal("the breaker never opened after 20 failures")
	}
	before := hits.Load()
	for i := 0; i < 5; i++ {
		if resp, _ := get(t, c, p.Base+"/x", nil); resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("open breaker let a request through: %d", resp.StatusCode)
		}
	}
	if hits.Load() != before {
		t.Errorf("the upstream saw %d requests while the breaker was open", hits.Load()-before)
	}
	if v := scrape(t, p).Sum("portico_upstream_breaker_open", map[string]string{"upstream": "flaky"}); v != 1 {
		t.Errorf("portico_upstream_breaker_open = %v, want 1", v)
	}
	if len(p.Stderr.Find("upstream circuit breaker opened", nil)) == 0 {
		t.Error("opening not logged")
	}
	// The upstream recovers; after open_for the probe closes the breaker.
	failing.Store(false)
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, _ := get(t, c, p.Base+"/x", nil)
		if resp.StatusCode == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("breaker still refusing (%d) 10s after the upstream recovered", resp.StatusCode)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if v := scrape(t, p).Sum("portico_upstream_breaker_open", map[string]string{"upstream": "flaky"}); v != 0 {
		t.Errorf("portico_upstream_breaker_open = %v after recovery, want 0", v)
	}
}

// Active health checks: a target that dies is marked down (gauge and log);
// with every target down and all_unhealthy: fail, clients get 503
// problem+json at once; the target coming back is marked up and served.
func TestAllTargetsUnhealthy(t *testing.T) {
	t.Parallel()
	tg := okTarget(t, "only")
	p := start(t, header+fmt.Sprintf(`upstreams:
  solo:
    targets: [{url: %q}]
    health_check: {path: /healthz, interval: 200ms, timeout: 200ms, unhealthy_threshold: 2, healthy_threshold: 1, all_unhealthy: fail}
routes:
  - {name: solo, match: {path: "/*"}, upstream: solo, public: true}
`, tg.URL()))
	c := client(t)
	healthy := func() float64 {
		return scrape(t, p).Sum("portico_upstream_healthy", map[string]string{"upstream": "solo", "target": tg.URL()})
	}
	waitHealthy := func(want float64) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for healthy() != want {
			if time.Now().After(deadline) {
				t.Fatalf("portico_upstream_healthy stayed %v, want %v", healthy(), want)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	if resp, body := get(t, c, p.Base+"/x", nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	tg.Kill()
	waitHealthy(0)
	if len(p.Stderr.Find("upstream target unhealthy", map[string]string{"upstream": "solo"})) == 0 {
		t.Error("the unhealthy target was not logged")
	}
	begin := time.Now()
	resp, body := get(t, c, p.Base+"/x", nil)
	if _, err := checkProblem(resp, body, http.StatusServiceUnavailable); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(begin); d > time.Second {
		t.Errorf("503 after %v: the dead target was tried", d)
	}
	if err := tg.Restart(); err != nil {
		t.Fatal(err)
	}
	waitHealthy(1)
	if resp, body := get(t, c, p.Base+"/x", nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("after recovery: %d %s", resp.StatusCode, body)
	}
}
