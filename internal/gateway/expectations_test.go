package gateway

// Behaviour a production user relies on, checked over real sockets: bad
// reloads, certificates, request ids, client addresses, input limits, odd
// request forms and the admin listener.

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/portico-gw/portico/internal/config"
)

// accessLines is an access-log writer that hands each JSON line to the
// test, so it can wait for the line of one request id instead of sleeping.
type accessLines struct {
	mu      sync.Mutex
	partial []byte
	lines   chan map[string]any
}

func newAccessLines() *accessLines { return &accessLines{lines: make(chan map[string]any, 4096)} }

func (a *accessLines) Write(p []byte) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.partial = append(a.partial, p...)
	for {
		i := bytes.IndexByte(a.partial, '\n')
		if i < 0 {
			return len(p), nil
		}
		var m map[string]any
		if json.Unmarshal(a.partial[:i], &m) == nil {
			select {
			case a.lines <- m:
			default: // a test that never reads them
			}
		}
		a.partial = a.partial[i+1:]
	}
}

// line returns the access-log line of request id, skipping others.
func (a *accessLines) line(t *testing.T, id string) map[string]any {
	t.Helper()
	timeout := time.NewTimer(5 * time.Second)
	defer timeout.Stop()
	for {
		select {
		case m := <-a.lines:
			if m["request_id"] == id {
				return m
			}
		case <-timeout.C:
			t.Fatalf("no access-log line for request %q", id)
			return nil
		}
	}
}

// syncBuffer is a process-log writer safe for the gateway's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// seen is what recordingUpstream received, every value of every header
// the tests look at.
type seen struct {
	Method     string   `json:"method"`
	RequestURI string   `json:"request_uri"`
	Host       string   `json:"host"`
	RequestID  []string `json:"request_id"`
	XFF        []string `json:"xff"`
	Forwarded  []string `json:"forwarded"`
	BodyLen    int      `json:"body_len"`
}

// recordingUpstream answers with a seen and counts its requests.
func recordingUpstream(t *testing.T) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var n atomic.Int64
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(seen{Method: r.Method, RequestURI: r.RequestURI, Host: r.Host,
			RequestID: r.Header.Values("X-Request-Id"), XFF: r.Header.Values("X-Forwarded-For"),
			Forwarded: r.Header.Values("Forwarded"), BodyLen: len(b)})
	}))
	t.Cleanup(s.Close)
	return s, &n
}

// rawResponse sends raw bytes and parses the answer.
func rawResponse(t *testing.T, addr, raw string) (*http.Response, string) {
	t.Helper()
	out := rawExchange(t, addr, raw)
	resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(out)), nil)
	if err != nil {
		t.Fatalf("no HTTP answer to %.60q: %v: %q", raw, err, out)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b)
}

func decodeSeen(t *testing.T, body string) seen {
	t.Helper()
	var s seen
	if err := json.Unmarshal([]byte(body), &s); err != nil {
		t.Fatalf("upstream answer %q: %v", body, err)
	}
	return s
}

