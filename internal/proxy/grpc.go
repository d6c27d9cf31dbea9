package proxy

import (
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/portico-gw/portico/internal/problem"
)

// gRPC pass-through needs little of its own: ReverseProxy already forwards
// "te: trailers", streams both bodies (a gRPC response has no length, so it
// is flushed as it comes) and copies the upstream's trailers (grpc-status,
// grpc-message) as HTTP/2 trailers. What this file adds is the call's
// deadline (gRPC over HTTP/2 sends it as grpc-timeout, and unlike the route
// timeout it bounds the whole call, streams included; the upstream gets
// what is left of it) and the limit on each request message
// (grpcMessageLimit).

// isGRPC reports whether r is a gRPC-family call for the proxy's purposes
// (grpc-timeout, streaming): HTTP/2 with a Content-Type that starts with
// application/grpc. It is broader than problem.IsGRPC on purpose: gRPC-Web
// calls send grpc-timeout too, so they get its deadline here, while their
// errors stay problem+json and telemetry counts them by HTTP status.
func isGRPC(r *http.Request) bool {
	if r.ProtoMajor != 2 {
		return false
	}
	ct := r.Header["Content-Type"]
	return len(ct) > 0 && strings.HasPrefix(ct[0], "application/grpc")
}

// isGRPCResponse reports whether the upstream answered as a gRPC server.
func isGRPCResponse(resp *http.Response) bool {
	ct := resp.Header["Content-Type"]
	return len(ct) > 0 && strings.HasPrefix(ct[0], "application/grpc")
}

// maxGRPCTimeoutDigits is the spec's bound on the TimeoutValue.
const maxGRPCTimeoutDigits = 8

// parseGRPCTimeout parses a grpc-timeout value: 1 to 8 ASCII digits and a
// unit, H (hours), M (minutes), S, m (milliseconds), u, n. ok is false for
// anything else. A value past what a time.Duration holds (99999999H is
// eleven millennia) is reported as not ok too: no deadline at all is its
// only sensible reading. The spec asks for a positive value; "0S" is
// accepted and reads as an already expired deadline, which is what the
// client meant.
func parseGRPCTimeout(s string) (d time.Duration, ok bool) {
	if len(s) < 2 || len(s) > maxGRPCTimeoutDigits+1 {
		return 0, false
	}
	var unit time.Duration
	switch s[len(s)-1] {
	case 'H':
		unit = time.Hour
	case 'M':
		unit = time.Minute
	case 'S':
		unit = time.Second
	case 'm':
		unit = time.Millisecond
	case 'u':
		unit = time.Microsecond
	case 'n':
		unit = time.Nanosecond
	default:
		return 0, false
	}
	var n int64
	for i := 0; i < len(s)-1; i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0') // at most 8 digits: no overflow
	}
	if n > math.MaxInt64/int64(unit) {
		return 0, false
	}
	return time.Duration(n) * unit, true
}

// formatGRPCTimeout writes d as a grpc-timeout value: at most 8 digits in
// the finest unit that holds it, rounded up (as grpc-go does), so that a
// deadline not yet passed never reads as 0. A passed one is sent as 1n:
// the spec asks for a positive value, and the upstream sees it expired.
func formatGRPCTimeout(d time.Duration) string {
	if d <= 0 {
		d = 1
	}
	const maxValue = 1e8 - 1
	units := [...]struct {
		d time.Duration
		c byte
	}{{time.Nanosecond, 'n'}, {time.Microsecond, 'u'}, {time.Millisecond, 'm'}, {time.Second, 'S'}, {time.Minute, 'M'}, {time.Hour, 'H'}}
	var buf [maxGRPCTimeoutDigits + 1]byte
	for _, u := range units {
		v := d / u.d
		if d%u.d != 0 {
			v++ // d + u.d - 1 would overflow near the largest Duration
		}
		if v <= maxValue {
			return string(append(strconv.AppendInt(buf[:0], int64(v), 10), u.c))
		}
	}
	return "99999999H" // not reached: a Duration is at most 2562048H
}

// grpcTimeout returns the deadline the client asked for in grpc-timeout.
// A malformed value is ignored (the upstream gets it as sent and judges for
// itself) and logged at debug level.
func (h *handler) grpcTimeout(r *http.Request) (time.Duration, bool) {
	v := r.Header["Grpc-Timeout"]
	if len(v) == 0 {
		return 0, false
	}
	d, ok := parseGRPCTimeout(v[0])
	if !ok && h.log.Enabled(r.Context(), slog.LevelDebug) {
		bad := v[0]
		if len(bad) > 32 {
			bad = bad[:32] // client data: keep the log line small
		}
		h.log.LogAttrs(r.Context(), slog.LevelDebug, "ignoring malformed grpc-timeout",
			slog.String("route", h.route), slog.String("grpc_timeout", bad))
	}
	return d, ok
}

// Trailers the gateway ends a gRPC stream with when the call's deadline
// passes after the upstream's response headers were sent on.
const (
	grpcDeadlineExceeded = "4" // DEADLINE_EXCEEDED
	grpcDeadlineMessage  = "deadline exceeded at the gateway (grpc-timeout)"
)

// grpcResourceExhausted is the status a gRPC stream ends with when one of
// its request messages is over the limit after the response headers went
// out (grpcMessageLimit); before them the call gets it trailers-only.
const grpcResourceExhausted = "8" // RESOURCE_EXHAUSTED

