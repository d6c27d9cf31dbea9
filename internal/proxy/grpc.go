package proxy

import (
	"errors"
	"io"
	"log/slog"
	"math"
	"net/http"
	"strings"
	"time"
)

// gRPC pass-through needs little of its own: ReverseProxy already forwards
// "te: trailers", streams both bodies (a gRPC response has no length, so it
// is flushed as it comes) and copies the upstream's trailers (grpc-status,
// grpc-message) as HTTP/2 trailers. What this file adds is the call's
// deadline: gRPC over HTTP/2 sends it as grpc-timeout, and unlike the route
// timeout it bounds the whole call, streams included.

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
	if err == nil || err == io.EOF || !(g.ex.timedOut.Load() || g.ex.grpcDeadlinePassed()) {
		return n, err
	}
	// Our timer fired, or the deadline passed and the upstream (which got
	// the same grpc-timeout) reset the stream first.
	// The transport applies received trailers from within Read, on this
	// goroutine, and none came (the read failed): resp.Trailer is ours.
	// Keys the upstream announced stay, so ReverseProxy's count of
	// announced trailers still tells it how to send these.
	if g.resp.Trailer == nil {
		g.resp.Trailer = make(http.Header, 2)
	}
	g.resp.Trailer["Grpc-Status"] = []string{grpcDeadlineExceeded}
	g.resp.Trailer["Grpc-Message"] = []string{grpcDeadlineMessage}
	return n, io.EOF
}

func (g *grpcBody) Close() error { return g.rc.Close() }
