// Package faults holds the gateway's fault-injection suite and the helpers
// it shares with the soak run (bench/soak): a real portico process built
// from the tree, its metrics and logs, upstream targets that can be killed
// and restarted on the same port, and a private redis-server.
//
// Everything here talks to real processes over real loopback sockets: a
// fault suite that mocks the network would only test the mock. The tests
// themselves live in the _test.go files of this package.
package faults

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ModuleRoot returns the directory of the module's go.mod, so the suite
// builds the same tree wherever `go test` was started.
func ModuleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("not inside a Go module")
	}
	return filepath.Dir(mod), nil
}

// BuildPortico builds ./cmd/portico into dir and returns the binary's path.
func BuildPortico(dir string) (string, error) {
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "portico")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/portico")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/portico: %w\n%s", err, out)
	}
	return bin, nil
}

// LineBuffer collects a process's output and splits it into lines. It is
// safe for concurrent use: the process writes while tests read.
type LineBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	changed chan struct{}
	// discard keeps only a count: the soak run's access log would
	// otherwise grow without bound in the test process itself.
	discard bool
	lines   int
}

func newLineBuffer(discard bool) *LineBuffer {
	return &LineBuffer{changed: make(chan struct{}, 1), discard: discard}
}

func (b *LineBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	b.lines += bytes.Count(p, []byte{'\n'})
	if !b.discard {
		b.buf.Write(p)
	}
	b.mu.Unlock()
	select {
	case b.changed <- struct{}{}:
	default:
	}
	return len(p), nil
}

// Lines returns the complete lines written so far.
func (b *LineBuffer) Lines() []string {
	b.mu.Lock()
	s := b.buf.String()
	b.mu.Unlock()
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	} else {
		return nil
	}
	return strings.Split(s, "\n")
}

// Count returns the number of complete lines written so far.
func (b *LineBuffer) Count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.lines
}

// String returns everything written so far.
func (b *LineBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// JSONLines decodes the lines that are JSON objects (the process log is
// one slog JSON object per line); other lines are skipped.
func (b *LineBuffer) JSONLines() []map[string]any {
	var out []map[string]any
	for _, l := range b.Lines() {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

// Find returns the JSON lines whose "msg" is msg and whose other fields
// contain every key/value of attrs (compared as fmt %v strings).
func (b *LineBuffer) Find(msg string, attrs map[string]string) []map[string]any {
	var out []map[string]any
	for _, m := range b.JSONLines() {
		if m["msg"] != msg {
			continue
		}
		ok := true
		for k, v := range attrs {
			if fmt.Sprint(m[k]) != v {
				ok = false
				break
			}
		}
		if ok {
			out = append(out, m)
		}
	}
	return out
}

// WaitFor waits until pred holds for the buffer or the timeout passes.
func (b *LineBuffer) WaitFor(timeout time.Duration, pred func(*LineBuffer) bool) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		if pred(b) {
			return true
		}
		select {
		case <-b.changed:
		case <-deadline.C:
			return pred(b)
		}
	}
}

// Process is a running portico binary.
type Process struct {
	Cmd        *exec.Cmd
	Dir        string // holds the config file
	ConfigPath string
	Base       string // public listener, http://127.0.0.1:PORT
	Admin      string // admin listener, http://127.0.0.1:PORT
	Stderr     *LineBuffer
	Stdout     *LineBuffer

	done    chan struct{}
	waitErr error
}

// ProcessOptions tune StartProcess.
type ProcessOptions struct {
	// Env is appended to the environment.
	Env []string
	// DiscardStdout keeps only a line count of the access log.
	DiscardStdout bool
	// StartTimeout bounds the wait for the "portico serving" line; 0 is 30s.
	StartTimeout time.Duration
}

// StartProcess writes yaml to dir/gateway.yaml and runs `bin run -c` on it.
// It returns once the process logged that it serves, with the listener
// addresses read from that line (configs use 127.0.0.1:0).
func StartProcess(bin, dir, yaml string, opts ProcessOptions) (*Process, error) {
	p := &Process{Dir: dir, ConfigPath: filepath.Join(dir, "gateway.yaml"),
		Stderr: newLineBuffer(false), Stdout: newLineBuffer(opts.DiscardStdout), done: make(chan struct{})}
	if err := p.WriteConfig(yaml); err != nil {
		return nil, err
	}
	p.Cmd = exec.Command(bin, "run", "-c", p.ConfigPath)
	p.Cmd.Env = append(os.Environ(), opts.Env...)
	p.Cmd.Stdout, p.Cmd.Stderr = p.Stdout, p.Stderr
	if err := p.Cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		p.waitErr = p.Cmd.Wait()
		close(p.done)
	}()
	timeout := opts.StartTimeout
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	var serving map[string]any
	p.Stderr.WaitFor(timeout, func(b *LineBuffer) bool {
		if s := b.Find("portico serving", nil); len(s) > 0 {
			serving = s[0]
			return true
		}
		select {
		case <-p.done:
			return true
		default:
			return false
		}
	})
	if serving == nil {
		p.Kill()
		return nil, fmt.Errorf("portico did not start: %v\nstderr:\n%s", p.waitErr, p.Stderr.String())
	}
	p.Base = "http://" + fmt.Sprint(serving["listen"])
	p.Admin = "http://" + fmt.Sprint(serving["admin"])
	return p, nil
}

