package upstream

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/portico-gw/portico/internal/config"
)

// answerEach serves the requests of one connection in turn: answer gives
// the raw bytes for the nth request the server saw (from 1, over all its
// connections) and whether to close the connection after them.
func answerEach(seen *atomic.Int64, answer func(n int64, r *http.Request) (raw string, closeAfter bool)) func(net.Conn) {
	return func(conn net.Conn) {
		// A connection a broken client leaves open would keep the server
		// (and the test's end) waiting for ever.
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(conn)
		for {
			r, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			raw, closeAfter := answer(seen.Add(1), r)
			if _, err := io.WriteString(conn, raw); err != nil || closeAfter {
				return
			}
		}
	}
}

// describeAnswer is what a caller can see of an answer, its body read
// whole: for comparing the lean client with Go's transport.
func describeAnswer(res *http.Response, err error) string {
	if err != nil {
		return "error"
	}
	b, err := io.ReadAll(res.Body)
	res.Body.Close()
	var sb strings.Builder
	fmt.Fprintf(&sb, "%d %s cl=%d\n", res.StatusCode, res.Proto, res.ContentLength)
	_ = res.Header.Write(&sb)
	fmt.Fprintf(&sb, "body=%q failed=%t trailer=%v", b, err != nil, res.Trailer)
	return sb.String()
}

const goodAnswer = "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngood"

// smuggled is an answer that no request asked for.
const smuggled = "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil"

// An answer is read as Go's transport reads it, whatever its framing, and
// nothing past its end (bytes a server out of step sent after it) is read
// as the answer to the next request on the connection: response smuggling
// through the gateway's connection pool. Each first answer comes in one
// write, so its extra bytes arrive with it.
func TestH1BytesPastTheAnswerAreNotTheNextAnswer(t *testing.T) {
	headLen := fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", len(smuggled))
	for _, tc := range []struct {
		name   string
		method string
		answer string // the first answer, as both clients get it
		extra  string // bytes past its end, which only the lean client gets
	}{
		// Servers out of step: the extra bytes must not be taken for the
		// next request's answer.
		{"body longer than its length", http.MethodGet, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", smuggled},
		{"zero length then more", http.MethodGet, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", smuggled},
		{"body after HEAD", http.MethodHead, headLen, smuggled},
		{"body after 204", http.MethodGet, "HTTP/1.1 204 No Content\r\n\r\n", smuggled},
		{"body after 304", http.MethodGet, "HTTP/1.1 304 Not Modified\r\nContent-Length: 42\r\n\r\n", smuggled},
		{"chunked body then more", http.MethodGet,
			"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", smuggled},
		// Framings that must be read as Go reads them, or refused as it
		// refuses them (RFC 9112 6.1, 6.3).
		{"length and chunked: chunked wins", http.MethodGet,
			"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", ""},
		{"gzip transfer coding", http.MethodGet,
			"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 2\r\n\r\nok", ""},
		{"gzip then chunked", http.MethodGet,
			"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", ""},
		{"chunked, chunked", http.MethodGet,
			"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", ""},
		{"chunked in two fields", http.MethodGet,
			"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", ""},
		{"invalid chunk size", http.MethodGet, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n", ""},
		{"chunk size overflow", http.MethodGet,
			"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000002\r\nok\r\n0\r\n\r\n", ""},
		{"no CRLF after chunk data", http.MethodGet,
			"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokX\r\n0\r\n\r\n", ""},
		{"negative length", http.MethodGet, "HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\nok", ""},
		{"length over 63 bits", http.MethodGet, "HTTP/1.1 200 OK\r\nContent-Length: 9223372036854775808\r\n\r\nok", ""},
		{"HTTP/2.0 status line", http.MethodGet, "HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nok", ""},
		{"lower-case version", http.MethodGet, "http/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", ""},
		{"HTTP/1.0 keep-alive", http.MethodGet, "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok", ""},
		{"CR in a value", http.MethodGet, "HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 2\r\n\r\nok", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			server := func(extra string) string {
				var seen atomic.Int64
				return rawServer(t, answerEach(&seen, func(n int64, _ *http.Request) (string, bool) {
					if n == 1 {
						return tc.answer + extra, false
					}
					return goodAnswer, false
				}))
			}
			first := func(rt http.RoundTripper, addr string) string {
				req, _ := http.NewRequest(tc.method, "http://"+addr+"/first", nil)
				return describeAnswer(rt.RoundTrip(req))
			}
			stdAddr, addr := server(""), server(tc.extra)
			// The clients after the servers: their idle connections, which
			// the servers wait on, close first.
			std := &http.Transport{DisableCompression: true}
			t.Cleanup(std.CloseIdleConnections)
			c := newH1(t)
			want, got := first(std, stdAddr), first(c, addr)
			if got != want {
				t.Fatalf("lean client read\n%s\nGo's transport read\n%s", got, want)
			}
			// The server answers the next request it reads, on whichever
			// connection, with goodAnswer; bounded, should the client hold
			// a connection the server waits on.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/next", nil)
			res, err := c.RoundTrip(req)
			if err != nil {
				t.Fatalf("next request: %v", err)
			}
			b, err := io.ReadAll(res.Body)
			res.Body.Close()
			if err != nil || string(b) != "good" {
				t.Fatalf("next request read %q (err %v): not its own answer", b, err)
			}
		})
	}
}

// Informational answers: any number reaches the final one, as with Go's
// transport; their heads and the final one's share the 10 MiB bound unless
// the trace hook (the reverse proxy's, which forwards them) took each.
func TestH1InformationalAnswers(t *testing.T) {
	// A field of 256 KiB: 44 heads with it pass 10 MiB.
	big := "HTTP/1.1 103 Early Hints\r\nLink: </" + strings.Repeat("a", 256<<10) + ">\r\n\r\n"
	for _, tc := range []struct {
		name   string
		answer string
		hook   bool
		want   string // "ok", or what the error says
	}{
		{"102 Processing seven times", strings.Repeat("HTTP/1.1 102 Processing\r\n\r\n", 7), false, "ok"},
		{"103 seven times to the hook", strings.Repeat("HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", 7), true, "ok"},
		{"11 MiB of heads to the hook", strings.Repeat(big, 44), true, "ok"},
		{"11 MiB of heads unseen", strings.Repeat(big, 44), false, "larger than 10 MiB"},
		{"101 to a request that did not ask to upgrade",
			"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\n", false, "101 Switching Protocols"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var seen atomic.Int64
			addr := rawServer(t, answerEach(&seen, func(n int64, _ *http.Request) (string, bool) {
				if n == 1 {
					return tc.answer + "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false
				}
				return goodAnswer, false
			}))
			ctx := context.Background()
			var got1xx int
			if tc.hook {
				ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
					Got1xxResponse: func(int, textproto.MIMEHeader) error { got1xx++; return nil },
				})
			}
			c := newH1(t)
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/", nil)
			res, err := c.RoundTrip(req)
			if tc.want != "ok" {
				if err == nil {
					res.Body.Close()
					t.Fatalf("status %d, want an error saying %q", res.StatusCode, tc.want)
				}
				if !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("err %v, want one saying %q", err, tc.want)
				}
				// The connection, out of step or switched, is not reused.
				if _, body := get(t, c, http.MethodGet, "http://"+addr+"/next"); body != "good" {
					t.Fatalf("next request read %q", body)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode != 200 || string(b) != "ok" {
				t.Fatalf("status %d body %q, want the final 200", res.StatusCode, b)
			}
			if want := strings.Count(tc.answer, "HTTP/1.1 1"); tc.hook && got1xx != want {
				t.Fatalf("the hook saw %d informational answers, want %d", got1xx, want)
			}
		})
	}
}

