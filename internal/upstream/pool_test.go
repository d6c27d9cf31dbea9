package upstream

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/portico-gw/portico/internal/config"
)

// counting is an upstream server that counts requests per method and
// answers with status (200 by default).
type counting struct {
	*httptest.Server
	hits   atomic.Int64
	posts  atomic.Int64
	status atomic.Int64
	bodies chan string
}

func newCounting(t *testing.T) *counting {
	t.Helper()
	c := &counting{bodies: make(chan string, 16)}
	c.status.Store(200)
	c.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			return // health checks are not traffic
		}
		c.hits.Add(1)
		if r.Method == http.MethodPost || r.Method == http.MethodPut {
			c.posts.Add(1)
			b, _ := io.ReadAll(r.Body)
			select {
			case c.bodies <- string(b):
			default:
			}
		}
		w.WriteHeader(int(c.status.Load()))
		_, _ = io.WriteString(w, "from "+r.Host)
	}))
	t.Cleanup(c.Close)
	return c
}

// dead returns the URL of a port that refuses connections.
func dead(t *testing.T) string {
	t.Helper()
	s := httptest.NewServer(http.NotFoundHandler())
	u := s.URL
	s.Close()
	return u
}

// resetting reads the request body, then drops the connection without an
// answer (as a crashing upstream does).
func resetting(t *testing.T, seen *atomic.Int64) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.Add(1)
		_, _ = io.ReadAll(r.Body)
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			_ = conn.Close()
		}
	}))
	t.Cleanup(s.Close)
	return s
}

// hanging never answers until the test ends.
func hanging(t *testing.T) *httptest.Server {
	t.Helper()
	stop := make(chan struct{})
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-stop:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(func() { close(stop); s.Close() })
	return s
}

// modal is an upstream that turns bad on demand in one of the ways real
// upstreams fail.
type modal struct {
	*httptest.Server
	hits atomic.Int64
	mode atomic.Value // "", "reset", "hang", "503"
	stop chan struct{}
}

func newModal(t *testing.T) *modal {
	t.Helper()
	m := &modal{stop: make(chan struct{})}
	m.mode.Store("")
	m.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m.hits.Add(1)
		switch m.mode.Load().(string) {
		case "reset":
			if conn, _, err := w.(http.Hijacker).Hijack(); err == nil {
				_ = conn.Close()
			}
		case "hang":
			select {
			case <-m.stop:
			case <-r.Context().Done():
			}
		case "503":
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	t.Cleanup(func() { close(m.stop); m.Close() })
	return m
}

// TestOneOfTwoTargetsFailsMidTraffic kills one of two targets a quarter of
// the way into 2,000 requests from 8 workers, in each way upstreams fail:
// fewer than 1% of the requests may fail.
func TestOneOfTwoTargetsFailsMidTraffic(t *testing.T) {
	for _, mode := range []string{"die", "reset", "hang", "503"} {
		t.Run(mode, func(t *testing.T) {
			env := newEnv(t, nil)
			a, b := newModal(t), newModal(t)
			p := env.apply(t, &config.Upstream{
				// The per-attempt timeout is generous: under the race detector on
				// a loaded two-core machine a healthy target can take hundreds
				// of milliseconds, and a spurious timeout would eject it.
				Targets: targets(a.URL, b.URL), Retries: ptr(1), Timeout: config.Duration(time.Second),
				Passive: &config.Passive{ConsecutiveFailures: 3, Ejection: config.Duration(30 * time.Second)},
			})
			const total, workers = 2000, 8
			var next, failed atomic.Int64
			var wg sync.WaitGroup
			for range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						n := next.Add(1)
						if n > total {
							return
						}
						if n == total/4 {
							if mode == "die" {
								// No new connections, open ones dropped.
								_ = b.Listener.Close()
								b.CloseClientConnections()
							} else {
								b.mode.Store(mode)
							}
						}
						status, _, err := send(p, http.MethodGet, "")
						if err != nil || status != 200 {
							failed.Add(1)
						}
					}
				}()
			}
			wg.Wait()
			f := failed.Load()
			t.Logf("%s: failed %d of %d requests (a served %d, b %d)", mode, f, total, a.hits.Load(), b.hits.Load())
			if f*100 >= total {
				t.Fatalf("%d of %d requests failed, want < 1%%", f, total)
			}
			if b.hits.Load() == 0 || a.hits.Load() < total/2 {
				t.Fatalf("traffic not spread then moved: a=%d b=%d", a.hits.Load(), b.hits.Load())
			}
		})
	}
}

