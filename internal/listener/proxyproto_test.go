package listener

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/portico-gw/portico/internal/config"
)

// servePP starts an HTTP server behind ProxyProtocol that answers with the
// request's RemoteAddr.
func servePP(t *testing.T, trusted func() []netip.Prefix, timeout time.Duration) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pl := ProxyProtocol(ln, trusted)
	pl.(*ppListener).timeout = timeout
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, r.RemoteAddr)
	}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(pl) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	return ln.Addr().String()
}

// exchange sends prefix plus one HTTP request on a fresh connection (in one
// write, so the header and the request share a segment) and returns the
// response body, or "" when the server closed the connection unanswered.
// headerCase is a connection's first bytes and the RemoteAddr the server
// must see: "" when it closes the connection without an answer, "self"
// for the peer's own address.
type headerCase struct {
	name   string
	prefix []byte
	want   string
}

// checkHeaders runs each case on its own connection to addr.
func checkHeaders(t *testing.T, addr string, tests []headerCase) {
	t.Helper()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := exchange(t, addr, tc.prefix)
			if tc.want == "self" {
				if !strings.HasPrefix(got, "127.0.0.1:") {
					t.Fatalf("RemoteAddr %q, want the peer's own", got)
				}
				return
			}
			if got != tc.want {
				t.Fatalf("RemoteAddr %q, want %q", got, tc.want)
			}
		})
	}
}

func exchange(t *testing.T, addr string, prefix []byte) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	msg := append(append([]byte{}, prefix...), "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"...)
	if _, err := c.Write(msg); err != nil {
		return ""
	}
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return ""
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return string(b)
}

func v2Header(cmd, fam byte, payload []byte) []byte {
	h := append([]byte{}, v2Signature...)
	h = append(h, 0x20|cmd, fam, 0, 0)
	binary.BigEndian.PutUint16(h[14:], uint16(len(payload)))
	return append(h, payload...)
}

func v2Addrs(src, dst netip.AddrPort) []byte {
	var b []byte
	b = append(b, src.Addr().AsSlice()...)
	b = append(b, dst.Addr().AsSlice()...)
	b = binary.BigEndian.AppendUint16(b, src.Port())
	b = binary.BigEndian.AppendUint16(b, dst.Port())
	return b
}

func TestProxyProtocol(t *testing.T) {
	addr := servePP(t, func() []netip.Prefix { return nil }, time.Second)
	src4 := netip.MustParseAddrPort("203.0.113.7:4242")
	dst4 := netip.MustParseAddrPort("198.51.100.1:443")
	src6 := netip.MustParseAddrPort("[2001:db8::7]:4242")
	dst6 := netip.MustParseAddrPort("[2001:db8::1]:443")
	tlv := []byte{0x04, 0x00, 0x03, 'a', 'b', 'c'} // a TLV after the addresses is skipped
	tests := []headerCase{
		{"v1 tcp4", []byte("PROXY TCP4 203.0.113.7 198.51.100.1 4242 443\r\n"), "203.0.113.7:4242"},
		{"v1 tcp6", []byte("PROXY TCP6 2001:db8::7 2001:db8::1 4242 443\r\n"), "[2001:db8::7]:4242"},
		{"v1 unknown", []byte("PROXY UNKNOWN\r\n"), "self"},
		{"v2 tcp4", v2Header(1, 0x11, v2Addrs(src4, dst4)), "203.0.113.7:4242"},
		{"v2 tcp6 with tlv", v2Header(1, 0x21, append(v2Addrs(src6, dst6), tlv...)), "[2001:db8::7]:4242"},
		{"v2 local", v2Header(0, 0x00, nil), "self"},
		{"missing header", nil, ""},
		{"v1 truncated", []byte("PROXY TCP4 203.0.113.7\r\n"), ""},
		{"v1 bad address", []byte("PROXY TCP4 203.0.113.999 198.51.100.1 4242 443\r\n"), ""},
		{"v1 family mismatch", []byte("PROXY TCP4 2001:db8::7 2001:db8::1 4242 443\r\n"), ""},
		// netip.ParseAddr takes anything after '%' as a zone; here it
		// would smuggle a second hop into X-Forwarded-For.
		{"v1 zone", []byte("PROXY TCP6 fe80::7%x,192.0.2.1 2001:db8::1 4242 443\r\n"), ""},
		{"v1 bad port", []byte("PROXY TCP4 203.0.113.7 198.51.100.1 99999 443\r\n"), ""},
		{"v1 no crlf", []byte("PROXY TCP4 203.0.113.7 198.51.100.1 4242 443\n"), ""},
		{"v1 too long", []byte("PROXY TCP4 " + strings.Repeat("1", 120) + "\r\n"), ""},
		{"v2 bad signature", append([]byte("\r\n\r\n\x00\r\nQUIT!"), 0x21, 0x11, 0, 0), ""},
		{"v2 bad version", func() []byte { h := v2Header(1, 0x11, v2Addrs(src4, dst4)); h[12] = 0x11; return h }(), ""},
		{"v2 truncated addresses", v2Header(1, 0x11, []byte{1, 2, 3}), ""},
		{"v2 udp", v2Header(1, 0x12, v2Addrs(src4, dst4)), ""},
	}
	checkHeaders(t, addr, tests)
}