// An upstream restart closes every idle connection at once. The request
// that finds its pooled connection dead is sent again on a new connection,
// not on another pooled one that is as dead (and fails it), as Go's
// transport, whose read loops see each closed connection at once, never
// uses one.
func TestH1ResendAfterAnUpstreamRestartDials(t *testing.T) {
	srv := newConnCounter(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ok")
	})
	c := newH1(t)
	pooled(t, c, srv.URL, 2)
	host := srv.Listener.Addr().String()
	c.mu.Lock()
	idle := append([]*h1Conn(nil), c.idle[host]...)
	c.mu.Unlock()
	if len(idle) != 2 {
		t.Fatalf("%d idle connections, want 2", len(idle))
	}
	srv.CloseClientConnections()
	for _, pc := range idle {
		// Were they idle for longer than livenessAfter by now (a loaded
		// machine), the probe would find them dead first: the test still
		// holds, it just no longer needs the resend.
		eventually(t, "the server's close to reach the client", func() bool {
			yes, _ := arrived(pc.conn)
			return yes
		})
	}
	if _, body := get(t, c, http.MethodGet, srv.URL); body != "ok" {
		t.Fatalf("body %q", body)
	}
	if n := srv.conns.Load(); n != 3 {
		t.Fatalf("%d connections, want 3 (the resend dialed)", n)
	}
}

