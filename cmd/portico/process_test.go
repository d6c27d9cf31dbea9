package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// buildPortico builds the command into a temporary directory, with extra
// go build flags, and returns the binary's path.
func buildPortico(t *testing.T, flags ...string) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := filepath.Join(t.TempDir(), "portico")
	args := append([]string{"build", "-o", bin}, flags...)
	cmd := exec.Command("go", append(args, ".")...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// proc is a running portico process whose stderr (the JSON process log) is
// collected line by line.
type proc struct {
	cmd    *exec.Cmd
	mu     sync.Mutex
	lines  []string
	notify chan struct{} // a new line arrived (or stderr closed)
	exited chan struct{}
	err    error // Wait's result, once exited is closed
	listen string
	admin  string
}

// startPortico runs `portico run -c cfg` and waits for its "portico serving"
// log line, which names the listen and admin addresses.
func startPortico(t *testing.T, bin, cfg string) *proc {
	t.Helper()
	p := launchPortico(t, bin, cfg)
	p.waitServing(t)
	return p
}

// launchPortico runs `portico run -c cfg` without waiting for anything.
func launchPortico(t *testing.T, bin, cfg string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(bin, "run", "-c", cfg), notify: make(chan struct{}, 1), exited: make(chan struct{})}
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, sc.Text())
			p.mu.Unlock()
			select {
			case p.notify <- struct{}{}:
			default:
			}
		}
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.exited
		if t.Failed() {
			t.Logf("portico stderr:\n%s", p.log())
		}
	})
	return p
}

// waitServing waits for the "portico serving" log line and takes the
// listen and admin addresses from it.
func (p *proc) waitServing(t *testing.T) {
	t.Helper()
	line := p.waitLog(t, "portico serving", 30*time.Second)
	var rec struct{ Listen, Admin string }
	if err := json.Unmarshal([]byte(line), &rec); err != nil || rec.Listen == "" || rec.Admin == "" {
		t.Fatalf("serving line %q: %v", line, err)
	}
	p.listen, p.admin = rec.Listen, rec.Admin
}

func (p *proc) log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.lines, "\n")
}

// waitLog waits until a log line has msg as its JSON "msg" value and
// returns that line.
func (p *proc) waitLog(t *testing.T, msg string, within time.Duration) string {
	t.Helper()
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	want := `"msg":"` + msg + `"`
	for {
		p.mu.Lock()
		for _, l := range p.lines {
			if strings.Contains(l, want) {
				p.mu.Unlock()
				return l
			}
		}
		p.mu.Unlock()
		select {
		case <-p.notify:
		case <-p.exited:
			// Lines read before the exit were already seen above, except
			// those that raced with it; look once more.
			if l := p.findLog(want); l != "" {
				return l
			}
			t.Fatalf("portico exited (%v) before logging %q", p.err, msg)
		case <-deadline.C:
			t.Fatalf("portico did not log %q within %v", msg, within)
		}
	}
}

func (p *proc) findLog(want string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, l := range p.lines {
		if strings.Contains(l, want) {
			return l
		}
	}
	return ""
}

// waitExit waits for the process to end and returns its exit code.
func (p *proc) waitExit(t *testing.T, within time.Duration) int {
	t.Helper()
	select {
	case <-p.exited:
	case <-time.After(within):
		t.Fatalf("portico still running %v after the signal", within)
	}
	return p.cmd.ProcessState.ExitCode()
}

func (p *proc) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
}

// writeConfig writes a config with one public route per path to upstream.
func writeConfig(t *testing.T, path, upstream, extraServer string, routes ...string) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "version: 1\nserver:\n  listen: \"127.0.0.1:0\"\n%sadmin:\n  listen: \"127.0.0.1:0\"\nlogging:\n  access_log: false\n", extraServer)
	fmt.Fprintf(&b, "upstreams:\n  up: {targets: [{url: %q}]}\nroutes:\n", upstream)
	for i, r := range routes {
		fmt.Fprintf(&b, "  - {name: r%d, match: {path: %q}, upstream: up, public: true}\n", i, r)
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

// heldUpstream answers every request once release is closed; entered gets
// one value per request that arrived.
func heldUpstream(t *testing.T) (srv *httptest.Server, entered chan struct{}, release func()) {
	entered = make(chan struct{}, 16)
	rel := make(chan struct{})
	var once sync.Once
	release = func() { once.Do(func() { close(rel) }) }
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		select {
		case <-rel:
		case <-r.Context().Done():
		}
		_, _ = io.WriteString(w, "done")
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(release) // runs before srv.Close
	return srv, entered, release
}

type result struct {
	status int
	body   string
	err    error
}

// getAsync sends GET url on its own connection and reports on the channel.
func getAsync(url string) <-chan result {
	ch := make(chan result, 1)
	go func() {
		tr := &http.Transport{DisableKeepAlives: true}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr, Timeout: 60 * time.Second}).Get(url)
		if err != nil {
			ch <- result{err: err}
			return
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		ch <- result{status: resp.StatusCode, body: string(b), err: err}
	}()
	return ch
}

