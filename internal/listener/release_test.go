//go:build linux

package listener

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// releaseServer is an HTTP server on a loopback listener that releases idle
// connections after `after`.
type releaseServer struct {
	ln    *IdleReleaser
	srv   *http.Server
	addr  string
	conns atomic.Int32 // connections net/http started serving (StateNew)
	ended atomic.Int32 // and ended (StateClosed)
}

func serveReleasing(t testing.TB, after, idleTimeout time.Duration, h http.Handler, configure ...func(*http.Server)) *releaseServer {
	t.Helper()
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := ReleaseIdle(inner, after)
	if err != nil {
		inner.Close()
		t.Fatal(err)
	}
	if h == nil {
		h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "hello "+r.URL.Path)
		})
	}
	s := &releaseServer{ln: ln, addr: inner.Addr().String()}
	s.srv = &http.Server{Handler: h, IdleTimeout: idleTimeout, ReadHeaderTimeout: 5 * time.Second,
		ConnState: func(c net.Conn, st http.ConnState) {
			switch st {
			case http.StateNew:
				s.conns.Add(1)
			case http.StateClosed:
				s.ended.Add(1)
			}
			ln.ConnState(c, st)
		}}
	for _, f := range configure {
		f(s.srv)
	}
	go s.srv.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.srv.Shutdown(ctx)
	})
	return s
}

