// Package cluster runs several real portico processes against one Redis
// and checks that rate limits hold for the fleet, over HTTP, as a client
// of a load-balanced cluster would see them.
package cluster

import (
	"bufio"

	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var porticoBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "portico-cluster-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	porticoBin = filepath.Join(dir, "portico")
	root, err := moduleRoot()
	if err == nil {
		cmd := exec.Command("go", "build", "-o", porticoBin, "./cmd/portico")
		cmd.Dir = root
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		err = cmd.Run()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "build portico:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", err
	}
	return filepath.Dir(strings.TrimSpace(string(out))), nil
}

func redisAddr(t *testing.T) string {
	addr := os.Getenv("REDIS_ADDR")
	if addr == "" {
		addr = "127.0.0.1:6379"
	}
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		if os.Getenv("PORTICO_REQUIRE_REDIS") == "1" {
			t.Fatalf("Redis at %s is required (PORTICO_REQUIRE_REDIS=1): %v", addr, err)
		}
		t.Skipf("no Redis at %s: %v", addr, err)
	}
	c.Close()
	return addr
}

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// node is one portico process.
type node struct {
	base  string
	admin string
	cmd   *exec.Cmd
}

func startNode(t *testing.T, config string) *node {
	t.Helper()
	// freeAddr's port can be taken by another process before portico binds
	// it (the tests of other packages run at the same time); the node then
	// exits at once, and is started again on other ports.
	for attempt := 1; ; attempt++ {
		n, logs := launchNode(t, config)
		if n != nil {
			return n
		}
		if attempt == 3 || !strings.Contains(logs, "address already in use") {
			t.Fatalf("portico did not become ready:\n%s", logs)
		}
	}
}

// launchNode starts one portico process and waits until it is ready; it
// returns nil and the process's log when it is not.
func launchNode(t *testing.T, config string) (*node, string) {
	t.Helper()
	pub, adm := freeAddr(t), freeAddr(t)
	config = strings.ReplaceAll(config, "$PUBLIC", pub)
	config = strings.ReplaceAll(config, "$ADMIN", adm)
	path := filepath.Join(t.TempDir(), "portico.yaml")
	if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(porticoBin, "run", "-c", path)
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var logs strings.Builder
	var mu sync.Mutex
	logged := make(chan struct{})
	go func() {
		defer close(logged)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			mu.Lock()
			logs.WriteString(sc.Text() + "\n")
			mu.Unlock()
		}
	}()
	exited := make(chan struct{})
	go func() {
		<-logged // Wait closes the pipe; read it to the end first
		_ = cmd.Wait()
		close(exited)
	}()
	stop := func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	}
	n := &node{base: "http://" + pub, admin: "http://" + adm, cmd: cmd}
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			mu.Lock()
			defer mu.Unlock()
			return nil, logs.String()
		default:
		}
		if resp, err := http.Get(n.admin + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				t.Cleanup(stop)
				return n, ""
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	stop()
	mu.Lock()
	defer mu.Unlock()
	return nil, logs.String()
}

