package upstream

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/portico-gw/portico/internal/config"
)

// TestBehindReverseProxy runs the Pool as the Transport of an
// httputil.ReverseProxy, as internal/proxy does, including a WebSocket-style
// upgrade (the 101 body must stay writable) and in-flight accounting.
func TestBehindReverseProxy(t *testing.T) {
	env := newEnv(t, nil)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "echo" {
			_, _ = io.WriteString(w, "plain "+r.URL.Path)
			return
		}
		conn, brw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		_, _ = io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		line, _ := brw.ReadString('\n')
		_, _ = io.WriteString(conn, "echo: "+line)
	}))
	defer backend.Close()
	p := env.apply(t, &config.Upstream{Targets: targets(backend.URL), Timeout: config.Duration(time.Second)})
	first, _ := url.Parse(backend.URL)
	rp := &httputil.ReverseProxy{
		Rewrite:   func(pr *httputil.ProxyRequest) { pr.SetURL(first) },
		Transport: p,
	}
	front := httptest.NewServer(rp)
	defer front.Close()

	res, err := http.Get(front.URL + "/hello")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if string(b) != "plain /hello" {
		t.Fatalf("body %q", b)
	}

	conn, err := net.Dial("tcp", strings.TrimPrefix(front.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	_, _ = io.WriteString(conn, "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	br := bufio.NewReader(conn)
	up, err := http.ReadResponse(br, nil)
	if err != nil || up.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", up, err)
	}
	if s := statusOf(t, env.reg, "u"); s.InFlight != 1 {
		t.Fatalf("an upgraded connection is in flight: got %d", s.InFlight)
	}
	_, _ = io.WriteString(conn, "hi\n")
	line, err := br.ReadString('\n')
	if err != nil || line != "echo: hi\n" {
		t.Fatalf("echo %q err %v", line, err)
	}
	conn.Close()
	eventually(t, "upgraded connection released", func() bool { return statusOf(t, env.reg, "u").InFlight == 0 })
}

func TestClientGoneIsNotAFailure(t *testing.T) {
	env := newEnv(t, nil)
	h := hanging(t)
	p := env.apply(t, &config.Upstream{Targets: targets(h.URL), Retries: ptr(1), Timeout: config.Duration(10 * time.Second),
		Passive:        &config.Passive{ConsecutiveFailures: 1, Ejection: config.Duration(time.Minute)},
		CircuitBreaker: &config.CircuitBreaker{FailureRatio: 0.1, MinRequests: 1, OpenFor: config.Duration(time.Minute)}})
	for range 3 {
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(20*time.Millisecond, cancel)
		_, _, err := sendCtx(ctx, p, http.MethodGet, "")
		if err == nil || problemCode(err) != "" {
			t.Fatalf("err %v, want the context's error", err)
		}
	}
	s := statusOf(t, env.reg, "u")
	if s.Breaker != "closed" || s.Targets[0].Requests != 0 || s.RetriesRecent != 0 {
		t.Fatalf("a client going away was held against the upstream: %+v", s)
	}
	if got := testutil.ToFloat64(env.reg.m.requests.WithLabelValues("u", h.URL, "error")); got != 0 {
		t.Fatalf("requests_total{code=error} %v, want 0", got)
	}
}

func TestSnapshotAndMetricNames(t *testing.T) {
	clock := newFakeClock()
	env := newEnv(t, clock)
	good, bad := newCounting(t), newCounting(t)
	bad.status.Store(500)
	p := env.apply(t, &config.Upstream{Targets: []config.Target{{URL: good.URL, Weight: 3}, {URL: bad.URL, Weight: 1}},
		Retries: ptr(0), Balance: "round_robin",
		Passive:        &config.Passive{ConsecutiveFailures: 2, Ejection: config.Duration(time.Minute)},
		CircuitBreaker: &config.CircuitBreaker{FailureRatio: 0.9, MinRequests: 100, OpenFor: config.Duration(time.Minute)},
		HealthCheck:    &config.HealthCheck{Interval: config.Duration(time.Hour)}})
	for range 8 {
		send(p, http.MethodGet, "")
	}
	snap := env.reg.Snapshot()
	if len(snap) != 1 {
		t.Fatalf("snapshot %+v", snap)
	}
	s := snap[0]
	if s.Balance != "round_robin" || s.Breaker != "closed" || s.Retries != 0 || s.RequestsRecent != 8 || len(s.Targets) != 2 {
		t.Fatalf("upstream status %+v", s)
	}
	g, b := s.Targets[0], s.Targets[1]
	if g.URL != good.URL || g.Weight != 3 || !g.Healthy || g.ErrorRate != 0 || g.EjectedUntil != nil {
		t.Fatalf("good target %+v", g)
	}
	if b.Requests != 2 || b.ErrorRate != 1 || b.EjectedUntil == nil || !b.EjectedUntil.Equal(clock.Now().Add(time.Minute)) {
		t.Fatalf("bad target %+v (want 2 requests, all failed, ejected for 1m)", b)
	}
	if _, err := json.Marshal(snap); err != nil {
		t.Fatal(err)
	}
	// The minute window forgets.
	clock.Advance(61 * time.Second)
	if s := env.reg.Snapshot()[0]; s.Targets[1].Requests != 0 || s.Targets[1].EjectedUntil != nil {
		t.Fatalf("after a minute: %+v", s.Targets[1])
	}

	mfs, err := env.prom.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, mf := range mfs {
		names = append(names, mf.GetName())
	}
	for _, want := range []string{
		"portico_upstream_requests_total", "portico_upstream_duration_seconds", "portico_upstream_healthy",
		"portico_upstream_breaker_open", "portico_upstream_ejections_total",
	} {
		if !slices.Contains(names, want) {
			t.Errorf("metric %s not exported (have %v)", want, names)
		}
	}
	// retries_total has a series once the upstream exists, even at zero.
	if n := testutil.CollectAndCount(env.reg.m.retries, "portico_upstream_retries_total"); n != 1 {
		t.Errorf("retries_total series: %d", n)
	}
	if got := testutil.ToFloat64(env.reg.m.requests.WithLabelValues("u", good.URL, "200")); got != 6 {
		t.Errorf(`requests_total{code="200"} = %v, want 6`, got)
	}
}

func TestRegistrySharesCollectorsAndCloses(t *testing.T) {
	env := newEnv(t, nil)
	// A second registry on the same Registerer (a test, or a restart of the
	// gateway object in one process) reuses the collectors.
	second := NewRegistry(Deps{Registerer: env.prom})
	if second.m.requests != env.reg.m.requests {
		t.Fatal("second registry did not reuse the registered collectors")
	}
	s := newCounting(t)
	if _, err := second.Apply(map[string]*config.Upstream{"u": {Targets: targets(s.URL),
		HealthCheck: &config.HealthCheck{Interval: config.Duration(time.Millisecond)}}}); err != nil {
		t.Fatal(err)
	}
	second.Close()
	if _, err := second.Apply(map[string]*config.Upstream{}); err == nil {
		t.Fatal("Apply after Close succeeded")
	}
	// goleak in TestMain checks that the checker goroutines are gone.
}

func TestConsistentHashThroughPool(t *testing.T) {
	env := newEnv(t, nil)
	servers := []*counting{newCounting(t), newCounting(t), newCounting(t)}
	var urls []string
	for _, s := range servers {
		urls = append(urls, s.URL)
	}
	p := env.apply(t, &config.Upstream{Targets: targets(urls...), Balance: "consistent_hash", HashKey: "header:X-User-Id"})
	whoServed := func(user string) string {
		req, _ := http.NewRequest(http.MethodGet, "http://upstream.invalid/", nil)
		req.Header.Set("X-User-Id", user)
		res, err := p.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return string(b)
	}
	first := map[string]string{}
	for i := range 60 {
		user := "user-" + string(rune('a'+i%26)) + string(rune('a'+i/26))
		first[user] = whoServed(user)
		for range 2 {
			if got := whoServed(user); got != first[user] {
				t.Fatalf("%s went to %s, then %s", user, first[user], got)
			}
		}
	}
	// Take the first target out: only its users move.
	down := "from " + strings.TrimPrefix(urls[0], "http://")
	p.targets[0].healthy.Store(false)
	defer p.targets[0].healthy.Store(true)
	moved := 0
	for user, was := range first {
		got := whoServed(user)
		switch {
		case got == down:
			t.Fatalf("%s still sent to the unhealthy target", user)
		case was == down:
			moved++
		case got != was:
			t.Fatalf("%s moved from %s to %s though its target is up", user, was, got)
		}
	}
	if moved == 0 {
		t.Fatal("no user was on the first target; the test proves nothing")
	}
}

func TestHealthCheckTimeoutMarksDown(t *testing.T) {
	env := newEnv(t, nil)
	h := hanging(t)
	env.apply(t, &config.Upstream{Targets: targets(h.URL), HealthCheck: &config.HealthCheck{
		Path: "/healthz", Interval: config.Duration(30 * time.Millisecond), Timeout: config.Duration(10 * time.Millisecond),
		UnhealthyThreshold: 1}})
	eventually(t, "hanging target marked down", func() bool { return !statusOf(t, env.reg, "u").Targets[0].Healthy })
}

// TestReloadConnectionReuse checks connections, not just pointers: an
// unchanged upstream keeps its warm connection across Apply; a changed
// connect_timeout closes the old transport's idle connection.
func TestReloadConnectionReuse(t *testing.T) {
	env := newEnv(t, nil)
	var newConns, closedConns atomic.Int64
	s := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	s.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		switch st {
		case http.StateNew:
			newConns.Add(1)
		case http.StateClosed:
			closedConns.Add(1)
		}
	}
	s.Start()
	defer s.Close()
	mk := func(ct time.Duration) *config.Upstream {
		return &config.Upstream{Targets: targets(s.URL), ConnectTimeout: config.Duration(ct)}
	}
	p := env.apply(t, mk(time.Second))
	send(p, http.MethodGet, "")
	p = env.apply(t, mk(time.Second))
	send(p, http.MethodGet, "")
	if newConns.Load() != 1 {
		t.Fatalf("%d connections for two requests around an unchanged reload, want 1", newConns.Load())
	}
	env.apply(t, mk(2*time.Second))
	eventually(t, "old idle connection closed", func() bool { return closedConns.Load() == 1 })
}

func TestRouteDeadlineCountsAgainstTheUpstream(t *testing.T) {
	env := newEnv(t, nil)
	h := hanging(t)
	p := env.apply(t, &config.Upstream{Targets: targets(h.URL), Retries: ptr(1), Timeout: config.Duration(10 * time.Second)})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	if _, _, err := sendCtx(ctx, p, http.MethodGet, ""); err == nil {
		t.Fatal("want the deadline's error")
	}
	s := statusOf(t, env.reg, "u")
	if s.Targets[0].Requests != 1 || s.Targets[0].ErrorRate != 1 || s.RetriesRecent != 0 {
		t.Fatalf("a timed-out attempt must count as one failure and not be retried: %+v", s)
	}
}
