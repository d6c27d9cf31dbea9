package faults

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func okHandler(name string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"target":"`+name+`"}`)
	})
}

// okTarget starts a target answering okHandler(name) on a free loopback
// port; it is killed when the test ends.
func okTarget(t *testing.T, name string) *Target {
	t.Helper()
	tg, err := StartTarget("127.0.0.1:0", okHandler(name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tg.Kill)
	return tg
}

// Fault 1: one of two targets dies under load. Retries (connect errors and
// idempotent GETs) and passive ejection must hide it from clients.
func TestUpstreamTargetKilled(t *testing.T) {
	t.Parallel()
	a := okTarget(t, "a")
	b := okTarget(t, "b")
	p := start(t, header+fmt.Sprintf(`upstreams:
  pool:
    targets: [{url: %q}, {url: %q}]
    timeout: 5s
    passive: {consecutive_failures: 3, ejection: 30s}
routes:
  - {name: pool, match: {path: "/*"}, upstream: pool, public: true}
`, a.URL(), b.URL()))

	c := client(t)
	var total, failed atomic.Int64
	var badMu sync.Mutex
	var bad []string
	stop := runLoad(8, func(int, int) {
		total.Add(1)
		resp, err := c.Get(p.Base + "/x")
		if err != nil {
			failed.Add(1)
			badMu.Lock()
			bad = append(bad, err.Error())
			badMu.Unlock()
			return
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			failed.Add(1)
			badMu.Lock()
			if err == nil {
				if _, perr := checkProblem(resp, body, resp.StatusCode); perr != nil {
					bad = append(bad, "malformed error: "+perr.Error())
				}
			}
			bad = append(bad, fmt.Sprintf("%d %s %v", resp.StatusCode, body, err))
			badMu.Unlock()
		}
	})
	time.Sleep(700 * time.Millisecond) // load runs on its own clock; this only spaces the fault
	b.Kill()
	time.Sleep(1500 * time.Millisecond)
	stop()

	n, f := total.Load(), failed.Load()
	t.Logf("requests %d, failed %d (%.3f%%)", n, f, 100*float64(f)/float64(n))
	if n < 200 {
		t.Fatalf("only %d requests: the load did not run", n)
	}
	if float64(f) >= 0.01*float64(n) {
		t.Errorf("failures %d of %d (>= 1%%): %v", f, n, bad)
	}
	for _, s := range bad {
		if strings.HasPrefix(s, "malformed") {
			t.Error(s)
		}
	}
	m := scrape(t, p)
	if v := m.Sum("portico_upstream_requests_total", map[string]string{"upstream": "pool", "target": b.URL(), "code": "error"}); v < 1 {
		t.Errorf("no upstream error counted for the killed target:\n%s", m.Series("portico_upstream_requests_total"))
	}
	ok := m.Sum("portico_requests_total", map[string]string{"route": "pool", "code": "200"})
	if int64(ok) != n-f {
		// Every answered request is counted exactly once.
		t.Errorf("portico_requests_total{code=200} = %v, clients saw %d", ok, n-f)
	}
	if len(p.Stderr.Find("upstream target ejected", map[string]string{"upstream": "pool", "target": b.URL()})) == 0 {
		t.Errorf("no ejection logged for %s", b.URL())
	}
}

// Fault 2: a target that accepts and never answers gets a 504 within the
// route timeout (and, on a route without one, within the upstream timeout).
func TestUpstreamHanging(t *testing.T) {
	t.Parallel()
	hang := startRaw(t, func(c net.Conn, stop <-chan struct{}) {
		_ = readRequestHead(c)
		<-stop
	})
	p := start(t, header+fmt.Sprintf(`upstreams:
  hang: {targets: [{url: %q}], timeout: 700ms, retries: 0}
  hang-retry: {targets: [{url: %q}], timeout: 10s, retries: 2}
routes:
  - {name: upstream-timeout, match: {path: "/a"}, upstream: hang, public: true}
  - {name: route-timeout, match: {path: "/b"}, upstream: hang-retry, timeout: 1s, public: true}