func upstream(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok"))
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// hammer sends total requests spread round-robin over nodes with conc
// workers, each carrying X-Subject: subject; it returns the admitted,
// limited (429) and unavailable (503) counts and fails on anything else.
func hammer(t *testing.T, nodes []*node, path, subject string, total, conc int) (admitted, limited, unavailable int64) {
	t.Helper()
	var next, ok, lim, unav, other atomic.Int64
	tr := &http.Transport{MaxIdleConnsPerHost: conc, DisableCompression: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	var wg sync.WaitGroup
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(total) {
					return
				}
				req, _ := http.NewRequest(http.MethodGet, nodes[i%int64(len(nodes))].base+path, nil)
				req.Header.Set("X-Subject", subject)
				resp, err := client.Do(req)
				if err != nil {
					other.Add(1)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				switch resp.StatusCode {
				case 200:
					ok.Add(1)
				case 429:
					lim.Add(1)
				case 503:
					// fail_closed: the store did not answer in time.
					unav.Add(1)
				default:
					other.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if other.Load() > 0 {
		t.Errorf("%d requests neither admitted nor limited", other.Load())
	}
	return ok.Load(), lim.Load(), unav.Load()
}

func randomSubject() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// waitForWindowStart waits until the wall clock is early in a window of
// length w, so that a short test stays inside one fixed window. Redis and
// this process share the machine's clock.
func waitForWindowStart(w time.Duration, budget time.Duration) {
	for {
		into := time.Duration(time.Now().UnixNano()) % w
		if into+budget < w {
			return
		}
		time.Sleep(w - into + 10*time.Millisecond)
	}
}

// TestFleetRateLimit: three portico processes share one Redis; a client
// offers 2x each policy's limit through all three, and the fleet admits no
// more than the limit (exactly the limit for the windowed algorithms; at
// most burst plus what the rate refilled for the buckets).
func TestFleetRateLimit(t *testing.T) {
	addr := redisAddr(t)
	up := upstream(t)
	const limit = 60
	config := fmt.Sprintf(`version: 1
server: {listen: "$PUBLIC"}
admin: {listen: "$ADMIN"}
logging: {level: warn, access_log: false}
upstreams:
  up: {targets: [{url: "http://%s"}]}
rate_limits:
  store: {type: redis, url: "redis://%s/0", timeout: 1s}
  mode: %%s
  expected_nodes: 3
  # A store error must show as a 503, never as the local fallback's extra
  # admissions, so that the count below measures the shared store alone.
  on_store_error: fail_closed
  policies:
    fixed: {algorithm: fixed_window, limit: %[3]d, window: 1h, key: "header:X-Subject"}
    log: {algorithm: sliding_window_log, limit: %[3]d, window: 1h, key: "header:X-Subject"}
    counter: {algorithm: sliding_window_counter, limit: %[3]d, window: 1h, key: "header:X-Subject"}
    bucket: {algorithm: token_bucket, rate: 1, per: 1h, burst: %[3]d, key: "header:X-Subject"}
    leaky: {algorithm: leaky_bucket, rate: 1, per: 1h, burst: %[3]d, key: "header:X-Subject"}
routes:
`, up, addr, limit)
	algos := []string{"fixed", "log", "counter", "bucket", "leaky"}
	for _, a := range algos {
		config += fmt.Sprintf("  - {name: %s, match: {path: /%s}, upstream: up, public: true, rate_limit: [%s]}\n", a, a, a)
	}
	for _, mode := range []string{"exact", "lease"} {
		t.Run(mode, func(t *testing.T) {
			cfg := fmt.Sprintf(config, mode)
			nodes := startFleet(t, cfg)
			waitForWindowStart(time.Hour, 30*time.Second)
			for _, a := range algos {
				subject := randomSubject()
				admitted, limited, unavailable := hammer(t, nodes, "/"+a, subject, 2*limit, 12)
				// Buckets may refill by at most one token (rate 1/h) while the test runs.
				max := int64(limit)
				if a == "bucket" || a == "leaky" {
					max++
				}
				if admitted > max {
					t.Errorf("%s/%s: admitted %d of %d offered: over the limit of %d across 3 nodes", mode, a, admitted, 2*limit, limit)
				}
				if unavailable == 0 && admitted < limit {
					t.Errorf("%s/%s: admitted %d of %d offered, want the whole limit %d", mode, a, admitted, 2*limit, limit)
				}
				if unavailable > 0 {
					t.Logf("%s/%s: %d requests found the store unavailable (503); %d admitted", mode, a, unavailable, admitted)
				}
				if admitted+limited+unavailable != 2*limit {
					t.Errorf("%s/%s: %d admitted + %d limited + %d unavailable != %d offered", mode, a, admitted, limited, unavailable, 2*limit)
				}
			}
		})
	}
}

// TestFleetLeaseAccuracy: with a limit large enough for leases to matter,
// lease mode admits at least 99% of the limit across 3 nodes and never more.
func TestFleetLeaseAccuracy(t *testing.T) {
	addr := redisAddr(t)
	up := upstream(t)
	limit := 2000
	if os.Getenv("PORTICO_LONG") == "1" {
		limit = 10000
	}
	cfg := fixedWindowFleet(up, addr, "timeout: 1s", "mode: lease\n  on_store_error: fail_closed", "warn", limit)
	nodes := startFleet(t, cfg)
	waitForWindowStart(time.Hour, 60*time.Second)
	admitted, _, unavailable := hammer(t, nodes, "/fixed", randomSubject(), 2*limit, 24)
	if admitted > int64(limit) || unavailable == 0 && float64(admitted) < 0.99*float64(limit) {
		t.Fatalf("lease mode admitted %d of %d offered, want between 99%% of %d and %d", admitted, 2*limit, limit, limit)
	}
	t.Logf("lease mode: %d admitted of limit %d over 3 nodes", admitted, limit)
}

// TestFleetLocalFallback: with the store unreachable, each of 3 nodes
// enforces its share ceil(L/3) of the limit (expected_nodes before any
// heartbeat), so the fleet admits at most 1.1x the limit, not 3x.
func TestFleetLocalFallback(t *testing.T) {
	up := upstream(t)
	closed := freeAddr(t) // nothing listens here: the store is down from the start
	const limit = 90
	cfg := fixedWindowFleet(up, closed, "timeout: 50ms", "on_store_error: local", "error", limit)
	nodes := startFleet(t, cfg)
	waitForWindowStart(time.Hour, 30*time.Second)
	admitted, limited, unavailable := hammer(t, nodes, "/fixed", randomSubject(), 3*limit, 12)
	if unavailable != 0 {
		t.Errorf("%d requests answered 503 under on_store_error: local", unavailable)
	}
	if float64(admitted) > 1.1*limit {
		t.Fatalf("with the store down the fleet admitted %d of %d offered; the local fallback allows at most 1.1x the limit %d", admitted, 3*limit, limit)
	}
	if admitted < limit*9/10 {
		t.Errorf("with the store down the fleet admitted only %d (limited %d); each node should admit its share of %d", admitted, limited, limit)
	}
	t.Logf("store down: %d admitted of %d offered (limit %d over 3 nodes)", admitted, 3*limit, limit)
}

// startFleet starts three portico processes with the same config.
func startFleet(t *testing.T, cfg string) []*node {
	return []*node{startNode(t, cfg), startNode(t, cfg), startNode(t, cfg)}
}

// fixedWindowFleet is the config of a fleet limiting one route with a
// fixed-window policy of limit per hour keyed by X-Subject; store is the
// Redis address, storeOpts extra store keys, settings extra rate_limits keys.
func fixedWindowFleet(up, store, storeOpts, settings, logLevel string, limit int) string {
	return fmt.Sprintf(`version: 1
server: {listen: "$PUBLIC"}
admin: {listen: "$ADMIN"}
logging: {level: %s, access_log: false}
upstreams:
  up: {targets: [{url: "http://%s"}]}
rate_limits:
  store: {type: redis, url: "redis://%s/0", %s}
  expected_nodes: 3
  %s
  policies:
    fixed: {algorithm: fixed_window, limit: %d, window: 1h, key: "header:X-Subject"}
routes:
  - {name: fixed, match: {path: /fixed}, upstream: up, public: true, rate_limit: [fixed]}
`, logLevel, up, store, storeOpts, settings, limit)
}
