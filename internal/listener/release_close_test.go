//go:build linux

package listener

import (
	"errors"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// releaseByHand drives one accepted connection through the steps net/http
// takes when it goes idle (StateIdle, the idle deadline, a read that ends),
// so that the test controls when Accept is called again.
func releaseByHand(t *testing.T, ln *IdleReleaser) net.Conn {
	t.Helper()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	ln.ConnState(c, http.StateIdle)
	if err := c.SetReadDeadline(time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("idle read: %d, %v; want the release's end of stream", n, err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if n := ln.Released(); n != 1 {
		t.Fatalf("released: %d, want 1", n)
	}
	return c
}

// A released connection whose next request arrives while no server is
// accepting waits for the next Accept; closing the listener then must close
// it, as it closes the connections still released, rather than leave the
// client waiting for an answer that never comes.
func TestCloseClosesWokenConnectionsNotYetAccepted(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := ReleaseIdle(inner, 10*time.Millisecond)
	if err != nil {
		inner.Close()
		t.Fatal(err)
	}
	defer ln.Close()
	c := dial(t, inner.Addr().String())
	releaseByHand(t, ln)
	if _, err := io.WriteString(c.conn, "GET /two HTTP/1.1\r\nHost: test\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	// Wait until the poller has handed the woken connection over; nobody
	// accepts it.
	deadline := time.Now().Add(5 * time.Second)
	for len(ln.woken) != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("woken connections waiting: %d, want 1", len(ln.woken))
		}
		time.Sleep(time.Millisecond)
	}
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	// Closed with the request unread: end of stream or a reset, not a
	// timeout.
	c.conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	var ne net.Error
	if _, err := c.br.ReadByte(); err == nil || errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("woken connection left open after Close: %v", err)
	}
}
