package listener

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// TestRedirectHandlerOverSocket sends raw requests, Host headers as a
// client writes them, to a redirect listener on loopback.
func TestRedirectHandlerOverSocket(t *testing.T) {
	srv := httptest.NewServer(RedirectHandler("0.0.0.0:8443"))
	defer srv.Close()
	addr := srv.Listener.Addr().String()
	tests := []struct {
		name, req    string
		wantStatus   int
		wantLocation string
	}{
		{"post keeps method via 308, path and query",
			"POST /a/b?x=1&y=%2F HTTP/1.1\r\nHost: api.example.test:8080\r\nContent-Length: 4\r\n\r\nbody",
			308, "https://api.example.test:8443/a/b?x=1&y=%2F"},
		{"ipv6 literal with port",
			"GET /v6 HTTP/1.1\r\nHost: [2001:db8::1]:8080\r\n\r\n",
			308, "https://[2001:db8::1]:8443/v6"},
		{"colons in a host name", "GET / HTTP/1.1\r\nHost: a:b:c\r\n\r\n", 400, ""},
		{"ipv4 with two ports", "GET / HTTP/1.1\r\nHost: 192.0.2.1:80:90\r\n\r\n", 400, ""},
		{"host name in brackets with colons", "GET / HTTP/1.1\r\nHost: [evil.example:1]\r\n\r\n", 400, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.WriteString(c, tc.req); err != nil {
				t.Fatal(err)
			}
			res, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			if res.StatusCode != tc.wantStatus || res.Header.Get("Location") != tc.wantLocation {
				t.Fatalf("got %d %q, want %d %q", res.StatusCode, res.Header.Get("Location"), tc.wantStatus, tc.wantLocation)
			}
		})
	}
}