// waitReleased waits until n connections are released.
func (s *releaseServer) waitReleased(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for s.ln.Released() != n {
		if time.Now().After(deadline) {
			t.Fatalf("released connections: %d, want %d", s.ln.Released(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// client is one raw keep-alive connection.
type client struct {
	conn net.Conn
	br   *bufio.Reader
}

func dial(t testing.TB, addr string) *client {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return &client{conn: c, br: bufio.NewReader(c)}
}

// get sends one GET on the connection and returns the body.
func (c *client) get(t testing.TB, path string) string {
	t.Helper()
	c.conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(c.conn, "GET %s HTTP/1.1\r\nHost: test\r\n\r\n", path); err != nil {
		t.Fatal(err)
	}
	return c.read(t)
}

func (c *client) read(t testing.TB) string {
	t.Helper()
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("response: %d %q %v", resp.StatusCode, b, err)
	}
	return string(b)
}

func TestReleasedConnectionServesItsNextRequest(t *testing.T) {
	s := serveReleasing(t, 30*time.Millisecond, time.Minute, nil)
	c := dial(t, s.addr)
	if got := c.get(t, "/one"); got != "hello /one" {
		t.Fatalf("first: %q", got)
	}
	s.waitReleased(t, 1)
	// Same socket, after net/http let go of it.
	if got := c.get(t, "/two"); got != "hello /two" {
		t.Fatalf("after release: %q", got)
	}
	if s.ln.Released() != 0 {
		t.Errorf("still released while serving")
	}
	s.waitReleased(t, 1)
	if got := c.get(t, "/three"); got != "hello /three" {
		t.Fatalf("second release: %q", got)
	}
	if n := s.conns.Load(); n != 3 {
		t.Errorf("net/http served the socket as %d connections, want 3 (one per release)", n)
	}
}

func TestBusyConnectionIsNotReleased(t *testing.T) {
	s := serveReleasing(t, 200*time.Millisecond, time.Minute, nil)
	c := dial(t, s.addr)
	for i := range 50 {
		c.get(t, fmt.Sprintf("/%d", i))
		time.Sleep(2 * time.Millisecond)
	}
	if n := s.conns.Load(); n != 1 {
		t.Errorf("a connection that kept sending was served as %d connections", n)
	}
}

// A client that sent part of its next request before the release delay
// and the rest after it gets its answer: bytes net/http has buffered are
// never dropped.
func TestPartialRequestIsNotReleased(t *testing.T) {
	s := serveReleasing(t, 40*time.Millisecond, time.Minute, nil)
	c := dial(t, s.addr)
	c.get(t, "/one")
	if _, err := io.WriteString(c.conn, "GE"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if n := s.ln.Released(); n != 0 {
		t.Fatalf("released with part of a request read: %d", n)
	}
	if _, err := io.WriteString(c.conn, "T /two HTTP/1.1\r\nHost: test\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	if got := c.read(t); got != "hello /two" {
		t.Fatalf("split request: %q", got)
	}
}

// A pipelined request that net/http has partly buffered is read to its
// end, however long its rest takes within net/http's own timeouts.
func TestPartlyBufferedPipelinedRequestIsNotReleased(t *testing.T) {
	s := serveReleasing(t, 40*time.Millisecond, time.Minute, nil)
	c := dial(t, s.addr)
	if _, err := io.WriteString(c.conn, "GET /one HTTP/1.1\r\nHost: test\r\n\r\nGET /tw"); err != nil {
		t.Fatal(err)
	}
	if got := c.read(t); got != "hello /one" {
		t.Fatalf("first: %q", got)
	}
	time.Sleep(200 * time.Millisecond)
	if _, err := io.WriteString(c.conn, "o HTTP/1.1\r\nHost: test\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	if got := c.read(t); got != "hello /two" {
		t.Fatalf("pipelined: %q", got)
	}
}

// closedWithin waits for the server to close c (end of stream).
func closedWithin(t *testing.T, c *client, d time.Duration) {
	t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(d))
	if b, err := c.br.ReadByte(); err != io.EOF {
		t.Fatalf("connection not closed within %v: byte %q, %v", d, b, err)
	}
}

func TestReleasedConnectionClosedAtIdleTimeout(t *testing.T) {
	s := serveReleasing(t, 20*time.Millisecond, 300*time.Millisecond, nil)
	c := dial(t, s.addr)
	start := time.Now()
	c.get(t, "/one")
	s.waitReleased(t, 1)
	closedWithin(t, c, 3*time.Second)
	if took := time.Since(start); took < 300*time.Millisecond {
		t.Errorf("closed after %v, before the 300ms idle timeout", took)
	}
	s.waitReleased(t, 0)
}

func TestIdleTimeoutShorterThanReleaseDelay(t *testing.T) {
	s := serveReleasing(t, time.Minute, 100*time.Millisecond, nil)
	c := dial(t, s.addr)
	c.get(t, "/one")
	closedWithin(t, c, 3*time.Second)
	if n := s.ln.Released(); n != 0 {
		t.Errorf("released: %d", n)
	}
}

func TestClientCloseWhileReleased(t *testing.T) {
	s := serveReleasing(t, 20*time.Millisecond, time.Minute, nil)
	c := dial(t, s.addr)
	c.get(t, "/one")
	s.waitReleased(t, 1)
	c.conn.Close()
	// The poller wakes on the close, net/http serves the socket again,
	// reads end of stream and closes it: every connection it started ends.
	s.waitReleased(t, 0)
	deadline := time.Now().Add(5 * time.Second)
	for s.ended.Load() != s.conns.Load() || s.conns.Load() != 2 {
		if time.Now().After(deadline) {
			t.Fatalf("served %d, ended %d; want 2 and 2", s.conns.Load(), s.ended.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestShutdownClosesReleasedConnections(t *testing.T) {
	s := serveReleasing(t, 20*time.Millisecond, time.Minute, nil)
	c := dial(t, s.addr)
	c.get(t, "/one")
	s.waitReleased(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	closedWithin(t, c, 2*time.Second)
	if n := s.ln.Released(); n != 0 {
		t.Errorf("released after shutdown: %d", n)
	}
}

func TestHijackedConnectionIsNeverReleased(t *testing.T) {
	s := serveReleasing(t, 20*time.Millisecond, time.Minute, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, rw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
		rw.Flush()
		// The deadline a WebSocket proxy would set: longer than the
		// release delay.
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		line, err := rw.ReadString('\n')
		if err != nil {
			return
		}
		rw.WriteString(strings.ToUpper(line))
		rw.Flush()
	}))
	c := dial(t, s.addr)
	fmt.Fprintf(c.conn, "GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	time.Sleep(150 * time.Millisecond)
	io.WriteString(c.conn, "ping\n")
	line, err := c.br.ReadString('\n')
	if err != nil || line != "PING\n" {
		t.Fatalf("hijacked connection after the release delay: %q %v", line, err)
	}
}

func TestH2CConnectionIsNeverReleased(t *testing.T) {
	p := new(http.Protocols)
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	s := serveReleasing(t, 20*time.Millisecond, time.Minute, nil, func(srv *http.Server) { srv.Protocols = p })
	cp := new(http.Protocols)
	cp.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: cp}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	var reused []bool
	for range 2 {
		trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { reused = append(reused, i.Reused) }}
		req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "GET", "http://"+s.addr+"/h2", nil)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.ProtoMajor != 2 || string(b) != "hello /h2" {
			t.Fatalf("h2c: %s %q", resp.Proto, b)
		}
		time.Sleep(150 * time.Millisecond)
	}
	if len(reused) != 2 || !reused[1] {
		t.Errorf("second request did not reuse the HTTP/2 connection: %v", reused)
	}
	if n := s.ln.Released(); n != 0 {
		t.Errorf("released an HTTP/2 connection: %d", n)
	}
}

// Many connections released and woken over and over, concurrently, each
// still answered in order on its own socket.
func TestManyConnectionsReleasedAndWoken(t *testing.T) {
	s := serveReleasing(t, 5*time.Millisecond, time.Minute, nil)
	const clients, rounds = 40, 8
	errs := make(chan error, clients)
	for i := range clients {
		go func() {
			c, err := net.Dial("tcp", s.addr)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(20 * time.Second))
			br := bufio.NewReader(c)
			for r := range rounds {
				path := fmt.Sprintf("/c%d/r%d", i, r)
				fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: test\r\n\r\n", path)
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					errs <- fmt.Errorf("%s: %w", path, err)
					return
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if string(b) != "hello "+path {
					errs <- fmt.Errorf("%s: answered %q", path, b)
					return
				}
				time.Sleep(time.Duration(10+(i+r)%4*5) * time.Millisecond)
			}
			errs <- nil
		}()
	}
	for range clients {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if n := s.conns.Load(); n < clients*2 {
		t.Errorf("only %d connections served for %d clients: few were released", n, clients)
	}
}

// A delay of 0 releases nothing; SetDelay turns releasing on and off on a
// running listener, as a config reload does.
func TestSetDelayTurnsReleasingOnAndOff(t *testing.T) {
	s := serveReleasing(t, 0, time.Minute, nil)
	c := dial(t, s.addr)
	c.get(t, "/one")
	time.Sleep(100 * time.Millisecond)
	if n := s.ln.Released(); n != 0 {
		t.Fatalf("released with a delay of 0: %d", n)
	}
	s.ln.SetDelay(20 * time.Millisecond)
	c.get(t, "/two")
	s.waitReleased(t, 1)
	s.ln.SetDelay(0)
	c.get(t, "/three")
	time.Sleep(100 * time.Millisecond)
	if n := s.ln.Released(); n != 0 {
		t.Fatalf("released after SetDelay(0): %d", n)
	}
	if got := c.get(t, "/four"); got != "hello /four" {
		t.Fatalf("after: %q", got)
	}
	if _, err := ReleaseIdle(s.ln, -time.Second); err == nil {
		t.Error("a negative delay was accepted")
	}
}

// BenchmarkRequestAfterIdle prices a request on a connection that sat idle
// for 3 ms: held by net/http as usual, or released after 1 ms and woken by
// the request. latency-ns/op is from writing the request to reading the
// whole answer; cpu-ns/op is the process's CPU per request (client and
// server both, so only the difference between the two is the wake-up).
func BenchmarkRequestAfterIdle(b *testing.B) {
	for _, bc := range []struct {
		name  string
		after time.Duration
	}{{"held", time.Hour}, {"released", time.Millisecond}} {
		b.Run(bc.name, func(b *testing.B) {
			s := serveReleasing(b, bc.after, time.Minute, nil)
			c := dial(b, s.addr)
			c.get(b, "/warm")
			var spent time.Duration
			cpu0 := processCPU()
			for b.Loop() {
				time.Sleep(3 * time.Millisecond)
				start := time.Now()
				c.get(b, "/x")
				spent += time.Since(start)
			}
			b.ReportMetric(float64(spent.Nanoseconds())/float64(b.N), "latency-ns/op")
			b.ReportMetric(float64((processCPU()-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/op")
			if bc.after == time.Millisecond && s.conns.Load() < 2 {
				b.Fatal("the connection was never released")
			}
		})
	}
}

func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
