package upstream

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// h1Client is the round tripper of plain http:// targets for the requests
// that are most of an API's traffic and carry the least risk: GET, HEAD and
// OPTIONS without a body, without Upgrade and without Expect. It writes
// the request and reads the answer on the caller's goroutine over a pooled
// keep-alive connection. net/http's Transport hands every request to a
// write goroutine and every answer back from a read goroutine (two
// goroutine switches, channels and a select per request); measured in the
// harness's engine spike, doing both on the handler's goroutine takes
// about a third off the proxy's CPU per request.
//
// The request head is written as Request.Write would (writeRequest, but
// for the order of the header fields). The common answer (HTTP/1.1, a
// final status, Content-Length framing, its head in the read buffer) is
// read by parseResponse exactly as http.ReadResponse would read it, and
// every other one by http.ReadResponse (chunked, trailers, close-delimited,
// HTTP/1.0, 1xx, 204, 304, HEAD, anything malformed). Everything else (bodies, upgrades, Expect:
// 100-continue, HTTPS, h2c) goes to fallback, the tuned net/http
// Transport.
//
// A Pool hands its attempt timeout to roundTrip as a deadline, which
// becomes the connection's own until the answer's header arrived: an
// attempt then costs no context, timer or goroutine of its own.
type h1Client struct {
	dial        func(ctx context.Context, network, addr string) (net.Conn, error)
	fallback    http.RoundTripper
	maxIdle     int           // idle connections kept per host
	idleTimeout time.Duration // an idle connection older than this is closed

	mu      sync.Mutex
	idle    map[string][]*h1Conn // per host:port, most recently used last
	janitor *time.Timer          // closes connections idle past idleTimeout; nil when none are idle
}

// h1Conn is one upstream connection with its buffers.
type h1Conn struct {
	host   string
	conn   net.Conn
	br     *bufio.Reader // reads through limit
	bw     *bufio.Writer
	idleAt time.Time
	limit  int64  // bytes the reader may still take: bounds an answer's header
	abort  func() // stops a blocked read or write at once; made once per connection
	// group is the cancel group the exchange in progress joined, if any;
	// leave (pc.leaveGroup, made once) takes it out again.
	group *cancelGroup
	leave func() bool
	// dl is the connection's deadline as last set through setDeadline: a
	// deadline is set only when it changes (a BFF's calls share theirs),
	// and an idle connection may keep its last one until its next use.
	dl time.Time
	// bodiless: the last answer had no body (HEAD, 204, 304, a zero
	// length). A broken server's body for it may arrive after the answer
	// was read, and would pass for the next request's answer; so the next
	// reuse looks at the socket first, however briefly it idled.
	bodiless bool
	// idle is the read idle timeout of the body being read (0: none, and
	// while an exchange has not reached its body); bodyCap is the caller's
	// deadline for that body (zero: none). See refresh.
	idle    time.Duration
	bodyCap time.Time
	// aborted is set by abort before it moves the deadline into the past,
	// so that refresh, which may run at the same time, does not undo it.
	aborted atomic.Bool
}

func (pc *h1Conn) setDeadline(t time.Time) {
	if !t.Equal(pc.dl) {
		_ = pc.conn.SetDeadline(t)
		pc.dl = t
	}
}

// Read feeds br: while an answer's header is read, at most maxHeaderBytes,
// so an upstream cannot make the gateway buffer an endless header (the
// Transport's MaxResponseHeaderBytes, at its default).
func (pc *h1Conn) Read(p []byte) (int, error) {
	if pc.idle > 0 {
		pc.refresh()
	}
	if pc.limit <= 0 {
		return 0, errHeaderTooLarge
	}
	if int64(len(p)) > pc.limit {
		p = p[:pc.limit]
	}
	n, err := pc.conn.Read(p)
	pc.limit -= int64(n)
	return n, err
}