func TestPostNeverRetriedAfterBytesSent(t *testing.T) {
	env := newEnv(t, nil)
	var resetSeen atomic.Int64
	rs := resetting(t, &resetSeen)
	ok := newCounting(t)
	// Round robin with equal weights picks the first target first.
	p := env.apply(t, &config.Upstream{Targets: targets(rs.URL, ok.URL), Retries: ptr(3)})
	for _, tc := range []struct {
		name    string
		getBody bool
	}{{"with GetBody", true}, {"streamed body", false}} {
		t.Run(tc.name, func(t *testing.T) {
			resetSeen.Store(0)
			ok.posts.Store(0)
			req := newBodyRequest(t, http.MethodPost, "payload", tc.getBody)
			res, err := p.RoundTrip(req)
			if err == nil {
				res.Body.Close()
				// The other target must not have answered it either way.
			}
			if got := resetSeen.Load() + ok.posts.Load(); got != 1 {
				t.Fatalf("upstreams saw %d POSTs (reset target %d, other %d), want exactly 1",
					got, resetSeen.Load(), ok.posts.Load())
			}
		})
	}
}

func newBodyRequest(t *testing.T, method, body string, getBody bool) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, "http://upstream.invalid/x", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if !getBody {
		// As an inbound server request: no GetBody, length unknown.
		req.GetBody = nil
		req.Body = io.NopCloser(strings.NewReader(body))
		req.ContentLength = -1
	}
	return req
}

func TestPostRetriedOnDialError(t *testing.T) {
	env := newEnv(t, nil)
	ok := newCounting(t)
	p := env.apply(t, &config.Upstream{Targets: targets(dead(t), ok.URL), Retries: ptr(1)})
	for _, getBody := range []bool{false, true} {
		req := newBodyRequest(t, http.MethodPost, "payload-"+map[bool]string{true: "a", false: "b"}[getBody], getBody)
		res, err := p.RoundTrip(req)
		if err != nil {
			t.Fatalf("getBody=%v: %v", getBody, err)
		}
		res.Body.Close()
		if got := <-ok.bodies; !strings.HasPrefix(got, "payload-") || len(got) != len("payload-a") {
			t.Fatalf("getBody=%v: retried POST arrived with body %q", getBody, got)
		}
	}
}

func TestRetryRules(t *testing.T) {
	env := newEnv(t, nil)
	bad, good := newCounting(t), newCounting(t)
	bad.status.Store(503)
	p := env.apply(t, &config.Upstream{Targets: targets(bad.URL, good.URL), Retries: ptr(1), Balance: "round_robin"})
	cases := []struct {
		method   string
		body     string
		want     int
		wantHits int64 // requests that reached bad+good
	}{
		{http.MethodGet, "", 200, 2},
		{http.MethodPut, "small body", 200, 2},
		{http.MethodDelete, "", 200, 2},
		{http.MethodPost, "x", 503, 1},
		{http.MethodPatch, "x", 503, 1},
	}
	for _, tc := range cases {
		t.Run(tc.method, func(t *testing.T) {
			// Fresh round-robin state: the bad target is picked first.
			p = env.apply(t, &config.Upstream{Targets: targets(bad.URL, good.URL), Retries: ptr(1)})
			bad.hits.Store(0)
			good.hits.Store(0)
			status, _, err := send(p, tc.method, tc.body)
			if err != nil {
				t.Fatal(err)
			}
			if status != tc.want || bad.hits.Load()+good.hits.Load() != tc.wantHits {
				t.Fatalf("status %d hits bad=%d good=%d; want %d with %d hits",
					status, bad.hits.Load(), good.hits.Load(), tc.want, tc.wantHits)
			}
			if tc.method == http.MethodPut {
				if got := <-good.bodies; got != tc.body {
					t.Fatalf("replayed PUT body %q, want %q", got, tc.body)
				}
			}
		})
	}
	if got := testutil.ToFloat64(env.reg.m.retries.WithLabelValues("u")); got != 3 {
		t.Fatalf("portico_upstream_retries_total = %v, want 3", got)
	}
	if got := testutil.ToFloat64(env.reg.m.requests.WithLabelValues("u", bad.URL, "503")); got != 5 {
		t.Fatalf(`requests_total{code="503"} = %v, want 5`, got)
	}
}