// A request whose context is done is not sent, as Go's transport sends
// none: not on an idle connection (which stays in the pool for the next
// request) and not through Send; the caller going away is its error.
func TestH1DoneContextIsNotSent(t *testing.T) {
	for _, tc := range []struct {
		name string
		ctx  func() (context.Context, context.CancelFunc)
		err  error
	}{
		{"cancelled", func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			return ctx, cancel
		}, context.Canceled},
		{"deadline passed", func() (context.Context, context.CancelFunc) {
			return context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
		}, context.DeadlineExceeded},
	} {
		t.Run(tc.name, func(t *testing.T) {
			paths := make(chan string, 8)
			var seen atomic.Int64
			addr := rawServer(t, answerEach(&seen, func(_ int64, r *http.Request) (string, bool) {
				paths <- r.URL.Path
				return goodAnswer, false
			}))
			env := newEnv(t, nil)
			p := env.apply(t, &config.Upstream{Targets: targets("http://" + addr), Retries: ptr(1),
				Timeout: config.Duration(5 * time.Second)})
			good := func(path string) {
				t.Helper()
				res, body, err := waitBody(mustSend(t, p, newSendReq(t, context.Background(), http.MethodGet, path)))
				if err != nil || res.StatusCode != 200 || body != "good" {
					t.Fatalf("%s: res %v body %q err %v", path, res, body, err)
				}
			}
			good("/first") // leaves its connection idle

			ctx, cancel := tc.ctx()
			defer cancel()
			res, err := p.RoundTrip(newSendReq(t, ctx, http.MethodGet, "/round-trip"))
			if res != nil {
				res.Body.Close()
			}
			if !errors.Is(err, tc.err) {
				t.Fatalf("RoundTrip: err %v, want %v", err, tc.err)
			}
			res, err = mustSend(t, p, newSendReq(t, ctx, http.MethodGet, "/send")).Wait()
			if res != nil {
				res.Body.Close()
			}
			if !errors.Is(err, tc.err) {
				t.Fatalf("Wait: err %v, want %v", err, tc.err)
			}
			assertNoInflight(t, env.reg)
			if got := testutil.ToFloat64(env.reg.m.retries.WithLabelValues("u")); got != 0 {
				t.Fatalf("retries_total %v, want 0", got)
			}
			good("/last")
			// Whatever reached the server did so before /last, on the
			// connection /first left, or on one dialed before /last's.
			if got := []string{<-paths, <-paths}; got[0] != "/first" || got[1] != "/last" {
				t.Fatalf("the server saw %v, want [/first /last]", got)
			}
			select {
			case path := <-paths:
				t.Fatalf("the server saw %s too", path)
			default:
			}
		})
	}
}

// A broken server's body for a HEAD (or 204, 304) answer that arrives
// after the answer was read sits in the idle connection's socket, not in
// its buffer: the next reuse looks at the socket first, however briefly
// the connection idled, so the bytes never pass for the next answer.
func TestH1LateBytesAfterABodilessAnswer(t *testing.T) {
	for _, first := range []struct{ method, head string }{
		{http.MethodHead, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n"},
		{http.MethodGet, "HTTP/1.1 204 No Content\r\n\r\n"},
	} {
		t.Run(first.method+" "+first.head[9:12], func(t *testing.T) {
			answered, written := make(chan struct{}), make(chan struct{})
			var conns atomic.Int64
			addr := rawServer(t, func(conn net.Conn) {
				_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
				br := bufio.NewReader(conn)
				if conns.Add(1) > 1 {
					if _, err := http.ReadRequest(br); err == nil {
						_, _ = io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngood")
					}
					return
				}
				if _, err := http.ReadRequest(br); err != nil {
					return
				}
				_, _ = io.WriteString(conn, first.head)
				<-answered
				_, _ = io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil")
				close(written)
				_, _ = io.Copy(io.Discard, br) // until the client lets go
			})
			c := newH1(t)
			url := "http://" + addr + "/"
			if res, _ := get(t, c, first.method, url); res.StatusCode >= 300 {
				t.Fatalf("first answer %d", res.StatusCode)
			}
			close(answered)
			<-written
			// Wait until the late bytes reached the idle connection's
			// socket (loopback usually delivers them before Write returns).
			c.mu.Lock()
			idle := c.idle[addr]
			c.mu.Unlock()
			if len(idle) != 1 {
				t.Fatalf("%d idle connections after the first answer, want 1", len(idle))
			}
			for end := time.Now().Add(5 * time.Second); alive(idle[0]) && time.Now().Before(end); {
				time.Sleep(time.Millisecond)
			}
			if _, body := get(t, c, http.MethodGet, url); body != "good" {
				t.Fatalf("the next request got %q, the late bytes of the previous answer", body)
			}
			if n := conns.Load(); n != 2 {
				t.Fatalf("%d connections, want 2: the first one dropped", n)
			}
		})
	}
}
