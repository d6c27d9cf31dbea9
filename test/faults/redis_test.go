package faults

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// startRedis starts a private redis-server or skips (fails with
// PORTICO_REQUIRE_REDIS=1) when it is not installed.
func startRedis(t *testing.T) *Redis {
	t.Helper()
	r, err := StartRedis(0)
	if errors.Is(err, ErrNoRedisServer) {
		if os.Getenv("PORTICO_REQUIRE_REDIS") == "1" {
			t.Fatal("redis-server is required (PORTICO_REQUIRE_REDIS=1) but not installed")
		}
		t.Skip("redis-server not installed; set PORTICO_REQUIRE_REDIS=1 to make this a failure")
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Kill)
	return r
}

// Fault 6: Redis killed and restarted under load, with one policy per
// on_store_error.
func TestRedisKilledAndRestarted(t *testing.T) {
	t.Parallel()
	rds := startRedis(t)
	up := okTarget(t, "up")
	const limit = 5
	p := start(t, header+fmt.Sprintf(`upstreams:
  up: {targets: [{url: %q}]}
rate_limits:
  store: {type: redis, url: "redis://%s", timeout: 250ms}
  policies:
    rl-local:  {algorithm: fixed_window, limit: %d, window: 1m, key: "header:X-Key", on_store_error: local}
    rl-open:   {algorithm: fixed_window, limit: %d, window: 1m, key: "header:X-Key", on_store_error: fail_open}
    rl-closed: {algorithm: fixed_window, limit: %d, window: 1m, key: "header:X-Key", on_store_error: fail_closed}
routes:
  - {name: local, match: {path: "/local"}, upstream: up, public: true, rate_limit: [rl-local]}
  - {name: open, match: {path: "/open"}, upstream: up, public: true, rate_limit: [rl-open]}
  - {name: closed, match: {path: "/closed"}, upstream: up, public: true, rate_limit: [rl-closed]}
`, up.URL(), rds.Addr(), limit, limit, limit))
	c := client(t)

	// burst sends n requests with one key and returns the statuses seen;
	// every refusal must be a well-formed problem.
	burst := func(t *testing.T, path, key string, n int) map[int]int {
		t.Helper()
		out := map[int]int{}
		for i := 0; i < n; i++ {
			resp, body := get(t, c, p.Base+path, map[string]string{"X-Key": key})
			out[resp.StatusCode]++
			if resp.StatusCode != http.StatusOK {
				if _, err := checkProblem(resp, body, resp.StatusCode); err != nil {
					t.Errorf("%s: %v", path, err)
				}
				if resp.StatusCode == http.StatusTooManyRequests && resp.Header.Get("Retry-After") == "" {
					t.Errorf("%s: 429 without Retry-After", path)
				}
			}
		}
		return out
	}
	expectLimited := func(t *testing.T, path, key string) {
		t.Helper()
		got := burst(t, path, key, limit+2)
		if got[200] != limit || got[429] != 2 {
			t.Errorf("%s key %s: statuses %v, want %d×200 and 2×429", path, key, got, limit)
		}
	}

	// Background load with a fresh key per request: fail_open and local
	// must admit all of it whatever Redis does; fail_closed may refuse
	// with 503 only.
	var bgTotal, bgBad atomic.Int64
	var bgMu sync.Mutex
	var bgErrs []string
	paths := []string{"/open", "/local", "/closed"}
	stop := runLoad(len(paths), func(w, i int) {
		path := paths[w]
		req, _ := http.NewRequest(http.MethodGet, p.Base+path, nil)
		req.Header.Set("X-Key", "bg-"+strconv.Itoa(w)+"-"+strconv.Itoa(i))
		bgTotal.Add(1)
		resp, err := c.Do(req)
		var msg string
		if err != nil {
			msg = err.Error()
		} else {
			body, rerr := io.ReadAll(resp.Body)
			resp.Body.Close()
			switch {
			case rerr != nil:
				msg = rerr.Error()
			case resp.StatusCode == http.StatusOK:
			case resp.StatusCode == http.StatusServiceUnavailable && path == "/closed":
				if _, perr := checkProblem(resp, body, 503); perr != nil {
					msg = perr.Error()
				}
			default:
				msg = fmt.Sprintf("status %d %s", resp.StatusCode, body)
			}
		}
		if msg != "" {
			bgBad.Add(1)
			bgMu.Lock()
			if len(bgErrs) < 10 {
				bgErrs = append(bgErrs, path+": "+msg)
			}
			bgMu.Unlock()
		}
	})
	defer func() {
		stop()
		t.Logf("background: %d requests, %d unexpected", bgTotal.Load(), bgBad.Load())
		if bgBad.Load() > 0 {
			t.Errorf("background load saw %d unexpected answers: %v", bgBad.Load(), bgErrs)
		}
	}()

	t.Run("redis up", func(t *testing.T) {
		for _, path := range []string{"/local", "/open", "/closed"} {
			expectLimited(t, path, "up")
		}
		if n, err := rds.Do("DBSIZE"); err != nil || n == ":0" {
			t.Errorf("DBSIZE %q, %v: the store holds no counters", n, err)
		}
	})
	before := scrape(t, p)

	rds.Kill()
	t.Run("redis down", func(t *testing.T) {
		expectLimited(t, "/local", "down") // the per-node share of one node: the whole limit
		if got := burst(t, "/open", "down", limit+2); got[200] != limit+2 {
			t.Errorf("/open statuses %v, want all admitted", got)
		}
		if got := burst(t, "/closed", "down", 3); got[503] != 3 {
			t.Errorf("/closed statuses %v, want 3×503", got)
		}
		m := scrape(t, p)
		for _, pol := range []string{"rl-local", "rl-open"} {
			d := m.Sum("portico_ratelimit_decisions_total", map[string]string{"policy": pol, "decision": "fallback"}) -
				before.Sum("portico_ratelimit_decisions_total", map[string]string{"policy": pol, "decision": "fallback"})
			if d < limit+2 {
				t.Errorf("%s: %v fallback decisions, want at least %d", pol, d, limit+2)
			}
		}
		errs := m.Sum("portico_ratelimit_decisions_total", map[string]string{"decision": "error"}) -
			before.Sum("portico_ratelimit_decisions_total", map[string]string{"decision": "error"})
		if errs < 1 {
			t.Errorf("no store error counted:\n%s", m.Series("portico_ratelimit_decisions_total"))
		}
		t.Logf("decisions after the outage:\n%s", m.Series("portico_ratelimit_decisions_total"))
		t.Run("fail_closed refusals counted", func(t *testing.T) {
			refused := m.Sum("portico_requests_total", map[string]string{"route": "closed", "code": "503"})
			// Counted from a later scrape: one scrape reads the decisions
			// family before the requests family, and a background request
			// in between would be in the second only. Every 503 counted
			// in m had its decision counted before it was answered.
			later := scrape(t, p)
			counted := later.Sum("portico_ratelimit_decisions_total", map[string]string{"policy": "rl-closed", "decision": "error"}) +
				later.Sum("portico_ratelimit_decisions_total", map[string]string{"policy": "rl-closed", "decision": "fallback"})
			if counted < refused {
				t.Errorf("%v fail_closed 503s, only %v counted as error or fallback", refused, counted)
			}
		})
		if len(p.Stderr.Find("rate-limit store failed", nil)) == 0 {
			t.Error("store failure not logged")
		}
	})

	if err := rds.Restart(); err != nil {
		t.Fatal(err)
	}
	t.Run("redis back", func(t *testing.T) {
		// The store's breaker probes again within a fraction of a second;
		// allow the client time to reconnect on a busy machine.
		deadline := time.Now().Add(15 * time.Second)
		for i := 0; ; i++ {
			resp, _ := get(t, c, p.Base+"/closed", map[string]string{"X-Key": "probe-" + strconv.Itoa(i)})
			if resp.StatusCode == http.StatusOK {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("fail_closed route still %d 15s after Redis came back", resp.StatusCode)
			}
			time.Sleep(100 * time.Millisecond)
		}
		mid := scrape(t, p)
		for _, path := range []string{"/local", "/open", "/closed"} {
			expectLimited(t, path, "back")
		}
		m := scrape(t, p)
		for _, pol := range []string{"rl-local", "rl-open", "rl-closed"} {
			if d := m.Sum("portico_ratelimit_decisions_total", map[string]string{"policy": pol, "decision": "fallback"}) -
				mid.Sum("portico_ratelimit_decisions_total", map[string]string{"policy": pol, "decision": "fallback"}); d != 0 {
				t.Errorf("%s: %v fallback decisions after Redis came back", pol, d)
			}
		}
		// The counters are in the new Redis, so the store decided.
		if n, err := rds.Do("DBSIZE"); err != nil || n == ":0" {
			t.Errorf("DBSIZE %q, %v after restart: decisions did not go back to the store", n, err)
		}
	})
}