func TestProxyProtocolUntrustedPeerKeepsItsAddress(t *testing.T) {
	// The prefixes are read per connection: a reload changes them for the
	// next one.
	var trusted atomic.Pointer[[]netip.Prefix]
	trusted.Store(&[]netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")})
	addr := servePP(t, func() []netip.Prefix { return *trusted.Load() }, time.Second)
	if got := exchange(t, addr, nil); !strings.HasPrefix(got, "127.0.0.1:") {
		t.Fatalf("untrusted peer without header: RemoteAddr %q", got)
	}
	// A header from an untrusted peer is not believed (it is a bad request).
	if got := exchange(t, addr, []byte("PROXY TCP4 203.0.113.7 198.51.100.1 4242 443\r\n")); strings.Contains(got, "203.0.113.7") {
		t.Fatalf("untrusted peer spoofed its address: %q", got)
	}
	trusted.Store(&[]netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")})
	if got := exchange(t, addr, []byte("PROXY TCP4 203.0.113.7 198.51.100.1 4242 443\r\n")); got != "203.0.113.7:4242" {
		t.Fatalf("trusted peer: RemoteAddr %q", got)
	}
}

func TestProxyProtocolHeaderDeadline(t *testing.T) {
	addr := servePP(t, func() []netip.Prefix { return nil }, 100*time.Millisecond)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	start := time.Now()
	// Send nothing: the server must give up after its header deadline.
	n, err := c.Read(make([]byte, 1))
	if n != 0 || err == nil {
		t.Fatalf("read %d bytes, err %v", n, err)
	}
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("server kept a silent connection open for 5 s")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("closed after %v", d)
	}
}

func FuzzParseProxyHeader(f *testing.F) {
	f.Add([]byte("PROXY TCP4 203.0.113.7 198.51.100.1 4242 443\r\nGET"))
	f.Add([]byte("PROXY UNKNOWN\r\n"))
	f.Add(v2Header(1, 0x21, make([]byte, 36)))
	f.Add(v2Header(1, 0x11, make([]byte, 12)))
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bufio.NewReaderSize(bytes.NewReader(in), 512)
		src, dst, err := parseProxyHeader(r)
		if err != nil {
			return
		}
		if src.IsValid() != dst.IsValid() {
			t.Fatalf("half an address pair: %v %v", src, dst)
		}
		if src.IsValid() && src.Addr().Is4In6() {
			t.Fatalf("mapped address not unmapped: %v", src)
		}
		if src.Addr().Zone() != "" || dst.Addr().Zone() != "" {
			t.Fatalf("address with a zone: %v %v", src, dst)
		}
	})
}

// TestProxyProtocolUnderTLS composes the listener as the gateway does: the
// PROXY header comes first in cleartext, then the TLS handshake.
func TestProxyProtocolUnderTLS(t *testing.T) {
	ca := newTestCA(t)
	c := ca.issue(t, t.TempDir(), "gw", "gw.example.test")
	_, tc, err := TLSConfig(&config.ServerTLS{Cert: c.Cert, Key: c.Key})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, r.RemoteAddr+" "+r.Proto)
	}), Protocols: Protocols(true, false), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(tls.NewListener(ProxyProtocol(ln, func() []netip.Prefix { return nil }), tc)) }()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}()

	tr := &http.Transport{
		ForceAttemptHTTP2: true,
		TLSClientConfig:   &tls.Config{RootCAs: ca.pool, ServerName: "gw.example.test"},
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			conn, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			_, err = io.WriteString(conn, "PROXY TCP6 2001:db8::7 2001:db8::1 4242 443\r\n")
			return conn, err
		},
	}
	defer tr.CloseIdleConnections()
	res, err := (&http.Client{Transport: tr}).Get("https://" + ln.Addr().String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if string(b) != "[2001:db8::7]:4242 HTTP/2.0" {
		t.Fatalf("server saw %q", b)
	}
}

func TestProxyProtocolLargeBodyAfterHeader(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		_, _ = io.WriteString(w, r.RemoteAddr+" "+strconv.FormatInt(n, 10))
	}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ProxyProtocol(ln, func() []netip.Prefix { return nil })) }()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}()
	const size = 1 << 20
	body := strings.Repeat("x", size)
	got := exchangeRaw(t, ln.Addr().String(), "PROXY TCP4 203.0.113.7 198.51.100.1 4242 443\r\n"+
		"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: "+strconv.Itoa(size)+"\r\n\r\n"+body)
	if got != "203.0.113.7:4242 "+strconv.Itoa(size) {
		t.Fatalf("server saw %q", got)
	}
}

func exchangeRaw(t *testing.T, addr, msg string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	go func() { _, _ = io.WriteString(c, msg) }()
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return string(b)
}
