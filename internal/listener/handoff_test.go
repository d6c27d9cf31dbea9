package listener

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Servers replaced on one socket while clients keep connecting: every
// connection is answered, each by the server current when it was accepted
// or a later one, and a replaced server's Accept ends with net.ErrClosed.
func TestHandoffLosesNoConnection(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := NewHandoff(ln)
	var generation atomic.Int64
	var serveErrs sync.WaitGroup
	serverFor := func(gen int64) *http.Server {
		return &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprint(w, gen)
		}), ReadHeaderTimeout: 5 * time.Second}
	}
	start := func(gen int64) *http.Server {
		s := serverFor(gen)
		v := h.Next()
		serveErrs.Add(1)
		go func() {
			defer serveErrs.Done()
			if err := s.Serve(v); !errors.Is(err, net.ErrClosed) && !errors.Is(err, http.ErrServerClosed) {
				t.Errorf("server %d: Serve ended with %v", gen, err)
			}
		}()
		return s
	}
	servers := []*http.Server{start(0)}

	const clients, perClient = 8, 40
	var wg sync.WaitGroup
	var answered atomic.Int64
	stop := make(chan struct{})
	for range clients {
		wg.Go(func() {
			for range perClient {
				before := generation.Load()
				c, err := net.Dial("tcp", ln.Addr().String())
				if err != nil {
					t.Error(err)
					return
				}
				c.SetDeadline(time.Now().Add(5 * time.Second))
				fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
				resp, err := http.ReadResponse(bufio.NewReader(c), nil)
				if err != nil {
					t.Errorf("a connection was not answered: %v", err)
					c.Close()
					return
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				c.Close()
				var gen int64
				fmt.Sscan(string(b), &gen)
				if gen < before {
					t.Errorf("answered by server %d, replaced before the connection was made (current %d)", gen, before)
				}
				answered.Add(1)
			}
		})
	}
	swaps := make(chan struct{})
	go func() {
		defer close(swaps)
		for gen := int64(1); ; gen++ {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			prev := servers[len(servers)-1]
			servers = append(servers, start(gen))
			generation.Store(gen)
			prev.SetKeepAlivesEnabled(false)
		}
	}()
	wg.Wait()
	close(stop)
	<-swaps
	if got := answered.Load(); got != clients*perClient {
		t.Fatalf("%d of %d connections answered", got, clients*perClient)
	}
	if len(servers) < 3 {
		t.Fatalf("only %d servers took turns", len(servers))
	}

	// Closing the handoff closes the socket and ends every Serve.
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, s := range servers {
		_ = s.Shutdown(ctx)
	}
	serveErrs.Wait()
	if c, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		c.Close()
		t.Error("the socket still accepts after Close")
	}
}

// A view closed by its own server with no successor leaves no client
// hanging: the connection is closed.
func TestHandoffWithoutServerClosesConnections(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := NewHandoff(ln)
	defer h.Close()
	v := h.Next()
	v.Close()
	if _, err := v.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept on a closed view: %v", err)
	}
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var b [1]byte
	var ne net.Error
	if _, err := c.Read(b[:]); err == nil || errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("read on a connection nobody serves: %v, want it closed", err)
	}
}

// The handoff's cost per new connection: dial, accept and close, on the
// socket itself and through a view.
func BenchmarkAccept(b *testing.B) {
	run := func(b *testing.B, through func(net.Listener) net.Listener) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		defer ln.Close()
		acc := through(ln)
		done := make(chan struct{})
		go func() {
			defer close(done)
			for {
				c, err := acc.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
		for b.Loop() {
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			var one [1]byte
			_, _ = c.Read(one[:]) // until the server side has closed it
			c.Close()
		}
		ln.Close()
		<-done
	}
	b.Run("socket", func(b *testing.B) { run(b, func(ln net.Listener) net.Listener { return ln }) })
	b.Run("handoff", func(b *testing.B) { run(b, func(ln net.Listener) net.Listener { return NewHandoff(ln).Next() }) })
}

// failOnce returns a temporary error from its first Accept, as a process
// out of file descriptors gets.
type failOnce struct {
	net.Listener
	failed atomic.Bool
}

type tempErr struct{}

func (tempErr) Error() string   { return "accept: too many open files" }
func (tempErr) Timeout() bool   { return false }
func (tempErr) Temporary() bool { return true }

func (l *failOnce) Accept() (net.Conn, error) {
	if !l.failed.Swap(true) {
		return nil, tempErr{}
	}
	return l.Listener.Accept()
}

// A temporary accept error reaches the server, which backs off and goes on
// serving: the handoff does not stop accepting because of it.
func TestHandoffPassesTemporaryErrorsOn(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := NewHandoff(&failOnce{Listener: ln})
	defer h.Close()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "ok")
	}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(h.Next()) }()
	defer srv.Close()
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get("http://" + ln.Addr().String())
	if err != nil {
		t.Fatalf("after a temporary accept error: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "ok" {
		t.Fatalf("body %q", b)
	}
}

// brokenListener fails every Accept with an error that is not temporary.
type brokenListener struct {
	net.Listener
	calls atomic.Int64
}

func (l *brokenListener) Accept() (net.Conn, error) {
	l.calls.Add(1)
	return nil, errors.New("accept: broken")
}

// A permanent accept error ends the server's Serve with it, and the
// handoff stops accepting rather than spinning on the broken socket.
func TestHandoffStopsAfterAPermanentError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	broken := &brokenListener{Listener: ln}
	h := NewHandoff(broken)
	defer h.Close()
	srv := &http.Server{ReadHeaderTimeout: time.Second}
	if err := srv.Serve(h.Next()); err == nil || err.Error() != "accept: broken" {
		t.Fatalf("Serve ended with %v, want the accept error", err)
	}
	time.Sleep(100 * time.Millisecond)
	if n := broken.calls.Load(); n > 3 {
		t.Fatalf("%d Accept calls after the server stopped: the handoff spins", n)
	}
}
