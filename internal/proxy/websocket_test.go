package proxy

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/portico-gw/portico/internal/config"
	upstreampkg "github.com/portico-gw/portico/internal/upstream"
)

// wsHandshake is a WebSocket opening handshake (RFC 6455 section 4.1).
const wsHandshake = "GET /chat HTTP/1.1\r\nHost: gw.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
	"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"

// maskedPing is a masked text frame "ping" as a browser sends it.
var maskedPing = []byte{0x81, 0x84, 1, 2, 3, 4, 'p' ^ 1, 'i' ^ 2, 'n' ^ 3, 'g' ^ 4}

// sendRaw writes msg in one write on a new connection to addr and reads the
// answer's head.
func sendRaw(t *testing.T, addr, msg string) (net.Conn, *bufio.Reader, *http.Response) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, msg); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	return conn, br, resp
}

func wantEcho(t *testing.T, conn net.Conn, br *bufio.Reader, msg []byte) {
	t.Helper()
	if _, err := conn.Write(msg); err != nil {
		t.Fatal(err)
	}
	echo := make([]byte, len(msg))
	if _, err := io.ReadFull(br, echo); err != nil || string(echo) != string(msg) {
		t.Fatalf("echo %q, %v; want %q", echo, err, msg)
	}
}

// A client may send its first frame right behind the handshake, before the
// 101 (many do not wait). The server has read it along with the request;
// ReverseProxy alone copies from the bare connection and loses it.
func TestWebSocketBytesSentBeforeTheSwitch(t *testing.T) {
	srv, _ := front(t, Config{Backends: []Backend{wsUpstream(t)}, WebSocket: true}, nil)
	conn, br, resp := sendRaw(t, srv.Listener.Addr().String(), wsHandshake+string(maskedPing))
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d", resp.StatusCode)
	}
	echo := make([]byte, len(maskedPing))
	if _, err := io.ReadFull(br, echo); err != nil || string(echo) != string(maskedPing) {
		t.Fatalf("the frame sent with the handshake came back as %q, %v", echo, err)
	}
	wantEcho(t, conn, br, []byte("and the next one"))
}

// rawSwitchUpstream answers /plain with 200 and any other request with the
// head given (a 101 of some kind) on the hijacked connection, then waits for
// the gateway to close it; closed receives once it did.
func rawSwitchUpstream(t *testing.T, head string) (srv *httptest.Server, closed chan struct{}) {
	closed = make(chan struct{}, 1)
	var mu sync.Mutex
	var conns []net.Conn
	var wg sync.WaitGroup
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/plain" {
			_, _ = io.WriteString(w, "plain")
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		mu.Lock()
		conns = append(conns, conn)
		mu.Unlock()
		wg.Add(1)
		defer wg.Done()
		_, _ = brw.WriteString(head)
		_ = brw.Flush()
		_, _ = io.Copy(io.Discard, brw)
		closed <- struct{}{}
	}))
	t.Cleanup(func() {
		srv.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return srv, closed
}

// An upstream's 101 that does not complete the upgrade asked for is a 502,
// and the upstream's answer is closed: its connection, and (through the
// upstream pool) its in-flight count, which max_inflight would otherwise
// hold against every later request (ReverseProxy refuses such a 101 but
// leaves its body open, golang/go#80875).
func TestWebSocketBadSwitchReleasesTheUpstream(t *testing.T) {
	// hides is a stage whose ResponseWriter hides the server's Hijack.
	hides := func(s *http.Server) {
		next := s.Handler
		s.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			next.ServeHTTP(struct{ http.ResponseWriter }{w}, r)
		})
	}
	tests := []struct {
		name      string
		websocket bool   // the route's setting
		head      string // the upstream's answer
		setup     func(*http.Server)
	}{
		{"client connection not hijackable", true,
			"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", hides},
		{"another protocol", true,
			"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n", nil},
		// Not a switch to the transport, which reads it as an answer
		// without a body (and, with the close, does not reuse the
		// connection).
		{"without connection upgrade", true,
			"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: close\r\n\r\n", nil},
		{"not asked for", false,
			"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			up, closed := rawSwitchUpstream(t, tc.head)
			reg := upstreampkg.NewRegistry(upstreampkg.Deps{})
			t.Cleanup(reg.Close)
			zero := 0
			pools, err := reg.Apply(map[string]*config.Upstream{
				// Go's transport: the lean client never takes an upgrade,
				// and refuses a 101 to a request that did not ask for one.
				"ws": {Targets: []config.Target{{URL: up.URL, Weight: 1}}, MaxInflight: 1, Retries: &zero, HTTP1Client: "standard"},
			})
			if err != nil {
				t.Fatal(err)
			}
			target, _ := url.Parse(up.URL)
			srv, _ := frontWith(t, Config{Backends: []Backend{{Name: "ws", Weight: 1, Transport: pools["ws"], Target: target}},
				WebSocket: tc.websocket}, nil, tc.setup)

			_, _, resp := sendRaw(t, srv.Listener.Addr().String(), wsHandshake)
			if resp.StatusCode != http.StatusBadGateway {
				t.Fatalf("status %d, want 502", resp.StatusCode)
			}
			select {
			case <-closed:
			case <-time.After(5 * time.Second):
				t.Fatal("the upstream's connection was left open")
			}
			// ReverseProxy may close the upstream's side from a goroutine
			// of its own, just after the 502 went out; a leak is for good.
			c := client(t)
			for deadline := time.Now().Add(5 * time.Second); ; {
				resp, body := do(t, c, "GET", srv.URL+"/plain", nil)
				if resp.StatusCode == http.StatusOK && body == "plain" {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("next request: status %d %q: the refused 101 still counts as in flight", resp.StatusCode, body)
				}
				<-time.After(10 * time.Millisecond)
			}
		})
	}
}

