package upstream

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/portico-gw/portico/internal/config"
	"github.com/portico-gw/portico/internal/problem"
)

// newSendReq is a bodiless request to a pool, which puts in the target's
// scheme and host.
func newSendReq(t *testing.T, ctx context.Context, method, path string) *http.Request {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, method, "http://upstream.invalid"+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// mustSend sends req through p and fails the test unless Send took it.
func mustSend(t *testing.T, p *Pool, req *http.Request) Pending {
	t.Helper()
	c, ok := p.Send(req)
	if !ok || c == nil {
		t.Fatalf("Send(%s %s) = %v, %v; want a call", req.Method, req.URL, c, ok)
	}
	return c
}

// waitBody waits for c and reads the whole answer, which returns its
// connection to the pool.
func waitBody(c Pending) (*http.Response, string, error) {
	res, err := c.Wait()
	if err != nil {
		return nil, "", err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	return res, string(b), err
}

// assertNoInflight fails unless the upstream and its targets have nothing
// in flight: every call ended and released what it held.
func assertNoInflight(t *testing.T, reg *Registry) {
	t.Helper()
	s := statusOf(t, reg, "u")
	if s.InFlight != 0 {
		t.Fatalf("upstream in_flight %d, want 0", s.InFlight)
	}
	for _, ts := range s.Targets {
		if ts.InFlight != 0 {
			t.Fatalf("target %s in_flight %d, want 0", ts.URL, ts.InFlight)
		}
	}
}

// sleepOrDone waits d or until ctx ends, without leaving a timer behind.
// wantProblem fails the test unless Wait gave no response and the gateway
// error with status and code.
func wantProblem(t *testing.T, what string, res *http.Response, err error, status int, code string) {
	t.Helper()
	if res != nil {
		res.Body.Close()
		t.Fatalf("%s: status %d, want %s", what, res.StatusCode, code)
	}
	var pe *problem.Error
	if !errors.As(err, &pe) || pe.Status != status || pe.Code != code {
		t.Fatalf("%s: err %v, want %d %s", what, err, status, code)
	}
}

func sleepOrDone(ctx context.Context, d time.Duration) bool {
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func TestSendWaitReturnsTheAnswerAndReusesTheConnection(t *testing.T) {
	srv := newConnCounter(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Answer", "42")
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, r.Method+" "+r.URL.RequestURI()+" "+r.Header.Get("X-In"))
	})
	env := newEnv(t, nil)
	p := env.apply(t, &config.Upstream{Targets: targets(srv.URL), Timeout: config.Duration(5 * time.Second)})
	if !p.CanSend(http.MethodGet) {
		t.Fatal("CanSend(GET) false for a plain http:// target on the lean client")
	}
	req := newSendReq(t, context.Background(), http.MethodGet, "/path?q=1")
	req.Header.Set("X-In", "hi")
	c := mustSend(t, p, req)
	res, err := c.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != http.StatusCreated || res.Header.Get("X-Answer") != "42" {
		t.Fatalf("status %d X-Answer %q, want 201 and 42", res.StatusCode, res.Header.Get("X-Answer"))
	}
	// Until its body is closed the answer is in flight, as RoundTrip's.
	if s := statusOf(t, env.reg, "u"); s.InFlight != 1 || s.Targets[0].InFlight != 1 {
		t.Fatalf("with the body open: in_flight %d, target %d; want 1 and 1", s.InFlight, s.Targets[0].InFlight)
	}
	b, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil || string(b) != "GET /path?q=1 hi" {
		t.Fatalf("body %q err %v", b, err)
	}
	assertNoInflight(t, env.reg)

	// The next calls, each method Send takes, go on the same connection.
	for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodOptions} {
		res, body, err := waitBody(mustSend(t, p, newSendReq(t, context.Background(), m, "/again")))
		if err != nil || res.StatusCode != http.StatusCreated {
			t.Fatalf("%s: res %v err %v", m, res, err)
		}
		want := m + " /again "
		if m == http.MethodHead {
			want = ""
		}
		if body != want {
			t.Fatalf("%s: body %q, want %q", m, body, want)
		}
	}
	if n := srv.conns.Load(); n != 1 {
		t.Fatalf("%d connections for four sequential calls, want 1 (reused)", n)
	}
	assertNoInflight(t, env.reg)
}

