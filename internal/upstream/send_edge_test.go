package upstream

import (
	"context"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/portico-gw/portico/internal/config"
)

// Every way an answer can fail, in its head or in its body, ends the call
// with nothing in flight and its connection closed: not pooled, and not
// left open either. The server serves one connection at a time, so the
// good call after each failure is answered only once the client closed
// the connection it failed on.
func TestWaitFailuresReleaseTheCallAndItsConnection(t *testing.T) {
	answers := map[string]struct {
		raw        string
		closeAfter bool
	}{
		"/good":         {goodAnswer, false},
		"/bad-status":   {"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n", false},
		"/switch":       {"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\n", false},
		"/no-answer":    {"", true},
		"/bad-chunk":    {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokX\r\n0\r\n\r\n", false},
		"/short":        {"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort", true},
		"/abandoned":    {"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nsome of it", false},
		"/closing":      {"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", false},
		"/http10-close": {"HTTP/1.0 200 OK\r\n\r\nuntil the end", true},
	}
	var seen, unanswered atomic.Int64
	addr := rawServer(t, answerEach(&seen, func(_ int64, r *http.Request) (string, bool) {
		if r.URL.Path == "/no-answer" {
			unanswered.Add(1)
		}
		a := answers[r.URL.Path]
		return a.raw, a.closeAfter
	}))
	env := newEnv(t, nil)
	// The timeout turns a connection the client failed to close (which
	// would keep the server from the next one) into a failed good call.
	p := env.apply(t, &config.Upstream{Targets: targets("http://" + addr), Retries: ptr(0),
		Timeout: config.Duration(2 * time.Second)})
	idle := func() int {
		p.tr.h1.mu.Lock()
		defer p.tr.h1.mu.Unlock()
		return len(p.tr.h1.idle[addr])
	}
	good := func(after string) {
		t.Helper()
		res, body, err := waitBody(mustSend(t, p, newSendReq(t, context.Background(), http.MethodGet, "/good")))
		if err != nil || res.StatusCode != 200 || body != "good" {
			t.Fatalf("the call after %s: res %v body %q err %v", after, res, body, err)
		}
		if n := idle(); n != 1 {
			t.Fatalf("after a good call: %d idle connections, want 1", n)
		}
	}
	good("none")
	for _, tc := range []struct {
		path    string
		headErr bool // Wait fails; else its body is read (and fails for /bad-chunk and /short)
	}{
		{"/bad-status", true},
		{"/switch", true},
		{"/no-answer", true},
		{"/bad-chunk", false},
		{"/short", false},
		{"/abandoned", false},
		{"/closing", false},
		{"/http10-close", false},
	} {
		t.Run(strings.TrimPrefix(tc.path, "/"), func(t *testing.T) {
			res, err := mustSend(t, p, newSendReq(t, context.Background(), http.MethodGet, tc.path)).Wait()
			if tc.headErr {
				if err == nil {
					res.Body.Close()
					t.Fatalf("status %d, want an error", res.StatusCode)
				}
			} else {
				if err != nil {
					t.Fatal(err)
				}
				var berr error
				if tc.path == "/abandoned" {
					_, berr = io.ReadFull(res.Body, make([]byte, 4))
				} else {
					_, berr = io.ReadAll(res.Body)
				}
				wantErr := tc.path == "/bad-chunk" || tc.path == "/short"
				if (berr != nil) != wantErr {
					t.Fatalf("body error %v, want one: %t", berr, wantErr)
				}
				if s := statusOf(t, env.reg, "u"); s.InFlight != 1 {
					t.Fatalf("body open: in_flight %d, want 1", s.InFlight)
				}
				res.Body.Close()
			}
			// A request that got no byte of an answer on a pooled
			// connection is sent again, once, on a new one: GET is safe
			// to repeat (RFC 9110 9.2.2), as Go's transport repeats it.
			if n := unanswered.Load(); tc.path == "/no-answer" && n != 2 {
				t.Fatalf("the server read /no-answer %d times, want 2 (one resend)", n)
			}
			assertNoInflight(t, env.reg)
			if n := idle(); n != 0 {
				t.Fatalf("%d idle connections, want 0: the failed one was pooled", n)
			}
			good(tc.path)
		})
	}
}

// A retry that the breaker, opened by the first attempt's answer, does not
// let through leaves that answer as the call's: Step reports no retry and
// Wait returns the answer, whose body (the first attempt's, which Send's
// call holds) is still whole and ends the call when closed.
func TestStepWhenTheBreakerOpensBeforeTheRetry(t *testing.T) {
	env := newEnv(t, newFakeClock())
	bad, other := newCounting(t), newCounting(t)
	bad.status.Store(http.StatusServiceUnavailable)
	// Round robin with equal weights picks the first target first.
	p := env.apply(t, &config.Upstream{Targets: targets(bad.URL, other.URL), Retries: ptr(1),
		CircuitBreaker: &config.CircuitBreaker{FailureRatio: 0.5, MinRequests: 1, OpenFor: config.Duration(time.Minute)}})
	c := mustSend(t, p, newSendReq(t, context.Background(), http.MethodGet, "/"))
	if c.(Stepper).Step() {
		t.Fatal("Step sent a retry through an open breaker")
	}
	if s := statusOf(t, env.reg, "u"); s.Breaker != "open" {
		t.Fatalf("breaker %s, want open", s.Breaker)
	}
	res, body, err := waitBody(c)
	if err != nil || res.StatusCode != http.StatusServiceUnavailable || body != "from "+strings.TrimPrefix(bad.URL, "http://") {
		t.Fatalf("res %v body %q err %v, want the first attempt's 503", res, body, err)
	}
	if other.hits.Load() != 0 {
		t.Fatalf("the other target saw %d requests", other.hits.Load())
	}
	if got := testutil.ToFloat64(env.reg.m.retries.WithLabelValues("u")); got != 0 {
		t.Fatalf("retries_total %v, want 0", got)
	}
	assertNoInflight(t, env.reg)
}