// WriteConfig replaces the config file (atomically, so a reload never reads
// half a file).
func (p *Process) WriteConfig(yaml string) error {
	tmp := p.ConfigPath + ".tmp"
	if err := os.WriteFile(tmp, []byte(yaml), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, p.ConfigPath)
}

// PID returns the process id.
func (p *Process) PID() int { return p.Cmd.Process.Pid }

// Signal sends sig to the process.
func (p *Process) Signal(sig os.Signal) error { return p.Cmd.Process.Signal(sig) }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Wait waits up to timeout for the exit and returns the exit code (-1 when
// killed by a signal).
func (p *Process) Wait(timeout time.Duration) (int, error) {
	select {
	case <-p.done:
	case <-time.After(timeout):
		return 0, fmt.Errorf("portico still running after %v", timeout)
	}
	return p.Cmd.ProcessState.ExitCode(), nil
}

// Kill stops the process (SIGKILL) if it still runs and waits for it.
func (p *Process) Kill() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.Cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// Reload asks the admin API to reload and returns the status.
func (p *Process) Reload(ctx context.Context) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.Admin+"/admin/reload", nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// Metrics scrapes /metrics on the admin listener.
func (p *Process) Metrics(ctx context.Context) (Metrics, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.Admin+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	return ParseMetrics(resp.Body)
}

// Sample is one series of the Prometheus text format.
type Sample struct {
	Name   string
	Labels map[string]string
	Value  float64
}

// Metrics is a parsed scrape.
type Metrics []Sample

// ParseMetrics reads the Prometheus text exposition format (the subset
// client_golang writes: no timestamps, escaped label values).
func ParseMetrics(r io.Reader) (Metrics, error) {
	var out Metrics
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		s := Sample{Labels: map[string]string{}}
		rest := line
		if i := strings.IndexAny(line, "{ "); i >= 0 && line[i] == '{' {
			s.Name = line[:i]
			rest = line[i+1:]
			for {
				if rest == "" {
					return nil, fmt.Errorf("metrics: bad line %q", line)
				}
				if rest[0] == '}' {
					rest = rest[1:]
					break
				}
				if rest[0] == ',' {
					rest = rest[1:]
					continue
				}
				eq := strings.IndexByte(rest, '=')
				if eq < 0 || len(rest) < eq+2 || rest[eq+1] != '"' {
					return nil, fmt.Errorf("metrics: bad labels in %q", line)
				}
				name := rest[:eq]
				rest = rest[eq+2:]
				var val strings.Builder
				for i := 0; ; i++ {
					if i >= len(rest) {
						return nil, fmt.Errorf("metrics: unterminated label in %q", line)
					}
					c := rest[i]
					if c == '\\' && i+1 < len(rest) {
						i++
						switch rest[i] {
						case 'n':
							val.WriteByte('\n')
						default:
							val.WriteByte(rest[i])
						}
						continue
					}
					if c == '"' {
						rest = rest[i+1:]
						break
					}
					val.WriteByte(c)
				}
				s.Labels[name] = val.String()
			}
		} else if i >= 0 {
			s.Name = line[:i]
			rest = line[i:]
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			return nil, fmt.Errorf("metrics: no value in %q", line)
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			return nil, fmt.Errorf("metrics: value in %q: %w", line, err)
		}
		s.Value = v
		out = append(out, s)
	}
	return out, sc.Err()
}

// Sum adds the values of the series called name whose labels include all
// of want.
func (m Metrics) Sum(name string, want map[string]string) float64 {
	var total float64
	for _, s := range m {
		if s.Name != name {
			continue
		}
		ok := true
		for k, v := range want {
			if s.Labels[k] != v {
				ok = false
				break
			}
		}
		if ok {
			total += s.Value
		}
	}
	return total
}

// Series lists the series called name, for failure messages.
func (m Metrics) Series(name string) string {
	var lines []string
	for _, s := range m {
		if s.Name != name {
			continue
		}
		keys := make([]string, 0, len(s.Labels))
		for k := range s.Labels {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var b strings.Builder
		for _, k := range keys {
			fmt.Fprintf(&b, "%s=%q ", k, s.Labels[k])
		}
		lines = append(lines, fmt.Sprintf("%s{%s} %g", name, strings.TrimSpace(b.String()), s.Value))
	}
	return strings.Join(lines, "\n")
}

// FreePort returns a loopback port that was free a moment ago. Only for
// processes that cannot be told to listen on :0 and report back
// (redis-server, targets restarted on the same address).
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// runLoad calls do in a loop from workers goroutines (do gets the worker's
// number and its count of calls so far) until the returned stop is called;
// stop waits for them.
func runLoad(workers int, do func(worker, i int)) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-done:
					return
				default:
				}
				do(w, i)
			}
		})
	}
	return func() { close(done); wg.Wait() }
}