// The server answers none of the six requests before it has received them
// all, so all six must be on the wire before the first Wait.
func TestSendWritesEveryRequestBeforeAnyAnswerIsRead(t *testing.T) {
	const n = 6
	// A request held back until an earlier answer was read makes the
	// server give up on all of them at once, rather than the test hang.
	giveUp, stop := context.WithTimeout(context.Background(), 3*time.Second)
	defer stop()
	var arrived atomic.Int64
	all := make(chan struct{})
	srv := newConnCounter(t, func(w http.ResponseWriter, r *http.Request) {
		if arrived.Add(1) == n {
			close(all)
		}
		select {
		case <-all:
			_, _ = io.WriteString(w, "ok "+r.URL.Path)
		case <-giveUp.Done():
			w.WriteHeader(http.StatusTeapot)
		case <-r.Context().Done():
		}
	})
	env := newEnv(t, nil)
	p := env.apply(t, &config.Upstream{Targets: targets(srv.URL), Retries: ptr(0),
		Timeout: config.Duration(10 * time.Second)})
	calls := make([]Pending, n)
	for i := range calls {
		calls[i] = mustSend(t, p, newSendReq(t, context.Background(), http.MethodGet, "/"+strconv.Itoa(i)))
	}
	for i, c := range calls {
		res, body, err := waitBody(c)
		if err != nil || res.StatusCode != 200 || body != "ok /"+strconv.Itoa(i) {
			t.Fatalf("call %d: res %v body %q err %v (the server saw %d of %d requests before an answer was read)",
				i, res, body, err, arrived.Load(), n)
		}
	}
	if got := srv.conns.Load(); got != n {
		t.Fatalf("%d connections for %d concurrent calls, want %d", got, n, n)
	}
	assertNoInflight(t, env.reg)
}

func TestWaitRetriesAsRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name  string
		first func(t *testing.T) (url string, hits func() int64)
	}{
		{"503", func(t *testing.T) (string, func() int64) {
			bad := newCounting(t)
			bad.status.Store(http.StatusServiceUnavailable)
			return bad.URL, bad.hits.Load
		}},
		{"connection refused", func(t *testing.T) (string, func() int64) {
			return dead(t), func() int64 { return 1 }
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := newEnv(t, nil)
			first, firstHits := tc.first(t)
			good := newCounting(t)
			// Round robin with equal weights picks the first target first.
			p := env.apply(t, &config.Upstream{Targets: targets(first, good.URL), Retries: ptr(1),
				Timeout: config.Duration(5 * time.Second)})
			res, body, err := waitBody(mustSend(t, p, newSendReq(t, context.Background(), http.MethodGet, "/")))
			if err != nil || res.StatusCode != 200 || body != "from "+strings.TrimPrefix(good.URL, "http://") {
				t.Fatalf("res %v body %q err %v, want 200 from the second target", res, body, err)
			}
			if firstHits() != 1 || good.hits.Load() != 1 {
				t.Fatalf("first target saw %d, second %d; want 1 each", firstHits(), good.hits.Load())
			}
			if got := testutil.ToFloat64(env.reg.m.retries.WithLabelValues("u")); got != 1 {
				t.Fatalf("portico_upstream_retries_total = %v, want 1", got)
			}
			if s := statusOf(t, env.reg, "u"); s.RetriesRecent != 1 || s.Targets[0].Requests != 1 || s.Targets[0].ErrorRate != 1 {
				t.Fatalf("the failed first attempt is not accounted: %+v", s)
			}
			assertNoInflight(t, env.reg)

			// A method that is not idempotent is not even sendable.
			if p.CanSend(http.MethodPost) {
				t.Fatal("CanSend(POST) true")
			}
			post := newSendReq(t, context.Background(), http.MethodPost, "/")
			if c, ok := p.Send(post); ok || c != nil {
				t.Fatalf("Send(POST) = %v, %v; want nil, false", c, ok)
			}
			if good.posts.Load() != 0 {
				t.Fatal("a refused POST reached the upstream")
			}
		})
	}
}