// refresh keeps the read deadline of a body ahead of the read about to
// wait on the socket: at most pc.bodyCap, else at least pc.idle and at most
// 1.25 times pc.idle from now. It moves the deadline only once the one in
// force is outside that span (less than pc.idle ahead, or further than
// 1.25 times it, as the caller's own deadline is when the body starts), so
// a body read at speed costs a clock reading per read from the socket (the
// buffer serves the rest), and a SetReadDeadline about every pc.idle/4 at
// most. An upstream silent for pc.idle is thus never cut, and one silent
// for 1.25 times pc.idle always is.
func (pc *h1Conn) refresh() {
	now := time.Now()
	if ahead := pc.dl.Sub(now); !pc.dl.IsZero() && ahead >= pc.idle && ahead <= pc.idle+pc.idle/4 {
		return
	}
	next := now.Add(pc.idle + pc.idle/4)
	if !pc.bodyCap.IsZero() && pc.bodyCap.Before(next) {
		next = pc.bodyCap // unchanged once in force: no call
	}
	pc.setDeadline(next)
	if pc.aborted.Load() {
		// A cancellation came between the check and the new deadline.
		_ = pc.conn.SetDeadline(aLongTimeAgo)
	}
}

// idleTimedOut reports whether err, a failed read of pc's body, is the
// read idle timeout's doing: a passed deadline that was neither a
// cancellation's nor the caller's own.
func (pc *h1Conn) idleTimedOut(err error) bool {
	return pc.idle > 0 && errors.Is(err, os.ErrDeadlineExceeded) && !pc.aborted.Load() &&
		(pc.bodyCap.IsZero() || time.Now().Before(pc.bodyCap))
}

// ReadIdleError is the error of a body read once the upstream sent nothing
// of it for its read idle timeout (upstreams.NAME.read_idle_timeout). The
// exchange is then aborted: the connection (HTTP/1.1) or stream (HTTP/2)
// to the upstream is closed, and the caller must not take what it read for
// the whole body.
type ReadIdleError struct {
	Idle time.Duration // the read idle timeout in force
}

func (e *ReadIdleError) Error() string {
	return "upstream read idle timeout: no byte of the answer's body for " + e.Idle.String()
}

// Timeout reports true: a net.Error's view of a passed deadline.
func (e *ReadIdleError) Timeout() bool { return true }

// Temporary reports false (net.Error).
func (e *ReadIdleError) Temporary() bool { return false }

// Is matches os.ErrDeadlineExceeded, as the error of a read past a
// connection's deadline does.
func (e *ReadIdleError) Is(target error) bool { return target == os.ErrDeadlineExceeded }

const (
	maxHeaderBytes = 10 << 20 // as net/http's Transport
	noLimit        = 1<<63 - 1
)

var errHeaderTooLarge = errors.New("upstream answer header larger than 10 MiB")

// errAttemptTimeout is roundTrip's error when its deadline passed before
// the answer's header arrived.
var errAttemptTimeout = errors.New("upstream answer header not read before the attempt's deadline")

// livenessAfter: a connection idle for longer is probed before reuse. A
// server that closed it (many close idle connections after a few seconds)
// is then seen before the request is sent; under load connections are
// reused within milliseconds and the probe (a system call) is skipped.
const livenessAfter = time.Second

// aLongTimeAgo is a deadline in the past: setting it makes a blocked read
// or write return at once, which is how a cancelled context stops one.
var aLongTimeAgo = time.Unix(1, 0)

func (c *h1Client) RoundTrip(req *http.Request) (*http.Response, error) {
	var fields headFields
	lean, err := scanRequest(req, &fields)
	if !lean {
		return c.fallback.RoundTrip(req)
	}
	if err != nil {
		return nil, err // the caller's error, never sent
	}
	return c.roundTrip(req, &fields, time.Time{}, 0)
}