`, hang.URL(), hang.URL()))
	c := client(t)
	for _, tc := range []struct {
		path, route, code string
		limit             time.Duration
	}{
		{"/a", "upstream-timeout", "", 700 * time.Millisecond},
		{"/b", "route-timeout", "urn:portico:problem:route_timeout", time.Second},
	} {
		t.Run(tc.route, func(t *testing.T) {
			begin := time.Now()
			resp, body := get(t, c, p.Base+tc.path, nil)
			took := time.Since(begin)
			pb, err := checkProblem(resp, body, http.StatusGatewayTimeout)
			if err != nil {
				t.Fatal(err)
			}
			if tc.code != "" && pb.Type != tc.code {
				t.Errorf("type %q, want %q", pb.Type, tc.code)
			}
			// Slack for two busy cores, but far below the next timeout.
			if took < tc.limit || took > tc.limit+2*time.Second {
				t.Errorf("504 after %v, want about %v", took, tc.limit)
			}
			m := scrape(t, p)
			if v := m.Sum("portico_requests_total", map[string]string{"route": tc.route, "code": "504"}); v != 1 {
				t.Errorf("portico_requests_total{route=%s,code=504} = %v, want 1", tc.route, v)
			}
			if !p.Stderr.WaitFor(2*time.Second, func(b *LineBuffer) bool {
				return len(b.Find("proxy exchange failed", map[string]string{"route": tc.route, "status": "504", "request_id": pb.RequestID})) == 1
			}) {
				t.Errorf("no log line for request %s", pb.RequestID)
			}
		})
	}
}

// Fault 3: a target that sends its head and half its body, then closes.
// The client must see the connection fail, never a clean short body.
func TestUpstreamResetMidBody(t *testing.T) {
	t.Parallel()
	// Larger than the server's write buffer, so the head and part of the
	// body do reach the client before the failure.
	half := strings.Repeat("x", 64<<10)
	lengthSrv := startRaw(t, func(c net.Conn, _ <-chan struct{}) {
		if readRequestHead(c) != nil {
			return
		}
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 131072\r\n\r\n"+half)
	})
	chunkedSrv := startRaw(t, func(c net.Conn, _ <-chan struct{}) {
		if readRequestHead(c) != nil {
			return
		}
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"+
			fmt.Sprintf("%x\r\n%s\r\n", len(half), half))
	})
	p := start(t, header+fmt.Sprintf(`upstreams:
  length: {targets: [{url: %q}]}
  chunked: {targets: [{url: %q}]}
routes:
  - {name: length, match: {path: "/length"}, upstream: length, public: true}
  - {name: chunked, match: {path: "/chunked"}, upstream: chunked, public: true}
`, lengthSrv.URL(), chunkedSrv.URL()))

	for _, path := range []string{"/length", "/chunked"} {
		t.Run(path[1:], func(t *testing.T) {
			// Raw client: read exactly what the gateway sends, so the test
			// sees the framing itself rather than a client's view of it.
			conn, err := net.Dial("tcp", strings.TrimPrefix(p.Base, "http://"))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
			fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path)
			br := bufio.NewReader(conn)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				// The gateway may not have flushed the head before the
				// upstream failed: closing without any response is a
				// clean failure too, as long as nothing looked whole.
				t.Logf("no response head, connection closed: %v", err)
				return
			}
			got, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil {
				t.Fatalf("status %d, clean body of %d bytes: a truncated response looked complete", resp.StatusCode, len(got))
			}
			if !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, net.ErrClosed) && !strings.Contains(err.Error(), "reset") {
				t.Logf("body error: %v", err)
			}
			// And the connection is closed, not left open for reuse.
			if _, err := br.ReadByte(); err == nil {
				t.Error("connection still open after the truncated response")
			}
			if len(got) > len(half) {
				t.Errorf("got %d bytes, upstream sent %d", len(got), len(half))
			}
		})
	}
	// And with the ordinary Go client: an error, never a short success.
	c := client(t)
	for _, path := range []string{"/length", "/chunked"} {
		resp, err := c.Get(p.Base + path)
		if err != nil {
			continue
		}
		_, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil {
			t.Errorf("%s: Go client read a clean body", path)
		}
	}
	// Counted (each route twice) and logged.
	var m Metrics
	deadline := time.Now().Add(5 * time.Second)
	for {
		m = scrape(t, p)
		if m.Sum("portico_requests_total", map[string]string{"route": "length"})+
			m.Sum("portico_requests_total", map[string]string{"route": "chunked"}) >= 4 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, route := range []string{"length", "chunked"} {
		if v := m.Sum("portico_requests_total", map[string]string{"route": route}); v != 2 {
			t.Errorf("portico_requests_total{route=%s} = %v, want 2:\n%s", route, v, m.Series("portico_requests_total"))
		}
	}
	t.Logf("counted as:\n%s", m.Series("portico_requests_total"))
	n := 0
	for _, l := range p.Stderr.JSONLines() {
		if msg, _ := l["msg"].(string); strings.Contains(msg, "error during body copy") {
			n++
		}
	}
	if n < 4 {
		t.Errorf("%d body-copy failures logged, want 4", n)
	}
}

// Fault 4: a target that does not speak HTTP gets 502 problem+json.
func TestUpstreamGarbage(t *testing.T) {
	t.Parallel()
	var conns atomic.Int64
	garbage := startRaw(t, func(c net.Conn, _ <-chan struct{}) {
		conns.Add(1)
		if readRequestHead(c) != nil {
			return
		}
		_, _ = io.WriteString(c, "SSH-2.0-OpenSSH_9.6\r\n\x00\x01\x02 not http at all\r\n\r\n")
	})
	p := start(t, header+fmt.Sprintf(`upstreams:
  garbage: {targets: [{url: %q}], retries: 1}
