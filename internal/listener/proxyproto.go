package listener

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Limits of the PROXY protocol header (haproxy's proxy-protocol.txt).
const (
	// ProxyHeaderTimeout bounds reading the header: a peer that connects
	// and sends nothing cannot hold a connection open past it.
	ProxyHeaderTimeout = 5 * time.Second
	maxV1Line          = 107 // "PROXY TCP6 <39> <39> <5> <5>\r\n"
	// maxV2Payload caps the addresses plus TLVs accepted; load balancers
	// send a few dozen bytes of TLVs.
	maxV2Payload = 4096
)

var v2Signature = []byte("\r\n\r\n\x00\r\nQUIT\n")

// ErrProxyHeader is returned by Read on a connection whose PROXY header
// was missing or malformed; the connection is closed.
var ErrProxyHeader = errors.New("invalid PROXY protocol header")

// ProxyProtocol wraps ln so that connections carry the client address sent
// in a PROXY protocol v1 (text) or v2 (binary) header: RemoteAddr returns it
// (and LocalAddr the address the client connected to). The header is read
// on the connection's first Read or RemoteAddr call, not in Accept, so a
// slow peer never stalls the accept loop; reading it is bounded by
// ProxyHeaderTimeout.
//
// With trusted non-empty, only peers inside those prefixes are expected to
// send a header; others are served as they are, keeping their own address
// (a header they send is then just bytes of a bad request). From an
// expected peer, a missing or malformed header closes the connection. A v1
// "UNKNOWN" or v2 LOCAL header (health checks of the load balancer) keeps
// the peer's own address. trusted is called once per accepted connection,
// so a reload that changes the prefixes applies to the next connection.
func ProxyProtocol(ln net.Listener, trusted func() []netip.Prefix) net.Listener {
	return &ppListener{Listener: ln, trusted: trusted, timeout: ProxyHeaderTimeout}
}

type ppListener struct {
	net.Listener
	trusted func() []netip.Prefix
	timeout time.Duration
}

func (l *ppListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if trusted := l.trusted(); len(trusted) > 0 && !isTrusted(c.RemoteAddr(), trusted) {
		return c, nil
	}
	return &ppConn{Conn: c, timeout: l.timeout}, nil
}

func isTrusted(a net.Addr, trusted []netip.Prefix) bool {
	var ip netip.Addr
	switch a := a.(type) {
	case *net.TCPAddr:
		ip = a.AddrPort().Addr()
	default:
		ap, err := netip.ParseAddrPort(a.String())
		if err != nil {
			return false
		}
		ip = ap.Addr()
	}
	ip = ip.Unmap()
	for _, p := range trusted {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

type ppConn struct {
	net.Conn
	timeout time.Duration
	once    sync.Once
	r       *bufio.Reader
	remote  net.Addr
	local   net.Addr
	err     error
}

func (c *ppConn) Read(b []byte) (int, error) {
	c.once.Do(c.readHeader)
	if c.err != nil {
		return 0, c.err
	}
	if c.r != nil {
		if c.r.Buffered() > 0 {
			return c.r.Read(b)
		}
		c.r = nil // what followed the header is consumed: read directly
	}
	return c.Conn.Read(b)
}

// CloseWrite half-closes the connection when the underlying one can, so
// http.Server can flush a final response before closing (it looks for this
// method on the connection it was given).
func (c *ppConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

func (c *ppConn) RemoteAddr() net.Addr {
	c.once.Do(c.readHeader)
	if c.remote != nil {
		return c.remote
	}
	return c.Conn.RemoteAddr()
}

func (c *ppConn) LocalAddr() net.Addr {
	c.once.Do(c.readHeader)
	if c.local != nil {
		return c.local
	}
	return c.Conn.LocalAddr()
}

func (c *ppConn) readHeader() {
	_ = c.Conn.SetReadDeadline(time.Now().Add(c.timeout))
	c.r = bufio.NewReaderSize(c.Conn, 512)
	src, dst, err := parseProxyHeader(c.r)
	if err != nil {
		c.err = fmt.Errorf("%w: %v", ErrProxyHeader, err)
		_ = c.Conn.Close()
		return
	}
	_ = c.Conn.SetReadDeadline(time.Time{})
	if src.IsValid() {
		c.remote = net.TCPAddrFromAddrPort(src)
		c.local = net.TCPAddrFromAddrPort(dst)
	}
}

// parseProxyHeader reads one v1 or v2 header from r. Invalid addresses mean
// "keep the connection's own" (v1 UNKNOWN, v2 LOCAL or AF_UNSPEC/AF_UNIX).
func parseProxyHeader(r *bufio.Reader) (src, dst netip.AddrPort, err error) {
	first, err := r.Peek(1)
	if err != nil {
		return src, dst, err
	}
	switch first[0] {
	case 'P':
		return parseV1(r)
	case '\r':
		return parseV2(r)
	}
	return src, dst, errors.New("no PROXY header")
}

func parseV1(r *bufio.Reader) (src, dst netip.AddrPort, err error) {
	line := make([]byte, 0, maxV1Line)
	for {
		b, err := r.ReadByte()
		if err != nil {
			return src, dst, err
		}
		line = append(line, b)
		if b == '\n' {
			break
		}
		if len(line) >= maxV1Line {
			return src, dst, errors.New("v1 header too long")
		}
	}
	s, ok := strings.CutSuffix(string(line), "\r\n")
	if !ok {
		return src, dst, errors.New("v1 header not ended by CRLF")
	}
	f := strings.Split(s, " ")
	if f[0] != "PROXY" || len(f) < 2 {
		return src, dst, errors.New("v1 header malformed")
	}
	if f[1] == "UNKNOWN" {
		return src, dst, nil
	}
	if len(f) != 6 || (f[1] != "TCP4" && f[1] != "TCP6") {
		return src, dst, fmt.Errorf("v1 header: unsupported %q", s)
	}
	sip, err1 := netip.ParseAddr(f[2])
	dip, err2 := netip.ParseAddr(f[3])
	sp, err3 := parsePort(f[4])
	dp, err4 := parsePort(f[5])
	if err := errors.Join(err1, err2, err3, err4); err != nil {
		return src, dst, fmt.Errorf("v1 header: %w", err)
	}
	if want4 := f[1] == "TCP4"; sip.Is4() != want4 || dip.Is4() != want4 {
		return src, dst, fmt.Errorf("v1 header: addresses do not match %s", f[1])
	}
	if sip.Zone() != "" || dip.Zone() != "" {
		// netip takes any text after '%' as a zone ("fe80::1%x,10.0.0.1"),
		// which would reach RemoteAddr and X-Forwarded-For; the header
		// carries plain addresses only.
		return src, dst, errors.New("v1 header: address with a zone")
	}
	return netip.AddrPortFrom(sip.Unmap(), sp), netip.AddrPortFrom(dip.Unmap(), dp), nil
}

func parsePort(s string) (uint16, error) {
	if s == "" || (len(s) > 1 && s[0] == '0') {
		return 0, fmt.Errorf("invalid port %q", s)
	}
	n, err := strconv.ParseUint(s, 10, 16)
	return uint16(n), err
}

func parseV2(r *bufio.Reader) (src, dst netip.AddrPort, err error) {
	var hdr [16]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return src, dst, err
	}
	if !bytes.Equal(hdr[:12], v2Signature) {
		return src, dst, errors.New("v2 signature mismatch")
	}
	if hdr[12]>>4 != 2 {
		return src, dst, fmt.Errorf("v2 version %d", hdr[12]>>4)
	}
	cmd := hdr[12] & 0x0f
	if cmd > 1 {
		return src, dst, fmt.Errorf("v2 command %d", cmd)
	}
	n := int(binary.BigEndian.Uint16(hdr[14:16]))
	if n > maxV2Payload {
		return src, dst, fmt.Errorf("v2 payload of %d bytes", n)
	}
	payload := make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		return src, dst, err
	}
	fam := hdr[13]
	if cmd == 0 { // LOCAL: the balancer's own connection
		return src, dst, nil
	}
	switch fam {
	case 0x11: // TCP over IPv4
		if n < 12 {
			return src, dst, errors.New("v2 IPv4 addresses truncated")
		}
		sip := netip.AddrFrom4([4]byte(payload[0:4]))
		dip := netip.AddrFrom4([4]byte(payload[4:8]))
		return netip.AddrPortFrom(sip, binary.BigEndian.Uint16(payload[8:10])),
			netip.AddrPortFrom(dip, binary.BigEndian.Uint16(payload[10:12])), nil
	case 0x21: // TCP over IPv6
		if n < 36 {
			return src, dst, errors.New("v2 IPv6 addresses truncated")
		}
		sip := netip.AddrFrom16([16]byte(payload[0:16])).Unmap()
		dip := netip.AddrFrom16([16]byte(payload[16:32])).Unmap()
		return netip.AddrPortFrom(sip, binary.BigEndian.Uint16(payload[32:34])),
			netip.AddrPortFrom(dip, binary.BigEndian.Uint16(payload[34:36])), nil
	case 0x00, 0x31: // AF_UNSPEC, AF_UNIX stream: nothing usable as a client IP
		return src, dst, nil
	}
	return src, dst, fmt.Errorf("v2 family/protocol 0x%02x not supported on a TCP listener", fam)
}
