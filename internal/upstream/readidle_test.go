package upstream

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/portico-gw/portico/internal/config"
)

// readIdleCase is one way to reach an upstream: the lean client, Go's
// transport over HTTP/1.1, and Go's transport over HTTP/2 (h2c).
type readIdleCase struct {
	name, client string
	h2c          bool
}

var readIdleCases = []readIdleCase{
	{"lean", "lean", false},
	{"standard", "standard", false},
	{"h2c", "lean", true},
}

// startUpstream serves h over HTTP/1.1, or h2c with prior knowledge, and
// returns the target URL.
// stallAfterTen announces 100 bytes, sends 10 and goes silent until the
// request ends.
func stallAfterTen(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Length", "100")
	_, _ = io.WriteString(w, "0123456789")
	w.(http.Flusher).Flush()
	<-r.Context().Done()
}

func startUpstream(t *testing.T, c readIdleCase, h http.HandlerFunc) string {
	t.Helper()
	s := httptest.NewUnstartedServer(h)
	if c.h2c {
		s.Config.Protocols = new(http.Protocols)
		s.Config.Protocols.SetUnencryptedHTTP2(true)
	}
	s.Start()
	t.Cleanup(s.Close)
	if c.h2c {
		return "h2c://" + s.Listener.Addr().String()
	}
	return s.URL
}

// An upstream that sends its headers and part of a fixed-length body, then
// stalls: the body read fails with a *ReadIdleError about the idle timeout
// later, the upstream sees its connection (or stream) closed, and the target
// is charged a failure.
func TestReadIdleTimeoutStalledBody(t *testing.T) {
	for _, c := range readIdleCases {
		t.Run(c.name, func(t *testing.T) {
			env := newEnv(t, nil)
			gone := make(chan time.Duration, 1)
			url := startUpstream(t, c, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Length", "100")
				_, _ = io.WriteString(w, "0123456789")
				w.(http.Flusher).Flush()
				start := time.Now()
				select {
				case <-r.Context().Done(): // the gateway closed the connection or reset the stream
					gone <- time.Since(start)
				case <-time.After(5 * time.Second):
					gone <- -1
				}
			})
			p := env.apply(t, &config.Upstream{Targets: targets(url), Retries: ptr(0), HTTP1Client: c.client,
				Timeout: config.Duration(5 * time.Second), ReadIdleTimeout: ptr(config.Duration(200 * time.Millisecond))})
			req, _ := http.NewRequest(http.MethodGet, "http://upstream.invalid/", nil)
			res, err := p.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			b, err := io.ReadAll(res.Body)
			took := time.Since(start)
			res.Body.Close()
			var ie *ReadIdleError
			if !errors.As(err, &ie) || ie.Idle != 200*time.Millisecond {
				t.Fatalf("body %q, err %v (%T), want a *ReadIdleError of 200ms", b, err, err)
			}
			if string(b) != "0123456789" {
				t.Errorf("body %q before the error", b)
			}
			if took < 190*time.Millisecond || took > 2*time.Second {
				t.Errorf("the read failed after %v, want about 200-250ms", took)
			}
			if d := <-gone; d < 0 {
				t.Error("the upstream's connection stayed open")
			}
			if got := testutil.ToFloat64(env.reg.m.requests.WithLabelValues("u", url, "error")); got != 1 {
				t.Errorf(`requests_total{code="error"} = %v, want 1`, got)
			}
			if got := testutil.ToFloat64(env.reg.m.requests.WithLabelValues("u", url, "200")); got != 1 {
				t.Errorf(`requests_total{code="200"} = %v, want 1`, got)
			}
		})
	}
}

// An upstream that sends a byte every 100ms is never idle for 300ms: the
// body completes although it takes over three times the idle timeout; so does a
// body the caller reads slowly (the time it spends elsewhere is not the
// upstream's silence).
func TestReadIdleTimeoutTrickleCompletes(t *testing.T) {
	for _, c := range readIdleCases {
		t.Run(c.name, func(t *testing.T) {
			env := newEnv(t, nil)
			const n = 15
			url := startUpstream(t, c, func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/fast" {
					_, _ = io.WriteString(w, strings.Repeat("x", 200<<10))
					return
				}
				w.Header().Set("Content-Length", "15")
				for range n {
					_, _ = io.WriteString(w, "x")
					w.(http.Flusher).Flush()
					time.Sleep(100 * time.Millisecond)
				}
			})
			p := env.apply(t, &config.Upstream{Targets: targets(url), Retries: ptr(0), HTTP1Client: c.client,
				Timeout: config.Duration(5 * time.Second), ReadIdleTimeout: ptr(config.Duration(300 * time.Millisecond))})
			start := time.Now()
			status, body, err := send(p, http.MethodGet, "")
			if err != nil || status != 200 || len(body) != n {
				t.Fatalf("status %d, %d bytes, err %v", status, len(body), err)
			}
			if d := time.Since(start); d < 3*300*time.Millisecond {
				t.Fatalf("took %v: the test proves nothing", d)
			}

			req, _ := http.NewRequest(http.MethodGet, "http://upstream.invalid/fast", nil)
			res, err := p.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			var one [1]byte
			if _, err := io.ReadFull(res.Body, one[:]); err != nil {
				t.Fatal(err)
			}
			time.Sleep(700 * time.Millisecond) // a slow client: over twice the idle timeout
			rest, err := io.ReadAll(res.Body)
			if err != nil || len(rest) != 200<<10-1 {
				t.Fatalf("%d bytes after a pause, err %v", len(rest), err)
			}
			if got := testutil.ToFloat64(env.reg.m.requests.WithLabelValues("u", url, "error")); got != 0 {
				t.Errorf(`requests_total{code="error"} = %v, want 0`, got)
			}
		})
	}
}

