package redisstore

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/portico-gw/portico/internal/config"
)

// requireRedis is PORTICO_REQUIRE_REDIS=1: a missing Redis fails the test.
func requireRedis() bool { return os.Getenv("PORTICO_REQUIRE_REDIS") == "1" }

// skipOrFail skips the test, or fails it when Redis is required.
func skipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	if requireRedis() {
		t.Fatalf(format+" (PORTICO_REQUIRE_REDIS=1)", args...)
	}
	t.Skipf(format, args...)
}

// longTests is PORTICO_LONG=1: the full matrices.
func longTests() bool { return os.Getenv("PORTICO_LONG") == "1" }

// sharedRedisAddr is REDIS_ADDR (default 127.0.0.1:6379), skipping or
// failing when nothing answers there.
func sharedRedisAddr(t testing.TB) string {
	t.Helper()
	addr := os.Getenv("REDIS_ADDR")
	if addr == "" {
		addr = "127.0.0.1:6379"
	}
	if err := ping(addr, time.Second); err != nil {
		skipOrFail(t, "redis at %s unreachable: %v", addr, err)
	}
	return addr
}

// ping sends a RESP PING and waits for +PONG.
func ping(addr string, timeout time.Duration) error {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte("*1\r\n$4\r\nPING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "+PONG") {
		return fmt.Errorf("ping: %q", strings.TrimSpace(line))
	}
	return nil
}

// newTestStore opens a Store on addr (one server) and closes it at cleanup.
func newTestStore(t testing.TB, addr string) *Store {
	t.Helper()
	// A generous timeout: this machine is shared and -race is slow. The
	// timeout tests set their own.
	s, err := New(config.Store{Type: "redis", URL: "redis://" + addr, Timeout: config.Duration(2 * time.Second)}, Deps{})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

// rawClient is a plain rueidis client for inspecting Redis in tests.
func rawClient(t testing.TB, addrs ...string) rueidis.Client {
	t.Helper()
	c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: addrs, DisableCache: true,
		ForceSingleClient: len(addrs) == 1})
	if err != nil {
		t.Fatalf("rueidis client: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// uniqueSubject keeps concurrent test runs (and other packages' tests on the
// same Redis) apart.
func uniqueSubject(t testing.TB, name string) string {
	return fmt.Sprintf("test:%s:%s:%d:%d", t.Name(), name, os.Getpid(), rand.Uint64())
}

// redisServerPath finds redis-server, skipping (or failing) without it.
func redisServerPath(t testing.TB) string {
	t.Helper()
	p, err := exec.LookPath("redis-server")
	if err != nil {
		skipOrFail(t, "redis-server not installed: %v", err)
	}
	return p
}

// freePort returns a loopback port that is free, and whose cluster bus port
// (port+10000) is free too.
func freePort(t testing.TB) int {
	t.Helper()
	for range 50 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("listen: %v", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
		if port+10000 > 65535 {
			continue
		}
		bus, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port+10000))
		if err != nil {
			continue
		}
		_ = bus.Close()
		return port
	}
	t.Fatal("no free port pair")
	return 0
}

// redisProc is a redis-server this test started.
type redisProc struct {
	addr string
	port int
	cmd  *exec.Cmd
	done chan struct{}
	once sync.Once
}

// kill stops the server (SIGKILL: a crash, not a shutdown) and waits.
func (p *redisProc) kill() {
	p.once.Do(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
	})
}

// startRedis starts a private redis-server on a free loopback port, with
// extra arguments, and kills it at cleanup. Tests that flush scripts, kill
// the server or scan all keys use one, so the shared Redis is left alone.
func startRedis(t testing.TB, dir string, extra func(port int) []string) *redisProc {
	t.Helper()
	bin := redisServerPath(t)
	for attempt := 0; ; attempt++ {
		port := freePort(t)
		args := append([]string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1",
			"--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", dir,
			"--logfile", filepath.Join(dir, fmt.Sprintf("redis-%d.log", port))}, extraArgs(extra, port)...)
		cmd := exec.Command(bin, args...)
		cmd.Dir = dir
		if err := cmd.Start(); err != nil {
			t.Fatalf("start redis-server: %v", err)
		}
		p := &redisProc{addr: "127.0.0.1:" + strconv.Itoa(port), port: port, cmd: cmd, done: make(chan struct{})}
		go func() { _ = cmd.Wait(); close(p.done) }()
		t.Cleanup(p.kill)
		if err := waitReady(p, 10*time.Second); err == nil {
			return p
		} else if attempt >= 3 {
			t.Fatalf("redis-server on %s: %v", p.addr, err)
		}
		p.kill() // lost a port race; try another port
	}
}

func extraArgs(f func(int) []string, port int) []string {
	if f == nil {
		return nil
	}
	return f(port)
}