// roundTrip serves a request that scanRequest accepted and passed, with the
// fields it listed. A non-zero deadline bounds the exchange until the
// answer's header, dialing included: past it, roundTrip fails with
// errAttemptTimeout, unless the request's context ended first (its error
// is returned then). The body is not bounded by it.
func (c *h1Client) roundTrip(req *http.Request, fields *headFields, deadline time.Time, idle time.Duration) (*http.Response, error) {
	x := h1Exchange{deadline: deadline, idle: idle}
	if err := c.send(&x, req, fields); err != nil {
		return nil, err
	}
	return c.receive(&x, req, fields)
}

// h1Exchange is a request written by send whose answer receive reads.
type h1Exchange struct {
	pc     *h1Conn
	stop   func() bool // unregisters the cancellation hook; false once it ran
	reused bool        // pc came from the idle pool
	again  bool        // this is the one resend a reused connection allows
	// deadline bounds the exchange until the answer's header, bodyDeadline
	// the body; zero bounds nothing.
	deadline, bodyDeadline time.Time
	// idle is the read idle timeout of the body (0: none): the longest
	// the body's reads may wait for a byte, below bodyDeadline.
	idle time.Duration
	// cancelOnly: the request's context stops the exchange when it is
	// cancelled, but not when its deadline passes, which the deadlines
	// above then enforce. Set for a caller that may read an answer after
	// its context's deadline passed (Call.Wait).
	cancelOnly bool
	// noDial: send takes an idle connection or fails with errMustDial,
	// rather than dial on the caller's goroutine (Call.send).
	noDial bool
}

// send takes a connection for req and writes req on it, within x.deadline.
// A request on a reused connection that fails before any byte of an
// answer arrives is sent again on a new one, once: the server may have
// closed the connection as it was taken from the pool, and the fast path
// only carries methods that are safe to repeat (RFC 9110 9.2.2). send and
// receive apart let a caller write several requests before it reads any
// answer, all on its own goroutine.
func (c *h1Client) send(x *h1Exchange, req *http.Request, fields *headFields) error {
	ctx := req.Context()
	if err := ctx.Err(); err != nil {
		// Not sent, as net/http's Transport sends no request whose context
		// is done: on an idle connection the write would beat the
		// cancellation hook, which runs on a goroutine of its own.
		return err
	}
	host := req.URL.Host // the idle pool's key; get adds the default port to dial
	for {
		// The resend dials: the server that closed one idle connection has
		// often closed the others too (a restart), and one of those would
		// fail the resend as well.
		pc, reused, err := c.get(ctx, host, x.deadline, x.again, x.noDial)
		if err != nil {
			return err
		}
		x.pc, x.reused = pc, reused
		if err = c.write(ctx, x, req, fields); err == nil {
			return nil
		}
		if err = c.failed(x, ctx, err, false); err != nil {
			return err
		}
	}
}

// receive reads the answer's header to the request send wrote. fields
// are send's, or nil when the caller did not keep them.
func (c *h1Client) receive(x *h1Exchange, req *http.Request, fields *headFields) (*http.Response, error) {
	ctx := req.Context()
	for {
		resp, sent, err := c.read(ctx, x, req)
		if err == nil {
			return resp, nil
		}
		if err = c.failed(x, ctx, err, sent); err != nil {
			return nil, err
		}
		if fields == nil {
			// A caller that kept no fields from send: listed again, for
			// this rare resend only.
			fields = new(headFields)
			_, _ = scanRequest(req, fields)
		}
		if err = c.send(x, req, fields); err != nil {
			return nil, err
		}
	}
}

// failed closes the connection of a failed exchange and returns the error
// to report, or nil when the request is to be sent again on a new
// connection (x is then marked as that one resend).
func (c *h1Client) failed(x *h1Exchange, ctx context.Context, err error, sent bool) error {
	x.pc.conn.Close()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if !x.deadline.IsZero() && !time.Now().Before(x.deadline) {
		return errAttemptTimeout
	}
	if !x.reused || sent || x.again {
		return err
	}
	x.again = true
	return nil
}

