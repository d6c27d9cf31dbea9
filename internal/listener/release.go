package listener

import (
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// ReleaseIdle wraps a plain TCP listener so that an HTTP/1.1 keep-alive
// connection that stays idle for `after` stops holding net/http's
// per-connection goroutine (an 8 KiB stack once it has served a request)
// and its 4 KiB read and 4 KiB write buffers. Such a connection is handed
// back to the kernel: its socket stays open, the client sees nothing, and
// a readiness poller returns it through Accept when the next request (or
// the client's close) arrives. An idle connection then costs 3 to 4 KiB
// of memory instead of 20, which is what lets a gateway hold tens of
// thousands of mostly idle clients, as nginx does.
//
// How it works with net/http, which has no hook for this: the server's
// ConnState must be (*IdleReleaser).ConnState. After StateIdle net/http
// sets the idle timeout as the read deadline and blocks reading the next
// request; the wrapper shortens that deadline to `after`, and when it
// passes with nothing read, the read reports end of stream. net/http then
// ends the connection's goroutine and closes the connection, and the
// wrapper's Close hands the socket to the poller instead of closing it.
// The idle timeout net/http asked for still applies: the poller closes a
// connection that is still idle when it passes.
//
// Only plain HTTP/1.1 is released: a TLS connection's state lives in its
// tls.Conn, and a PROXY protocol header is read once per connection, so
// neither listener may be wrapped. Connections that speak HTTP/2 (h2c) or
// were hijacked (WebSocket) are never released.
//
// A delay of 0 releases nothing until SetDelay sets one, so a config
// reload can turn releasing on and off while the listener runs.
//
// On platforms without the poller (anything but Linux), ReleaseIdle
// returns an error and the caller serves the listener as it is.
func ReleaseIdle(ln net.Listener, after time.Duration) (*IdleReleaser, error) {
	if after < 0 {
		return nil, errors.New("listener: negative idle release delay")
	}
	p, err := newPoller()
	if err != nil {
		return nil, err
	}
	l := &IdleReleaser{
		Listener: ln,
		accepted: make(chan accepted),
		woken:    make(chan *releasableConn, 64),
		done:     make(chan struct{}),
		poller:   p,
	}
	l.after.Store(int64(after))
	go l.acceptLoop()
	go p.run(l)
	return l, nil
}

// IdleReleaser is a listener whose idle HTTP/1.1 connections give back
// their goroutine and buffers; see ReleaseIdle.
type IdleReleaser struct {
	net.Listener
	after    atomic.Int64 // time.Duration; 0 releases nothing
	accepted chan accepted
	woken    chan *releasableConn
	done     chan struct{}
	close    sync.Once
	poller   *poller
}

type accepted struct {
	conn net.Conn
	err  error
}

// close closes the connection of an accept nobody will serve.
func (a accepted) close() {
	if a.conn != nil {
		a.conn.Close()
	}
}

// acceptLoop runs the inner listener's Accept, so that Accept can wait for
// a new connection and a woken one at once.
func (l *IdleReleaser) acceptLoop() {
	for {
		a := accepted{}
		a.conn, a.err = l.Listener.Accept()
		select {
		case l.accepted <- a:
		case <-l.done:
			a.close()
			return
		}
		if errors.Is(a.err, net.ErrClosed) {
			return
		}
	}
}

// Accept returns the next new connection, or a released one that has
// something to read again.
func (l *IdleReleaser) Accept() (net.Conn, error) {
	select {
	case a := <-l.accepted:
		if a.err != nil {
			return nil, a.err
		}
		return l.wrap(a.conn), nil
	case c := <-l.woken:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close closes the listener and every released connection.
func (l *IdleReleaser) Close() error {
	err := l.Listener.Close()
	l.close.Do(func() {
		close(l.done)
		l.poller.shut()
		// Connections the poller woke but no Accept took would otherwise
		// stay open with their request unanswered; run has stopped, so
		// nothing is sent on woken any more.
	drain:
		for {
			select {
			case c := <-l.woken:
				c.Conn.Close()
			default:
				break drain
			}
		}
	})
	return err
}

// SetDelay changes how long a connection must be idle to be released, for
// connections that go idle from now on; 0 stops releasing (connections
// already released stay so until their next request).
func (l *IdleReleaser) SetDelay(after time.Duration) {
	l.after.Store(int64(max(after, 0)))
}

// Released reports how many connections are released right now.
func (l *IdleReleaser) Released() int { return l.poller.len() }

// wrap makes c releasable when its socket can be watched; anything else
// (a listener that does not hand out sockets) is served as it is.
func (l *IdleReleaser) wrap(c net.Conn) net.Conn {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return c
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return c
	}
	fd := -1
	if raw.Control(func(s uintptr) { fd = int(s) }) != nil || fd < 0 {
		return c
	}
	return &releasableConn{Conn: c, l: l, fd: fd}
}

// ConnState must be the http.Server's ConnState: it tells a connection
// when net/http waits for its next request, and when it was hijacked. An
// HTTP/2 connection never reports StateIdle here: net/http's HTTP/2 server
// reports its states on a tls.Conn of its own around the connection (h2c
// included), so it is never released.
func (l *IdleReleaser) ConnState(c net.Conn, state http.ConnState) {
	rc, ok := c.(*releasableConn)
	if !ok {
		return
	}
	rc.mu.Lock()
	switch state {
	case http.StateIdle:
		if !rc.never {
			rc.phase = idle
		}
	case http.StateActive:
		rc.phase = busy
	case http.StateHijacked:
		rc.never, rc.phase = true, busy
	}
	rc.mu.Unlock()
}

// releasableConn is an accepted connection that can be released while
// idle.
type releasableConn struct {
	net.Conn
	l  *IdleReleaser
	fd int

	mu sync.Mutex
	// never: hijacked; the connection is not net/http's HTTP/1 loop any
	// more.
	never bool
	phase phase
	// releaseAt: when the shortened deadline passes; zero when the read
	// deadline in force is net/http's own.
	releaseAt time.Time
	// deadline: the read deadline net/http asked for.
	deadline time.Time
}

// phase is where a connection is in net/http's keep-alive loop, as far as
// releasing it is concerned.
type phase uint8

const (
	// busy: serving a request, or reading the next one.
	busy phase = iota
	// idle: net/http reported StateIdle and is about to set its idle
	// timeout as the read deadline.
	idle
	// waiting: that deadline was shortened and nothing of the next
	// request has been read; a read that times out now releases.
	waiting
	// releasing: Read reported end of stream to release the connection,
	// so the Close that follows hands it to the poller (or, once the
	// listener is closed, closes it).
	releasing
	// released: the poller owns the socket.
	released
)

func (c *releasableConn) Read(p []byte) (int, error) {
	for {
		n, err := c.Conn.Read(p)
		if n > 0 {
			c.mu.Lock()
			if c.phase == waiting {
				c.phase = busy
			}
			c.mu.Unlock()
			return n, err
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			return n, err
		}
		c.mu.Lock()
		if c.releaseAt.IsZero() || time.Now().Before(c.releaseAt) {
			// net/http's own deadline, or one it set to end a read.
			c.mu.Unlock()
			return n, err
		}
		c.releaseAt = time.Time{}
		if c.phase == waiting {
			c.phase = releasing
			c.mu.Unlock()
			return 0, io.EOF
		}
		// Part of the next request came in before the shortened deadline:
		// net/http's deadline holds for the rest.
		dl := c.deadline
		c.mu.Unlock()
		if err := c.Conn.SetReadDeadline(dl); err != nil {
			return 0, err
		}
	}
}

func (c *releasableConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	c.deadline, c.releaseAt = t, time.Time{}
	switch c.phase {
	case idle:
		// net/http's idle timeout: shorten it to the release delay.
		c.phase = busy
		if after := time.Duration(c.l.after.Load()); after > 0 {
			c.phase = waiting
			if at := time.Now().Add(after); t.IsZero() || at.Before(t) {
				c.releaseAt, t = at, at
			}
		}
	case waiting:
		// A second deadline before any read: the next request was already
		// buffered (pipelined), and net/http is reading it. Resetting
		// releaseAt above is what keeps such a request whole; the phase
		// follows so that nothing else takes it for an idle connection.
		c.phase = busy
	}
	c.mu.Unlock()
	return c.Conn.SetReadDeadline(t)
}

func (c *releasableConn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.Conn.SetWriteDeadline(t)
}

func (c *releasableConn) Close() error {
	c.mu.Lock()
	switch c.phase {
	case released:
		// A late close of the connection net/http let go of; the poller
		// owns the socket now.
		c.mu.Unlock()
		return nil
	case releasing:
		c.phase = released
		c.mu.Unlock()
		if c.l.poller.add(c) == nil {
			return nil
		}
		c.mu.Lock()
		c.phase = busy
		c.mu.Unlock()
	default:
		c.mu.Unlock()
	}
	return c.Conn.Close()
}

// woke readies a connection the poller gives back for net/http to serve
// as if it were new.
func (c *releasableConn) woke() {
	c.mu.Lock()
	c.phase = busy
	c.mu.Unlock()
}

// expired reports whether net/http's idle deadline for a released
// connection has passed.
func (c *releasableConn) expired(now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.deadline.IsZero() && now.After(c.deadline)
}

// ReadFrom and CloseWrite keep the socket's own fast paths (splice,
// sendfile, half-close) that net/http looks for on its connection.
func (c *releasableConn) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := c.Conn.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{c.Conn}, r)
}

func (c *releasableConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