func TestRetriesZeroAndResetTarget(t *testing.T) {
	env := newEnv(t, nil)
	var seen atomic.Int64
	rs := resetting(t, &seen)
	good := newCounting(t)
	t.Run("reset GET goes to the other target", func(t *testing.T) {
		p := env.apply(t, &config.Upstream{Targets: targets(rs.URL, good.URL), Retries: ptr(1)})
		status, _, err := send(p, http.MethodGet, "")
		if err != nil || status != 200 {
			t.Fatalf("status %d err %v, want 200", status, err)
		}
	})
	t.Run("retries 0 returns the error", func(t *testing.T) {
		p := env.apply(t, &config.Upstream{Targets: targets(rs.URL, good.URL), Retries: ptr(0)})
		_, _, err := send(p, http.MethodGet, "")
		if err == nil {
			t.Fatal("want an error from the resetting target")
		}
	})
}

// The attempt timeout is the lean client's connection deadline or, on Go's
// transport, a timer per attempt: both classify alike.
func TestAttemptTimeout(t *testing.T) {
	for _, client := range []string{"lean", "standard"} {
		t.Run(client, func(t *testing.T) { testAttemptTimeout(t, client) })
	}
}

func testAttemptTimeout(t *testing.T, client string) {
	env := newEnv(t, nil)
	h := hanging(t)
	good := newCounting(t)
	t.Run("hung target retried elsewhere", func(t *testing.T) {
		p := env.apply(t, &config.Upstream{Targets: targets(h.URL, good.URL), Retries: ptr(1),
			Timeout: config.Duration(50 * time.Millisecond), HTTP1Client: client})
		start := time.Now()
		status, _, err := send(p, http.MethodGet, "")
		if err != nil || status != 200 {
			t.Fatalf("status %d err %v", status, err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("took %v", d)
		}
	})
	t.Run("single hung target gives 504", func(t *testing.T) {
		p := env.apply(t, &config.Upstream{Targets: targets(h.URL), Retries: ptr(0),
			Timeout: config.Duration(50 * time.Millisecond), HTTP1Client: client})
		_, _, err := send(p, http.MethodGet, "")
		if problemCode(err) != "upstream_timeout" {
			t.Fatalf("err %v, want upstream_timeout", err)
		}
	})
	t.Run("body after headers is not cut by the attempt timer", func(t *testing.T) {
		slowBody := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(200)
			w.(http.Flusher).Flush()
			time.Sleep(150 * time.Millisecond) // longer than the attempt timeout
			_, _ = io.WriteString(w, "late body")
		}))
		defer slowBody.Close()
		p := env.apply(t, &config.Upstream{Targets: targets(slowBody.URL), Retries: ptr(0),
			Timeout: config.Duration(50 * time.Millisecond), HTTP1Client: client})
		for i := range 2 { // the second one on the connection the first left
			status, body, err := send(p, http.MethodGet, "")
			if err != nil || status != 200 || body != "late body" {
				t.Fatalf("request %d: status %d body %q err %v", i, status, body, err)
			}
		}
	})
	t.Run("client deadline stops retries", func(t *testing.T) {
		p := env.apply(t, &config.Upstream{Targets: targets(h.URL, h.URL+"/"), Retries: ptr(5),
			Timeout: config.Duration(10 * time.Second), HTTP1Client: client})
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		_, _, err := sendCtx(ctx, p, http.MethodGet, "")
		if err == nil || ctx.Err() == nil || problemCode(err) != "" {
			t.Fatalf("err %v, want the context's", err)
		}
		if got := testutil.ToFloat64(env.reg.m.retries.WithLabelValues("u")); got != 1 {
			// one retry came from the first subtest
			t.Fatalf("retries_total %v, want 1 (no retry past the deadline)", got)
		}
	})
	t.Run("a client deadline past the attempt's still gives 504", func(t *testing.T) {
		p := env.apply(t, &config.Upstream{Targets: targets(h.URL), Retries: ptr(0),
			Timeout: config.Duration(50 * time.Millisecond), HTTP1Client: client})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, _, err := sendCtx(ctx, p, http.MethodGet, "")
		if problemCode(err) != "upstream_timeout" {
			t.Fatalf("err %v, want upstream_timeout", err)
		}
	})
}