// write sets the connection's deadline, hooks the request's cancellation
// to it and writes req (with the fields scanRequest listed). On an error
// x.stop already ran.
func (c *h1Client) write(ctx context.Context, x *h1Exchange, req *http.Request, fields *headFields) error {
	pc := x.pc
	pc.idle, pc.bodyCap = 0, time.Time{} // the body's bound starts with the body
	pc.aborted.Store(false)
	pc.setDeadline(x.deadline) // before the cancellation hook below, which must win
	switch {
	case ctx.Done() == nil:
		x.stop = func() bool { return true }
	case !x.cancelOnly:
		x.stop = context.AfterFunc(ctx, pc.abort)
	default: // a sent call (Call), whose deadlines are the connection's
		if g := groupOf(ctx); g != nil {
			if !g.join(pc) {
				pc.abort() // cancelled already: the write fails at once
			}
			x.stop = pc.leave
			break
		}
		x.stop = context.AfterFunc(ctx, func() {
			if ctx.Err() == context.Canceled {
				pc.abort()
			}
		})
	}
	if err := writeRequest(pc.bw, req, fields); err != nil {
		x.stop()
		return err
	}
	if err := pc.bw.Flush(); err != nil {
		x.stop()
		return err
	}
	return nil
}

// read reads the answer's header to the request write sent, within
// x.deadline. sent reports that some of an answer was read, after which
// the request must not be repeated.
func (c *h1Client) read(ctx context.Context, x *h1Exchange, req *http.Request) (resp *http.Response, sent bool, err error) {
	pc, stop := x.pc, x.stop
	if _, err := pc.br.Peek(1); err != nil {
		stop()
		return nil, false, err
	}
	var ans *h1Answer
	// The heads of the informational answers and of the final one share
	// one bound, which starts over after each that the trace hook took;
	// their number is not limited. So does net/http's Transport since Go
	// 1.24 (golang/go#65035): a count would fail an upstream that sends
	// 102 Processing while it works.
	pc.limit = maxHeaderBytes
	for {
		if ans = parseResponse(pc.br, req); ans != nil {
			resp = &ans.resp
		} else {
			resp, err = http.ReadResponse(pc.br, req)
			if err != nil {
				stop()
				return nil, true, err
			}
		}
		if resp.StatusCode < 100 || resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			// Final, as Go's transport reads it: a status below 100 too
			// (the proxy fails it), rather than a wait for another answer.
			break
		}
		// An informational answer (103 Early Hints) goes to the trace hook
		// the reverse proxy installs to forward it; then the final answer
		// follows on the same connection.
		if trace := httptrace.ContextClientTrace(ctx); trace != nil && trace.Got1xxResponse != nil {
			if err := trace.Got1xxResponse(resp.StatusCode, textproto.MIMEHeader(resp.Header)); err != nil {
				stop()
				return nil, true, err
			}
			pc.limit = maxHeaderBytes
		}
	}
	pc.limit = noLimit
	if resp.StatusCode == http.StatusSwitchingProtocols {
		// Only upgrade requests may be answered so, and those never take
		// this path.
		stop()
		return nil, true, errors.New("upstream answered 101 Switching Protocols to a request that did not ask to upgrade")
	}
	if !x.deadline.IsZero() || !x.bodyDeadline.IsZero() {
		// Past the header, the body's deadline applies. A cancellation
		// that set the deadline in the past meanwhile (the context is
		// done before the hook runs) must not be undone.
		pc.setDeadline(x.bodyDeadline)
		if err := ctx.Err(); err == context.Canceled || err != nil && !x.cancelOnly {
			pc.abort()
		}
	}
	keep := !resp.Close && !req.Close && resp.ProtoAtLeast(1, 1)
	if resp.Body == http.NoBody || req.Method == http.MethodHead {
		pc.bodiless = true
		c.finish(pc, stop, keep)
		resp.Body = http.NoBody
		return resp, true, nil
	}
	var b *h1Body
	if ans != nil { // parseResponse read the head; the length is known
		b = &ans.body
		b.fixed = fixedBody{br: pc.br, remain: resp.ContentLength}
	} else {
		b = &h1Body{body: resp.Body}
	}
	b.c, b.pc, b.stop, b.keep = c, pc, stop, keep
	// From here each read that waits on the socket keeps a deadline
	// ahead of it (refresh); a body the head's read brought in whole
	// never sets one.
	pc.idle, pc.bodyCap = x.idle, x.bodyDeadline
	resp.Body = b
	return resp, true, nil
}

