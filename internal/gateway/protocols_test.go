package gateway

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/portico-gw/portico/internal/config"
)

// selfSigned writes a certificate for 127.0.0.1 and returns its paths and pool.
func selfSigned(t *testing.T) (certPath, keyPath string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	dir := t.TempDir()
	certPath, keyPath = filepath.Join(dir, "gw.crt"), filepath.Join(dir, "gw.key")
	os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certPath, keyPath, pool
}

func TestTLSNegotiatesHTTP2(t *testing.T) {
	up := echoUpstream(t, "a")
	certPath, keyPath, pool := selfSigned(t)
	cfg := strings.Replace(fmt.Sprintf(baseConfig, up.URL), `server: {listen: "127.0.0.1:0", shutdown_timeout: 5s}`,
		fmt.Sprintf(`server: {listen: "127.0.0.1:0", shutdown_timeout: 5s, tls: {cert: %q, key: %q}}`, certPath, keyPath), 1)
	h := start(t, cfg)
	base := strings.Replace(h.base, "http://", "https://", 1)

	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Get(base + "/api/x")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.ProtoMajor != 2 || !strings.Contains(string(body), `"upstream":"a"`) {
		t.Fatalf("TLS: %d %s %s", resp.StatusCode, resp.Proto, body)
	}

	// A reload that replaces the server (a new idle_timeout) keeps HTTP/2:
	// on the connection the client already holds and on a new one.
	resp = h.rewrite(t, strings.Replace(cfg, `shutdown_timeout: 5s,`, `shutdown_timeout: 5s, idle_timeout: 30s,`, 1))
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("reload: %d", resp.StatusCode)
	}
	fresh := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}
	defer fresh.CloseIdleConnections()
	getsHTTP2(t, base+"/api/after-reload", map[string]*http.Transport{"held": tr, "new": fresh})

	// curl --http2 as docs/operations.md shows it.
	if curl, err := exec.LookPath("curl"); err == nil {
		out, err := exec.Command(curl, "--http2", "-s", "--cacert", certPath, "-o", "/dev/null", "-w", "%{http_version} %{http_code}", base+"/api/x").CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "2 200" {
			t.Errorf("curl --http2: %v %q", err, out)
		}
	}
}

// getsHTTP2 asks url through each transport and wants 200 over HTTP/2.
func getsHTTP2(t *testing.T, url string, transports map[string]*http.Transport) {
	t.Helper()
	for name, rt := range transports {
		resp, err := (&http.Client{Transport: rt}).Get(url)
		if err != nil {
			t.Fatalf("%s connection after the reload: %v", name, err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.ProtoMajor != 2 {
			t.Fatalf("%s connection after the reload: %d %s", name, resp.StatusCode, resp.Proto)
		}
	}
}

func TestH2CPriorKnowledge(t *testing.T) {
	up := echoUpstream(t, "a")
	cfg := strings.Replace(fmt.Sprintf(baseConfig, up.URL), `shutdown_timeout: 5s}`, `shutdown_timeout: 5s, h2c: true}`, 1)
	h := start(t, cfg)
	protocols := new(http.Protocols)
	protocols.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: protocols}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Get(h.base + "/api/x")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.ProtoMajor != 2 {
		t.Fatalf("h2c: %d %s", resp.StatusCode, resp.Proto)
	}

	// A reload that replaces the server keeps h2c, on the held connection
	// and on a new one.
	resp = h.rewrite(t, strings.Replace(cfg, `h2c: true}`, `h2c: true, idle_timeout: 30s}`, 1))
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("reload: %d", resp.StatusCode)
	}
	fresh := &http.Transport{Protocols: protocols}
	defer fresh.CloseIdleConnections()
	getsHTTP2(t, h.base+"/api/after-reload", map[string]*http.Transport{"held": tr, "new": fresh})
}

// wsEcho answers a WebSocket upgrade with 101 and then echoes raw bytes:
// enough to show that the gateway passes the upgrade and both directions.
func wsEcho(t *testing.T) *httptest.Server {
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
			http.Error(w, "upgrade required", http.StatusUpgradeRequired)
			return
		}
		conn, rw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: test\r\n\r\n")
		rw.Flush()
		buf := make([]byte, 1024)
		for {
			n, err := rw.Read(buf)
			if n > 0 {
				conn.Write(buf[:n])
			}
			if err != nil {
				return
			}
		}
	}))
	t.Cleanup(s.Close)
	return s
}

