package upstream

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/portico-gw/portico/internal/config"
)

// connCounter is an httptest server that counts the connections it
// accepted, so a test can tell reuse from dialing.
type connCounter struct {
	*httptest.Server
	conns atomic.Int64
}

func newConnCounter(t *testing.T, h http.HandlerFunc) *connCounter {
	t.Helper()
	c := &connCounter{}
	c.Server = httptest.NewUnstartedServer(h)
	c.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			c.conns.Add(1)
		}
	}
	c.Start()
	t.Cleanup(c.Close)
	return c
}

// rawServer answers on a loopback port with serve, one connection at a
// time, each closed after serve returns, until the test ends; it returns
// the address. For answers no well-behaved server would write.
func rawServer(t *testing.T, serve func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			serve(conn)
			conn.Close()
		}
	})
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String()
}

// pooled leaves n connections to url in c's idle pool: n answers in
// flight at once, each read to the end.
func pooled(t *testing.T, c *h1Client, url string, n int) {
	t.Helper()
	var open []*http.Response
	for range n {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		res, err := c.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, res)
	}
	for _, res := range open {
		_, _ = io.ReadAll(res.Body)
		res.Body.Close()
	}
}

func newH1(t *testing.T) *h1Client {
	t.Helper()
	std := &http.Transport{}
	c := &h1Client{dial: (&net.Dialer{Timeout: time.Second}).DialContext, fallback: std, maxIdle: 4, idleTimeout: time.Minute}
	t.Cleanup(c.CloseIdleConnections)
	return c
}

func get(t *testing.T, rt http.RoundTripper, method, url string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := rt.RoundTrip(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	b, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil {
		t.Fatalf("body: %v", err)
	}
	return res, string(b)
}

func TestH1ReusesOneConnection(t *testing.T) {
	srv := newConnCounter(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/chunked":
			w.Header().Set("Trailer", "X-Sum")
			_, _ = io.WriteString(w, "part one,")
			w.(http.Flusher).Flush()
			_, _ = io.WriteString(w, "part two")
			w.Header().Set("X-Sum", "42")
		case "/empty":
			w.WriteHeader(http.StatusNoContent)
		default:
			_, _ = io.WriteString(w, r.Method+" "+r.URL.RequestURI())
		}
	})
	c := newH1(t)
	for i := 0; i < 5; i++ {
		res, body := get(t, c, http.MethodGet, srv.URL+"/a?b=c")
		if res.StatusCode != 200 || body != "GET /a?b=c" {
			t.Fatalf("got %d %q", res.StatusCode, body)
		}
	}
	res, body := get(t, c, http.MethodGet, srv.URL+"/chunked")
	if body != "part one,part two" || res.Trailer.Get("X-Sum") != "42" {
		t.Fatalf("chunked: %q, trailer %q", body, res.Trailer.Get("X-Sum"))
	}
	if res, _ := get(t, c, http.MethodGet, srv.URL+"/empty"); res.StatusCode != http.StatusNoContent {
		t.Fatalf("204: got %d", res.StatusCode)
	}
	if res, body := get(t, c, http.MethodHead, srv.URL+"/a"); res.StatusCode != 200 || body != "" {
		t.Fatalf("HEAD: %d %q", res.StatusCode, body)
	}
	if res, _ := get(t, c, http.MethodOptions, srv.URL+"/a"); res.StatusCode != 200 {
		t.Fatalf("OPTIONS: %d", res.StatusCode)
	}
	if n := srv.conns.Load(); n != 1 {
		t.Fatalf("%d connections for sequential requests, want 1", n)
	}
}

