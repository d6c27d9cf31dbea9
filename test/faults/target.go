package faults

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Target is an upstream HTTP server that can be killed (listener and every
// connection closed at once, as a crashed process would) and restarted on
// the same address, so the gateway's config never changes.
type Target struct {
	mu      sync.Mutex
	addr    string
	handler http.Handler
	srv     *http.Server
	done    chan struct{}
}

// StartTarget serves h on addr ("127.0.0.1:0" picks a port that restarts
// then reuse).
func StartTarget(addr string, h http.Handler) (*Target, error) {
	t := &Target{addr: addr, handler: h}
	if err := t.Restart(); err != nil {
		return nil, err
	}
	return t, nil
}

// URL is the target's base URL.
func (t *Target) URL() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return "http://" + t.addr
}

// Restart listens again after Kill; it is a no-op when already up.
func (t *Target) Restart() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.srv != nil {
		return nil
	}
	var ln net.Listener
	var err error
	// The port may linger a moment after Kill; retry briefly.
	for i := 0; i < 50; i++ {
		if ln, err = net.Listen("tcp", t.addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		return err
	}
	t.addr = ln.Addr().String()
	srv := &http.Server{Handler: t.handler, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	t.srv, t.done = srv, done
	return nil
}

// Kill closes the listener and every open connection, mid-request or not.
func (t *Target) Kill() {
	t.mu.Lock()
	srv, done := t.srv, t.done
	t.srv = nil
	t.mu.Unlock()
	if srv == nil {
		return
	}
	_ = srv.Close()
	<-done
}

// Redis is a private redis-server process on a loopback port, which tests
// kill and restart without touching anybody else's Redis.
type Redis struct {
	Port int
	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// ErrNoRedisServer means redis-server is not installed.
var ErrNoRedisServer = errors.New("redis-server not found in PATH")

// StartRedis starts redis-server on port (0 picks a free one) without
// persistence, and waits until it answers PING.
func StartRedis(port int) (*Redis, error) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		return nil, ErrNoRedisServer
	}
	if port == 0 {
		var err error
		if port, err = FreePort(); err != nil {
			return nil, err
		}
	}
	r := &Redis{Port: port}
	return r, r.Restart()
}

// Addr is host:port.
func (r *Redis) Addr() string { return "127.0.0.1:" + strconv.Itoa(r.Port) }

// Restart starts the server again after Kill; a no-op when it runs.
func (r *Redis) Restart() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd != nil {
		return nil
	}
	var lastErr error
	for attempt := 0; attempt < 20; attempt++ {
		cmd := exec.Command("redis-server", "--port", strconv.Itoa(r.Port), "--save", "", "--appendonly", "no",
			"--bind", "127.0.0.1", "--protected-mode", "yes")
		if err := cmd.Start(); err != nil {
			return err
		}
		done := make(chan struct{})
		go func() {
			_ = cmd.Wait()
			close(done)
		}()
		if err := waitPing(r.Addr(), done, 5*time.Second); err != nil {
			// Most likely the port was still in TIME_WAIT use or taken:
			// stop this one and try again.
			_ = cmd.Process.Signal(syscall.SIGKILL)
			<-done
			lastErr = err
			time.Sleep(100 * time.Millisecond)
			continue
		}
		r.cmd, r.done = cmd, done
		return nil
	}
	return fmt.Errorf("redis-server on %s: %w", r.Addr(), lastErr)
}

// Kill stops the server with SIGKILL (no shutdown courtesy) and waits.
func (r *Redis) Kill() {
	r.mu.Lock()
	cmd, done := r.cmd, r.done
	r.cmd = nil
	r.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-done
}

// Do sends one inline command and returns the first reply line.
func (r *Redis) Do(cmd string) (string, error) {
	c, err := net.DialTimeout("tcp", r.Addr(), time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte(cmd + "\r\n")); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

func waitPing(addr string, exited <-chan struct{}, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return errors.New("redis-server exited at start")
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond); err == nil {
			_ = c.SetDeadline(time.Now().Add(time.Second))
			_, _ = c.Write([]byte("PING\r\n"))
			line, _ := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if strings.HasPrefix(line, "+PONG") {
				return nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("no PONG from %s within %v", addr, timeout)
}