// waitReady polls the new process until it answers PING. Polling a starting
// process is the one wait here no injected clock can replace.
func waitReady(p *redisProc, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		select {
		case <-p.done:
			return fmt.Errorf("exited")
		default:
		}
		err := ping(p.addr, 200*time.Millisecond)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// testCluster is a Redis Cluster of masters started by the test.
type testCluster struct {
	nodes []*redisProc
}

func (c *testCluster) addrs() []string {
	a := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		a[i] = n.addr
	}
	return a
}

// startCluster starts n cluster-enabled redis-servers in a temp dir, joins
// them with redis-cli --cluster create (no replicas) and waits until every
// node reports cluster_state:ok. The processes are killed at cleanup.
func startCluster(t testing.TB, n int) *testCluster {
	t.Helper()
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		skipOrFail(t, "redis-cli not installed: %v", err)
	}
	dir := t.TempDir()
	c := &testCluster{}
	for range n {
		p := startRedis(t, dir, func(port int) []string {
			return []string{"--cluster-enabled", "yes",
				"--cluster-config-file", filepath.Join(dir, "nodes-"+strconv.Itoa(port)+".conf")}
		})
		c.nodes = append(c.nodes, p)
	}
	args := append([]string{"--cluster", "create"}, c.addrs()...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	out, err := exec.Command(cli, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	deadline := time.Now().Add(20 * time.Second)
	for _, node := range c.nodes {
		for {
			out, err := exec.Command(cli, "-h", "127.0.0.1", "-p", strconv.Itoa(node.port), "cluster", "info").Output()
			if err == nil && strings.Contains(string(out), "cluster_state:ok") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("cluster node %s not ok: %v\n%s", node.addr, err, out)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return c
}

// nodeID returns a cluster node's id.
func nodeID(ctx context.Context, t testing.TB, c rueidis.Client) string {
	t.Helper()
	id, err := c.Do(ctx, c.B().ClusterMyid().Build()).ToString()
	if err != nil {
		t.Fatalf("CLUSTER MYID: %v", err)
	}
	return id
}

// slotOwner returns the index (in c.nodes) of the node serving slot.
func (c *testCluster) slotOwner(ctx context.Context, t testing.TB, clients []rueidis.Client, slot int64) int {
	t.Helper()
	res, err := clients[0].Do(ctx, clients[0].B().ClusterSlots().Build()).ToArray()
	if err != nil {
		t.Fatalf("CLUSTER SLOTS: %v", err)
	}
	for _, r := range res {
		rng, err := r.ToArray()
		if err != nil || len(rng) < 3 {
			continue
		}
		lo, _ := rng[0].AsInt64()
		hi, _ := rng[1].AsInt64()
		if slot < lo || slot > hi {
			continue
		}
		node, _ := rng[2].ToArray()
		port, _ := node[1].AsInt64()
		for i, n := range c.nodes {
			if int64(n.port) == port {
				return i
			}
		}
	}
	t.Fatalf("slot %d has no owner", slot)
	return -1
}

// migrateSlot moves slot from node src to node dst the way redis-cli
// --cluster reshard does: IMPORTING on dst, MIGRATING on src, MIGRATE the
// keys in batches, then SETSLOT NODE on every node.
func (c *testCluster) migrateSlot(ctx context.Context, t testing.TB, clients []rueidis.Client, slot int64, src, dst int) {
	t.Helper()
	srcID := nodeID(ctx, t, clients[src])
	dstID := nodeID(ctx, t, clients[dst])
	must := func(cl rueidis.Client, cmd rueidis.Completed) {
		if err := cl.Do(ctx, cmd).Error(); err != nil {
			t.Fatalf("slot migration: %v", err)
		}
	}
	must(clients[dst], clients[dst].B().ClusterSetslot().Slot(slot).Importing().NodeId(srcID).Build())
	must(clients[src], clients[src].B().ClusterSetslot().Slot(slot).Migrating().NodeId(dstID).Build())
	for {
		// One key per MIGRATE: while a subject's keys sit on both sides,
		// its script gets TRYAGAIN, the hardest case for the client.
		keys, err := clients[src].Do(ctx, clients[src].B().ClusterGetkeysinslot().Slot(slot).Count(1).Build()).AsStrSlice()
		if err != nil {
			t.Fatalf("GETKEYSINSLOT: %v", err)
		}
		if len(keys) == 0 {
			break
		}
		dn := c.nodes[dst]
		cmd := clients[src].B().Migrate().Host("127.0.0.1").Port(int64(dn.port)).Key("").DestinationDb(0).
			Timeout(5000).Replace().Keys(keys...).Build()
		if err := clients[src].Do(ctx, cmd).Error(); err != nil && !rueidis.IsRedisNil(err) {
			t.Fatalf("MIGRATE: %v", err)
		}
	}
	for _, cl := range clients {
		must(cl, cl.B().ClusterSetslot().Slot(slot).Node().NodeId(dstID).Build())
	}
}
