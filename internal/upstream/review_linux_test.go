package upstream

import (
	"context"
	"net"
	"net/http"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/portico-gw/portico/internal/config"
)

// blackhole returns the address of a listener whose accept queue is full:
// the kernel drops further SYNs, so a dial to it hangs, as one to a host
// that went away does.
func blackhole(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(sa.(*syscall.SockaddrInet4).Port))
	for range 2 { // fill the queue
		d := net.Dialer{Timeout: 200 * time.Millisecond}
		if c, err := d.Dial("tcp", addr); err == nil {
			t.Cleanup(func() { c.Close() })
		}
	}
	d := net.Dialer{Timeout: 200 * time.Millisecond}
	if c, err := d.Dial("tcp", addr); err == nil {
		c.Close()
		t.Skip("the kernel accepted past the listen backlog")
	}
	return addr
}

// Send writes a fan-out's requests one after the other on the caller's
// goroutine. A call that must dial a target that does not answer the
// connection (a host gone away) must not hold up the calls sent after
// it until its deadline: the dial goes on on its own.
func TestSendDoesNotWaitForASlowDial(t *testing.T) {
	hole := blackhole(t)
	fast := newCounting(t)
	env := newEnv(t, nil)
	pools, err := env.reg.Apply(map[string]*config.Upstream{
		"hole": {Targets: targets("http://" + hole), Retries: ptr(0), ConnectTimeout: config.Duration(2 * time.Second)},
		"u":    {Targets: targets(fast.URL), Retries: ptr(0)},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	slow := mustSend(t, pools["hole"], newSendReq(t, ctx, http.MethodGet, "/"))
	sent := time.Since(start)
	c := mustSend(t, pools["u"], newSendReq(t, ctx, http.MethodGet, "/"))
	res, _, err := waitBody(c)
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("the second call: res %v err %v", res, err)
	}
	if res, err := slow.Wait(); res != nil || err == nil {
		t.Fatalf("the call to the black hole: res %v err %v; want its deadline's error", res, err)
	}
	if sent > 200*time.Millisecond {
		t.Fatalf("Send to the black hole took %v: the calls behind it waited for its dial", sent)
	}
	assertNoInflight(t, env.reg)
}
