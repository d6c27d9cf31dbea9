package listener

import (
	"net"
	"net/netip"
	"testing"
	"time"
)

// tlv is one v2 TLV of type typ carrying n zero bytes (not an HTTP
// token, so a parser that stops short of its end shows).
func tlv(typ byte, n int) []byte {
	return append([]byte{typ, byte(n >> 8), byte(n)}, make([]byte, n)...)
}

// Headers a load balancer may send besides a plain address pair: health
// checks (LOCAL, UNKNOWN, AF_UNSPEC), Unix-socket clients, and TLVs long
// enough that the header takes several reads of the 512-byte buffer.
func TestProxyProtocolHeaderVariants(t *testing.T) {
	addr := servePP(t, func() []netip.Prefix { return nil }, time.Second)
	src4 := netip.MustParseAddrPort("203.0.113.7:4242")
	dst4 := netip.MustParseAddrPort("198.51.100.1:443")
	addrs := v2Addrs(src4, dst4)
	// The largest payload accepted: the addresses plus one TLV.
	atLimit := append(append([]byte{}, addrs...), tlv(0xEE, maxV2Payload-len(addrs)-3)...)
	tests := []headerCase{
		// LOCAL: the family and addresses are ignored (haproxy's
		// proxy-protocol.txt, section 2.2).
		{"v2 local with addresses", v2Header(0, 0x11, addrs), "self"},
		{"v2 proxy over AF_UNIX", v2Header(1, 0x31, make([]byte, 216)), "self"},
		{"v2 proxy with AF_UNSPEC", v2Header(1, 0x00, nil), "self"},
		{"v1 unknown with addresses", []byte("PROXY UNKNOWN 2001:db8::7 2001:db8::1 4242 443\r\n"), "self"},
		{"v2 tlvs over several reads", v2Header(1, 0x11, append(append([]byte{}, addrs...), tlv(0x20, 1500)...)), "203.0.113.7:4242"},
		{"v2 payload at the limit", v2Header(1, 0x11, atLimit), "203.0.113.7:4242"},
		{"v2 payload over the limit", v2Header(1, 0x11, append(atLimit, 0)), ""},
	}
	checkHeaders(t, addr, tests)
}

// A peer that connects and sends nothing holds its own connection until the
// header deadline, never the accept loop: a client behind it is served at
// once.
func TestProxyProtocolSilentPeerDoesNotStallAccept(t *testing.T) {
	addr := servePP(t, func() []netip.Prefix { return nil }, time.Minute)
	silent, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	// exchange gives up after 5 s, well before the header deadline.
	if got := exchange(t, addr, []byte("PROXY TCP4 203.0.113.7 198.51.100.1 4242 443\r\n")); got != "203.0.113.7:4242" {
		t.Fatalf("client behind a silent peer: RemoteAddr %q", got)
	}
}