// TestStepSendsTheRetryWithoutWaiting: Step reads a failed first answer
// and sends the retry, returning while the second target still holds the
// request; Wait then reads the retry's answer.
func TestStepSendsTheRetryWithoutWaiting(t *testing.T) {
	for _, tc := range []struct {
		name  string
		first func(t *testing.T) string
	}{
		{"503", func(t *testing.T) string {
			bad := newCounting(t)
			bad.status.Store(http.StatusServiceUnavailable)
			return bad.URL
		}},
		{"connection refused", dead},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := newEnv(t, nil)
			arrived, release := make(chan struct{}, 1), make(chan struct{})
			held := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				arrived <- struct{}{}
				<-release
				_, _ = io.WriteString(w, "held")
			}))
			t.Cleanup(held.Close)
			t.Cleanup(func() {
				select {
				case <-release:
				default:
					close(release)
				}
			})
			// Round robin with equal weights picks the first target first.
			p := env.apply(t, &config.Upstream{Targets: targets(tc.first(t), held.URL), Retries: ptr(1),
				Timeout: config.Duration(5 * time.Second)})
			c := mustSend(t, p, newSendReq(t, context.Background(), http.MethodGet, "/"))
			st, ok := c.(Stepper)
			if !ok {
				t.Fatalf("%T is not a Stepper", c)
			}
			if !st.Step() {
				t.Fatal("Step read the failed answer but reported no retry on its way")
			}
			// Step returned with the retry sent and its answer held back.
			select {
			case <-arrived:
			case <-time.After(5 * time.Second):
				t.Fatal("the retry did not reach the second target")
			}
			close(release)
			res, body, err := waitBody(c)
			if err != nil || res.StatusCode != 200 || body != "held" {
				t.Fatalf("res %v body %q err %v, want the retry's 200", res, body, err)
			}
			if got := testutil.ToFloat64(env.reg.m.retries.WithLabelValues("u")); got != 1 {
				t.Fatalf("portico_upstream_retries_total = %v, want 1", got)
			}
			if st.Step() {
				t.Fatal("Step after Wait reported a retry")
			}
			assertNoInflight(t, env.reg)
		})
	}

	t.Run("a good answer", func(t *testing.T) {
		env := newEnv(t, nil)
		good := newCounting(t)
		p := env.apply(t, &config.Upstream{Targets: targets(good.URL), Retries: ptr(1)})
		c := mustSend(t, p, newSendReq(t, context.Background(), http.MethodGet, "/"))
		if c.(Stepper).Step() {
			t.Fatal("Step reported a retry of a 200")
		}
		res, body, err := waitBody(c)
		if err != nil || res.StatusCode != 200 || body != "from "+strings.TrimPrefix(good.URL, "http://") {
			t.Fatalf("res %v body %q err %v", res, body, err)
		}
		if good.hits.Load() != 1 {
			t.Fatalf("upstream saw %d requests, want 1", good.hits.Load())
		}
		assertNoInflight(t, env.reg)
	})

	t.Run("retries exhausted", func(t *testing.T) {
		env := newEnv(t, nil)
		bad := newCounting(t)
		bad.status.Store(http.StatusServiceUnavailable)
		p := env.apply(t, &config.Upstream{Targets: targets(bad.URL), Retries: ptr(2)})
		c := mustSend(t, p, newSendReq(t, context.Background(), http.MethodGet, "/"))
		steps := 0
		for c.(Stepper).Step() {
			steps++
		}
		if steps != 2 {
			t.Fatalf("%d steps sent a retry, want 2 (retries: 2)", steps)
		}
		res, err := c.Wait()
		if err != nil || res.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("res %v err %v, want the last answer, a 503", res, err)
		}
		res.Body.Close()
		if bad.hits.Load() != 3 {
			t.Fatalf("upstream saw %d requests, want 3", bad.hits.Load())
		}
		assertNoInflight(t, env.reg)
	})
}

