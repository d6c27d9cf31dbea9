//go:build unix

package upstream

import (
	"net"
	"syscall"
)

// peekIdle reports whether an idle connection is still open and quiet: a
// non-blocking peek at its socket finds nothing to read (EAGAIN). End of
// stream, stray bytes or an error mean it is not to be used.
func peekIdle(conn net.Conn) bool {
	if _, ok := conn.(syscall.Conn); !ok {
		return peekIdleByDeadline(conn)
	}
	quiet, known := peekQuiet(conn)
	return known && quiet
}

// arrived reports whether something (a byte, the end of the stream, an
// error) waits to be read on conn, without waiting; known is false when
// conn offers no socket to look at. The connection's deadline must not
// have passed: a look past it fails without looking.
func arrived(conn net.Conn) (yes, known bool) {
	quiet, known := peekQuiet(conn)
	return known && !quiet, known
}

// peekQuiet peeks at conn's socket once: quiet when nothing is there yet
// (EAGAIN). known is false when there is no socket or the look failed.
func peekQuiet(conn net.Conn) (quiet, known bool) {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return false, false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false, false
	}
	var (
		buf  [1]byte
		perr error
	)
	err = rc.Read(func(fd uintptr) bool {
		_, _, perr = syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return true // one look, never a wait
	})
	if err != nil {
		return false, false
	}
	return perr == syscall.EAGAIN || perr == syscall.EWOULDBLOCK, true
}