func TestH1ConnectionCloseAndEarlyBodyCloseDoNotReuse(t *testing.T) {
	srv := newConnCounter(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/close-small": // sent with Content-Length
			w.Header().Set("Connection", "close")
			_, _ = io.WriteString(w, "ok")
			return
		case "/close": // sent chunked
			w.Header().Set("Connection", "close")
		}
		_, _ = io.WriteString(w, strings.Repeat("x", 64<<10))
	})
	c := newH1(t)
	get(t, c, http.MethodGet, srv.URL+"/close")
	get(t, c, http.MethodGet, srv.URL+"/close")
	if n := srv.conns.Load(); n != 2 {
		t.Fatalf("Connection: close answers: %d connections, want 2", n)
	}
	get(t, c, http.MethodGet, srv.URL+"/close-small")
	get(t, c, http.MethodGet, srv.URL+"/close-small")
	if n := srv.conns.Load(); n != 4 {
		t.Fatalf("Connection: close answers with a length: %d connections, want 4", n)
	}
	// A body closed half read must not leave the rest of the answer on a
	// pooled connection for the next request to read.
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/big", nil)
	res, err := c.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 10)
	if _, err := io.ReadFull(res.Body, buf); err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if _, body := get(t, c, http.MethodGet, srv.URL+"/big"); len(body) != 64<<10 {
		t.Fatalf("next answer: %d bytes, want %d", len(body), 64<<10)
	}
	if n := srv.conns.Load(); n != 6 {
		t.Fatalf("%d connections, want 6 (the half-read one closed)", n)
	}
}