func TestWaitTimeoutRunsFromTheSend(t *testing.T) {
	t.Run("deadline passed before Wait", func(t *testing.T) {
		var seen atomic.Int64
		slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			seen.Add(1)
			sleepOrDone(r.Context(), 2*time.Second)
		}))
		defer slow.Close()
		env := newEnv(t, nil)
		p := env.apply(t, &config.Upstream{Targets: targets(slow.URL), Retries: ptr(0),
			Timeout: config.Duration(100 * time.Millisecond)})
		c := mustSend(t, p, newSendReq(t, context.Background(), http.MethodGet, "/"))
		time.Sleep(300 * time.Millisecond)
		start := time.Now()
		res, err := c.Wait()
		if d := time.Since(start); d > time.Second {
			t.Fatalf("Wait took %v after the attempt's deadline had passed", d)
		}
		if res != nil {
			res.Body.Close()
			t.Fatalf("status %d, want an upstream_timeout error", res.StatusCode)
		}
		if pe := problem.FromUpstream(err); pe.Status != http.StatusGatewayTimeout || pe.Code != "upstream_timeout" {
			t.Fatalf("err %v, want 504 upstream_timeout", err)
		}
		if seen.Load() != 1 {
			t.Fatalf("upstream saw %d requests, want 1", seen.Load())
		}
		if s := statusOf(t, env.reg, "u"); s.Targets[0].Requests != 1 || s.Targets[0].ErrorRate != 1 {
			t.Fatalf("a timed-out attempt must count as one failure: %+v", s.Targets[0])
		}
		assertNoInflight(t, env.reg)
	})
	// Wait starts before the deadline: it ends when the deadline counted
	// from the send passes, not a whole timeout later.
	t.Run("not from Wait", func(t *testing.T) {
		h := hanging(t)
		env := newEnv(t, nil)
		p := env.apply(t, &config.Upstream{Targets: targets(h.URL), Retries: ptr(0),
			Timeout: config.Duration(time.Second)})
		c := mustSend(t, p, newSendReq(t, context.Background(), http.MethodGet, "/"))
		time.Sleep(800 * time.Millisecond)
		start := time.Now()
		_, err := c.Wait()
		if problemCode(err) != "upstream_timeout" {
			t.Fatalf("err %v, want upstream_timeout", err)
		}
		// About 200ms; a timeout counted from Wait would take a second.
		if d := time.Since(start); d > 600*time.Millisecond {
			t.Fatalf("Wait took %v, the deadline was 200ms ahead", d)
		}
		assertNoInflight(t, env.reg)
	})
}

// The attempt timeout bounds the answer's header only, as RoundTrip's: a
// body still arriving is read whole, whether Wait began before the
// deadline or after it.
func TestAttemptTimeoutDoesNotCutTheBody(t *testing.T) {
	for _, tc := range []struct {
		name string
		busy time.Duration // between Send and Wait
	}{
		{"Wait before the deadline", 0},
		{"Wait after the deadline", 200 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			headed := make(chan struct{}, 1)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Length", "9")
				w.WriteHeader(200)
				w.(http.Flusher).Flush()
				headed <- struct{}{}
				if sleepOrDone(r.Context(), 400*time.Millisecond) { // past the attempt timeout
					_, _ = io.WriteString(w, "late body")
				}
			}))
			defer srv.Close()
			env := newEnv(t, nil)
			p := env.apply(t, &config.Upstream{Targets: targets(srv.URL), Retries: ptr(0),
				Timeout: config.Duration(100 * time.Millisecond)})
			c := mustSend(t, p, newSendReq(t, context.Background(), http.MethodGet, "/"))
			select {
			case <-headed:
			case <-time.After(5 * time.Second):
				t.Fatal("the upstream never answered")
			}
			time.Sleep(tc.busy)
			res, body, err := waitBody(c)
			if err != nil || res.StatusCode != 200 || body != "late body" {
				t.Fatalf("res %v body %q err %v; want the whole body, as RoundTrip reads it", res, body, err)
			}
			assertNoInflight(t, env.reg)
		})
	}
}