// The lean client's attempt deadline covers dialing too.
func TestAttemptTimeoutCoversTheDial(t *testing.T) {
	env := newEnv(t, nil)
	good := newCounting(t)
	p := env.apply(t, &config.Upstream{Targets: targets(good.URL), Retries: ptr(0),
		Timeout: config.Duration(50 * time.Millisecond)})
	h1 := p.tr.forTarget(p.targets[0]).(*h1Client)
	h1.dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		<-ctx.Done() // a connect that never completes
		return nil, &net.OpError{Op: "dial", Net: network, Err: ctx.Err()}
	}
	start := time.Now()
	_, _, err := send(p, http.MethodGet, "")
	if problemCode(err) != "upstream_timeout" {
		t.Fatalf("err %v, want upstream_timeout", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("took %v", d)
	}
	if s := statusOf(t, env.reg, "u"); s.Targets[0].Requests != 1 || s.Targets[0].ErrorRate != 1 {
		t.Fatalf("a timed-out dial must count as one failure: %+v", s.Targets[0])
	}
}

func TestMaxInflightSheds(t *testing.T) {
	env := newEnv(t, nil)
	release := make(chan struct{})
	arrived := make(chan struct{}, 4)
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-release
	}))
	defer slow.Close()
	p := env.apply(t, &config.Upstream{Targets: targets(slow.URL), MaxInflight: 2, Retries: ptr(0)})
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if status, _, err := send(p, http.MethodGet, ""); err != nil || status != 200 {
				t.Errorf("held request: status %d err %v", status, err)
			}
		}()
	}
	<-arrived
	<-arrived
	start := time.Now()
	_, _, err := send(p, http.MethodGet, "")
	if problemCode(err) != "upstream_overloaded" {
		t.Fatalf("err %v, want upstream_overloaded", err)
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Fatalf("shedding took %v; it must be immediate", d)
	}
	if s := statusOf(t, env.reg, "u"); s.InFlight != 2 {
		t.Fatalf("snapshot in_flight %d, want 2", s.InFlight)
	}
	close(release)
	wg.Wait()
	if status, _, err := send(p, http.MethodGet, ""); err != nil || status != 200 {
		t.Fatalf("after release: status %d err %v", status, err)
	}
	if s := statusOf(t, env.reg, "u"); s.InFlight != 0 || s.Targets[0].InFlight != 0 {
		t.Fatalf("in-flight counts leak: %+v", s)
	}
}