func TestWebSocketPassThrough(t *testing.T) {
	up := wsEcho(t)
	h := start(t, fmt.Sprintf(`version: 1
server: {listen: "127.0.0.1:0", shutdown_timeout: 2s}
admin: {listen: "127.0.0.1:0"}
logging: {access_log: false}
upstreams:
  ws: {targets: [{url: "%s"}]}
routes:
  - name: ws
    match: {path: "/ws"}
    upstream: ws
    public: true
    websocket: true
`, up.URL))
	conn, err := net.Dial("tcp", strings.TrimPrefix(h.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(conn, "GET /ws HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %d", resp.StatusCode)
	}
	for _, msg := range []string{"hello", "through the gateway"} {
		if _, err := conn.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(br, buf); err != nil || string(buf) != msg {
			t.Fatalf("echo: %q %v", buf, err)
		}
	}
	// The connection counts in the metrics while open.
	m, _ := http.Get(h.admin + "/metrics")
	mb, _ := io.ReadAll(m.Body)
	m.Body.Close()
	if !strings.Contains(string(mb), `portico_websocket_connections{route="ws"} 1`) {
		t.Errorf("open WebSocket not counted:\n%s", grepLines(string(mb), "websocket"))
	}
	// Shutdown closes the upgraded connection once the drain is over.
	h.stop(t)
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := br.ReadByte(); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("WebSocket still open after shutdown: %v", err)
	}
}

// An idle keep-alive connection is released (no goroutine or buffers in
// the gateway) and serves its next request on the same socket; the gauge
// counts it while it is released. A reload turns releasing on.
func TestIdleConnectionReleased(t *testing.T) {
	up := echoUpstream(t, "a")
	withDelay := func(d string) string {
		return strings.Replace(fmt.Sprintf(baseConfig, up.URL), `shutdown_timeout: 5s}`, `shutdown_timeout: 5s, idle_release_after: `+d+`}`, 1)
	}
	h := start(t, withDelay("0s"))
	conn, err := net.Dial("tcp", strings.TrimPrefix(h.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(conn)
	get := func(path string) {
		t.Helper()
		fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: gw\r\n\r\n", path)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(b), path) {
			t.Fatalf("%s: %d %s", path, resp.StatusCode, b)
		}
	}
	released := func() string {
		resp, err := http.Get(h.admin + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for l := range strings.SplitSeq(string(b), "\n") {
			if strings.HasPrefix(l, "portico_idle_connections_released ") {
				return l
			}
		}
		return "(no sample)"
	}
	get("/api/zero")
	time.Sleep(100 * time.Millisecond)
	if got := released(); got != "portico_idle_connections_released 0" {
		t.Fatalf("with idle_release_after: 0s: %q", got)
	}
	resp := h.rewrite(t, withDelay("30ms"))
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("reload: %d", resp.StatusCode)
	}
	get("/api/one")
	deadline := time.Now().Add(5 * time.Second)
	for released() != "portico_idle_connections_released 1" {
		if time.Now().After(deadline) {
			t.Fatalf("gauge: %q, want 1", released())
		}
		time.Sleep(10 * time.Millisecond)
	}
	get("/api/two")
	if got := released(); got != "portico_idle_connections_released 0" {
		t.Errorf("gauge while the connection is served again: %q", got)
	}
}

// A reload that changes the timeouts or the header limit applies them to
// new connections on the same socket, lets a request in flight finish, and
// closes connections idle at the reload; a reload that changes none of them
// leaves open connections alone.
func TestReloadAppliesServerSettings(t *testing.T) {
	up := echoUpstream(t, "a")
	cfg := fmt.Sprintf(baseConfig, up.URL)
	h := start(t, cfg)
	addr := strings.TrimPrefix(h.base, "http://")
	dial := func() (net.Conn, *bufio.Reader) {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(10 * time.Second))
		return c, bufio.NewReader(c)
	}
	get := func(c net.Conn, br *bufio.Reader, path, extra string) int {
		t.Helper()
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: gw\r\n%s\r\n", path, extra)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		_, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	// closedWithin reports whether the server closes c within d.
	closedWithin := func(c net.Conn, br *bufio.Reader, d time.Duration) bool {
		c.SetReadDeadline(time.Now().Add(d))
		_, err := br.ReadByte()
		var ne net.Error
		return err != nil && !(errors.As(err, &ne) && ne.Timeout())
	}
	reload := func(yaml string) {
		t.Helper()
		resp := h.rewrite(t, yaml)
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("reload: %d %s", resp.StatusCode, b)
		}
	}

	// A reload that changes only routes keeps connections open.
	idle, idleR := dial()
	if code := get(idle, idleR, "/api/before", ""); code != 200 {
		t.Fatalf("before: %d", code)
	}
	reload(strings.Replace(cfg, `path: "/api/*"`, `path: "/api/*", methods: [GET, POST]`, 1))
	if code := get(idle, idleR, "/api/routes-only", ""); code != 200 {
		t.Fatalf("after a routes-only reload, the open connection: %d", code)
	}

	// A request in flight across the change.
	busy, busyR := dial()
	inFlight := make(chan int, 1)
	go func() {
		fmt.Fprintf(busy, "GET /api/slow?sleep=400ms HTTP/1.1\r\nHost: gw\r\n\r\n")
		resp, err := http.ReadResponse(busyR, nil)
		if err != nil {
			inFlight <- 0
			return
		}
		_, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		inFlight <- resp.StatusCode
	}()
	time.Sleep(100 * time.Millisecond)
	reload(strings.Replace(cfg, `shutdown_timeout: 5s}`,
		`shutdown_timeout: 5s, read_header_timeout: 200ms, idle_timeout: 300ms, max_header_bytes: 1024}`, 1))
	if code := <-inFlight; code != 200 {
		t.Errorf("the request in flight at the reload: %d, want 200", code)
	}
	if !closedWithin(idle, idleR, 2*time.Second) {
		t.Error("a connection idle at the reload stayed open")
	}

	big, bigR := dial()
	if code := get(big, bigR, "/api/big", "X-Big: "+strings.Repeat("b", 8<<10)+"\r\n"); code != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("an 8 KiB header after max_header_bytes: 1024: %d, want 431", code)
	}
	slow, slowR := dial()
	fmt.Fprintf(slow, "GET /api/half HTTP/1.1\r\nHost: gw\r\n") // the headers never end
	if !closedWithin(slow, slowR, 2*time.Second) {
		t.Error("read_header_timeout: 200ms did not close a connection whose headers never ended")
	}
	fresh, freshR := dial()
	if code := get(fresh, freshR, "/api/fresh", ""); code != 200 {
		t.Fatalf("fresh: %d", code)
	}
	if !closedWithin(fresh, freshR, 2*time.Second) {
		t.Error("idle_timeout: 300ms did not close an idle connection")
	}
}