// An answer that arrived in time, but is read after the deadline passed
// (a fan-out reading an earlier, slower answer meanwhile), is what
// RoundTrip would have returned: no timeout, no failure held against the
// target, no second request.
func TestWaitReadsAnAnswerThatArrivedInTime(t *testing.T) {
	for _, tc := range []struct {
		name    string
		timeout time.Duration // the pool's attempt timeout
		callers time.Duration // the request context's deadline
	}{
		{"attempt timeout", 100 * time.Millisecond, 0},
		{"caller's deadline", 0, 100 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var seen atomic.Int64
			answered := make(chan struct{}, 4)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				seen.Add(1)
				_, _ = io.WriteString(w, "prompt")
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
			c := mustSend(t, p, newSendReq(t, ctx, http.MethodGet, "/"))
			select {
			case <-answered:
			case <-time.After(5 * time.Second):
				t.Fatal("the upstream never answered")
			}
			time.Sleep(300 * time.Millisecond) // the caller reads another answer
			res, body, err := waitBody(c)
			if err != nil || res.StatusCode != 200 || body != "prompt" {
				t.Fatalf("res %v body %q err %v; want the 200 that arrived in time", res, body, err)
			}
			if s := statusOf(t, env.reg, "u"); seen.Load() != 1 || s.Targets[0].ErrorRate != 0 {
				t.Fatalf("upstream saw %d requests, error rate %v; want 1 and 0", seen.Load(), s.Targets[0].ErrorRate)
			}
			assertNoInflight(t, env.reg)
		})
	}
}

// The caller's deadline bounds the answer's body as it does RoundTrip's,
// also when the pool's shorter attempt timeout bounded the header.
func TestCallersDeadlineBoundsTheBody(t *testing.T) {
	for _, via := range []string{"RoundTrip", "Send"} {
		for _, timeout := range []time.Duration{0, time.Second} {
			t.Run(via+"/timeout "+timeout.String(), func(t *testing.T) {
				srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					w.Header().Set("Content-Length", "10")
					_, _ = io.WriteString(w, "12345")
					w.(http.Flusher).Flush()
					sleepOrDone(r.Context(), 5*time.Second) // the rest never comes
				}))
				defer srv.Close()
				env := newEnv(t, nil)
				p := env.apply(t, &config.Upstream{Targets: targets(srv.URL), Retries: ptr(0),
					Timeout: config.Duration(timeout)})
				// Longer than the attempt timeout, when there is one.
				ctx, cancel := context.WithTimeout(context.Background(), timeout+300*time.Millisecond)
				defer cancel()
				req := newSendReq(t, ctx, http.MethodGet, "/")
				var res *http.Response
				var err error
				if via == "Send" {
					res, err = mustSend(t, p, req).Wait()
				} else {
					res, err = p.RoundTrip(req)
				}
				if err != nil {
					t.Fatal(err)
				}
				defer res.Body.Close()
				start := time.Now()
				if _, err := io.ReadAll(res.Body); err == nil {
					t.Fatal("the whole body was read, but the upstream never sent it")
				}
				// The caller's deadline was at most 1.3s ahead; the server
				// holds the rest of the body for 5s.
				if d := time.Since(start); d > 3*time.Second {
					t.Fatalf("reading the body took %v, well past the caller's deadline", d)
				}
			})
		}
	}
}

func TestWaitAfterCancelIsTheCallersError(t *testing.T) {
	for _, tc := range []struct {
		name   string
		cancel func(context.CancelFunc)
	}{
		{"cancelled before Wait", func(cancel context.CancelFunc) { cancel() }},
		{"cancelled during Wait", func(cancel context.CancelFunc) { time.AfterFunc(50*time.Millisecond, cancel) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := newEnv(t, nil)
			h := hanging(t)
			p := env.apply(t, &config.Upstream{Targets: targets(h.URL), Retries: ptr(1), Timeout: config.Duration(10 * time.Second),
				Passive:        &config.Passive{ConsecutiveFailures: 1, Ejection: config.Duration(time.Minute)},
				CircuitBreaker: &config.CircuitBreaker{FailureRatio: 0.1, MinRequests: 1, OpenFor: config.Duration(time.Minute)}})
			for i := range 3 {
				ctx, cancel := context.WithCancel(context.Background())
				c := mustSend(t, p, newSendReq(t, ctx, http.MethodGet, "/"))
				tc.cancel(cancel)
				start := time.Now()
				res, err := c.Wait()
				if d := time.Since(start); d > 2*time.Second {
					t.Fatalf("call %d: Wait took %v after the cancellation; the upstream never answers", i, d)
				}
				cancel()
				if res != nil {
					res.Body.Close()
					t.Fatalf("call %d: status %d, want the context's error", i, res.StatusCode)
				}
				if !errors.Is(err, context.Canceled) || problemCode(err) != "" {
					t.Fatalf("call %d: err %v, want context.Canceled", i, err)
				}
			}
			s := statusOf(t, env.reg, "u")
			if s.Breaker != "closed" || s.Targets[0].Requests != 0 || s.RetriesRecent != 0 || s.Targets[0].EjectedUntil != nil {
				t.Fatalf("a caller going away was held against the upstream: %+v", s)
			}
			if got := testutil.ToFloat64(env.reg.m.requests.WithLabelValues("u", h.URL, "error")); got != 0 {
				t.Fatalf("requests_total{code=error} %v, want 0", got)
			}
			assertNoInflight(t, env.reg)
		})
	}
}

