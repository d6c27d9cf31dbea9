package upstream

import (
	"net"
	"syscall"
	"time"
	"unsafe"
)

// lastReceived returns when conn's socket last received data, as the
// kernel's TCP_INFO tells it (in milliseconds, counted in its clock ticks,
// so within arrivalSlack); known is false when conn is no TCP socket or the
// kernel did not say. It costs one system call and is only asked of an
// answer that a caller reads after its deadline passed.
func lastReceived(conn net.Conn, now time.Time) (at time.Time, known bool) {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return time.Time{}, false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return time.Time{}, false
	}
	var (
		info  syscall.TCPInfo
		errno syscall.Errno
	)
	size := uint32(unsafe.Sizeof(info))
	err = rc.Control(func(fd uintptr) {
		_, _, errno = syscall.Syscall6(syscall.SYS_GETSOCKOPT, fd, syscall.IPPROTO_TCP, syscall.TCP_INFO,
			uintptr(unsafe.Pointer(&info)), uintptr(unsafe.Pointer(&size)), 0)
	})
	if err != nil || errno != 0 || size < uint32(unsafe.Offsetof(info.Last_data_recv)+4) {
		return time.Time{}, false
	}
	return now.Add(-time.Duration(info.Last_data_recv) * time.Millisecond), true
}
