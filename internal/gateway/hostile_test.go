package gateway

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// countingUpstream counts the requests it sees and echoes the method, path,
// body length and a few headers.
func countingUpstream(t *testing.T) (*httptest.Server, *atomic.Int64) {
	var n atomic.Int64
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s len=%d user=%q key=%q", r.Method, r.URL.Path, len(b), r.Header.Get("X-User-Id"), r.Header.Get("X-API-Key"))
	}))
	t.Cleanup(s.Close)
	return s, &n
}

// rawExchange writes raw bytes to the gateway and returns what came back
// before the connection closed or went quiet.
func rawExchange(t *testing.T, addr, raw string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(c)
	return string(b)
}

const hostileConfig = `version: 1
server: {listen: "127.0.0.1:0", read_header_timeout: 500ms, max_header_bytes: 8192, max_body_bytes: 1KiB}
admin: {listen: "127.0.0.1:0"}
logging: {access_log: false}
upstreams:
  up: {targets: [{url: "%s"}]}
auth:
  keys: {type: api_key, header: X-API-Key, keys: [{id: acme, sha256: "528bb5eff2608538198b2bb67dc8e62f28dad4bed53603338d9182216da24063"}], forward_id: X-User-Id}
routes:
  - name: open
    match: {path: "/open/*"}
    upstream: up
    public: true
  - name: private
    match: {path: "/private/*"}
    upstream: up
    auth: [keys]
`

// TestRequestSmuggling sends framings that disagree. The gateway re-frames
// every request it forwards, so the upstream cannot read a body differently
// from the gateway; what must hold is that nothing reaches the upstream
// without being routed and authenticated like any other request. Go's HTTP
// server answers obs-fold, duplicate Host and malformed chunks with its own
// plain 400, and processes Content-Length plus Transfer-Encoding by the
// Transfer-Encoding alone (RFC 9112 section 6.1), dropping Content-Length.
func TestRequestSmuggling(t *testing.T) {
	up, count := countingUpstream(t)
	h := start(t, fmt.Sprintf(hostileConfig, up.URL))
	addr := strings.TrimPrefix(h.base, "http://")
	smuggled := "GET /private/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
	cases := []struct {
		name, raw string
	}{
		{"CL and TE", "POST /open/a HTTP/1.1\r\nHost: gw\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled},
		{"TE and CL", "POST /open/a HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nContent-Length: 60\r\n\r\n0\r\n\r\n" + smuggled},
		{"two CL", "POST /open/a HTTP/1.1\r\nHost: gw\r\nContent-Length: 0\r\nContent-Length: 45\r\n\r\n" + smuggled},
		{"obfuscated TE", "POST /open/a HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n" + smuggled},
		{"obs-fold", "GET /open/a HTTP/1.1\r\nHost: gw\r\nX-A: b\r\n c\r\n\r\n"},
		{"duplicate Host", "GET /open/a HTTP/1.1\r\nHost: gw\r\nHost: other\r\n\r\n"},
		{"bare LF in chunk", "POST /open/a HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\n0\n\n" + smuggled},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := count.Load()
			out := rawExchange(t, addr, c.raw)
			if strings.Contains(out, "/private/smuggled") {
				t.Fatalf("smuggled request reached the upstream:\n%s", out)
			}
			if got := count.Load() - before; got > 1 {
				t.Fatalf("upstream saw %d requests for one client request:\n%s", got, out)
			}
			if !strings.HasPrefix(out, "HTTP/1.1 ") {
				t.Fatalf("no HTTP answer: %q", out)
			}
		})
	}
}