func TestSendMaxInflight(t *testing.T) {
	srv := newCounting(t)
	env := newEnv(t, nil)
	p := env.apply(t, &config.Upstream{Targets: targets(srv.URL), MaxInflight: 1, Retries: ptr(1)})
	first := mustSend(t, p, newSendReq(t, context.Background(), http.MethodGet, "/"))
	second := mustSend(t, p, newSendReq(t, context.Background(), http.MethodGet, "/"))
	start := time.Now()
	res, err := second.Wait()
	wantProblem(t, "second call", res, err, http.StatusServiceUnavailable, "upstream_overloaded")
	if d := time.Since(start); d > time.Second {
		t.Fatalf("shedding took %v; it must be immediate", d)
	}
	res, err = first.Wait()
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("first call: res %v err %v", res, err)
	}
	if s := statusOf(t, env.reg, "u"); s.InFlight != 1 {
		t.Fatalf("with the first body open: in_flight %d, want 1", s.InFlight)
	}
	res.Body.Close()
	assertNoInflight(t, env.reg)
	if srv.hits.Load() != 1 {
		t.Fatalf("upstream saw %d requests, want 1 (the shed one never sent)", srv.hits.Load())
	}
	// The slot is free again.
	if res, _, err := waitBody(mustSend(t, p, newSendReq(t, context.Background(), http.MethodGet, "/"))); err != nil || res.StatusCode != 200 {
		t.Fatalf("after the release: res %v err %v", res, err)
	}
	assertNoInflight(t, env.reg)
}

func TestSendBreakerOpen(t *testing.T) {
	clock := newFakeClock()
	env := newEnv(t, clock)
	s := newCounting(t)
	s.status.Store(500)
	p := env.apply(t, &config.Upstream{Targets: targets(s.URL), Retries: ptr(1),
		CircuitBreaker: &config.CircuitBreaker{FailureRatio: 0.5, MinRequests: 1, OpenFor: config.Duration(time.Minute)}})
	if status, _, err := send(p, http.MethodGet, ""); err != nil || status != 500 {
		t.Fatalf("status %d err %v", status, err) // opens the breaker
	}
	if statusOf(t, env.reg, "u").Breaker != "open" {
		t.Fatal("breaker not open")
	}
	hits := s.hits.Load()
	res, err := mustSend(t, p, newSendReq(t, context.Background(), http.MethodGet, "/")).Wait()
	wantProblem(t, "the call", res, err, http.StatusServiceUnavailable, "breaker_open")
	if s.hits.Load() != hits {
		t.Fatalf("upstream saw %d requests while the breaker was open", s.hits.Load()-hits)
	}
	assertNoInflight(t, env.reg)
}

