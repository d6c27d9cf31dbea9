package listener

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestRedirectHandler(t *testing.T) {
	tests := []struct {
		port, host, target string
		wantStatus         int
		wantLocation       string
	}{
		{"443", "example.com", "/a/b?x=1&y=2", 308, "https://example.com/a/b?x=1&y=2"},
		{":443", "example.com:80", "/", 308, "https://example.com/"},
		{"8443", "example.com:8080", "/p%2Fq", 308, "https://example.com:8443/p%2Fq"},
		{"0.0.0.0:8443", "EXAMPLE.com", "/x", 308, "https://EXAMPLE.com:8443/x"},
		{"", "[::1]:80", "/v6", 308, "https://[::1]/v6"},
		{"443", "evil.com/@good.com", "/", 400, ""},
		{"443", "", "/", 400, ""},
	}
	for _, tc := range tests {
		t.Run(tc.host+tc.target, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodPost, tc.target, nil)
			req.Host = tc.host
			rec := httptest.NewRecorder()
			RedirectHandler(tc.port).ServeHTTP(rec, req)
			if rec.Code != tc.wantStatus || rec.Header().Get("Location") != tc.wantLocation {
				t.Fatalf("got %d %q, want %d %q", rec.Code, rec.Header().Get("Location"), tc.wantStatus, tc.wantLocation)
			}
			if tc.wantStatus == 400 && rec.Header().Get("Content-Type") != "application/problem+json" {
				t.Fatalf("error body is %q, want problem+json", rec.Header().Get("Content-Type"))
			}
		})
	}
}

func TestProtocols(t *testing.T) {
	p := Protocols(false, true)
	if !p.HTTP1() || p.HTTP2() || !p.UnencryptedHTTP2() {
		t.Fatalf("plain h2c listener: %v", p)
	}
	p = Protocols(true, false)
	if !p.HTTP1() || !p.HTTP2() || p.UnencryptedHTTP2() {
		t.Fatalf("TLS listener: %v", p)
	}
}
