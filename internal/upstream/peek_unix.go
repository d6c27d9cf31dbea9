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
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return peekIdleByDeadline(conn)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	var (
		buf  [1]byte
		perr error
	)
	err = rc.Read(func(fd uintptr) bool {
		_, _, perr = syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return true // one look, never a wait
	})
	// Only "nothing to read yet" is quiet; a byte, the end of the stream
	// (no error) or any other error is not.
	return err == nil && (perr == syscall.EAGAIN || perr == syscall.EWOULDBLOCK)
}
