//go:build !unix

package upstream

import "net"

func peekIdle(conn net.Conn) bool { return peekIdleByDeadline(conn) }