// finish ends an exchange: the connection goes back to the pool when the
// answer was read whole, allows keep-alive and no cancellation touched its
// deadline; otherwise it is closed.
func (c *h1Client) finish(pc *h1Conn, stop func() bool, keep bool) {
	// Bytes past the answer's end were not asked for: a body after a HEAD,
	// 204 or 304 answer, or longer than its Content-Length. The next
	// request on the connection would take them for its answer (response
	// smuggling); net/http's read loop closes such a connection too.
	if !stop() || !keep || pc.br.Buffered() > 0 {
		pc.conn.Close()
		return
	}
	c.put(pc)
}

// h1Body is an answer's body; reading it to the end returns the connection
// to the pool, closing it early closes the connection (what is left of the
// answer would have to be read first, and it may be large).
type h1Body struct {
	c     *h1Client
	pc    *h1Conn
	body  io.ReadCloser // from http.ReadResponse; nil when fixed reads it
	fixed fixedBody
	stop  func() bool
	keep  bool
	done  bool
}

func (b *h1Body) Read(p []byte) (int, error) {
	if b.done {
		return 0, io.EOF
	}
	var n int
	var err error
	if b.body != nil {
		n, err = b.body.Read(p)
	} else {
		n, err = b.fixed.Read(p)
	}
	if err == io.EOF {
		b.done = true
		b.c.finish(b.pc, b.stop, b.keep)
	} else if err != nil {
		b.done = true
		if b.pc.idleTimedOut(err) {
			err = &ReadIdleError{Idle: b.pc.idle}
		}
		b.stop()
		b.pc.conn.Close()
	}
	return n, err
}

func (b *h1Body) Close() error {
	if !b.done {
		b.done = true
		b.stop()
		b.pc.conn.Close()
	}
	return nil
}

// errMustDial is send's error, asked not to dial, when no idle
// connection to the host is left.
var errMustDial = errors.New("upstream: no idle connection to send on")

// get returns an idle connection to host (reused) or dials a new one,
// within deadline unless it is zero; with fresh, it always dials; with
// noDial (and not fresh), it fails with errMustDial instead.
func (c *h1Client) get(ctx context.Context, host string, deadline time.Time, fresh, noDial bool) (pc *h1Conn, reused bool, err error) {
	now := time.Now()
	for !fresh {
		c.mu.Lock()
		stack := c.idle[host]
		if len(stack) == 0 {
			c.mu.Unlock()
			break
		}
		pc = stack[len(stack)-1]
		stack[len(stack)-1] = nil
		c.idle[host] = stack[:len(stack)-1]
		c.mu.Unlock()
		idleFor := now.Sub(pc.idleAt)
		if idleFor > c.idleTimeout || ((pc.bodiless || idleFor > livenessAfter) && !alive(pc)) {
			pc.conn.Close()
			continue
		}
		pc.bodiless = false
		return pc, true, nil
	}
	if noDial && !fresh {
		return nil, false, errMustDial
	}
	addr := host
	if !strings.Contains(addr, ":") || strings.HasSuffix(addr, "]") {
		addr = net.JoinHostPort(strings.Trim(addr, "[]"), "80")
	}
	dctx := ctx
	if !deadline.IsZero() {
		var cancel context.CancelFunc
		dctx, cancel = context.WithDeadline(ctx, deadline)
		defer cancel()
	}
	conn, err := c.dial(dctx, "tcp", addr)
	if err != nil {
		if ctx.Err() == nil && dctx.Err() != nil {
			return nil, false, errAttemptTimeout
		}
		return nil, false, err
	}
	pc = &h1Conn{host: host, conn: conn, bw: bufio.NewWriterSize(conn, 4<<10), limit: noLimit}
	pc.abort = func() {
		pc.aborted.Store(true) // first: see refresh
		_ = conn.SetDeadline(aLongTimeAgo)
	}
	pc.br = bufio.NewReaderSize(pc, 4<<10)
	pc.leave = pc.leaveGroup
	return pc, false, nil
}