// errGRPCDeadline is the cancellation cause when a call's grpc-timeout
// passes. Unlike errRouteTimeout it does not match
// context.DeadlineExceeded: the deadline is the client's choice, so the
// upstream pool counts the cancelled attempt as neutral, as if the client
// had left. Were it the upstream's failure, any client could eject targets
// and open the circuit breaker by sending grpc-timeout: 1n.
var errGRPCDeadline = errors.New("grpc-timeout passed")

// grpcBody is a gRPC response body under the call's deadline. When the
// deadline cancels the exchange mid-stream, the read error becomes a clean
// end of the body and the trailers say DEADLINE_EXCEEDED: a gRPC client
// reads its status from the trailers, so the gateway can still answer
// properly after the headers went out, where an HTTP response could only be
// aborted.
type grpcBody struct {
	rc   io.ReadCloser
	resp *http.Response
	ex   *exchange
}

func (g *grpcBody) Read(p []byte) (int, error) {
	n, err := g.rc.Read(p)
	if err == nil || err == io.EOF {
		return n, err
	}
	var code, msg string
	switch {
	case g.ex.gmsg != nil && g.ex.gmsg.exceeded.Load():
		// A request message was over the limit: the transport reset the
		// upstream's stream when the request body failed, which is the
		// error read here.
		code, msg = grpcResourceExhausted, g.ex.gmsg.err.Detail
	case g.ex.timedOut.Load() || g.ex.grpcDeadlinePassed():
		// Our timer fired, or the deadline passed and the upstream
		// (which got the same grpc-timeout) reset the stream first.
		code, msg = grpcDeadlineExceeded, grpcDeadlineMessage
	default:
		return n, err
	}
	// The transport applies received trailers from within Read, on this
	// goroutine, and none came (the read failed): resp.Trailer is ours.
	// Keys the upstream announced stay, so ReverseProxy's count of
	// announced trailers still tells it how to send these.
	if g.resp.Trailer == nil {
		g.resp.Trailer = make(http.Header, 2)
	}
	g.resp.Trailer["Grpc-Status"] = []string{code}
	g.resp.Trailer["Grpc-Message"] = []string{msg}
	return n, io.EOF
}

func (g *grpcBody) Close() error { return g.rc.Close() }

// grpcMessageLimit bounds each message of a gRPC request stream instead of
// the stream: for a client-streaming or bidirectional call the request
// body is the whole stream, and a limit on its total would cut a
// long-lived stream of small messages (gRPC servers bound each received
// message too; grpc-go at 4 MiB by default).
//
// It reads the stream as the gRPC over HTTP/2 spec frames it: each message
// is a 1-byte compressed flag, a 4-byte big-endian length and that many
// bytes. The walk costs a few comparisons per read and per message; no
// message is buffered. The bytes of a length prefix are held back until
// the prefix is whole, so that a message over the limit reaches the
// upstream not even in part: the read that meets its prefix returns the
// bytes before it, and the next read fails with err, on which the
// transport resets the upstream stream (RST_STREAM CANCEL) instead of
// ending it. The length checked is the one on the wire, compressed when
// the flag says so.
type grpcMessageLimit struct {
	rc   io.ReadCloser
	max  int64
	err  *problem.Error // never nil
	left int64          // bytes of the current message still to pass; 0 at a prefix
	// held keeps the first bytes of a length prefix that a read ended
	// inside of; they go out in front of the next read's bytes.
	held  [grpcPrefixLen]byte
	nheld int
	// small serves callers whose buffer cannot hold a prefix (the
	// transports never pass one; io.Reader allows it).
	small              [grpcPrefixLen]byte
	smallOff, smallEnd int
	smallErr           error
	exceeded           atomic.Bool // read by the handler, written by the transport
}

// grpcPrefixLen is the length of a gRPC message's prefix: the compressed
// flag and the 4-byte length.
const grpcPrefixLen = 5

func (g *grpcMessageLimit) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if g.smallOff < g.smallEnd || (len(p) < grpcPrefixLen && len(p) > 0) {
		if g.smallOff == g.smallEnd {
			n, err := g.read(g.small[:])
			g.smallOff, g.smallEnd, g.smallErr = 0, n, err
			if n == 0 {
				return 0, err
			}
		}
		n := copy(p, g.small[g.smallOff:g.smallEnd])
		g.smallOff += n
		if g.smallOff == g.smallEnd {
			return n, g.smallErr
		}
		return n, nil
	}
	return g.read(p)
}

// read is Read for a p that can hold a whole prefix.
func (g *grpcMessageLimit) read(p []byte) (int, error) {
	if g.exceeded.Load() {
		return 0, g.err
	}
	c := copy(p, g.held[:g.nheld]) // len(p) > nheld: all of it
	g.nheld = 0
	n, err := g.rc.Read(p[c:])
	n += c
	for i := 0; i < n; {
		if g.left > 0 {
			k := min(g.left, int64(n-i))
			i += int(k)
			g.left -= k
			continue
		}
		if n-i < grpcPrefixLen {
			if err != nil {
				// The stream ends inside a prefix: pass it on as it
				// is, the upstream judges a malformed stream.
				return n, err
			}
			g.nheld = copy(g.held[:], p[i:n])
			return i, nil
		}
		length := int64(binary.BigEndian.Uint32(p[i+1 : i+grpcPrefixLen]))
		if length > g.max {
			g.exceeded.Store(true)
			if i > 0 {
				// The transport drops the bytes of a read that fails:
				// the messages before this one go out first.
				return i, nil
			}
			return 0, g.err
		}
		i += grpcPrefixLen
		g.left = length
	}
	return n, err
}

func (g *grpcMessageLimit) Close() error { return g.rc.Close() }