// A server that closes an idle keep-alive connection: the next GET finds
// the connection dead and is sent again on a new one, without an error.
func TestH1StaleConnectionIsRetried(t *testing.T) {
	var accepted atomic.Int64
	addr := rawServer(t, func(conn net.Conn) {
		accepted.Add(1)
		// One answer per connection, then close without saying so: what a
		// server does when its idle timeout ends as the gateway takes the
		// connection from its pool.
		if _, err := http.ReadRequest(bufio.NewReader(conn)); err == nil {
			_, _ = io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
		time.Sleep(10 * time.Millisecond)
	})
	c := newH1(t)
	url := "http://" + addr + "/"
	for i := 0; i < 3; i++ {
		if _, body := get(t, c, http.MethodGet, url); body != "ok" {
			t.Fatalf("request %d: %q", i, body)
		}
		time.Sleep(30 * time.Millisecond) // the server has closed it by now
	}
	if n := accepted.Load(); n != 3 {
		t.Fatalf("%d connections, want 3", n)
	}
}

// Connections that the server closed while they idled in the pool for
// more than livenessAfter are found dead by the probe and never used: the
// request is not written to a dead one first (the resend would then dial),
// and none of them is left in the pool.
func TestH1ProbeDropsConnectionsClosedWhileIdle(t *testing.T) {
	var accepted atomic.Int64
	addr := rawServer(t, func(conn net.Conn) {
		accepted.Add(1)
		if _, err := http.ReadRequest(bufio.NewReader(conn)); err == nil {
			_, _ = io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
		time.Sleep(50 * time.Millisecond) // a short idle timeout
	})
	c := newH1(t)
	url := "http://" + addr + "/"
	pooled(t, c, url, 2)
	time.Sleep(livenessAfter + 200*time.Millisecond)
	if _, body := get(t, c, http.MethodGet, url); body != "ok" {
		t.Fatalf("body %q", body)
	}
	if n := accepted.Load(); n != 3 {
		t.Fatalf("%d connections, want 3 (two closed by the server, one new)", n)
	}
	c.mu.Lock()
	idle := len(c.idle[addr])
	c.mu.Unlock()
	if idle != 1 {
		t.Fatalf("%d idle connections, want 1: the new one, both dead ones dropped", idle)
	}
}

func TestPeekIdle(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	pair := func() (client, server net.Conn) {
		t.Helper()
		client, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		server, err = ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { client.Close(); server.Close() })
		return client, server
	}
	// settle gives loopback time to deliver what the server did.
	settle := func() { time.Sleep(50 * time.Millisecond) }

	quiet, _ := pair()
	if !peekIdle(quiet) || !peekIdleByDeadline(quiet) {
		t.Fatal("a quiet open connection was found dead")
	}
	closed, srv := pair()
	srv.Close()
	settle()
	if peekIdle(closed) {
		t.Fatal("a connection the server closed was found alive")
	}
	// The deadline probe cannot tell a quiet connection from a read that
	// started after its deadline, which a loaded machine can cause; a
	// closed connection must still be found dead within a few looks.
	if !func() bool {
		for range 3 {
			if !peekIdleByDeadline(closed) {
				return true
			}
		}
		return false
	}() {
		t.Fatal("the deadline probe found a connection the server closed alive")
	}
	stray, srv := pair()
	_, _ = srv.Write([]byte("x"))
	settle()
	if peekIdle(stray) {
		t.Fatal("a connection with unasked-for bytes was found quiet")
	}
	// The peek took nothing: the byte is still there to be seen.
	if !func() bool { var b [1]byte; n, _ := stray.Read(b[:]); return n == 1 }() {
		t.Fatal("the peek consumed the byte")
	}
}

func TestH1ContextCancelStopsTheExchange(t *testing.T) {
	release := make(chan struct{})
	srv := newConnCounter(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow-body" {
			w.Header().Set("Content-Length", "10")
			_, _ = io.WriteString(w, "12345")
			w.(http.Flusher).Flush()
		}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	defer close(release)
	c := newH1(t)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/slow-header", nil)
	start := time.Now()
	if _, err := c.RoundTrip(req); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want the context's deadline", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("returned after %s", d)
	}
	ctx2, cancel2 := context.WithCancel(context.Background())
	req, _ = http.NewRequestWithContext(ctx2, http.MethodGet, srv.URL+"/slow-body", nil)
	res, err := c.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	cancel2()
	if _, err := io.ReadAll(res.Body); err == nil {
		t.Fatal("reading a body after the context was cancelled succeeded")
	}
	res.Body.Close()
	// With an attempt deadline, which is lifted once the header arrived,
	// a cancellation still stops the body.
	ctx3, cancel3 := context.WithCancel(context.Background())
	req, _ = http.NewRequestWithContext(ctx3, http.MethodGet, srv.URL+"/slow-body", nil)
	var fields headFields
	if lean, err := scanRequest(req, &fields); !lean || err != nil {
		t.Fatal(lean, err)
	}
	res, err = c.roundTrip(req, &fields, time.Now().Add(time.Minute), 0)
	if err != nil {
		t.Fatal(err)
	}
	cancel3()
	if _, err := io.ReadAll(res.Body); err == nil {
		t.Fatal("reading a body after the context was cancelled succeeded")
	}
	res.Body.Close()
}

func TestH1OtherRequestsGoToTheFallback(t *testing.T) {
	srv := newConnCounter(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		_, _ = io.WriteString(w, r.Method+":"+string(b))
	})
	var fallback atomic.Int64
	c := newH1(t)
	std := c.fallback
	c.fallback = roundTripFunc(func(r *http.Request) (*http.Response, error) {
		fallback.Add(1)
		return std.RoundTrip(r)
	})
	post, _ := http.NewRequest(http.MethodPost, srv.URL, strings.NewReader("body"))
	upgrade, _ := http.NewRequest(http.MethodGet, srv.URL, nil)
	upgrade.Header.Set("Connection", "Upgrade")
	upgrade.Header.Set("Upgrade", "websocket")
	expect, _ := http.NewRequest(http.MethodGet, srv.URL, nil)
	expect.Header.Set("Expect", "100-continue")
	del, _ := http.NewRequest(http.MethodDelete, srv.URL, nil)
	for _, req := range []*http.Request{post, upgrade, expect, del} {
		res, err := c.RoundTrip(req)
		if err != nil {
			t.Fatalf("%s: %v", req.Method, err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
	}
	if n := fallback.Load(); n != 4 {
		t.Fatalf("fallback served %d of 4", n)
	}
	get(t, c, http.MethodGet, srv.URL)
	if n := fallback.Load(); n != 4 {
		t.Fatal("a plain GET went to the fallback")
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func TestH1EarlyHintsReachTheTrace(t *testing.T) {
	srv := newConnCounter(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</style.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		_, _ = io.WriteString(w, "final")
	})
	c := newH1(t)
	var got []int
	trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
		got = append(got, code)
		return nil
	}}
	req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), http.MethodGet, srv.URL, nil)
	res, err := c.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || string(b) != "final" || len(got) != 1 || got[0] != 103 {
		t.Fatalf("status %d body %q 1xx %v", res.StatusCode, b, got)
	}
}