// TestBadReloadNamesFileLineField: every kind of bad config a reload can
// meet is refused through POST /admin/reload with FILE:LINE:COL: FIELD of
// the problem, logged with the same text, counted, and the running config
// keeps serving.
func TestBadReloadNamesFileLineField(t *testing.T) {
	a := echoUpstream(t, "a")
	good := fmt.Sprintf(baseConfig, a.URL)
	var plog syncBuffer
	h := startWith(t, good, Options{Logger: slog.New(slog.NewJSONHandler(&plog, nil))})
	file := filepath.Join(h.dir, "gateway.yaml")
	cases := []struct {
		name, yaml string
		want       string // the whole error line after "FILE:"
	}{
		{"yaml syntax", good + "  - name: [\n", `12:11: YAML syntax: `},
		{"unknown key", strings.Replace(good, "public: true", "public: true\n    bogus: 1", 1), `12:5: routes[0].bogus: unknown key "bogus"`},
		{"invalid value", strings.Replace(good, "shutdown_timeout: 5s", "shutdown_timeout: 5s, read_header_timeout: 5", 1),
			`2:76: server.read_header_timeout: invalid duration "5"`},
		{"unknown upstream", strings.Replace(good, "upstream: echo", "upstream: nope", 1), `10:5: routes[0].upstream: unknown upstream "nope"`},
		{"unknown auth provider", strings.Replace(good, "public: true", "auth: [nope]", 1), `11:12: routes[0].auth[0]: unknown auth provider "nope"`},
		{"duplicate route name", good + "  - name: echo\n    match: {path: \"/other/*\"}\n    upstream: echo\n    public: true\n",
			`12:5: routes[1].name: duplicate route "echo" (first defined at ` + file + `:8:5)`},
		{"unset variable", strings.Replace(good, a.URL, "${PORTICO_TEST_SURELY_UNSET}", 1),
			`6:26: upstreams.echo.targets[0].url: environment variable PORTICO_TEST_SURELY_UNSET is not set`},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp := h.rewrite(t, c.yaml)
			var p struct {
				Status int      `json:"status"`
				Errors []string `json:"errors"`
			}
			err := json.NewDecoder(resp.Body).Decode(&p)
			resp.Body.Close()
			if err != nil || resp.StatusCode != 400 || resp.Header.Get("Content-Type") != "application/problem+json" || len(p.Errors) != 1 {
				t.Fatalf("reload: %d %s %+v %v", resp.StatusCode, resp.Header.Get("Content-Type"), p, err)
			}
			if want := file + ":" + c.want; !strings.HasPrefix(p.Errors[0], want) {
				t.Errorf("reload error\n got %s\nwant %s...", p.Errors[0], want)
			}
			// The gateway's own record (a SIGHUP reload has no admin
			// request to log it) carries the same line.
			found := false
			for l := range strings.SplitSeq(plog.String(), "\n") {
				var rec struct{ Msg, Err string }
				if json.Unmarshal([]byte(l), &rec) == nil && strings.HasPrefix(rec.Msg, "config reload") && strings.Contains(rec.Err, p.Errors[0]) {
					found = true
				}
			}
			if !found {
				t.Errorf("no config reload record with the error in the process log:\n%s", plog.String())
			}
			var e echoed
			if r := getJSON(t, h.base+"/api/x", nil, &e); r.StatusCode != 200 || e.Upstream != "a" {
				t.Fatalf("after the refused reload: %d %+v", r.StatusCode, e)
			}
			m := getBody(t, h.admin+"/metrics")
			if want := fmt.Sprintf(`portico_config_reloads_total{result="failure"} %d`, i+1); !strings.Contains(m, want) {
				t.Errorf("want %s:\n%s", want, grepLines(m, "portico_config_reloads_total"))
			}
		})
	}
}