routes:
  - {name: garbage, match: {path: "/*"}, upstream: garbage, public: true}
`, garbage.URL()))
	c := client(t)
	const n = 5
	for i := 0; i < n; i++ {
		resp, body := get(t, c, p.Base+"/g", nil)
		pb, err := checkProblem(resp, body, http.StatusBadGateway)
		if err != nil {
			t.Fatal(err)
		}
		if len(p.Stderr.Find("proxy exchange failed", map[string]string{"request_id": pb.RequestID})) == 0 &&
			!p.Stderr.WaitFor(2*time.Second, func(b *LineBuffer) bool {
				return len(b.Find("proxy exchange failed", map[string]string{"request_id": pb.RequestID, "status": "502"})) == 1
			}) {
			t.Errorf("no log line for %s", pb.RequestID)
		}
	}
	m := scrape(t, p)
	if v := m.Sum("portico_requests_total", map[string]string{"route": "garbage", "code": "502"}); v != n {
		t.Errorf("portico_requests_total{code=502} = %v, want %d", v, n)
	}
	errs := m.Sum("portico_upstream_requests_total", map[string]string{"upstream": "garbage", "code": "error"})
	if errs < n {
		t.Errorf("upstream errors %v, want at least %d:\n%s", errs, n, m.Series("portico_upstream_requests_total"))
	}
	t.Logf("%d requests: %v upstream attempts counted as errors, %d connections to the target", n, errs, conns.Load())
}

// Fault 5: a response that drips must reach the client as it comes.
func TestUpstreamSlowDrip(t *testing.T) {
	t.Parallel()
	const chunks = 10
	drip, err := StartTarget("127.0.0.1:0", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		rc := http.NewResponseController(w)
		for i := 0; i < chunks; i++ {
			fmt.Fprintf(w, "chunk %d\n", i)
			if err := rc.Flush(); err != nil {
				return
			}
			select {
			case <-time.After(100 * time.Millisecond):
			case <-r.Context().Done():
				return
			}
		}
	}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(drip.Kill)
	p := start(t, header+fmt.Sprintf(`upstreams:
  drip: {targets: [{url: %q}], timeout: 2s}
routes:
  - {name: drip, match: {path: "/*"}, upstream: drip, public: true, timeout: 2s}
`, drip.URL()))
	c := client(t)
	begin := time.Now()
	resp, err := c.Get(p.Base + "/d")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	var at []time.Duration
	for {
		line, err := br.ReadString('\n')
		if line != "" {
			at = append(at, time.Since(begin))
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("after %d lines: %v", len(at), err)
		}
	}
	if len(at) != chunks {
		t.Fatalf("%d lines, want %d", len(at), chunks)
	}
	first, last := at[0], at[len(at)-1]
	t.Logf("first line after %v, last after %v", first, last)
	// The whole body takes at least 900 ms upstream; streaming shows the
	// first line long before, and the middle one in the middle.
	if first > last/3 || first > 500*time.Millisecond {
		t.Errorf("first line after %v of %v: the response was buffered", first, last)
	}
	if mid := at[chunks/2]; mid < 300*time.Millisecond || mid > last-200*time.Millisecond {
		t.Errorf("line %d after %v of %v: not streamed as it came", chunks/2, mid, last)
	}
	// The route timeout bounds the wait for headers, not the body.
	if last < 900*time.Millisecond {
		t.Errorf("whole body in %v, faster than the upstream sends it", last)
	}
}