func statusOf(t *testing.T, url string) int {
	t.Helper()
	r := <-getAsync(url)
	if r.err != nil {
		return 0
	}
	return r.status
}

// TestProcessSIGTERMDrainsThenExitsZero: on SIGTERM /readyz turns 503 at
// once, a request in flight still completes, and the process exits 0.
func TestProcessSIGTERMDrainsThenExitsZero(t *testing.T) {
	bin := buildPortico(t)
	up, entered, release := heldUpstream(t)
	cfg := filepath.Join(t.TempDir(), "portico.yaml")
	writeConfig(t, cfg, up.URL, "  drain_delay: 200ms\n  shutdown_timeout: 20s\n", "/slow")
	p := startPortico(t, bin, cfg)

	if s := statusOf(t, "http://"+p.admin+"/readyz"); s != 200 {
		t.Fatalf("/readyz before SIGTERM: %d", s)
	}
	inflight := getAsync("http://" + p.listen + "/slow")
	<-entered
	p.signal(t, syscall.SIGTERM)
	p.waitLog(t, "draining", 10*time.Second)
	if s := statusOf(t, "http://"+p.admin+"/readyz"); s != http.StatusServiceUnavailable {
		t.Errorf("/readyz while draining: %d, want 503", s)
	}
	release()
	if r := <-inflight; r.err != nil || r.status != 200 || r.body != "done" {
		t.Errorf("request in flight at SIGTERM: %d %q %v", r.status, r.body, r.err)
	}
	if code := p.waitExit(t, 20*time.Second); code != 0 {
		t.Fatalf("exit code %d after SIGTERM, want 0", code)
	}
}

// TestProcessSecondSignalExitsAtOnce: an operator who signals again while
// a drain waits on slow requests wants the process gone now, not after
// shutdown_timeout.
func TestProcessSecondSignalExitsAtOnce(t *testing.T) {
	bin := buildPortico(t)
	up, entered, _ := heldUpstream(t)
	cfg := filepath.Join(t.TempDir(), "portico.yaml")
	writeConfig(t, cfg, up.URL, "  shutdown_timeout: 5m\n", "/slow")
	p := startPortico(t, bin, cfg)

	inflight := getAsync("http://" + p.listen + "/slow")
	<-entered
	p.signal(t, syscall.SIGTERM)
	p.waitLog(t, "draining", 10*time.Second)
	// The drain is now waiting for the held request, for up to 5m.
	select {
	case <-p.exited:
		t.Fatalf("exited (%v) before the request in flight finished", p.err)
	default:
	}
	p.signal(t, syscall.SIGINT)
	if code := p.waitExit(t, 10*time.Second); code == 0 {
		t.Errorf("exit code 0 after an interrupted drain, want non-zero")
	}
	if r := <-inflight; r.err == nil && r.status == 200 {
		t.Errorf("the held request completed: %+v", r)
	}
}