// alive probes an idle connection without blocking: nothing to read and
// no end of stream means the peer has not closed it. A read with a deadline
// in the past cannot tell, since Go then fails it without asking the
// kernel; the probe peeks at the socket itself (peekIdle).
func alive(pc *h1Conn) bool {
	if pc.br.Buffered() > 0 {
		return false // bytes nobody asked for: the connection is out of step
	}
	pc.setDeadline(time.Time{}) // a past one would fail the peek
	return peekIdle(pc.conn)
}

// put returns pc to its host's idle stack, closing the oldest when the
// stack is full.
func (c *h1Client) put(pc *h1Conn) {
	pc.idleAt = time.Now()
	c.mu.Lock()
	if c.idle == nil {
		c.idle = make(map[string][]*h1Conn)
	}
	if c.janitor == nil {
		c.janitor = time.AfterFunc(c.idleTimeout, c.prune)
	}
	stack := c.idle[pc.host]
	var evicted *h1Conn
	if len(stack) >= c.maxIdle {
		evicted = stack[0]
		copy(stack, stack[1:])
		stack = stack[:len(stack)-1]
	}
	c.idle[pc.host] = append(stack, pc)
	c.mu.Unlock()
	if evicted != nil {
		evicted.conn.Close()
	}
}

// prune closes the connections idle for longer than idleTimeout (the
// oldest sit at the bottom of each stack) and runs again while any are
// left, so a pool that a burst filled does not keep them open for ever.
func (c *h1Client) prune() {
	cutoff := time.Now().Add(-c.idleTimeout)
	var stale []*h1Conn
	c.mu.Lock()
	for host, stack := range c.idle {
		n := 0
		for n < len(stack) && stack[n].idleAt.Before(cutoff) {
			n++
		}
		stale = append(stale, stack[:n]...)
		if n == len(stack) {
			delete(c.idle, host)
		} else if n > 0 {
			c.idle[host] = append(stack[:0], stack[n:]...)
		}
	}
	if len(c.idle) > 0 {
		c.janitor.Reset(c.idleTimeout)
	} else {
		c.janitor = nil
	}
	c.mu.Unlock()
	for _, pc := range stale {
		pc.conn.Close()
	}
}

// CloseIdleConnections closes every idle connection, the fallback's too.
func (c *h1Client) CloseIdleConnections() {
	c.mu.Lock()
	idle := c.idle
	c.idle = nil
	if c.janitor != nil {
		c.janitor.Stop()
		c.janitor = nil
	}
	c.mu.Unlock()
	for _, stack := range idle {
		for _, pc := range stack {
			pc.conn.Close()
		}
	}
	if ci, ok := c.fallback.(interface{ CloseIdleConnections() }); ok {
		ci.CloseIdleConnections()
	}
}

// peekIdleByDeadline probes a connection that offers no socket to peek at:
// a read with a deadline just ahead returns at once when the peer closed
// it or sent something, and times out when it is quiet. The deadline is
// in the future because a read past its deadline fails without reading.
// A quiet connection costs the whole wait, paid only by connections idle
// for over livenessAfter; a wait much shorter than a millisecond is often
// over before the read starts on a loaded machine, and then a closed
// connection looks quiet.
func peekIdleByDeadline(conn net.Conn) bool {
	var buf [1]byte
	_ = conn.SetReadDeadline(time.Now().Add(time.Millisecond))
	n, err := conn.Read(buf[:])
	_ = conn.SetReadDeadline(time.Time{})
	var ne net.Error
	return n == 0 && errors.As(err, &ne) && ne.Timeout()
}