// A server closes a kept-alive connection soon after answering, as an
// upstream with a short idle timeout does. The next call takes that
// connection from the pool (idle for less than livenessAfter, so unprobed),
// finds it dead and is sent again on a new one, without a retry by the
// pool and without an error.
func TestSendOnStaleConnection(t *testing.T) {
	var accepted atomic.Int64
	closed := make(chan struct{}, 8)
	addr := rawServer(t, func(conn net.Conn) {
		accepted.Add(1)
		if _, err := http.ReadRequest(bufio.NewReader(conn)); err == nil {
			// HTTP/1.1 without Connection: close: the client keeps it.
			_, _ = io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
		conn.Close()
		closed <- struct{}{}
	})
	env := newEnv(t, nil)
	p := env.apply(t, &config.Upstream{Targets: targets("http://" + addr), Retries: ptr(0),
		Timeout: config.Duration(5 * time.Second)})
	idle := func() []*h1Conn {
		p.tr.h1.mu.Lock()
		defer p.tr.h1.mu.Unlock()
		return append([]*h1Conn(nil), p.tr.h1.idle[addr]...)
	}
	const calls = 3
	for i := range calls {
		if i > 0 {
			conns := idle()
			if len(conns) != 1 {
				t.Fatalf("call %d: %d idle connections, want the stale one", i, len(conns))
			}
			if d := time.Since(conns[0].idleAt); d >= livenessAfter {
				t.Fatalf("call %d: connection idle for %v; the liveness probe would catch it", i, d)
			}
		}
		res, body, err := waitBody(mustSend(t, p, newSendReq(t, context.Background(), http.MethodGet, "/")))
		if err != nil || res.StatusCode != 200 || body != "ok" {
			t.Fatalf("call %d: res %v body %q err %v", i, res, body, err)
		}
		select {
		case <-closed:
		case <-time.After(5 * time.Second):
			t.Fatal("the server never closed its connection")
		}
	}
	if n := accepted.Load(); n != calls {
		t.Fatalf("%d connections, want %d (each stale one replaced)", n, calls)
	}
	if got := testutil.ToFloat64(env.reg.m.retries.WithLabelValues("u")); got != 0 {
		t.Fatalf("retries_total %v, want 0: the client resends, the pool does not retry", got)
	}
	if s := statusOf(t, env.reg, "u"); s.Targets[0].ErrorRate != 0 {
		t.Fatalf("a stale connection was held against the target: %+v", s.Targets[0])
	}
	assertNoInflight(t, env.reg)
}

func TestCanSendAndSendRefusals(t *testing.T) {
	srv := newCounting(t)
	env := newEnv(t, nil)
	for _, tc := range []struct {
		name string
		up   *config.Upstream
		want bool
	}{
		{"lean http", &config.Upstream{Targets: targets(srv.URL)}, true},
		{"lean named", &config.Upstream{Targets: targets(srv.URL), HTTP1Client: "lean"}, true},
		{"standard", &config.Upstream{Targets: targets(srv.URL), HTTP1Client: "standard"}, false},
		{"https", &config.Upstream{Targets: targets("https://127.0.0.1:1")}, false},
		{"h2c", &config.Upstream{Targets: targets("h2c://127.0.0.1:1")}, false},
		{"http and https", &config.Upstream{Targets: targets(srv.URL, "https://127.0.0.1:1")}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := env.apply(t, tc.up)
			for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodOptions} {
				if got := p.CanSend(m); got != tc.want {
					t.Fatalf("CanSend(%s) = %v, want %v", m, got, tc.want)
				}
			}
			for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete,
				http.MethodTrace, http.MethodConnect} {
				if p.CanSend(m) {
					t.Fatalf("CanSend(%s) true", m)
				}
			}
			if !tc.want {
				if c, ok := p.Send(newSendReq(t, context.Background(), http.MethodGet, "/")); ok || c != nil {
					t.Fatalf("Send = %v, %v on a pool that cannot send", c, ok)
				}
			}
		})
	}

	p := env.apply(t, &config.Upstream{Targets: targets(srv.URL)})
	srv.hits.Store(0)
	for _, tc := range []struct {
		name string
		make func(*http.Request)
	}{
		{"websocket upgrade", func(r *http.Request) {
			r.Header.Set("Connection", "upgrade")
			r.Header.Set("Upgrade", "websocket")
		}},
		{"Connection: upgrade alone", func(r *http.Request) { r.Header.Set("Connection", "keep-alive, Upgrade") }},
		{"Upgrade alone", func(r *http.Request) { r.Header.Set("Upgrade", "h2c") }},
		{"Expect", func(r *http.Request) { r.Header.Set("Expect", "100-continue") }},
		{"body", func(r *http.Request) {
			r.Body, r.ContentLength = io.NopCloser(strings.NewReader("x")), 1
		}},
		{"streamed body", func(r *http.Request) {
			r.Body, r.ContentLength = io.NopCloser(strings.NewReader("x")), -1
		}},
		{"Transfer-Encoding", func(r *http.Request) { r.TransferEncoding = []string{"chunked"} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := newSendReq(t, context.Background(), http.MethodGet, "/")
			tc.make(req)
			before := statusOf(t, env.reg, "u")
			if c, ok := p.Send(req); ok || c != nil {
				t.Fatalf("Send = %v, %v; want nil, false", c, ok)
			}
			after := statusOf(t, env.reg, "u")
			if after.InFlight != before.InFlight || after.RequestsRecent != before.RequestsRecent {
				t.Fatalf("a refused Send changed the pool: in_flight %d -> %d, requests %d -> %d",
					before.InFlight, after.InFlight, before.RequestsRecent, after.RequestsRecent)
			}
		})
	}
	if srv.hits.Load() != 0 {
		t.Fatalf("refused requests reached the upstream: %d", srv.hits.Load())
	}
}

