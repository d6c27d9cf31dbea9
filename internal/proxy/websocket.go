package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
)

// WebSocket tunnels are ReverseProxy's (handleUpgradeResponse: the 101, the
// hijack and the two copies). What this file adds is what it leaves out:
// which requests may open a tunnel, a check of the upstream's 101 before
// ReverseProxy takes the connection over, the bytes the client sent behind
// its handshake, and an idle timeout for the tunnel.

// tunnels reports whether r may open a WebSocket tunnel: the route allows
// it, and r is an opening handshake (RFC 6455 section 4.1), a GET over
// HTTP/1.1 without a body that asks to upgrade to websocket. Any other
// request is proxied as a plain one, without its Upgrade: an HTTP/1.0
// request's Upgrade must be ignored (RFC 9110 section 7.8), and a body
// would be read from the very connection the tunnel takes over.
func (h *handler) tunnels(r *http.Request) bool {
	if !h.websocket || r.Method != http.MethodGet || r.ProtoMajor != 1 || r.ProtoMinor < 1 || r.ContentLength != 0 {
		return false
	}
	up := r.Header["Upgrade"]
	return len(up) > 0 && strings.EqualFold(up[0], "websocket") &&
		httpguts.HeaderValuesContainsToken(r.Header["Connection"], "Upgrade")
}

var (
	errUnaskedUpgrade = errors.New("upstream switched protocols though none was asked for")
	errBadUpgrade     = errors.New("upstream switched protocols without a valid websocket upgrade")
	connUpgrade       = []string{"Upgrade"}
)

// checkSwitch vets a 101 before ReverseProxy hands the client's connection
// to it: the request asked for the upgrade, and the answer upgrades to the
// same protocol with a body the tunnel can write to. ReverseProxy refuses
// the others itself, but without closing the upstream's body
// (golang/go#80875), which leaks the upstream connection and the pool's
// in-flight count; an error from ModifyResponse has it closed. The hop-by-hop
// fields of the 101 are removed as for any answer (ReverseProxy copies them
// all), keeping only what the switch needs.
func checkSwitch(resp *http.Response) error {
	asked := resp.Request.Header["Upgrade"]
	if len(asked) == 0 {
		return errUnaskedUpgrade
	}
	up := resp.Header["Upgrade"]
	if len(up) == 0 || !strings.EqualFold(up[0], asked[0]) ||
		!httpguts.HeaderValuesContainsToken(resp.Header["Connection"], "Upgrade") {
		return errBadUpgrade
	}
	if _, ok := resp.Body.(io.ReadWriteCloser); !ok {
		return errBadUpgrade
	}
	removeHopByHop(resp.Header)
	resp.Header["Connection"] = connUpgrade
	resp.Header["Upgrade"] = up[:1:1]
	return nil
}

// upgradeWriter is the ResponseWriter ReverseProxy gets for a WebSocket
// handshake. Its Hijack hands over a tunnelConn: ReverseProxy copies from
// the bare connection and drops what the server had already read past the
// request (golang/go#80875), such as a first frame the client sent without
// waiting for the 101.
type upgradeWriter struct {
	http.ResponseWriter
	idle time.Duration // the tunnel's idle timeout; 0 for none
}

func (u *upgradeWriter) Unwrap() http.ResponseWriter { return u.ResponseWriter }

func (u *upgradeWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(u.ResponseWriter).Hijack()
	if err != nil {
		// Not %w: on http.ErrNotSupported (a writer of an earlier stage
		// that hides its Hijack) ReverseProxy leaves the upstream's
		// connection open; on any other error it closes it.
		return nil, nil, fmt.Errorf("proxy: hijacking the client's connection: %v", err)
	}
	tc := &tunnelConn{Conn: conn, idle: u.idle, start: time.Now()}
	if brw.Reader.Buffered() > 0 {
		tc.br = brw.Reader
	}
	if tc.idle > 0 {
		// Armed once tc.timer is set: checkIdle reads it.
		tc.timer = time.AfterFunc(time.Hour, tc.checkIdle)
		tc.timer.Reset(tc.idle)
	}
	return tc, brw, nil
}

// serverIdleTimeout is the idle timeout of the server r came from, as
// net/http reads it (IdleTimeout, else ReadTimeout); 0 for none.
func serverIdleTimeout(r *http.Request) time.Duration {
	srv, _ := r.Context().Value(http.ServerContextKey).(*http.Server)
	if srv == nil {
		return 0
	}
	if srv.IdleTimeout != 0 {
		return srv.IdleTimeout
	}
	return srv.ReadTimeout
}

// tunnelConn is the client's side of a WebSocket tunnel. It reads first
// what the server had buffered, and closes once no byte has crossed it in
// either direction for idle: net/http clears its deadlines on hijack, so
// without this a quiet tunnel would hold both connections (and the
// upstream's in-flight slot) for good. Only ReverseProxy's two copy
// goroutines use it, one reading and one writing.
type tunnelConn struct {
	net.Conn
	br     *bufio.Reader // bytes read past the handshake; nil once drained
	idle   time.Duration
	start  time.Time
	last   atomic.Int64 // time since start of the last byte either way
	timer  *time.Timer  // nil without an idle timeout
	closed atomic.Bool
}

func (c *tunnelConn) Read(p []byte) (int, error) {
	var n int
	var err error
	if c.br != nil {
		// Only what is buffered: a read past it would block on the socket.
		n, err = c.br.Read(p[:min(len(p), c.br.Buffered())])
		if c.br.Buffered() == 0 {
			c.br = nil
		}
	} else {
		n, err = c.Conn.Read(p)
	}
	if n > 0 && c.timer != nil {
		c.last.Store(int64(time.Since(c.start)))
	}
	return n, err
}

func (c *tunnelConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if n > 0 && c.timer != nil {
		c.last.Store(int64(time.Since(c.start)))
	}
	return n, err
}

// CloseWrite passes the client's half-close on (ReverseProxy looks for it).
func (c *tunnelConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return http.ErrNotSupported
}

func (c *tunnelConn) Close() error {
	c.closed.Store(true)
	if c.timer != nil {
		c.timer.Stop()
	}
	return c.Conn.Close()
}

// checkIdle closes the connection when the tunnel was idle for the whole
// timeout, else waits for the rest of it. Closing it ends ReverseProxy's
// copy from the client, and ReverseProxy then closes the upstream's side.
func (c *tunnelConn) checkIdle() {
	if c.closed.Load() {
		return
	}
	quiet := time.Since(c.start) - time.Duration(c.last.Load())
	if quiet < c.idle {
		c.timer.Reset(c.idle - quiet)
		return
	}
	_ = c.Conn.Close()
}
