package upstream

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/portico-gw/portico/internal/config"
	"github.com/portico-gw/portico/internal/problem"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fakeClock is the injected clock: tests move time instead of sleeping.
type fakeClock struct{ ns atomic.Int64 }

func newFakeClock() *fakeClock {
	c := &fakeClock{}
	c.ns.Store(time.Date(2026, 11, 28, 6, 0, 0, 0, time.UTC).UnixNano())
	return c
}

func (c *fakeClock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

type testEnv struct {
	reg  *Registry
	prom *prometheus.Registry
}

func newEnv(t *testing.T, clock *fakeClock) *testEnv {
	t.Helper()
	prom := prometheus.NewRegistry()
	deps := Deps{Registerer: prom}
	if clock != nil {
		deps.Now = clock.Now
	}
	reg := NewRegistry(deps)
	t.Cleanup(reg.Close)
	return &testEnv{reg: reg, prom: prom}
}

// apply applies one upstream named "u" and returns its pool.
func (e *testEnv) apply(t *testing.T, u *config.Upstream) *Pool {
	t.Helper()
	pools, err := e.reg.Apply(map[string]*config.Upstream{"u": u})
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	return pools["u"]
}

func ptr[T any](v T) *T { return &v }

func targets(urls ...string) []config.Target {
	out := make([]config.Target, len(urls))
	for i, u := range urls {
		out[i] = config.Target{URL: u, Weight: 1}
	}
	return out
}

// get sends one request through the pool and reads the whole body.
func send(p *Pool, method, body string) (int, string, error) {
	return sendCtx(context.Background(), p, method, body)
}

func sendCtx(ctx context.Context, p *Pool, method, body string) (int, string, error) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://upstream.invalid/path?q=1", rd)
	if err != nil {
		return 0, "", err
	}
	res, err := p.RoundTrip(req)
	if err != nil {
		return 0, "", err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	return res.StatusCode, string(b), err
}

func problemCode(err error) string {
	var pe *problem.Error
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// eventually waits for cond, for conditions driven by real timers (active
// health checks); it fails the test after 5 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func statusOf(t *testing.T, reg *Registry, name string) UpstreamStatus {
	t.Helper()
	for _, s := range reg.Snapshot() {
		if s.Name == name {
			return s
		}
	}
	t.Fatalf("upstream %q not in snapshot", name)
	return UpstreamStatus{}
}

func testGauge() prometheus.Gauge { return prometheus.NewGauge(prometheus.GaugeOpts{Name: "g"}) }