func TestWaitTwiceAndInvalidHeader(t *testing.T) {
	var hits atomic.Int64
	srv := newConnCounter(t, func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		_, _ = io.WriteString(w, "ok")
	})
	env := newEnv(t, nil)
	p := env.apply(t, &config.Upstream{Targets: targets(srv.URL), MaxInflight: 1})

	t.Run("twice", func(t *testing.T) {
		c := mustSend(t, p, newSendReq(t, context.Background(), http.MethodGet, "/"))
		if res, body, err := waitBody(c); err != nil || body != "ok" {
			t.Fatalf("first Wait: res %v body %q err %v", res, body, err)
		}
		res, err := c.Wait()
		if err == nil || res != nil {
			t.Fatalf("second Wait: res %v err %v, want an error", res, err)
		}
		// The second Wait released nothing twice.
		assertNoInflight(t, env.reg)
		// Nor does a call that ended in Send (shed here).
		held := mustSend(t, p, newSendReq(t, context.Background(), http.MethodGet, "/"))
		shed := mustSend(t, p, newSendReq(t, context.Background(), http.MethodGet, "/"))
		if _, err := shed.Wait(); problemCode(err) != "upstream_overloaded" {
			t.Fatalf("err %v, want upstream_overloaded", err)
		}
		if res, err := shed.Wait(); err == nil || problemCode(err) == "upstream_overloaded" || res != nil {
			t.Fatalf("second Wait of a shed call: res %v err %v, want the Wait-twice error", res, err)
		}
		if _, _, err := waitBody(held); err != nil {
			t.Fatal(err)
		}
		assertNoInflight(t, env.reg)
		if n := srv.conns.Load(); n != 1 {
			t.Fatalf("%d connections, want 1", n)
		}
	})

	t.Run("invalid header value", func(t *testing.T) {
		conns, before := srv.conns.Load(), hits.Load()
		req := newSendReq(t, context.Background(), http.MethodGet, "/")
		req.Header["X-Bad"] = []string{"a\nInjected: yes"}
		res, err := mustSend(t, p, req).Wait()
		if err == nil {
			res.Body.Close()
			t.Fatal("a header value with LF was sent")
		}
		if n := srv.conns.Load(); n != conns || hits.Load() != before {
			t.Fatalf("a refused request opened %d connections and reached the upstream %d times",
				n-conns, hits.Load()-before)
		}
		assertNoInflight(t, env.reg)
		// The idle connection was not written on either: the next call
		// reads its own answer from it.
		if res, body, err := waitBody(mustSend(t, p, newSendReq(t, context.Background(), http.MethodGet, "/"))); err != nil || body != "ok" {
			t.Fatalf("after the refusal: res %v body %q err %v", res, body, err)
		}
		if n := srv.conns.Load(); n != conns {
			t.Fatalf("%d new connections after the refusal, want 0", n-conns)
		}
	})
}