// TestTraceAndConnectOnlyWhereListed: a route without methods does not
// forward TRACE (which would echo the request, credentials included, back
// to a script: cross-site tracing) or CONNECT; the client gets 405
// problem+json with Allow, and the upstream sees nothing. A route that
// lists them takes them.
func TestTraceAndConnectOnlyWhereListed(t *testing.T) {
	up, count := countingUpstream(t)
	h := start(t, fmt.Sprintf(hostileConfig, up.URL)+`  - name: tracing
    match: {path: "/trace/*", methods: [TRACE]}
    upstream: up
    public: true
`)
	addr := strings.TrimPrefix(h.base, "http://")
	for _, method := range []string{"TRACE", "CONNECT"} {
		t.Run(method, func(t *testing.T) {
			before := count.Load()
			out := rawExchange(t, addr, method+" /open/a HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nCookie: session=secret\r\n\r\n")
			if !strings.HasPrefix(out, "HTTP/1.1 405 ") || !strings.Contains(out, "Allow: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS\r\n") ||
				!strings.Contains(out, "application/problem+json") {
				t.Fatalf("%s on a route without methods:\n%s", method, out)
			}
			if strings.Contains(out, "secret") || count.Load() != before {
				t.Fatalf("%s reached the upstream or echoed the request:\n%s", method, out)
			}
		})
	}
	out := rawExchange(t, addr, "TRACE /trace/a HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
	if !strings.HasPrefix(out, "HTTP/1.1 200 ") {
		t.Fatalf("TRACE on a route listing it:\n%s", out)
	}
}

func TestOversizedInput(t *testing.T) {
	up, count := countingUpstream(t)
	h := start(t, fmt.Sprintf(hostileConfig, up.URL))

	req, _ := http.NewRequest(http.MethodGet, h.base+"/open/a", nil)
	req.Header.Set("X-Big", strings.Repeat("a", 16<<10))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("oversized header: %d, want 431", resp.StatusCode)
	}

	before := count.Load()
	resp, err = http.Post(h.base+"/open/a", "application/octet-stream", strings.NewReader(strings.Repeat("x", 4096)))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge || resp.Header.Get("Content-Type") != "application/problem+json" {
		t.Errorf("oversized body: %d %s %s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	if count.Load() != before {
		t.Errorf("an oversized body with Content-Length reached the upstream")
	}
	// Chunked, so the size is only known while streaming.
	pr, pw := io.Pipe()
	go func() {
		for range 8 {
			pw.Write([]byte(strings.Repeat("y", 512)))
		}
		pw.Close()
	}()
	resp, err = http.Post(h.base+"/open/a", "application/octet-stream", pr)
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Errorf("a chunked body over max_body_bytes was accepted")
		}
	}
}

// TestSlowloris: a client that dribbles its headers is cut off by
// read_header_timeout and the gateway keeps serving others.
func TestSlowloris(t *testing.T) {
	up, _ := countingUpstream(t)
	h := start(t, fmt.Sprintf(hostileConfig, up.URL))
	c, err := net.Dial("tcp", strings.TrimPrefix(h.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET /open/a HTTP/1.1\r\nHost: gw\r\n")
	closed := make(chan time.Duration, 1)
	start := time.Now()
	go func() {
		buf := make([]byte, 1)
		for {
			if _, err := c.Read(buf); err != nil {
				closed <- time.Since(start)
				return
			}
		}
	}()
	// Keep dribbling one header byte every 100 ms.
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case d := <-closed:
			if d > 3*time.Second {
				t.Errorf("slow client cut off after %s", d)
			}
			resp, err := http.Get(h.base + "/open/b")
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("gateway unhealthy after slowloris: %v %v", resp, err)
			}
			resp.Body.Close()
			return
		case <-tick.C:
			io.WriteString(c, "X")
		case <-deadline:
			t.Fatal("a slowloris client was never cut off")
		}
	}
}

// TestIdentityHeadersCannotBeSpoofed: the header that auth sets (here the
// API key's forward_id) is stripped on public routes too, and the API key
// itself never reaches the upstream.
func TestIdentityHeadersCannotBeSpoofed(t *testing.T) {
	up, _ := countingUpstream(t)
	h := start(t, fmt.Sprintf(hostileConfig, up.URL))
	get := func(path string, hdr map[string]string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, h.base+path, nil)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/open/a", map[string]string{"X-User-Id": "admin", "X-API-Key": "portico-test-key"}); code != 200 ||
		strings.Contains(body, "admin") || strings.Contains(body, "portico-test-key") {
		t.Errorf("public route passed a spoofed identity header or an API key: %d %s", code, body)
	}
	if code, _ := get("/private/a", map[string]string{"X-User-Id": "admin"}); code != 401 {
		t.Errorf("private route without a key: %d", code)
	}
	// The key whose SHA-256 is in the config is "portico-test-key".
	code, body := get("/private/a", map[string]string{"X-User-Id": "admin", "X-API-Key": "portico-test-key"})
	if code != 200 || !strings.Contains(body, `user="acme"`) || strings.Contains(body, "portico-test-key") {
		t.Errorf("private route with a key: %d %s", code, body)
	}
}

// rawExchangeStatus returns the first line of the gateway's answer to raw.
func rawExchangeStatus(t *testing.T, addr, raw string) string {
	t.Helper()
	out := rawExchange(t, addr, raw)
	line, _, _ := strings.Cut(out, "\r\n")
	return line
}

func TestDropQueryParams(t *testing.T) {
	names := []string{"api_key", "partner_key"}
	cases := map[string]string{
		"":                           "",
		"a=1&b=2":                    "a=1&b=2",
		"api_key=s3cret":             "",
		"a=1&api_key=s3cret&b=%2F":   "a=1&b=%2F",
		"partner%5Fkey=s3cret&x=1":   "x=1",
		"api_key&api_key=2&keep=api": "keep=api",
		"x=api_key":                  "x=api_key",
	}
	for in, want := range cases {
		if got := dropQueryParams(in, names); got != want {
			t.Errorf("dropQueryParams(%q) = %q, want %q", in, got, want)
		}
	}
}