func TestH1RejectsInvalidHeaders(t *testing.T) {
	srv := newConnCounter(t, func(w http.ResponseWriter, r *http.Request) {})
	c := newH1(t)
	req, _ := http.NewRequest(http.MethodGet, srv.URL, nil)
	req.Header["X-Bad"] = []string{"a\r\nInjected: yes"}
	if _, err := c.RoundTrip(req); err == nil {
		t.Fatal("a header value with CR LF was sent")
	}
	if n := srv.conns.Load(); n != 0 {
		t.Fatalf("%d connections opened for a refused request", n)
	}
	// Through a pool too, which checks the request before the client.
	e := newEnv(t, nil)
	p := e.apply(t, &config.Upstream{Targets: targets(srv.URL), Retries: ptr(0)})
	req, _ = http.NewRequest(http.MethodGet, srv.URL, nil)
	req.Header["X-Bad"] = []string{"a\r\nInjected: yes"}
	if res, err := p.RoundTrip(req); err == nil {
		res.Body.Close()
		t.Fatal("a header value with CR LF was sent through the pool")
	}
	if n := srv.conns.Load(); n != 0 {
		t.Fatalf("%d connections opened for a refused request", n)
	}
	if s := statusOf(t, e.reg, "u"); s.InFlight != 0 || s.Targets[0].InFlight != 0 {
		t.Fatalf("in-flight counts leak: %+v", s)
	}
}

// Through a Pool, plain http:// targets take the h1 client, and many
// concurrent clients share a bounded set of connections.
func TestPoolUsesH1ForPlainTargets(t *testing.T) {
	srv := newConnCounter(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") })
	e := newEnv(t, nil)
	p := e.apply(t, &config.Upstream{Targets: targets(srv.URL)})
	if _, ok := p.tr.forTarget(p.targets[0]).(*h1Client); !ok {
		t.Fatalf("plain target served by %T", p.tr.forTarget(p.targets[0]))
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 50 {
				if code, body, err := send(p, http.MethodGet, ""); err != nil || code != 200 || body != "ok" {
					t.Errorf("got %d %q %v", code, body, err)
					return
				}
			}
		})
	}
	wg.Wait()
	if n := srv.conns.Load(); n > 8 {
		t.Fatalf("%d connections for 8 concurrent clients", n)
	}
}