// Redis down when the gateway starts: it serves anyway (the policy's
// on_store_error decides), and uses Redis once it comes up.
func TestRedisDownAtStart(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("redis-server"); err != nil {
		startRedis(t) // skips or fails as the environment asks
	}
	port, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	up := okTarget(t, "up")
	p := start(t, header+fmt.Sprintf(`upstreams:
  up: {targets: [{url: %q}]}
rate_limits:
  store: {type: redis, url: "redis://127.0.0.1:%d", timeout: 250ms}
  policies:
    rl: {algorithm: fixed_window, limit: 3, window: 1m, key: "header:X-Key", on_store_error: local}
routes:
  - {name: limited, match: {path: "/*"}, upstream: up, public: true, rate_limit: [rl]}
`, up.URL(), port))
	if len(p.Stderr.Find("rate-limit store unreachable at start; decisions fail until it is back", nil)) == 0 {
		t.Error("the unreachable store was not logged at start")
	}
	c := client(t)
	statuses := func(key string) map[int]int {
		out := map[int]int{}
		for i := 0; i < 5; i++ {
			resp, body := get(t, c, p.Base+"/x", map[string]string{"X-Key": key})
			out[resp.StatusCode]++
			if resp.StatusCode != http.StatusOK {
				if _, err := checkProblem(resp, body, resp.StatusCode); err != nil {
					t.Error(err)
				}
			}
		}
		return out
	}
	if got := statuses("before"); got[200] != 3 || got[429] != 2 {
		t.Errorf("with Redis down: %v, want the local limit (3×200, 2×429)", got)
	}
	rds, err := StartRedis(port)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rds.Kill)
	deadline := time.Now().Add(15 * time.Second)
	for i := 0; ; i++ {
		get(t, c, p.Base+"/x", map[string]string{"X-Key": "probe-" + strconv.Itoa(i)})
		if n, err := rds.Do("DBSIZE"); err == nil && n != ":0" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no counter reached Redis 15s after it came up")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got := statuses("after"); got[200] != 3 || got[429] != 2 {
		t.Errorf("with Redis up: %v, want 3×200, 2×429", got)
	}
}
