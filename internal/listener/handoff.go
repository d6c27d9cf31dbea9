package listener

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
)

// Handoff lets a succession of servers share one listening socket: each
// serves a view (Next), and only the newest view is handed connections.
// It lets a reload replace an http.Server (net/http holds its timeouts
// for life) without a moment in which the port refuses connections, and
// without the old server taking a connection after it was replaced:
// net/http drops a request that a server reads once its Shutdown has
// begun, so a replaced server must get no new connection at all.
//
// One goroutine accepts from the socket and hands each connection to the
// current view, a channel hop per new connection (not per request).
type Handoff struct {
	ln      net.Listener
	current atomic.Pointer[view]
	done    chan struct{} // closed when the accept loop ends
	err     error         // why it ended; read after done
}

// NewHandoff wraps ln; accepting starts with the first view. Close closes
// ln.
func NewHandoff(ln net.Listener) *Handoff {
	return &Handoff{ln: ln, done: make(chan struct{})}
}

// Next returns a view for a new server and retires the previous view: its
// Accept returns net.ErrClosed from now on, and connections go to the new
// one.
func (h *Handoff) Next() net.Listener {
	v := &view{h: h, conns: make(chan accepted), retired: make(chan struct{})}
	if prev := h.current.Swap(v); prev != nil {
		prev.retire()
	} else {
		go h.acceptLoop()
	}
	return v
}

// Close closes the socket; every view's Accept then fails.
func (h *Handoff) Close() error { return h.ln.Close() }

func (h *Handoff) acceptLoop() {
	for {
		c, err := h.ln.Accept()
		if errors.Is(err, net.ErrClosed) {
			h.err = err
			close(h.done)
			return
		}
		// Other errors go to the current server like connections: net/http
		// backs off from temporary ones (EMFILE) and stops on the rest, and
		// this loop waits for it meanwhile.
		if !h.deliver(accepted{c, err}) {
			// The last server stopped serving (after an error it does not
			// retry); accepting on would only spin.
			h.err = net.ErrClosed
			close(h.done)
			return
		}
	}
}

// deliver hands a to the current view, following a retirement that
// happens while it waits. It reports false, and closes a's connection,
// when no server is left to take it.
func (h *Handoff) deliver(a accepted) bool {
	for {
		v := h.current.Load()
		select {
		case v.conns <- a:
			return true
		case <-v.retired:
			if h.current.Load() == v {
				// Closed by its server with no successor.
				a.close()
				return false
			}
		case <-h.done:
			a.close()
			return false
		}
	}
}

type view struct {
	h       *Handoff
	conns   chan accepted
	retired chan struct{}
	once    sync.Once
}

func (v *view) Accept() (net.Conn, error) {
	select {
	case a := <-v.conns:
		select {
		case <-v.retired:
			// Retired while this receive was in flight: the successor
			// takes it.
			go v.h.deliver(a)
			return nil, net.ErrClosed
		default:
			return a.conn, a.err
		}
	case <-v.retired:
		return nil, net.ErrClosed
	case <-v.h.done:
		return nil, v.h.err
	}
}

// Close retires the view; the socket stays open (Handoff.Close closes it).
func (v *view) Close() error {
	v.retire()
	return nil
}

func (v *view) retire() { v.once.Do(func() { close(v.retired) }) }

func (v *view) Addr() net.Addr { return v.h.ln.Addr() }