func TestRetryBudgetCapsRetries(t *testing.T) {
	clock := newFakeClock()
	env := newEnv(t, clock)
	a, b := newCounting(t), newCounting(t)
	a.status.Store(503)
	b.status.Store(503)
	p := env.apply(t, &config.Upstream{Targets: targets(a.URL, b.URL), Retries: ptr(1), RetryBudget: ptr(0.2)})
	const n = 100
	for range n {
		if _, _, err := send(p, http.MethodGet, ""); err != nil {
			t.Fatal(err)
		}
	}
	retries := int(testutil.ToFloat64(env.reg.m.retries.WithLabelValues("u")))
	if retries > n/5+minRetries || retries < n/5-2 {
		t.Fatalf("%d retries for %d failing requests with budget 0.2, want about %d", retries, n, n/5)
	}
	if hits := a.hits.Load() + b.hits.Load(); hits != int64(n+retries) {
		t.Fatalf("upstreams saw %d requests, want %d", hits, n+retries)
	}
	// The window slides: 10 s later the budget is fresh again.
	clock.Advance(11 * time.Second)
	before := retries
	if _, _, err := send(p, http.MethodGet, ""); err != nil {
		t.Fatal(err)
	}
	if got := int(testutil.ToFloat64(env.reg.m.retries.WithLabelValues("u"))); got != before+1 {
		t.Fatalf("after the window passed: retries %d, want %d", got, before+1)
	}
}

func TestPreserveHost(t *testing.T) {
	env := newEnv(t, nil)
	var gotHost atomic.Value
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotHost.Store(r.Host)
	}))
	defer s.Close()
	for _, preserve := range []bool{false, true} {
		p := env.apply(t, &config.Upstream{Targets: targets(s.URL), PreserveHost: preserve})
		req, _ := http.NewRequest(http.MethodGet, "http://upstream.invalid/", nil)
		req.Host = "api.example.com"
		res, err := p.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		want := strings.TrimPrefix(s.URL, "http://")
		if preserve {
			want = "api.example.com"
		}
		if gotHost.Load() != want {
			t.Fatalf("preserve_host=%v: upstream saw Host %q, want %q", preserve, gotHost.Load(), want)
		}
	}
}

// closeTracker records whether a request body was closed.
type closeTracker struct {
	io.Reader
	closed atomic.Bool
}

func (c *closeTracker) Close() error { c.closed.Store(true); return nil }

func TestRequestBodyClosedWhenNoAttemptIsMade(t *testing.T) {
	clock := newFakeClock()
	env := newEnv(t, clock)
	s := newCounting(t)
	s.status.Store(500)
	p := env.apply(t, &config.Upstream{Targets: targets(s.URL), Retries: ptr(1), MaxInflight: 10,
		CircuitBreaker: &config.CircuitBreaker{FailureRatio: 0.5, MinRequests: 1, OpenFor: config.Duration(time.Minute)}})
	send(p, http.MethodGet, "") // opens the breaker
	for _, method := range []string{http.MethodPost, http.MethodPut} {
		body := &closeTracker{Reader: strings.NewReader("x")}
		req, _ := http.NewRequest(method, "http://upstream.invalid/", nil)
		req.Body, req.ContentLength = body, 1
		if _, err := p.RoundTrip(req); problemCode(err) != "breaker_open" {
			t.Fatalf("err %v", err)
		}
		if !body.closed.Load() {
			t.Fatalf("%s: request body left open after breaker_open", method)
		}
	}
}

func TestSingleTargetRetriesItself(t *testing.T) {
	env := newEnv(t, nil)
	var n atomic.Int64
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) == 1 {
			w.WriteHeader(http.StatusBadGateway)
		}
	}))
	defer s.Close()
	p := env.apply(t, &config.Upstream{Targets: targets(s.URL), Retries: ptr(2)})
	if status, _, err := send(p, http.MethodGet, ""); err != nil || status != 200 || n.Load() != 2 {
		t.Fatalf("status %d err %v after %d attempts; want 200 on the second", status, err, n.Load())
	}
}