// Only a WebSocket handshake (GET over HTTP/1.1, no body) opens a tunnel;
// other requests lose their Upgrade and are proxied as plain ones.
func TestWebSocketOnlyForHandshakes(t *testing.T) {
	srv, _ := front(t, Config{Backends: []Backend{wsUpstream(t)}, WebSocket: true}, nil)
	upgrade := "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
	for name, msg := range map[string]string{
		// RFC 9110 section 7.8: ignored in an HTTP/1.0 request.
		"http/1.0": "GET /chat HTTP/1.0\r\nHost: gw.test\r\n" + upgrade + "\r\n",
		// RFC 6455 section 4.1: the handshake is a GET.
		"post with a body": "POST /chat HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 4\r\n" + upgrade + "\r\nbody",
		"get with a body":  "GET /chat HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n" + upgrade + "\r\n4\r\nbody\r\n0\r\n\r\n",
	} {
		t.Run(name, func(t *testing.T) {
			_, br, resp := sendRaw(t, srv.Listener.Addr().String(), msg)
			body, _ := io.ReadAll(io.LimitReader(br, 5))
			if resp.StatusCode != http.StatusOK || string(body) != "plain" {
				t.Fatalf("status %d %q, want the upstream's plain answer", resp.StatusCode, body)
			}
		})
	}
}

// The 101 passes with the fields of the switch and the upstream's own, not
// the hop-by-hop ones (RFC 9110 section 7.6.1).
func TestWebSocketSwitchDropsHopByHopFields(t *testing.T) {
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	be := upstream(t, "ws", func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		wg.Add(1)
		defer wg.Done()
		defer conn.Close()
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade, X-Hop\r\n" +
			"X-Hop: 1\r\nKeep-Alive: timeout=5\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
		_ = brw.Flush()
		_, _ = io.Copy(conn, brw)
	})
	srv, _ := front(t, Config{Backends: []Backend{be}, WebSocket: true}, nil)
	conn, br, resp := sendRaw(t, srv.Listener.Addr().String(), wsHandshake)
	h := resp.Header
	if resp.StatusCode != http.StatusSwitchingProtocols || h.Get("Upgrade") != "websocket" || h.Get("Connection") != "Upgrade" ||
		h.Get("Sec-Websocket-Accept") == "" || h.Get("X-Hop") != "" || h.Get("Keep-Alive") != "" {
		t.Fatalf("status %d, header %v", resp.StatusCode, h)
	}
	wantEcho(t, conn, br, maskedPing)
}

// A tunnel closes once no byte crossed it either way for the server's idle
// timeout (net/http clears the connection's deadlines when it is
// hijacked); traffic in either direction keeps it open.
func TestWebSocketTunnelIdleTimeout(t *testing.T) {
	const idle = 500 * time.Millisecond
	srv, _ := frontWith(t, Config{Backends: []Backend{wsUpstream(t)}, WebSocket: true}, nil,
		func(s *http.Server) { s.IdleTimeout = idle })
	conn, br, resp := sendRaw(t, srv.Listener.Addr().String(), wsHandshake)
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d", resp.StatusCode)
	}
	for end := time.Now().Add(4 * idle); time.Now().Before(end); {
		wantEcho(t, conn, br, maskedPing)
		<-time.After(idle / 5)
	}
	start := time.Now()
	_ = conn.SetReadDeadline(start.Add(10 * idle))
	_, err := br.ReadByte()
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("idle tunnel still open after %v: %v", time.Since(start), err)
	}
	if waited := time.Since(start); waited < idle/2 {
		t.Fatalf("tunnel closed after %v of quiet, want about %v", waited, idle)
	}
}

// Without an idle timeout on the server, a quiet tunnel stays open.
func TestWebSocketTunnelWithoutIdleTimeout(t *testing.T) {
	srv, _ := front(t, Config{Backends: []Backend{wsUpstream(t)}, WebSocket: true}, nil)
	conn, br, _ := sendRaw(t, srv.Listener.Addr().String(), wsHandshake)
	<-time.After(200 * time.Millisecond)
	wantEcho(t, conn, br, maskedPing)
}
