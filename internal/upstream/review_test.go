package upstream

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/portico-gw/portico/internal/config"
)

// An answer that arrives after its deadline fails on the Send path as on
// RoundTrip, also when the caller reads it only later, busy with a slower
// call: a backend's timeout is a promise about the endpoint's latency
// budget, and whether the caller was busy must not change the outcome.
func TestWaitFailsAnAnswerThatArrivedLate(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the arrival time of an unread answer is known on Linux only")
	}
	for _, tc := range []struct {
		name    string
		timeout time.Duration // the pool's attempt timeout
		callers time.Duration // the request context's deadline
	}{
		{"attempt timeout", 100 * time.Millisecond, 0},
		{"caller's deadline", 0, 100 * time.Millisecond},
	} {
		for _, via := range []string{"RoundTrip", "Send"} {
			t.Run(tc.name+"/"+via, func(t *testing.T) {
				answered := make(chan struct{}, 1)
				srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					time.Sleep(250 * time.Millisecond)
					_, _ = io.WriteString(w, "late")
					w.(http.Flusher).Flush()
					answered <- struct{}{}
				}))
				defer srv.Close()
				env := newEnv(t, nil)
				p := env.apply(t, &config.Upstream{Targets: targets(srv.URL), Retries: ptr(0),
					Timeout: config.Duration(tc.timeout)})
				ctx := context.Background()
				if tc.callers > 0 {
					var cancel context.CancelFunc
					ctx, cancel = context.WithTimeout(ctx, tc.callers)
					defer cancel()
				}
				req := newSendReq(t, ctx, http.MethodGet, "/")
				var (
					res *http.Response
					err error
				)
				if via == "Send" {
					c := mustSend(t, p, req)
					select {
					case <-answered:
					case <-time.After(5 * time.Second):
						t.Fatal("the upstream never answered")
					}
					time.Sleep(50 * time.Millisecond) // the caller still reads another answer
					res, _, err = waitBody(c)
				} else {
					res, err = p.RoundTrip(req)
					if res != nil {
						res.Body.Close()
					}
				}
				if tc.callers > 0 {
					if res != nil || !errors.Is(err, context.DeadlineExceeded) {
						t.Fatalf("res %v err %v; want the caller's deadline exceeded", res, err)
					}
				} else {
					wantProblem(t, via, res, err, http.StatusGatewayTimeout, "upstream_timeout")
				}
				if s := statusOf(t, env.reg, "u"); s.Targets[0].ErrorRate != 1 {
					t.Fatalf("error rate %v; want 1: a late answer is the target's failure", s.Targets[0].ErrorRate)
				}
				assertNoInflight(t, env.reg)
			})
		}
	}
}

// retry_budget: 0 means no retries (docs/configuration.md), not the floor
// that lets a quiet upstream retry at all.
func TestRetryBudgetZeroAllowsNoRetry(t *testing.T) {
	env := newEnv(t, newFakeClock())
	a, b := newCounting(t), newCounting(t)
	a.status.Store(503)
	b.status.Store(503)
	p := env.apply(t, &config.Upstream{Targets: targets(a.URL, b.URL), Retries: ptr(2), RetryBudget: ptr(0.0)})
	for range 5 {
		if code, _, err := send(p, http.MethodGet, ""); err != nil || code != 503 {
			t.Fatalf("status %d err %v; want the 503", code, err)
		}
	}
	if hits := a.hits.Load() + b.hits.Load(); hits != 5 {
		t.Fatalf("upstreams saw %d requests for 5 sent with retry_budget 0; want 5", hits)
	}
}

// With most targets out of rotation, least_request's random draws often
// miss the eligible ones; the fallback must still split an idle pool's
// traffic by weight, not send it all to one target.
func TestLeastRequestFallbackFollowsWeights(t *testing.T) {
	for _, tc := range []struct {
		name string
		w    [2]int // the weights of the two eligible targets
	}{
		{"equal", [2]int{1, 1}},
		{"1 to 3", [2]int{1, 3}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := testTargets(10)
			weights := make([]int, 10)
			for i := range weights {
				weights[i] = 1
				ts[i].healthy.Store(i >= 8)
			}
			weights[8], weights[9] = tc.w[0], tc.w[1]
			b := newBalancer("least_request", weights, hashKey{}, urlsOf(ts))
			const n = 20000
			var got [10]int
			for range n {
				i := b.pick(nil, pickCtx{targets: ts})
				if i < 8 {
					t.Fatalf("picked ineligible target %d", i)
				}
				got[i]++
			}
			want := float64(tc.w[0]) / float64(tc.w[0]+tc.w[1])
			if share := float64(got[8]) / n; share < want-0.03 || share > want+0.03 {
				t.Fatalf("idle targets weighted %v got %d and %d picks (share %.3f); want a share of %.2f",
					tc.w, got[8], got[9], share, want)
			}
		})
	}
}

