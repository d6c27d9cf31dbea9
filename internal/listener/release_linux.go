package listener

import (
	"errors"
	"sync"
	"syscall"
	"time"
)

// poller watches released connections with an epoll instance of its own
// (the runtime's poller only wakes goroutines, and a released connection
// has none). Each socket is registered one-shot: the first readiness (the
// next request, or the client's close) takes it out and gives it back to
// the listener.
type poller struct {
	epfd    int
	wake    [2]int        // a pipe whose read end in epfd wakes run to stop
	stopped chan struct{} // closed when run has returned

	mu     sync.Mutex
	conns  map[int]*releasableConn // by socket
	closed bool
}

// sweepEvery bounds how late a released connection is closed after its
// idle timeout.
const sweepEvery = time.Second

func newPoller() (*poller, error) {
	fd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	p := &poller{epfd: fd, stopped: make(chan struct{}), conns: make(map[int]*releasableConn)}
	if err := syscall.Pipe2(p.wake[:], syscall.O_CLOEXEC|syscall.O_NONBLOCK); err != nil {
		syscall.Close(fd)
		return nil, err
	}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: int32(p.wake[0])}
	if err := syscall.EpollCtl(fd, syscall.EPOLL_CTL_ADD, p.wake[0], &ev); err != nil {
		p.closeFDs()
		return nil, err
	}
	return p, nil
}

func (p *poller) closeFDs() {
	syscall.Close(p.epfd)
	syscall.Close(p.wake[0])
	syscall.Close(p.wake[1])
}

// add hands c's socket to the poller; an error leaves it with the caller.
func (p *poller) add(c *releasableConn) error {
	// No runtime timer is to outlive the goroutine that set it.
	if err := c.Conn.SetReadDeadline(time.Time{}); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return errors.New("listener closed")
	}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT, Fd: int32(c.fd)}
	if err := syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_ADD, c.fd, &ev); err != nil {
		return err
	}
	p.conns[c.fd] = c
	return nil
}

func (p *poller) len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// remove takes fd's connection out of the poller; nil when it is not
// there (an event that raced with a sweep).
func (p *poller) remove(fd int) *releasableConn {
	c := p.conns[fd]
	if c == nil {
		return nil
	}
	delete(p.conns, fd)
	// Deregister before anyone can close the socket and its number is
	// reused by a new connection.
	_ = syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_DEL, fd, nil)
	return c
}

// run waits for released connections to become readable and passes them
// to Accept; about once a second it closes those whose idle timeout has
// passed. It returns once the listener is closed.
func (p *poller) run(l *IdleReleaser) {
	defer close(p.stopped)
	defer p.closeFDs()
	events := make([]syscall.EpollEvent, 128)
	var ready []*releasableConn
	lastSweep := time.Now()
	for {
		n, err := syscall.EpollWait(p.epfd, events, int(sweepEvery/time.Millisecond))
		if err != nil && !errors.Is(err, syscall.EINTR) {
			n = 0
			time.Sleep(10 * time.Millisecond) // not a busy loop on a broken poller
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return
		}
		ready = ready[:0]
		for _, ev := range events[:max(n, 0)] {
			if int(ev.Fd) == p.wake[0] {
				continue // shut; p.closed is already true
			}
			if c := p.remove(int(ev.Fd)); c != nil {
				ready = append(ready, c)
			}
		}
		if now := time.Now(); now.Sub(lastSweep) >= sweepEvery {
			lastSweep = now
			for fd, c := range p.conns {
				if c.expired(now) {
					p.remove(fd)
					c.Conn.Close()
				}
			}
		}
		p.mu.Unlock()
		for _, c := range ready {
			c.woke()
			select {
			case l.woken <- c:
			case <-l.done:
				c.Conn.Close()
			}
		}
	}
}

// shut closes every released connection and stops run, and returns once
// it has stopped.
func (p *poller) shut() {
	p.mu.Lock()
	p.closed = true
	for fd, c := range p.conns {
		p.remove(fd)
		c.Conn.Close()
	}
	syscall.Write(p.wake[1], []byte{0})
	p.mu.Unlock()
	<-p.stopped
}
