package faults

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// portico is the binary built once for the whole suite.
var portico string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "portico-faults-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	portico, err = BuildPortico(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	if code == 0 {
		// The same check as goleak.VerifyTestMain, after our own cleanup.
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// start runs portico on yaml; the process is killed at cleanup if the test
// did not stop it, and its stderr is printed when the test failed.
func start(t *testing.T, yaml string) *Process {
	t.Helper()
	p, err := StartProcess(portico, t.TempDir(), yaml, ProcessOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			t.Logf("portico stderr:\n%s", tail(p.Stderr.String(), 4000))
		}
	})
	return p
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// scrape reads /metrics or fails the test.
func scrape(t *testing.T, p *Process) Metrics {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	m, err := p.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// problemBody is the RFC 9457 body the gateway writes.
type problemBody struct {
	Type      string `json:"type"`
	Title     string `json:"title"`
	Status    int    `json:"status"`
	Detail    string `json:"detail"`
	RequestID string `json:"request_id"`
}

// checkProblem verifies that a response the gateway produced is a complete,
// well-formed problem+json with the given status, and returns its body.
func checkProblem(resp *http.Response, body []byte, status int) (problemBody, error) {
	var pb problemBody
	if resp.StatusCode != status {
		return pb, fmt.Errorf("status %d, want %d; body %q", resp.StatusCode, status, body)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/problem+json") {
		return pb, fmt.Errorf("content-type %q, want application/problem+json; body %q", ct, body)
	}
	if err := json.Unmarshal(body, &pb); err != nil {
		return pb, fmt.Errorf("problem body %q: %w", body, err)
	}
	switch {
	case pb.Status != status:
		return pb, fmt.Errorf("problem status %d, want %d", pb.Status, status)
	case !strings.HasPrefix(pb.Type, "urn:portico:problem:"), pb.Title == "", pb.Detail == "":
		return pb, fmt.Errorf("incomplete problem %q", body)
	case pb.RequestID == "" || pb.RequestID != resp.Header.Get("X-Request-Id"):
		return pb, fmt.Errorf("problem request_id %q, header %q", pb.RequestID, resp.Header.Get("X-Request-Id"))
	}
	return pb, nil
}

// get does one request and reads the whole body.
func get(t *testing.T, c *http.Client, url string, hdr map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: body: %v", url, err)
	}
	return resp, body
}

// client returns a client with its own connection pool, closed at cleanup.
func client(t *testing.T) *http.Client {
	tr := &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 20 * time.Second}
}

// rawServer accepts TCP connections on 127.0.0.1:0 and hands each to fn,
// which plays a misbehaving upstream at the byte level. Cleanup closes the
// listener and every connection and waits for the handlers.
type rawServer struct {
	ln    net.Listener
	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
	stop  chan struct{}
}

func startRaw(t *testing.T, fn func(c net.Conn, stop <-chan struct{})) *rawServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &rawServer{ln: ln, conns: map[net.Conn]struct{}{}, stop: make(chan struct{})}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns[c] = struct{}{}
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer func() {
					s.mu.Lock()
					delete(s.conns, c)
					s.mu.Unlock()
					c.Close()
				}()
				fn(c, s.stop)
			}()
		}
	}()
	t.Cleanup(func() {
		close(s.stop)
		ln.Close()
		s.mu.Lock()
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

func (s *rawServer) URL() string { return "http://" + s.ln.Addr().String() }

// readRequestHead reads until the end of the request head, so a raw
// upstream answers only after the request arrived.
func readRequestHead(c net.Conn) error {
	buf := make([]byte, 0, 4096)
	tmp := make([]byte, 1024)
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for !strings.Contains(string(buf), "\r\n\r\n") {
		n, err := c.Read(tmp)
		if err != nil {
			return err
		}
		buf = append(buf, tmp[:n]...)
	}
	_ = c.SetReadDeadline(time.Time{})
	return nil
}

// header is the common head of every test config: loopback listeners on
// ephemeral ports, no access log unless a test turns it on.
const header = `version: 1
server: {listen: "127.0.0.1:0", shutdown_timeout: 5s}
admin: {listen: "127.0.0.1:0"}
logging: {level: info, access_log: false}
`
