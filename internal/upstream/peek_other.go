//go:build !unix

package upstream

import "net"

func peekIdle(conn net.Conn) bool { return peekIdleByDeadline(conn) }

// arrived cannot look at a socket here: Wait keeps to lateGrace.
func arrived(net.Conn) (yes, known bool) { return false, false }