func TestHTTP1ClientStandardUsesGoTransport(t *testing.T) {
	srv := newConnCounter(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") })
	e := newEnv(t, nil)
	p := e.apply(t, &config.Upstream{Targets: targets(srv.URL), HTTP1Client: "standard"})
	if rt := p.tr.forTarget(p.targets[0]); rt != http.RoundTripper(p.tr.std) {
		t.Fatalf("http1_client: standard served by %T", rt)
	}
	if code, body, err := send(p, http.MethodGet, ""); err != nil || code != 200 || body != "ok" {
		t.Fatalf("got %d %q %v", code, body, err)
	}
	// A reload to lean swaps the transport.
	p = e.apply(t, &config.Upstream{Targets: targets(srv.URL), HTTP1Client: "lean"})
	if _, ok := p.tr.forTarget(p.targets[0]).(*h1Client); !ok {
		t.Fatalf("after the reload to lean: %T", p.tr.forTarget(p.targets[0]))
	}
}

func TestH1IdleConnectionsArePruned(t *testing.T) {
	srv := newConnCounter(t, func(w http.ResponseWriter, r *http.Request) {})
	c := newH1(t)
	c.idleTimeout = 20 * time.Millisecond
	get(t, c, http.MethodGet, srv.URL)
	deadline := time.Now().Add(2 * time.Second)
	for {
		c.mu.Lock()
		n := len(c.idle)
		c.mu.Unlock()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("idle connection still pooled past its idle timeout")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestH1BoundsTheAnswerHeader(t *testing.T) {
	addr := rawServer(t, func(conn net.Conn) {
		_, _ = http.ReadRequest(bufio.NewReader(conn))
		_, _ = io.WriteString(conn, "HTTP/1.1 200 OK\r\n")
		line := "X-Filler: " + strings.Repeat("a", 1<<10) + "\r\n"
		for i := 0; i < 11<<10; i++ { // 11 MiB of header
			if _, err := io.WriteString(conn, line); err != nil {
				return
			}
		}
	})
	c := newH1(t)
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/", nil)
	if _, err := c.RoundTrip(req); err == nil || !strings.Contains(err.Error(), "larger than 10 MiB") {
		t.Fatalf("err = %v, want the header bound", err)
	}
}

// The lean client and Go's transport read the same raw answers alike:
// status, header, body and trailers, including framings a well-behaved
// test server would never send.
func TestH1AgreesWithGoTransport(t *testing.T) {
	answers := map[string]string{
		"content-length": "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello",
		"chunked-with-extension-and-trailer": "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n" +
			"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-T: done\r\n\r\n",
		"close-delimited":        "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end",
		"http/1.0":               "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
		"not-modified":           "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 100\r\n\r\n",
		"no-content":             "HTTP/1.1 204 No Content\r\nX-B: 2\r\n\r\n",
		"repeated-header":        "HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 0\r\n\r\n",
		"early-hints-then-final": "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
		"fields-canonicalized-trimmed-merged": "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nX-Pad:  v \t\r\n" +
			"X-Rep: 1\r\nx-rep: 2\r\nX-Empty:\r\nX-Obs: caf\xc3\xa9\r\nETag: \"v1\"\r\nX-REQUEST-ID: r\r\nContent-Length: 3\r\n\r\nabc",
		"connection-close-with-length": "HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 2\r\n\r\nok",
		"connection-keep-alive":        "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
		"pragma-no-cache":              "HTTP/1.1 200 OK\r\nPragma: no-cache\r\nContent-Length: 0\r\n\r\n",
		"status-without-reason":        "HTTP/1.1 503\r\nContent-Length: 4\r\n\r\nbusy",
		"leading-zeros-in-length":      "HTTP/1.1 200 OK\r\nContent-Length: 002\r\n\r\nok",
		"repeated-equal-lengths":       "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length:  2\r\n\r\nok",
		"trailer-field-without-chunks": "HTTP/1.1 200 OK\r\nTrailer: X-T\r\nContent-Length: 1\r\n\r\nx",
		"folded-field":                 "HTTP/1.1 200 OK\r\nX-F: a\r\n b\r\nContent-Length: 1\r\n\r\nx",
		"space-before-colon":           "HTTP/1.1 200 OK\r\nX-S : 1\r\nContent-Length: 1\r\n\r\nx",
		"bare-line-feeds":              "HTTP/1.1 200 OK\nContent-Length: 1\n\nx",
		"odd-status":                   "HTTP/1.1 600 Odd\r\nContent-Length: 1\r\n\r\nx",
		// Malformed: both clients must refuse (the error texts differ).
		"conflicting-content-length": "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
		"bad-status-line":            "HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n",
		"short-body":                 "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
		"nul-in-a-value":             "HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 0\r\n\r\n",
		"length-not-a-number":        "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello",
	}
	for name, raw := range answers {
		t.Run(name, func(t *testing.T) {
			url := "http://" + rawServer(t, func(conn net.Conn) {
				_, _ = http.ReadRequest(bufio.NewReader(conn))
				_, _ = io.WriteString(conn, raw)
			}) + "/"
			read := func(rt http.RoundTripper) string {
				req, _ := http.NewRequest(http.MethodGet, url, nil)
				res, err := rt.RoundTrip(req)
				if err != nil {
					return "error"
				}
				b, err := io.ReadAll(res.Body)
				res.Body.Close()
				var sb strings.Builder
				fmt.Fprintf(&sb, "%d %s close=%t cl=%d\n", res.StatusCode, res.Proto, res.Close, res.ContentLength)
				res.Header.Del("Date")
				_ = res.Header.Write(&sb)
				fmt.Fprintf(&sb, "body=%q failed=%t trailer=%v", b, err != nil, res.Trailer)
				return sb.String()
			}
			std := &http.Transport{DisableCompression: true}
			defer std.CloseIdleConnections()
			c := newH1(t)
			if lean, want := read(c), read(std); lean != want {
				t.Fatalf("lean client read\n%s\nGo's transport read\n%s", lean, want)
			}
		})
	}
}

// readHead reads a request's head up to and including its blank line.
func readHead(br *bufio.Reader) (string, error) {
	var sb strings.Builder
	for {
		line, err := br.ReadString('\n')
		sb.WriteString(line)
		if err != nil {
			return sb.String(), err
		}
		if line == "\r\n" {
			return sb.String(), nil
		}
	}
}

// normalizeHead orders a request head's fields by name, keeping the order
// of the lines of one name: HTTP gives no meaning to the order between
// different names (RFC 9110 5.3), and the lean client does not sort them.
func normalizeHead(head string) string {
	lines := strings.Split(strings.TrimSuffix(head, "\r\n\r\n"), "\r\n")
	fields := lines[1:]
	slices.SortStableFunc(fields, func(a, b string) int {
		ka, _, _ := strings.Cut(a, ":")
		kb, _, _ := strings.Cut(b, ":")
		return strings.Compare(ka, kb)
	})
	return strings.Join(lines, "\r\n")
}

// The lean client sends the same request heads as Go's transport (with
// compression off, as the gateway's is), byte for byte but for the order
// of the header fields, and refuses the same requests.
func TestH1WritesWhatGoTransportWrites(t *testing.T) {
	heads := make(chan string, 1)
	addr := rawServer(t, func(conn net.Conn) {
		head, err := readHead(bufio.NewReader(conn))
		if err != nil {
			return
		}
		heads <- head
		_, _ = io.WriteString(conn, "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
	})
	base := "http://" + addr
	parse := func(method, rawURL string) *http.Request {
		req, err := http.NewRequest(method, rawURL, nil)
		if err != nil {
			t.Fatal(err)
		}
		return req
	}
	withURL := func(method string, u url.URL) *http.Request {
		u.Scheme, u.Host = "http", addr
		req := parse(method, base)
		req.URL = &u
		return req
	}
	withHost := func(host string) *http.Request {
		req := parse(http.MethodGet, base+"/h")
		req.Host = host
		return req
	}
	withHeader := func(h http.Header) *http.Request {
		req := parse(http.MethodGet, base+"/h")
		req.Header = h
		return req
	}
	for _, tc := range []struct {
		name string
		mk   func() *http.Request
	}{
		{"root", func() *http.Request { return parse(http.MethodGet, base+"/") }},
		{"query", func() *http.Request { return parse(http.MethodGet, base+"/a/b?x=1&y=%20z&e=&=v") }},
		{"forced empty query", func() *http.Request { return parse(http.MethodGet, base+"/a?") }},
		{"empty path", func() *http.Request { return withURL(http.MethodGet, url.URL{}) }},
		{"escaped path kept", func() *http.Request { return parse(http.MethodGet, base+"/a%2Fb/c%20d/%7Ee") }},
		{"path escaped on the way", func() *http.Request { return withURL(http.MethodGet, url.URL{Path: "/a b/ü/%/x?y#z"}) }},
		{"raw path not matching path", func() *http.Request {
			return withURL(http.MethodGet, url.URL{Path: "/a/b", RawPath: "/a%2Fc"})
		}},
		{"opaque", func() *http.Request { return withURL(http.MethodGet, url.URL{Opaque: "/raw%2Fpath", RawQuery: "q=1"}) }},
		{"opaque with authority", func() *http.Request { return withURL(http.MethodGet, url.URL{Opaque: "//" + addr + "/x"}) }},
		{"OPTIONS *", func() *http.Request { return withURL(http.MethodOptions, url.URL{Path: "*"}) }},
		{"OPTIONS path", func() *http.Request { return parse(http.MethodOptions, base+"/o") }},
		{"HEAD", func() *http.Request { return parse(http.MethodHead, base+"/h?x") }},
		{"host from URL", func() *http.Request { return withHost("") }},
		{"host without port", func() *http.Request { return withHost("api.example") }},
		{"host with port", func() *http.Request { return withHost("api.example:8443") }},
		{"IPv6 host", func() *http.Request { return withHost("[2001:db8::1]:8080") }},
		{"IPv6 host without port", func() *http.Request { return withHost("[::1]") }},
		{"IPv6 host with zone", func() *http.Request { return withHost("[fe80::1%en0]:8080") }},
		{"IPv4 host", func() *http.Request { return withHost("10.1.2.3:80") }},
		{"unicode host", func() *http.Request { return withHost("bücher.example:8080") }},
		{"invalid host emptied", func() *http.Request { return withHost("a b/c") }},
		{"empty and repeated headers", func() *http.Request {
			return withHeader(http.Header{"X-Empty": {""}, "X-Rep": {"a", "b", "a"}, "X-None": {}, "Accept": {"*/*"}})
		}},
		{"values trimmed, inner blanks kept", func() *http.Request {
			return withHeader(http.Header{"X-Pad": {"  a \t b\t "}, "X-Obs": {"caf\xc3\xa9 \xff"}})
		}},
		{"non-canonical name", func() *http.Request { return withHeader(http.Header{"x-lower": {"1"}, "X-Lower": {"2"}}) }},
		{"many fields", func() *http.Request {
			h := http.Header{"User-Agent": {"many/1"}, "Connection": {"close"}, "Content-Length": {"0"}}
			for i := range 30 {
				h[fmt.Sprintf("X-Field-%d", i)] = []string{"v", fmt.Sprint(i)}
			}
			r := withHeader(h)
			r.Close = true
			return r
		}},
		{"fields the request line or framing own", func() *http.Request {
			return withHeader(http.Header{"Host": {"other"}, "Content-Length": {"0"}, "Trailer": {"X-T"},
				"Transfer-Encoding": {}, "User-Agent": {"ua/1"}})
		}},
		{"user agent absent", func() *http.Request { return withHeader(http.Header{}) }},
		{"user agent empty as ReverseProxy sets it", func() *http.Request { return withHeader(http.Header{"User-Agent": {""}}) }},
		{"user agent present without values", func() *http.Request { return withHeader(http.Header{"User-Agent": {}}) }},
		{"user agent: first of two, trimmed", func() *http.Request {
			return withHeader(http.Header{"User-Agent": {"  first/1 ", "second/2"}})
		}},
		{"user agent of blanks", func() *http.Request { return withHeader(http.Header{"User-Agent": {"  "}}) }},
		{"close", func() *http.Request { r := parse(http.MethodGet, base+"/c"); r.Close = true; return r }},
		{"close already said", func() *http.Request {
			r := withHeader(http.Header{"Connection": {"keep-alive, Close"}})
			r.Close = true
			return r
		}},
		{"close with another connection token", func() *http.Request {
			r := withHeader(http.Header{"Connection": {"x-closed"}})
			r.Close = true
			return r
		}},
		{"trailer ignored without a body", func() *http.Request {
			r := parse(http.MethodGet, base+"/t")
			r.Trailer = http.Header{"X-T": {"1"}}
			return r
		}},
		{"unknown length without a body", func() *http.Request {
			r := parse(http.MethodGet, base+"/l")
			r.ContentLength, r.Body = -1, http.NoBody
			return r
		}},
		// Refused by both before anything is sent.
		{"control byte in query", func() *http.Request { return withURL(http.MethodGet, url.URL{Path: "/q", RawQuery: "a=\x01"}) }},
		{"control byte in opaque", func() *http.Request { return withURL(http.MethodGet, url.URL{Opaque: "/a\x7f"}) }},
		{"CR LF in a value", func() *http.Request { return withHeader(http.Header{"X-Bad": {"a\r\nInjected: 1"}}) }},
		{"invalid name", func() *http.Request { return withHeader(http.Header{"Bad Name": {"1"}}) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			send := func(rt http.RoundTripper) string {
				req := tc.mk()
				if lean, _ := scanRequest(req, new(headFields)); !lean {
					t.Fatal("the request does not take the lean path")
				}
				res, err := rt.RoundTrip(req)
				if err != nil {
					return "refused"
				}
				res.Body.Close()
				select {
				case head := <-heads:
					return normalizeHead(head)
				case <-time.After(5 * time.Second):
					t.Fatal("the server saw no request")
				}
				return ""
			}
			c := newH1(t)
			c.fallback = roundTripFunc(func(*http.Request) (*http.Response, error) {
				t.Fatal("the lean client handed the request on")
				return nil, nil
			})
			std := &http.Transport{DisableCompression: true}
			defer std.CloseIdleConnections()
			lean, want := send(c), send(std)
			if lean != want {
				t.Fatalf("lean client sent\n%q\nGo's transport sent\n%q", lean, want)
			}
			select {
			case head := <-heads:
				t.Fatalf("a refused request reached the server: %q", head)
			default:
			}
		})
	}
}

// parseResponse takes the answers most upstreams send and leaves the rest
// to http.ReadResponse (FuzzReadResponse holds it to reading what it takes
// exactly as http.ReadResponse would).
func TestParseResponseTakesOnlyTheCommonAnswer(t *testing.T) {
	const common = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nDate: Mon, 02 Jan 2006 15:04:05 GMT\r\nContent-Length: 2\r\n\r\n{}"
	for _, tc := range []struct {
		raw    string
		method string
		taken  bool
	}{
		{common, http.MethodGet, true},
		{common, http.MethodOptions, true},
		{"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", http.MethodGet, true},
		{common, http.MethodHead, false},
		{"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", http.MethodGet, false},
		{"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end", http.MethodGet, false},
		{"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", http.MethodGet, false},
		{"HTTP/1.1 304 Not Modified\r\nContent-Length: 2\r\n\r\n", http.MethodGet, false},
		{"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", http.MethodGet, false},
		{"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n", http.MethodGet, false}, // head not whole yet
	} {
		br := bufio.NewReader(strings.NewReader(tc.raw))
		_, _ = br.Peek(1)
		req := &http.Request{Method: tc.method, URL: &url.URL{Path: "/"}}
		a := parseResponse(br, req)
		if (a != nil) != tc.taken {
			t.Errorf("%s %q: taken %t, want %t", tc.method, tc.raw, a != nil, tc.taken)
		}
		if a == nil && br.Buffered() != len(tc.raw) {
			t.Errorf("%q: left to http.ReadResponse with %d bytes consumed", tc.raw, len(tc.raw)-br.Buffered())
		}
	}
}