// TestProcessSIGHUPReloads: SIGHUP applies a changed config; a broken one
// is refused and the last good config stays in force.
func TestProcessSIGHUPReloads(t *testing.T) {
	bin := buildPortico(t)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") }))
	t.Cleanup(up.Close)
	cfg := filepath.Join(t.TempDir(), "portico.yaml")
	writeConfig(t, cfg, up.URL, "", "/a")
	p := startPortico(t, bin, cfg)
	base := "http://" + p.listen

	if a, b := statusOf(t, base+"/a"), statusOf(t, base+"/b"); a != 200 || b != 404 {
		t.Fatalf("before reload: /a %d, /b %d", a, b)
	}
	writeConfig(t, cfg, up.URL, "", "/b")
	p.signal(t, syscall.SIGHUP)
	p.waitLog(t, "config reloaded", 10*time.Second)
	if a, b := statusOf(t, base+"/a"), statusOf(t, base+"/b"); a != 404 || b != 200 {
		t.Fatalf("after reload: /a %d, /b %d, want 404 and 200", a, b)
	}

	if err := os.WriteFile(cfg, []byte("version: 1\nroutes: [{name: x}]\nbogus: true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	before := strings.Count(p.log(), "\n")
	p.signal(t, syscall.SIGHUP)
	// The failed reload is logged at error level; wait for any new line.
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(p.log(), "\n") == before {
		if time.Now().After(deadline) {
			t.Fatal("no log line after a SIGHUP with a broken config")
		}
		select {
		case <-p.notify:
		case <-p.exited:
			t.Fatalf("portico exited (%v) on a broken reload", p.err)
		case <-time.After(time.Until(deadline)):
		}
	}
	if b := statusOf(t, base+"/b"); b != 200 {
		t.Fatalf("after a broken reload /b %d, want the last good config (200)", b)
	}
	p.signal(t, syscall.SIGTERM)
	if code := p.waitExit(t, 20*time.Second); code != 0 {
		t.Fatalf("exit code %d, want 0", code)
	}
}

// TestProcessVersion: `portico version` prints the version set at build
// time, the Go version and the platform, and exits 0.
func TestProcessVersion(t *testing.T) {
	bin := buildPortico(t, "-ldflags", "-X main.version=v9.8.7")
	out, err := exec.Command(bin, "version").Output()
	if err != nil {
		t.Fatalf("portico version: %v", err)
	}
	f := strings.Fields(string(out))
	if len(f) != 4 || f[0] != "portico" || f[1] != "v9.8.7" || !strings.HasPrefix(f[2], "go") || !strings.Contains(f[3], "/") {
		t.Fatalf("portico version printed %q", out)
	}
}

// TestProcessSIGHUPWhileStarting: a SIGHUP that arrives before the gateway
// listens must not end the process (SIGHUP's default action); it is kept
// and reloads the config once the gateway serves. The config is a FIFO, so
// the test knows when portico is reading it and can signal right then.
func TestProcessSIGHUPWhileStarting(t *testing.T) {
	bin := buildPortico(t)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") }))
	t.Cleanup(up.Close)
	dir := t.TempDir()
	staged := filepath.Join(dir, "staged.yaml")
	writeConfig(t, staged, up.URL, "", "/a")
	content, err := os.ReadFile(staged)
	if err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "portico.yaml")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	// feed writes the config into the FIFO once portico opens it to read;
	// opened reports that moment. A reader opened here on cleanup frees a
	// writer still waiting for one.
	feed := func() (opened, done <-chan error) {
		o, d := make(chan error, 1), make(chan error, 1)
		go func() {
			w, err := os.OpenFile(fifo, os.O_WRONLY, 0)
			o <- err
			if err != nil {
				d <- err
				return
			}
			_, err = w.Write(content)
			if cerr := w.Close(); err == nil {
				err = cerr
			}
			d <- err
		}()
		return o, d
	}
	opened, done := feed()
	t.Cleanup(func() {
		if r, err := os.OpenFile(fifo, os.O_RDONLY|syscall.O_NONBLOCK, 0); err == nil {
			r.Close()
		}
	})

	p := launchPortico(t, bin, fifo)
	select {
	case err := <-opened:
		if err != nil {
			t.Fatal(err)
		}
	case <-p.exited:
		t.Fatalf("portico exited (%v) before reading its config", p.err)
	case <-time.After(30 * time.Second):
		t.Fatal("portico did not open its config")
	}
	// Portico is in the middle of loading its config: ask for a reload now.
	p.signal(t, syscall.SIGHUP)
	if err := <-done; err != nil {
		t.Fatalf("writing the config: %v", err)
	}
	p.waitServing(t)
	if s := statusOf(t, "http://"+p.listen+"/a"); s != 200 {
		t.Fatalf("/a: %d", s)
	}
	// The SIGHUP kept from start-up reloads, reading the FIFO again.
	_, done = feed()
	p.waitLog(t, "config reloaded", 30*time.Second)
	if err := <-done; err != nil {
		t.Fatalf("writing the config again: %v", err)
	}
	p.signal(t, syscall.SIGTERM)
	if code := p.waitExit(t, 20*time.Second); code != 0 {
		t.Fatalf("exit code %d, want 0", code)
	}
}

// TestProcessReloadAppliesLogLevel: logging.level reloads like the rest of
// the config. It was read once at start, so a reload to level error still
// logged at info: here the drain's info lines must be gone after it.
func TestProcessReloadAppliesLogLevel(t *testing.T) {
	bin := buildPortico(t)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") }))
	t.Cleanup(up.Close)
	cfg := filepath.Join(t.TempDir(), "portico.yaml")
	writeConfig(t, cfg, up.URL, "", "/a")
	p := startPortico(t, bin, cfg)

	b, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	quiet := strings.Replace(string(b), "logging:\n", "logging:\n  level: error\n", 1)
	if err := os.WriteFile(cfg, []byte(quiet), 0o644); err != nil {
		t.Fatal(err)
	}
	p.signal(t, syscall.SIGHUP)
	// The reload is seen in the metrics, whatever the log level.
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(get(t, "http://"+p.admin+"/metrics"), `portico_config_reloads_total{result="success"} 1`) {
		if time.Now().After(deadline) {
			t.Fatal("no successful reload counted")
		}
		time.Sleep(50 * time.Millisecond)
	}
	p.signal(t, syscall.SIGTERM)
	if code := p.waitExit(t, 20*time.Second); code != 0 {
		t.Fatalf("exit code %d, want 0", code)
	}
	if l := p.findLog(`"msg":"draining"`); l != "" {
		t.Errorf("logged at info after a reload to level error: %s", l)
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	r := <-getAsync(url)
	if r.err != nil {
		t.Fatalf("GET %s: %v", url, r.err)
	}
	return r.body
}