// Behind a load balancer speaking the PROXY protocol, trusted_proxies says
// which peers send the header, and a reload changes it for the next
// connection.
func TestProxyProtocolTrustFollowsReload(t *testing.T) {
	up := echoUpstream(t, "a")
	withTrusted := func(prefix string) string {
		return strings.Replace(fmt.Sprintf(baseConfig, up.URL), `shutdown_timeout: 5s}`,
			`shutdown_timeout: 5s, proxy_protocol: true, trusted_proxies: ["`+prefix+`"]}`, 1)
	}
	h := start(t, withTrusted("10.0.0.0/8"))
	clientSeen := func(prefix string) string {
		t.Helper()
		c, err := net.Dial("tcp", strings.TrimPrefix(h.base, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(c, "%sGET /api/who HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n", prefix)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var got struct{ XFF string }
		if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
			t.Fatalf("%d: %v", resp.StatusCode, err)
		}
		return got.XFF
	}
	const header = "PROXY TCP4 203.0.113.7 198.51.100.1 4242 443\r\n"
	if got := clientSeen(""); got != "127.0.0.1" {
		t.Fatalf("an untrusted peer without a header: upstream saw %q", got)
	}
	resp := h.rewrite(t, withTrusted("127.0.0.0/8"))
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("reload: %d", resp.StatusCode)
	}
	if got := clientSeen(header); got != "203.0.113.7" {
		t.Fatalf("a trusted peer's PROXY header after the reload: upstream saw %q", got)
	}
}

// TestRedirectListenerClosesIdleConnections: the HTTP-to-HTTPS redirect
// listener closes keep-alive connections after the server's idle_timeout
// and refuses headers over max_header_bytes, as the public listener does.
func TestRedirectListenerClosesIdleConnections(t *testing.T) {
	cert, key, _ := selfSigned(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "gateway.yaml")
	yaml := fmt.Sprintf(`version: 1
server: {listen: "127.0.0.1:0", http_redirect_listen: "127.0.0.1:0", idle_timeout: 300ms, max_header_bytes: 4096, shutdown_timeout: 5s, tls: {cert: %q, key: %q}}
admin: {listen: "127.0.0.1:0"}
logging: {access_log: false}
upstreams:
  up: {targets: [{url: "http://127.0.0.1:1"}]}
routes:
  - {name: r, match: {path: "/*"}, upstream: up, public: true}
`, cert, key)
	if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	gw, err := New(cfg, Options{Paths: []string{path}, AccessLog: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	defer gw.Close()
	ls, err := gw.Listen()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- gw.Serve(ctx, ls) }()
	defer func() {
		cancel()
		<-done
	}()
	addr := ls.Redirect.Addr().String()

	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	if _, err := io.WriteString(c, "GET /x HTTP/1.1\r\nHost: gw.test\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusPermanentRedirect {
		t.Fatalf("redirect: %v %v", resp, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	start := time.Now()
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("idle keep-alive connection: %v, want it closed (EOF)", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("idle connection closed after %v, want about the 300ms idle_timeout", d)
	}

	out := rawExchange(t, addr, "GET /x HTTP/1.1\r\nHost: gw.test\r\nX-Big: "+strings.Repeat("a", 8192)+"\r\n\r\n")
	if !strings.HasPrefix(out, "HTTP/1.1 431 ") {
		t.Fatalf("a header over max_header_bytes: %.60q, want 431", out)
	}
}