func getBody(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// TestReloadCertificates: a reload with renewed certificate files serves
// them on the next handshake; one whose certificate cannot be read is
// refused naming the file position of server.tls and leaves everything of
// the running config in force, the access log included; one that changes
// min_version (held by the listener) is refused as needing a restart.
func TestReloadCertificates(t *testing.T) {
	up := echoUpstream(t, "a")
	certA, keyA, _ := selfSigned(t)
	certB, keyB, _ := selfSigned(t)
	roots := x509.NewCertPool()
	serial := map[string]*big.Int{}
	for _, path := range []string{certA, certB} {
		block, _ := pem.Decode(must(os.ReadFile(path)))
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		roots.AddCert(c)
		serial[path] = c.SerialNumber
	}
	cfg := func(cert, key, extra string, accessLog bool) string {
		return fmt.Sprintf(`version: 1
server: {listen: "127.0.0.1:0", shutdown_timeout: 5s, tls: {cert: %q, key: %q%s}}
admin: {listen: "127.0.0.1:0"}
logging: {access_log: %t}
upstreams:
  echo: {targets: [{url: "%s"}]}
routes:
  - name: echo
    match: {path: "/api/*"}
    upstream: echo
    public: true
`, cert, key, extra, accessLog, up.URL)
	}
	alog := newAccessLines()
	h := startWith(t, cfg(certA, keyA, "", true), Options{AccessLog: alog})
	addr := strings.TrimPrefix(h.base, "http://")
	leaf := func(maxVersion uint16) (*x509.Certificate, error) {
		t.Helper()
		c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, ServerName: "127.0.0.1", MaxVersion: maxVersion})
		if err != nil {
			return nil, err
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0], nil
	}
	wantLeaf := func(step, path string) {
		t.Helper()
		got, err := leaf(0)
		if err != nil {
			t.Fatalf("%s: handshake: %v", step, err)
		}
		if got.SerialNumber.Cmp(serial[path]) != 0 {
			t.Fatalf("%s: served serial %v, want %v", step, got.SerialNumber, serial[path])
		}
	}
	reload := func(yaml string) (int, []string) {
		t.Helper()
		resp := h.rewrite(t, yaml)
		defer resp.Body.Close()
		var p struct {
			Errors []string `json:"errors"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&p)
		return resp.StatusCode, p.Errors
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	defer client.CloseIdleConnections()
	logged := func(step string) {
		t.Helper()
		resp, err := client.Get(strings.Replace(h.base, "http://", "https://", 1) + "/api/x")
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		resp.Body.Close()
		alog.line(t, resp.Header.Get("X-Request-Id"))
	}

	wantLeaf("start", certA)
	logged("start")
	if code, errs := reload(cfg(certB, keyB, "", true)); code != 200 {
		t.Fatalf("renewed certificate: %d %v", code, errs)
	}
	wantLeaf("after renewal", certB)

	// The refused config would also turn the access log off.
	missing := filepath.Join(t.TempDir(), "gone.crt")
	code, errs := reload(cfg(missing, keyB, "", false))
	wantErr := regexp.MustCompile(`^` + regexp.QuoteMeta(filepath.Join(h.dir, "gateway.yaml")) + `:2:\d+: server\.tls: .*gone\.crt`)
	if code != 400 || len(errs) != 1 || !wantErr.MatchString(errs[0]) {
		t.Fatalf("unreadable certificate: %d %q, want one error matching %s", code, errs, wantErr)
	}
	wantLeaf("after the refused reload", certB)
	client.CloseIdleConnections()
	logged("after the refused reload")

	code, errs = reload(cfg(certB, keyB, `, min_version: "1.3"`, true))
	if code != 400 || len(errs) != 1 || !strings.Contains(errs[0], "server.tls.min_version") || !strings.Contains(errs[0], "restart") {
		t.Fatalf("min_version change: %d %q, want a refusal naming server.tls.min_version", code, errs)
	}
	if _, err := leaf(tls.VersionTLS12); err != nil {
		t.Fatalf("a TLS 1.2 client after the refused min_version change: %v", err)
	}
}

// TestRefusedCompileKeepsAccessLog: a config that passes validation but
// fails to compile leaves the process-wide settings of the running one
// (here the access log) alone.
func TestRefusedCompileKeepsAccessLog(t *testing.T) {
	a := echoUpstream(t, "a")
	yaml := strings.Replace(fmt.Sprintf(baseConfig, a.URL), "access_log: false", "access_log: true", 1)
	alog := newAccessLines()
	h := startWith(t, yaml, Options{AccessLog: alog})
	next, err := config.LoadBytes("next.yaml", []byte(strings.Replace(yaml, "access_log: true", "access_log: false", 1)))
	if err != nil {
		t.Fatal(err)
	}
	next.Routes[0].Upstream = "no-such-upstream" // past validation, so compile is what fails
	if err := h.gw.Apply(next); err == nil {
		t.Fatal("Apply of a route with an unknown upstream succeeded")
	}
	resp := getJSON(t, h.base+"/api/x", nil, nil)
	alog.line(t, resp.Header.Get("X-Request-Id"))
}

// TestRefusedCompileLeavesRegistriesInForce: a reload that passes
// validation but fails to compile (here: a route naming an upstream that
// does not exist) must leave the running config wholly in force. The
// upstream it removes keeps its health checker, series and place in the
// admin view, and the SLO objective it changes stays as it was.
func TestRefusedCompileLeavesRegistriesInForce(t *testing.T) {
	a := echoUpstream(t, "a")
	var bDown atomic.Bool
	b := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" && bDown.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "{}")
	}))
	t.Cleanup(b.Close)
	const yaml = `version: 1
server: {listen: "127.0.0.1:0", shutdown_timeout: 5s}
admin: {listen: "127.0.0.1:0"}
logging: {access_log: false}
upstreams:
  a: {targets: [{url: "%s"}]}
  b:
    targets: [{url: "%s"}]
    health_check: {path: /health, interval: 20ms, timeout: 20ms, unhealthy_threshold: 1, healthy_threshold: 1}
routes:
  - {name: a, match: {path: "/api/*"}, upstream: a, public: true}
%s
slos:
  - {name: avail, route: a, objective: %s}
`
	h := start(t, fmt.Sprintf(yaml, a.URL, b.URL, `  - {name: b, match: {path: "/b/*"}, upstream: b, public: true}`, "99"))
	// The next config drops upstream b (and its route) and lowers the
	// objective; it validates, and compiling it fails.
	next, err := config.LoadBytes("next.yaml", []byte(strings.Replace(fmt.Sprintf(yaml, a.URL, b.URL, "", "90"), "  b:\n    targets", "  unused:\n    targets", 1)))
	if err != nil {
		t.Fatal(err)
	}
	delete(next.Upstreams, "unused")
	next.Routes[0].Upstream = "no-such-upstream"
	if err := h.gw.Apply(next); err == nil {
		t.Fatal("Apply of a route with an unknown upstream succeeded")
	}

	var found bool
	for _, u := range h.gw.ups.Snapshot() {
		found = found || u.Name == "b" && len(u.Targets) == 1 && u.Targets[0].URL == b.URL
	}
	if !found {
		t.Errorf("upstream b of the running config left the admin view: %+v", h.gw.ups.Snapshot())
	}
	if s := h.gw.slo.Snapshot(); len(s) != 1 || s[0].Objective != 99 {
		t.Errorf("SLO after the refused reload: %+v, want objective 99", s)
	}
	// b's health checker still runs: b failing its checks is seen.
	bDown.Store(true)
	deadline := time.Now().Add(5 * time.Second)
	for {
		m := getBody(t, h.admin+"/metrics")
		if strings.Contains(m, fmt.Sprintf(`portico_upstream_healthy{target=%q,upstream="b"} 0`, b.URL)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("b's failing health checks went unseen after the refused reload:\n%s", grepLines(m, "portico_upstream_healthy"))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if resp := getJSON(t, h.base+"/api/x", nil, nil); resp.StatusCode != 200 {
		t.Fatalf("route a after the refused reload: %d", resp.StatusCode)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// TestClientRequestID: a client's X-Request-Id is kept only when it is 1-128
// characters of [A-Za-z0-9._-]; whatever is used appears exactly once in the
// response, the upstream request and the access log.
func TestClientRequestID(t *testing.T) {
	up, _ := recordingUpstream(t)
	alog := newAccessLines()
	h := startWith(t, strings.Replace(fmt.Sprintf(baseConfig, up.URL), "access_log: false", "access_log: true", 1), Options{AccessLog: alog})
	addr := strings.TrimPrefix(h.base, "http://")
	valid := regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)
	cases := []struct {
		name    string
		headers string // raw header lines
		keep    string // the id that must be kept; "" for a generated one
	}{
		{"one character", "X-Request-Id: a\r\n", "a"},
		{"128 characters", "X-Request-Id: " + strings.Repeat("A.b_c-9", 18) + "xy\r\n", strings.Repeat("A.b_c-9", 18) + "xy"},
		{"129 characters", "X-Request-Id: " + strings.Repeat("x", 129) + "\r\n", ""},
		{"space inside", "X-Request-Id: a b\r\n", ""},
		{"comma", "X-Request-Id: a,b\r\n", ""},
		{"slash", "X-Request-Id: a/b\r\n", ""},
		{"quote", "X-Request-Id: a\"b\r\n", ""},
		{"non-ASCII", "X-Request-Id: caf\xc3\xa9\r\n", ""},
		{"empty", "X-Request-Id: \r\n", ""},
		{"surrounding spaces", "X-Request-Id:   padded  \r\n", "padded"},
		{"two headers, first valid", "X-Request-Id: first\r\nX-Request-Id: second\r\n", "first"},
		{"two headers, first invalid", "X-Request-Id: bad id\r\nX-Request-Id: good\r\n", ""},
		{"one line, two values", "X-Request-Id: one, two\r\n", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp, body := rawResponse(t, addr, "GET /api/x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"+c.headers+"\r\n")
			ids := resp.Header.Values("X-Request-Id")
			if resp.StatusCode != 200 || len(ids) != 1 {
				t.Fatalf("%d, X-Request-Id %q", resp.StatusCode, ids)
			}
			id := ids[0]
			if c.keep != "" && id != c.keep {
				t.Errorf("id %q, want the client's %q", id, c.keep)
			}
			if c.keep == "" && (!valid.MatchString(id) || strings.Contains(c.headers, id)) {
				t.Errorf("id %q, want a generated one", id)
			}
			if s := decodeSeen(t, body); len(s.RequestID) != 1 || s.RequestID[0] != id {
				t.Errorf("upstream saw X-Request-Id %q, want just %q", s.RequestID, id)
			}
			alog.line(t, id)
		})
	}
}

// TestClientIPFromForwardedFor: with the peer trusted, the client is the
// rightmost X-Forwarded-For address outside trusted_proxies, across header
// lines and spaces, with IPv6 written bare, in brackets or with a port;
// with the peer not trusted the header is ignored and replaced. Forwarded
// is neither read nor passed on.
func TestClientIPFromForwardedFor(t *testing.T) {
	up, _ := recordingUpstream(t)
	with := func(trusted string) string {
		return strings.Replace(strings.Replace(fmt.Sprintf(baseConfig, up.URL), "access_log: false", "access_log: true", 1),
			"shutdown_timeout: 5s", "shutdown_timeout: 5s, trusted_proxies: "+trusted, 1)
	}
	alog := newAccessLines()
	h := startWith(t, with(`["127.0.0.0/8", "10.0.0.0/8", "2001:db8:f::/48"]`), Options{AccessLog: alog})
	addr := strings.TrimPrefix(h.base, "http://")
	ask := func(t *testing.T, headers string) (clientIP string, s seen) {
		t.Helper()
		resp, body := rawResponse(t, addr, "GET /api/x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"+headers+"\r\n")
		if resp.StatusCode != 200 {
			t.Fatalf("%d %s", resp.StatusCode, body)
		}
		line := alog.line(t, resp.Header.Get("X-Request-Id"))
		ip, _ := line["client_ip"].(string)
		return ip, decodeSeen(t, body)
	}
	cases := []struct {
		name, headers, client string
	}{
		{"no header", "", "127.0.0.1"},
		{"one address", "X-Forwarded-For: 203.0.113.9\r\n", "203.0.113.9"},
		{"rightmost untrusted", "X-Forwarded-For: 198.51.100.1, 203.0.113.9, 10.0.0.2\r\n", "203.0.113.9"},
		{"across header lines", "X-Forwarded-For: 198.51.100.1\r\nX-Forwarded-For: 203.0.113.9 ,10.0.0.2\r\n", "203.0.113.9"},
		{"client on an earlier line", "X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-For: 10.0.0.2\r\n", "203.0.113.9"},
		{"spaces and tabs", "X-Forwarded-For:  198.51.100.1 ,\t203.0.113.9\t, 10.0.0.2 \r\n", "203.0.113.9"},
		{"IPv4-mapped IPv6", "X-Forwarded-For: ::ffff:203.0.113.9\r\n", "203.0.113.9"},
		{"IPv6", "X-Forwarded-For: 2001:db8::7, 2001:db8:f::1\r\n", "2001:db8::7"},
		{"IPv6 in brackets", "X-Forwarded-For: [2001:db8::7]\r\n", "2001:db8::7"},
		{"IPv6 with port", "X-Forwarded-For: [2001:db8::7]:4711, [2001:db8:f::1]:443\r\n", "2001:db8::7"},
		{"IPv4 with port", "X-Forwarded-For: 203.0.113.9:4711, 10.0.0.2:80\r\n", "203.0.113.9"},
		{"every hop trusted", "X-Forwarded-For: 10.0.0.3, 10.0.0.2\r\n", "10.0.0.3"},
		// A hop that is no address ends the walk at the last trusted
		// one: nothing left of it can be believed.
		{"garbage between", "X-Forwarded-For: 203.0.113.9, unknown, 10.0.0.2\r\n", "10.0.0.2"},
		{"empty hop", "X-Forwarded-For: 203.0.113.9,, 10.0.0.2\r\n", "10.0.0.2"},
		{"garbage left of the client", "X-Forwarded-For: <script>, 203.0.113.9\r\n", "203.0.113.9"},
		{"Forwarded is not read", "Forwarded: for=203.0.113.9\r\n", "127.0.0.1"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ip, s := ask(t, c.headers)
			if ip != c.client {
				t.Errorf("client_ip %q, want %q", ip, c.client)
			}
			if len(s.Forwarded) != 0 {
				t.Errorf("the upstream got Forwarded %q", s.Forwarded)
			}
			if len(s.XFF) != 1 || !strings.HasSuffix(s.XFF[0], "127.0.0.1") {
				t.Errorf("the upstream got X-Forwarded-For %q, want one line ending in the peer", s.XFF)
			}
		})
	}

	// An untrusted peer's header is replaced by the peer.
	if resp := h.rewrite(t, with(`["10.0.0.0/8"]`)); resp.StatusCode != 200 {
		t.Fatalf("reload: %d", resp.StatusCode)
	}
	ip, s := ask(t, "X-Forwarded-For: 203.0.113.9\r\n")
	if ip != "127.0.0.1" || len(s.XFF) != 1 || s.XFF[0] != "127.0.0.1" {
		t.Errorf("untrusted peer: client_ip %q, upstream X-Forwarded-For %q; want the peer alone", ip, s.XFF)
	}
}

// TestProxyProtocolClientWinsOverForwardedFor: behind an L4 balancer the
// client is the PROXY header's source; an X-Forwarded-For that client
// sends is its own claim, not the balancer's, and is dropped.
func TestProxyProtocolClientWinsOverForwardedFor(t *testing.T) {
	up, _ := recordingUpstream(t)
	alog := newAccessLines()
	h := startWith(t, strings.Replace(strings.Replace(fmt.Sprintf(baseConfig, up.URL), "access_log: false", "access_log: true", 1),
		"shutdown_timeout: 5s", `shutdown_timeout: 5s, proxy_protocol: true, trusted_proxies: ["127.0.0.0/8"]`, 1), Options{AccessLog: alog})
	resp, body := rawResponse(t, strings.TrimPrefix(h.base, "http://"),
		"PROXY TCP4 203.0.113.7 198.51.100.1 4242 443\r\nGET /api/x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nX-Forwarded-For: 198.51.100.66\r\n\r\n")
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	if s := decodeSeen(t, body); len(s.XFF) != 1 || s.XFF[0] != "203.0.113.7" {
		t.Errorf("upstream X-Forwarded-For %q, want just the PROXY source", s.XFF)
	}
	if ip := alog.line(t, resp.Header.Get("X-Request-Id"))["client_ip"]; ip != "203.0.113.7" {
		t.Errorf("client_ip %v, want the PROXY source", ip)
	}
}

// TestInputLimitsOverSockets: max_body_bytes is exact with Content-Length
// and chunked bodies alike, answered with 413 problem+json before the
// upstream is reached when the length is declared (with Expect:
// 100-continue, before the client is told to send); a route may raise it;
// an over-long request line gets the server's plain 431.
func TestInputLimitsOverSockets(t *testing.T) {
	up, count := recordingUpstream(t)
	h := start(t, fmt.Sprintf(`version: 1
server: {listen: "127.0.0.1:0", max_header_bytes: 4096, max_body_bytes: 1KiB}
admin: {listen: "127.0.0.1:0"}
logging: {access_log: false}
upstreams:
  up: {targets: [{url: "%s"}]}
routes:
  - name: small
    match: {path: "/small/*"}
    upstream: up
    public: true
  - name: large
    match: {path: "/large/*"}
    upstream: up
    public: true
    max_body_bytes: 4KiB
`, up.URL))
	addr := strings.TrimPrefix(h.base, "http://")
	post := func(path, headers, body string) string {
		return "POST " + path + " HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n" + headers + "\r\n" + body
	}
	chunked := func(n int) string {
		return fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", n, strings.Repeat("c", n))
	}
	cases := []struct {
		name, raw string
		status    int
		bodyLen   int  // what the upstream must read, for a 200
		reached   bool // whether the upstream may see the request
	}{
		{"length at the limit", post("/small/a", "Content-Length: 1024\r\n", strings.Repeat("x", 1024)), 200, 1024, true},
		{"length over the limit", post("/small/a", "Content-Length: 1025\r\n", strings.Repeat("x", 1025)), 413, 0, false},
		{"chunked at the limit", post("/small/a", "Transfer-Encoding: chunked\r\n", chunked(1024)), 200, 1024, true},
		{"expect 100-continue over the limit", post("/small/a", "Content-Length: 5000\r\nExpect: 100-continue\r\n", ""), 413, 0, false},
		{"route raises the limit", post("/large/a", "Content-Length: 4096\r\n", strings.Repeat("x", 4096)), 200, 4096, true},
		{"over the route's limit", post("/large/a", "Content-Length: 4097\r\n", strings.Repeat("x", 4097)), 413, 0, false},
		{"request line over max_header_bytes", "GET /small/" + strings.Repeat("a", 16<<10) + " HTTP/1.1\r\nHost: gw\r\n\r\n", 431, 0, false},
		// Last: the upstream may still be reading it when the 413 is out.
		{"chunked over the limit", post("/small/a", "Transfer-Encoding: chunked\r\n", chunked(1025)), 413, 0, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := count.Load()
			out := rawExchange(t, addr, c.raw)
			if strings.HasPrefix(out, "HTTP/1.1 100") {
				t.Fatalf("told the client to send an oversized body: %q", out)
			}
			resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(out)), nil)
			if err != nil {
				t.Fatalf("%v: %q", err, out)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != c.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, c.status, body)
			}
			switch {
			case c.status == 200:
				if s := decodeSeen(t, string(body)); s.BodyLen != c.bodyLen {
					t.Errorf("upstream read %d bytes, want %d", s.BodyLen, c.bodyLen)
				}
			case c.status == 413:
				var p map[string]any
				if resp.Header.Get("Content-Type") != "application/problem+json" || json.Unmarshal(body, &p) != nil ||
					p["type"] != "urn:portico:problem:body_too_large" || p["request_id"] != resp.Header.Get("X-Request-Id") {
					t.Errorf("413 is not the body_too_large problem: %s %s", resp.Header.Get("Content-Type"), body)
				}
			}
			if !c.reached && count.Load() != before {
				t.Errorf("the upstream was contacted")
			}
		})
	}
}

// TestUnusualRequestForms: HTTP/1.0 without Host, the absolute form (whose
// host, not the Host header, routes it, RFC 9112 section 3.2.2), Host with
// a port, capitals or a trailing dot, OPTIONS *, CONNECT, and a method a
// route does not list.
func TestUnusualRequestForms(t *testing.T) {
	up, count := recordingUpstream(t)
	other, _ := recordingUpstream(t)
	h := start(t, fmt.Sprintf(`version: 1
server: {listen: "127.0.0.1:0"}
admin: {listen: "127.0.0.1:0"}
logging: {access_log: false}
upstreams:
  up: {targets: [{url: "%s"}]}
  other: {targets: [{url: "%s"}]}
routes:
  - name: api
    match: {host: api.example.com, path: "/r/*", methods: [GET]}
    upstream: up
    public: true
  - name: any-host
    match: {path: "/r/*", methods: [POST]}
    upstream: other
    public: true
  - name: open
    match: {path: "/open/*"}
    upstream: up
    public: true
  - name: exact
    match: {path: "/exact"}
    upstream: up
    public: true
`, up.URL, other.URL))
	addr := strings.TrimPrefix(h.base, "http://")
	upHost := strings.TrimPrefix(up.URL, "http://")

	t.Run("HTTP/1.0 without Host", func(t *testing.T) {
		out := rawExchange(t, addr, "GET /open/a HTTP/1.0\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(out)), &http.Request{Method: "GET"})
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || resp.ProtoMinor != 0 || len(resp.TransferEncoding) != 0 || decodeSeen(t, string(b)).RequestURI != "/open/a" {
			t.Errorf("%s %d TE=%v %s", resp.Proto, resp.StatusCode, resp.TransferEncoding, b)
		}
	})
	routed := []struct {
		name, raw string
		status    int
		upstream  string // "up" or "other" for a 200
		allow     string
	}{
		{"absolute form routes by its host", "GET http://api.example.com/r/x HTTP/1.1\r\nHost: elsewhere\r\n", 200, "up", ""},
		{"absolute form of another host", "GET http://elsewhere/r/x HTTP/1.1\r\nHost: api.example.com\r\n", 405, "", "POST"},
		{"Host with port, capitals and a dot", "GET /r/x HTTP/1.1\r\nHost: API.Example.COM.:8443\r\n", 200, "up", ""},
		{"a host tier falls through by method", "POST /r/x HTTP/1.1\r\nHost: api.example.com\r\nContent-Length: 0\r\n", 200, "other", ""},
		{"405 lists every tier's methods", "DELETE /r/x HTTP/1.1\r\nHost: api.example.com\r\n", 405, "", "GET, HEAD, POST"},
		{"TRACE on routes that do not list it", "TRACE /r/x HTTP/1.1\r\nHost: api.example.com\r\n", 405, "", "GET, HEAD, POST"},
		{"trailing slash is another path", "GET /exact/ HTTP/1.1\r\nHost: gw\r\n", 404, "", ""},
		{"CONNECT names no path", "CONNECT " + upHost + " HTTP/1.1\r\nHost: " + upHost + "\r\n", 400, "", ""},
	}
	for _, c := range routed {
		t.Run(c.name, func(t *testing.T) {
			before := count.Load()
			resp, body := rawResponse(t, addr, strings.Replace(c.raw, "\r\n", "\r\nConnection: close\r\n", 1)+"\r\n")
			if resp.StatusCode != c.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, c.status, body)
			}
			if c.status != 200 {
				if resp.Header.Get("Content-Type") != "application/problem+json" {
					t.Errorf("want problem+json, got %q: %s", resp.Header.Get("Content-Type"), body)
				}
				if got := resp.Header.Get("Allow"); got != c.allow {
					t.Errorf("Allow %q, want %q", got, c.allow)
				}
				if count.Load() != before {
					t.Errorf("the upstream was contacted")
				}
				return
			}
			wantHost := upHost
			if c.upstream == "other" {
				wantHost = strings.TrimPrefix(other.URL, "http://")
			}
			if s := decodeSeen(t, body); s.Host != wantHost || s.RequestURI != "/r/x" {
				t.Errorf("reached %s%s, want %s /r/x", s.Host, s.RequestURI, c.upstream)
			}
		})
	}
	t.Run("OPTIONS *", func(t *testing.T) {
		before := count.Load()
		resp, _ := rawResponse(t, addr, "OPTIONS * HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
		if resp.StatusCode != 200 || count.Load() != before {
			t.Errorf("OPTIONS *: %d, upstream contacted %t", resp.StatusCode, count.Load() != before)
		}
	})
}

// TestAdminEndpoints: every admin endpoint of DESIGN.md answers on the
// admin listener with its documented shape, and none of them (nor the
// profiler) is reachable through the public listener.
func TestAdminEndpoints(t *testing.T) {
	a := echoUpstream(t, "a")
	h := start(t, fmt.Sprintf(baseConfig, a.URL))
	getJSON(t, h.base+"/api/x", nil, nil) // something for the stats
	type check func(t *testing.T, body string)
	jsonHas := func(v any, keys ...string) check {
		return func(t *testing.T, body string) {
			t.Helper()
			if err := json.Unmarshal([]byte(body), v); err != nil {
				t.Fatalf("%v: %s", err, body)
			}
			for _, k := range keys {
				if !strings.Contains(body, `"`+k+`"`) {
					t.Errorf("no %q in %s", k, body)
				}
			}
		}
	}
	endpoints := []struct {
		method, path, ctype string
		check               check
	}{
		{"GET", "/healthz", "application/json", jsonHas(&map[string]string{}, "status")},
		{"GET", "/readyz", "application/json", func(t *testing.T, b string) {
			if !strings.Contains(b, `"ready"`) {
				t.Errorf("%s", b)
			}
		}},
		{"GET", "/metrics", "text/plain", func(t *testing.T, b string) {
			for _, m := range []string{"portico_requests_total{", "portico_build_info{", "portico_config_reloads_total", "portico_upstream_requests_total{"} {
				if !strings.Contains(b, m) {
					t.Errorf("/metrics lacks %s", m)
				}
			}
		}},
		{"GET", "/admin/routes", "application/json", jsonHas(&[]RouteInfo{}, "name", "kind", "path", "upstreams")},
		{"GET", "/admin/upstreams", "application/json", jsonHas(&[]map[string]any{}, "name", "targets", "healthy")},
		{"GET", "/admin/stats", "application/json", jsonHas(&map[string]any{}, "routes", "last_1m", "last_5m", "p50_ms", "p95_ms", "p99_ms")},
		{"GET", "/admin/slo", "application/json", jsonHas(&[]map[string]any{})},
		{"POST", "/admin/reload", "application/json", jsonHas(&map[string]any{}, "status")},
		{"GET", "/dashboard/", "text/html", func(t *testing.T, b string) {
			if !strings.Contains(b, "<html") {
				t.Errorf("not a page: %.80s", b)
			}
		}},
	}
	for _, e := range endpoints {
		t.Run(e.method+" "+e.path, func(t *testing.T) {
			req, _ := http.NewRequest(e.method, h.admin+e.path, nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), e.ctype) {
				t.Fatalf("admin: %d %s: %.200s", resp.StatusCode, resp.Header.Get("Content-Type"), b)
			}
			e.check(t, string(b))

			req, _ = http.NewRequest(e.method, h.base+e.path, nil)
			resp, err = http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 404 || !strings.Contains(string(b), "route_not_found") {
				t.Errorf("public listener: %d %.200s, want the gateway's own 404", resp.StatusCode, b)
			}
		})
	}
	resp, err := http.Get(h.base + "/debug/pprof/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Errorf("profiler on the public listener: %d", resp.StatusCode)
	}
	resp, err = http.Get(h.admin + "/admin/reload")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 405 || resp.Header.Get("Allow") != "POST" {
		t.Errorf("GET /admin/reload: %d Allow %q", resp.StatusCode, resp.Header.Get("Allow"))
	}
}

// TestValidatedConfigCompiles: the forms that validation accepts at the
// edge of what the compiled stages take (the invalid neighbours are
// fixtures in internal/config) also build a gateway, so `portico validate`
// never passes a config that `portico run` refuses.
func TestValidatedConfigCompiles(t *testing.T) {
	cfg, err := config.LoadBytes("edge.yaml", []byte(`version: 1
server: {listen: "127.0.0.1:0"}
admin: {listen: "127.0.0.1:0"}
upstreams:
  app: {targets: [{url: "http://127.0.0.1:7001"}]}
routes:
  - name: r
    match: {path: "/api/*"}
    upstream: app
    public: true
    rewrite: {strip_prefix: /api/}
    compression: [gzip]
    compression_min_bytes: 64MiB
    cors: {origins: ["https://*.example.com:8443", "http://localhost:3000", "HTTPS://APP.EXAMPLE.COM"]}
`))
	if err != nil {
		t.Fatal(err)
	}
	gw, err := New(cfg, Options{AccessLog: io.Discard})
	if err != nil {
		t.Fatalf("a config that validates does not compile: %v", err)
	}
	gw.Close()
}