// Through a pool on real targets: eight of ten refuse connections and are
// ejected; the two left share an idle pool's requests evenly.
func TestLeastRequestDoesNotHerdWhenMostTargetsAreOut(t *testing.T) {
	clock := newFakeClock()
	env := newEnv(t, clock)
	a, b := newCounting(t), newCounting(t)
	urls := make([]string, 0, 10)
	for range 8 {
		urls = append(urls, dead(t))
	}
	urls = append(urls, a.URL, b.URL)
	p := env.apply(t, &config.Upstream{Targets: targets(urls...), Balance: "least_request", Retries: ptr(3),
		Passive: &config.Passive{ConsecutiveFailures: 1, Ejection: config.Duration(time.Hour)}})
	ejected := func() int {
		n := 0
		for _, ts := range statusOf(t, env.reg, "u").Targets {
			if ts.EjectedUntil != nil {
				n++
			}
		}
		return n
	}
	for i := 0; ejected() < 8; i++ {
		if i > 2000 {
			t.Fatalf("only %d targets ejected", ejected())
		}
		_, _, _ = send(p, http.MethodGet, "")
	}
	a.hits.Store(0)
	b.hits.Store(0)
	const n = 1000
	for range n {
		if code, _, err := send(p, http.MethodGet, ""); err != nil || code != 200 {
			t.Fatalf("status %d err %v", code, err)
		}
	}
	if ha := a.hits.Load(); ha < n*4/10 || ha > n*6/10 {
		t.Fatalf("the two live targets got %d and %d of %d requests; want about half each", ha, b.hits.Load(), n)
	}
}

// A status below 100 is a final answer to Go's transport (which the proxy
// then maps to 502); the lean client took it for an informational one and
// waited for another answer, to the attempt's timeout or for ever.
func TestH1StatusBelow100IsFinal(t *testing.T) {
	var seen atomic.Int64
	addr := rawServer(t, answerEach(&seen, func(int64, *http.Request) (string, bool) {
		return "HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n", true
	}))
	for name, rt := range map[string]http.RoundTripper{"lean": newH1(t), "go": &http.Transport{}} {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/", nil)
			res, err := rt.RoundTrip(req)
			if err != nil {
				t.Fatalf("err %v; want the answer with status 99", err)
			}
			res.Body.Close()
			if res.StatusCode != 99 {
				t.Fatalf("status %d, want 99", res.StatusCode)
			}
			if tr, ok := rt.(*http.Transport); ok {
				tr.CloseIdleConnections()
			}
		})
	}
}

// Passive ejection never takes the last eligible target, but active checks
// may take the other targets down while one is ejected. A healthy target,
// although ejected, then serves: it beats answering everything with 503.
func TestEjectedTargetServesWhenTheOthersGoDown(t *testing.T) {
	clock := newFakeClock()
	env := newEnv(t, clock)
	var aStatus, bHealth atomic.Int64
	aStatus.Store(500)
	bHealth.Store(200)
	a := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" {
			w.WriteHeader(int(aStatus.Load()))
		}
	}))
	defer a.Close()
	b := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			w.WriteHeader(int(bHealth.Load()))
		}
	}))
	defer b.Close()
	p := env.apply(t, &config.Upstream{Targets: targets(a.URL, b.URL), Retries: ptr(0),
		Passive: &config.Passive{ConsecutiveFailures: 1, Ejection: config.Duration(time.Hour)},
		HealthCheck: &config.HealthCheck{Interval: config.Duration(20 * time.Millisecond),
			UnhealthyThreshold: 1, HealthyThreshold: 1}})
	for i := 0; statusOf(t, env.reg, "u").Targets[0].EjectedUntil == nil; i++ {
		if i > 10 {
			t.Fatal("a was not ejected")
		}
		_, _, _ = send(p, http.MethodGet, "")
	}
	bHealth.Store(503)
	eventually(t, "b down", func() bool { return !statusOf(t, env.reg, "u").Targets[1].Healthy })
	aStatus.Store(200)
	if code, _, err := send(p, http.MethodGet, ""); err != nil || code != 200 {
		t.Fatalf("status %d err %v; want the ejected but healthy target's 200", code, err)
	}
}
