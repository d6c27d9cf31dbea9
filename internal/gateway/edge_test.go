package gateway

import (
	"net/http/httptest"
	"net/netip"
	"testing"
)

// TestPeerTrusted: the request context says whether the peer is a trusted
// proxy, which BFF calls need to believe its X-Forwarded-Proto and -Host.
func TestPeerTrusted(t *testing.T) {
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	for _, tc := range []struct {
		remote      string
		trusted     []netip.Prefix
		client      string
		peerTrusted bool
	}{
		{"10.1.2.3:4711", trusted, "203.0.113.9", true},
		{"192.0.2.1:4711", trusted, "192.0.2.1", false},
		{"10.1.2.3:4711", nil, "10.1.2.3", false},
	} {
		r := httptest.NewRequest("GET", "/", nil)
		r.RemoteAddr = tc.remote
		r.Header.Set("X-Forwarded-For", "203.0.113.9")
		client, peerTrusted := clientIP(r, tc.trusted)
		if client.String() != tc.client || peerTrusted != tc.peerTrusted {
			t.Errorf("%s with trusted %v: %s, %v; want %s, %v", tc.remote, tc.trusted, client, peerTrusted, tc.client, tc.peerTrusted)
		}
	}
}