// The caller's own deadline, when it comes before the idle timeout, ends a
// stalled body as before: its error, not the idle timeout's, and no failure
// charged to the target.
func TestReadIdleTimeoutCallerDeadlineFirst(t *testing.T) {
	for _, c := range readIdleCases {
		t.Run(c.name, func(t *testing.T) {
			env := newEnv(t, nil)
			url := startUpstream(t, c, stallAfterTen)
			p := env.apply(t, &config.Upstream{Targets: targets(url), Retries: ptr(0), HTTP1Client: c.client,
				Timeout: config.Duration(5 * time.Second), ReadIdleTimeout: ptr(config.Duration(2 * time.Second))})
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			start := time.Now()
			_, _, err := sendCtx(ctx, p, http.MethodGet, "")
			var ie *ReadIdleError
			if err == nil || errors.As(err, &ie) {
				t.Fatalf("err %v, want the caller's deadline", err)
			}
			if d := time.Since(start); d > 1500*time.Millisecond {
				t.Fatalf("took %v, want about 300ms", d)
			}
			if got := testutil.ToFloat64(env.reg.m.requests.WithLabelValues("u", url, "error")); got != 0 {
				t.Errorf(`requests_total{code="error"} = %v, want 0`, got)
			}
		})
	}
}

// A caller's deadline far past the idle bound (a route or BFF endpoint
// timeout) does not stand in for it: the body is still cut after about
// read_idle_timeout of silence.
func TestReadIdleTimeoutUnderAFarCallerDeadline(t *testing.T) {
	for _, c := range readIdleCases {
		t.Run(c.name, func(t *testing.T) {
			env := newEnv(t, nil)
			url := startUpstream(t, c, stallAfterTen)
			p := env.apply(t, &config.Upstream{Targets: targets(url), Retries: ptr(0), HTTP1Client: c.client,
				Timeout: config.Duration(5 * time.Second), ReadIdleTimeout: ptr(config.Duration(300 * time.Millisecond))})
			for _, via := range []string{"RoundTrip", "Send"} {
				if via == "Send" && !p.CanSend(http.MethodGet) {
					continue
				}
				t.Run(via, func(t *testing.T) {
					ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					defer cancel()
					start := time.Now()
					var err error
					if via == "Send" { // a BFF call: deadlines on the connection
						_, _, err = waitBody(mustSend(t, p, newSendReq(t, ctx, http.MethodGet, "/")))
					} else {
						_, _, err = sendCtx(ctx, p, http.MethodGet, "")
					}
					var ie *ReadIdleError
					if !errors.As(err, &ie) {
						t.Fatalf("err %v, want the read idle timeout", err)
					}
					if d := time.Since(start); d > 5*time.Second {
						t.Fatalf("took %v, want about 300-375ms", d)
					}
				})
			}
		})
	}
}

// read_idle_timeout: 0 turns the bound off.
func TestReadIdleTimeoutOff(t *testing.T) {
	for _, c := range readIdleCases[:2] {
		t.Run(c.name, func(t *testing.T) {
			env := newEnv(t, nil)
			url := startUpstream(t, c, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Length", "2")
				_, _ = io.WriteString(w, "a")
				w.(http.Flusher).Flush()
				time.Sleep(400 * time.Millisecond)
				_, _ = io.WriteString(w, "b")
			})
			p := env.apply(t, &config.Upstream{Targets: targets(url), Retries: ptr(0), HTTP1Client: c.client,
				ReadIdleTimeout: ptr(config.Duration(0))})
			if p.readIdle != 0 {
				t.Fatalf("readIdle %v", p.readIdle)
			}
			if status, body, err := send(p, http.MethodGet, ""); err != nil || status != 200 || body != "ab" {
				t.Fatalf("status %d body %q err %v", status, body, err)
			}
		})
	}
	env := newEnv(t, nil)
	if p := env.apply(t, &config.Upstream{Targets: targets("http://127.0.0.1:1")}); p.readIdle != config.DefaultReadIdleTimeout.D() {
		t.Errorf("unset read_idle_timeout gives %v, want the default", p.readIdle)
	}
}

// A client's half-close of a WebSocket tunnel reaches the upstream as a
// half-close (ReverseProxy passes it on through the 101 body's CloseWrite),
// and what the upstream sends after it still reaches the client.
func TestUpgradedBodyCloseWrite(t *testing.T) {
	env := newEnv(t, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer conn.Close()
		br := bufio.NewReader(conn)
		if _, err := http.ReadRequest(br); err != nil {
			done <- err
			return
		}
		_, _ = io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
		got, err := io.ReadAll(br) // up to the client's half-close
		if err != nil {
			done <- err
			return
		}
		_, err = io.WriteString(conn, "last words after "+string(got))
		done <- err
	}()
	p := env.apply(t, &config.Upstream{Targets: targets("http://" + ln.Addr().String()), Retries: ptr(0)})
	req, _ := http.NewRequest(http.MethodGet, "http://upstream.invalid/ws", nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	res, err := p.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d", res.StatusCode)
	}
	rw, ok := res.Body.(io.ReadWriter)
	if !ok {
		t.Fatalf("body %T is no io.ReadWriter", res.Body)
	}
	if _, err := io.WriteString(rw, "bye"); err != nil {
		t.Fatal(err)
	}
	cw, ok := res.Body.(interface{ CloseWrite() error })
	if !ok {
		t.Fatalf("body %T has no CloseWrite", res.Body)
	}
	if err := cw.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(rw)
	if err != nil || string(b) != "last words after bye" {
		t.Fatalf("read %q, err %v", b, err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
