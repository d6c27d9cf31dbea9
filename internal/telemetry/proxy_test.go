package telemetry

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync"
	"testing"
	"time"
)

// TestQuantilesThroughProxy measures real upstream delays through
// httputil.ReverseProxy (as the gateway proxies): 24 x 10 ms, 14 x 50 ms and
// 2 x 200 ms. A measured request is never faster than its upstream's sleep,
// so each quantile is at least its delay less the 1% bound (order statistics
// keep that); the upper side allows half a second of scheduling delay on a
// busy machine and still catches a wrong unit or clock. The exact check
// against the bound is TestQuantilesFromKnownDelays, with an injected clock.
func TestQuantilesThroughProxy(t *testing.T) {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d, _ := time.ParseDuration(r.URL.Query().Get("d"))
		time.Sleep(d)
		_, _ = io.WriteString(w, "ok")
	}))
	defer upstream.Close()
	tel := New(Deps{AccessLog: io.Discard})
	defer tel.Close()
	target, _ := url.Parse(upstream.URL)
	rp := &httputil.ReverseProxy{
		Rewrite:   func(pr *httputil.ProxyRequest) { pr.SetURL(target) },
		Transport: tel.TraceTransport("up", http.DefaultTransport),
	}
	gw := httptest.NewServer(tel.Middleware("proxied")(rp))
	defer gw.Close()

	var delays []string
	for i := 0; i < 24; i++ {
		delays = append(delays, "10ms")
	}
	for i := 0; i < 14; i++ {
		delays = append(delays, "50ms")
	}
	delays = append(delays, "200ms", "200ms")
	work := make(chan string)
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for d := range work {
				resp, err := http.Get(gw.URL + "/?d=" + d)
				if err != nil {
					t.Error(err)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}()
	}
	for _, d := range delays {
		work <- d
	}
	close(work)
	wg.Wait()

	st := tel.Stats().Routes[0].Last1m
	if st.Requests != 40 || st.Classes["2xx"] != 40 {
		t.Fatalf("stats %+v", st)
	}
	for _, q := range []struct {
		name       string
		got, delay float64
	}{{"p50", st.P50ms, 10}, {"p95", st.P95ms, 50}, {"p99", st.P99ms, 200}} {
		if q.got < q.delay*(1-sketchAlpha) || q.got > q.delay*(1+sketchAlpha)+500 {
			t.Errorf("%s = %vms for an upstream delay of %vms", q.name, q.got, q.delay)
		}
	}
}
