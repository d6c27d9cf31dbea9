//go:build !linux

package listener

import "errors"

// poller is Linux-only (epoll); elsewhere ReleaseIdle reports that it
// cannot release connections and the caller serves the listener as it is.
type poller struct{}

func newPoller() (*poller, error) {
	return nil, errors.New("listener: releasing idle connections needs Linux")
}

func (*poller) add(*releasableConn) error { return errors.New("listener: no poller") }
func (*poller) len() int                  { return 0 }
func (*poller) run(*IdleReleaser)         {}
func (*poller) shut()                     {}
