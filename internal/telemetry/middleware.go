package telemetry

import (
	"bufio"
	"errors"
	"net"
	"net/http"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/portico-gw/portico/internal/problem"
	"github.com/portico-gw/portico/internal/reqctx"
)

// Middleware returns the telemetry stage of route's chain. It resolves the
// route's metric series, live statistics and SLO hook now, so the gateway
// calls it when it compiles a config; requests that match no route use
// Middleware("unmatched"). Per request it keeps the in-flight gauge, captures
// the status and size of the response, then counts the request, observes its
// duration, updates live statistics and SLOs, ends the server span and queues
// the access log line.
//
// A request whose client went away (status 499 from the problem package, or
// a canceled context before any status was written) is counted with code
// "499"; the SLO engine does not count it as bad. A response with status 101
// (or a hijacked connection) is a WebSocket and is counted in
// portico_websocket_connections until the handler returns.
//
// A response cut short is not counted with the status its header carried:
// when the handler panics with http.ErrAbortHandler (httputil.ReverseProxy
// does when the upstream body fails after the header went out) the client got
// a truncated response on a closed connection, so it counts as 502, or as 499
// when the client had gone (its context canceled or a write to it failed). A
// handler that returns normally after a write to the client failed counts as
// 499 as well. A 5xx already sent stays as it was: it was a failure either
// way. A handler stopped without recover (runtime.Goexit) counts as 500. The access log keeps the status sent and adds "aborted" and
// "outcome_status".
//
// A gRPC call (HTTP/2, Content-Type application/grpc[+format]) answered
// with HTTP 200 counts as its final grpc-status mapped to HTTP (NOT_FOUND
// 404, UNAVAILABLE 503, ...; see grpcHTTPStatus); one without a grpc-status
// counts as 500, the UNKNOWN or INTERNAL its client reports. The access log
// adds "grpc_status" (null when missing).
func (t *Telemetry) Middleware(route string) func(http.Handler) http.Handler {
	rs := t.route(route)
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			info := reqctx.From(r.Context())
			// The gateway stamps Start on arrival with the same clock; using
			// it saves a clock read and counts routing time too.
			var start time.Time
			if info != nil && !info.Start.IsZero() {
				start = info.Start
			} else {
				start = t.now()
			}
			rs.inflightN.Add(1)
			rs.inflight.Inc()
			sw := t.writers.Get().(*statusWriter)
			sw.reset(w, rs)
			r, span := t.tracing.Load().start(r, rs.name, info)
			finished := false
			defer func() {
				if finished {
					return
				}
				// The handler panicked (or called runtime.Goexit, which
				// recover reports as nil). Count the request, then let the
				// panic go on unchanged: net/http closes the connection on
				// it, which is what tells the client its response is cut.
				v := recover()
				t.finish(rs, sw, r, info, span, start, panicOutcome(v))
				if v != nil {
					panic(v)
				}
			}()
			next.ServeHTTP(sw, r)
			finished = true
			t.finish(rs, sw, r, info, span, start, returned)
		})
	}
}

// How the handler ended, for finish.
const (
	returned      = iota // normally
	panickedAbort        // with http.ErrAbortHandler
	panicked             // with any other value, or runtime.Goexit
)

func panicOutcome(v any) int {
	if err, ok := v.(error); ok && errors.Is(err, http.ErrAbortHandler) {
		return panickedAbort
	}
	return panicked
}

// outcome is what a finished request counts as.
type outcome struct {
	// status is counted in metrics, live statistics and SLOs, and set on
	// the span.
	status int
	// sent is the final status written to the client, 0 for none.
	sent int
	// aborted marks a response the client did not receive whole.
	aborted bool
	// grpc tells whether this was a gRPC response and whether it carried
	// a grpc-status; grpcCode is that status.
	grpc     int8
	grpcCode int
}

const (
	grpcNone    = iota // not a gRPC exchange (or not one that ended in HTTP 200)
	grpcStatus         // grpcCode holds the final grpc-status
	grpcMissing        // a gRPC response without a (valid) grpc-status
)

// outcomeOf judges the request from what the writer saw and how the handler
// ended.
func outcomeOf(sw *statusWriter, r *http.Request, how int) outcome {
	o := outcome{status: sw.status, sent: sw.status}
	if sw.upgraded {
		// A hijacked connection is the handler's: no status of ours can
		// describe how it ended.
		return o
	}
	switch how {
	case panicked:
		// A panic the recover stage did not turn into an answer: it
		// answers 500 before any status, and aborts a started response
		// with http.ErrAbortHandler (the case below).
		o.status = http.StatusInternalServerError
		o.aborted = sw.status != 0
	case panickedAbort:
		o.aborted = true
		switch {
		case sw.status >= 500:
			// Already a failure; keep the status sent.
		case sw.clientGone(r):
			o.status = problem.StatusClientClosed
		default:
			// The upstream (or the handler) broke the response: the
			// client sees a bad gateway, not the status in the header.
			o.status = http.StatusBadGateway
		}
	default:
		if o.status == 0 {
			if r.Context().Err() != nil {
				o.status = problem.StatusClientClosed
			} else {
				o.status = http.StatusOK // net/http sends 200 for an empty response
			}
		} else if sw.writeErr != nil && clientWriteErr(sw.writeErr) {
			// The handler finished but the client did not get it all.
			o.aborted = true
			if sw.status < 500 {
				o.status = problem.StatusClientClosed
			}
			return o
		}
		// gRPC answers HTTP 200 and carries the result in grpc-status; a
		// non-200 answer (a proxy's or a server's own) is already honest.
		if o.status == http.StatusOK && problem.IsGRPC(r) {
			o.grpcResult(sw.w.Header(), r)
		}
	}
	return o
}

// trailerGRPCStatus is where a grpc-status trailer that was not announced
// before the header went out sits in the writer's header map
// (http.TrailerPrefix); httputil.ReverseProxy puts it there when the
// upstream sent more trailers than it announced.
const trailerGRPCStatus = http.TrailerPrefix + "Grpc-Status"

// grpcResult counts a gRPC response that ended normally by its final
// grpc-status: a trailer (announced, so set under its own name after the
// body, or under http.TrailerPrefix), or a header in a trailers-only
// response. Without one, gRPC clients report UNKNOWN or INTERNAL, both 500
// in the mapping, so it counts as 500 (or 499 when the client had gone):
// the call failed, whoever broke the protocol.
func (o *outcome) grpcResult(h http.Header, r *http.Request) {
	v := h[trailerGRPCStatus]
	if len(v) == 0 {
		v = h["Grpc-Status"]
	}
	if len(v) > 0 {
		if code, ok := parseGRPCStatus(v[0]); ok {
			o.grpc, o.grpcCode = grpcStatus, code
			o.status = grpcHTTPStatus(code)
			return
		}
	}
	o.grpc = grpcMissing
	if r.Context().Err() != nil {
		o.status = problem.StatusClientClosed
	} else {
		o.status = http.StatusInternalServerError
	}
}

// parseGRPCStatus reads a grpc-status value: a non-negative decimal integer
// (1 to 9 digits, so it fits any int).
func parseGRPCStatus(s string) (int, bool) {
	if len(s) == 0 || len(s) > 9 {
		return 0, false
	}
	n := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}

// grpcHTTPStatus is the HTTP status a gRPC code counts as, the mapping of
// google.rpc.Code. A code outside 0-16 is UNKNOWN to a client, so 500.
func grpcHTTPStatus(code int) int {
	switch code {
	case 0: // OK
		return http.StatusOK
	case 1: // CANCELLED
		return problem.StatusClientClosed
	case 3, 9, 11: // INVALID_ARGUMENT, FAILED_PRECONDITION, OUT_OF_RANGE
		return http.StatusBadRequest
	case 4: // DEADLINE_EXCEEDED
		return http.StatusGatewayTimeout
	case 5: // NOT_FOUND
		return http.StatusNotFound
	case 6, 10: // ALREADY_EXISTS, ABORTED
		return http.StatusConflict
	case 7: // PERMISSION_DENIED
		return http.StatusForbidden
	case 8: // RESOURCE_EXHAUSTED
		return http.StatusTooManyRequests
	case 12: // UNIMPLEMENTED
		return http.StatusNotImplemented
	case 14: // UNAVAILABLE
		return http.StatusServiceUnavailable
	case 16: // UNAUTHENTICATED
		return http.StatusUnauthorized
	}
	return http.StatusInternalServerError // UNKNOWN, INTERNAL, DATA_LOSS, others
}

// clientGone reports whether the client went away: its context was
// canceled (the server saw the connection or stream close) or a write to it
// failed.
func (s *statusWriter) clientGone(r *http.Request) bool {
	return r.Context().Err() != nil || (s.writeErr != nil && clientWriteErr(s.writeErr))
}

// clientWriteErr reports whether a failed write means the client went away
// (or stopped reading until the server's write deadline), rather than a
// handler's mistake that the server refused.
func clientWriteErr(err error) bool {
	return !errors.Is(err, http.ErrBodyNotAllowed) && !errors.Is(err, http.ErrContentLength) &&
		!errors.Is(err, http.ErrHijacked) && !errors.Is(err, http.ErrHandlerTimeout) &&
		!errors.Is(err, http.ErrNotSupported)
}

func (t *Telemetry) finish(rs *routeState, sw *statusWriter, r *http.Request, info *reqctx.Info, span trace.Span, start time.Time, how int) {
	end := t.now()
	d := end.Sub(start)
	o := outcomeOf(sw, r, how)
	rs.inflight.Dec()
	if sw.upgraded {
		rs.ws.Dec()
	}
	t.counter(rs, methodIndex(r.Method), o.status).Inc()
	rs.hist.Observe(d.Seconds())
	rs.stats.record(end, o.status, d)
	if f := rs.slo.Load(); f != nil {
		(*f)(o.status, d, end)
	}
	if span != nil {
		endServerSpan(span, o)
	}
	if t.accessOn.Load() {
		t.logAccess(rs.name, r, info, o, sw.bytes, d, end)
	}
	sw.w = nil
	sw.rs = nil
	sw.writeErr = nil
	t.writers.Put(sw)
	// Last, once this request touched every series: the last request of a
	// route a reload removed takes the route's series away (RetainRoutes).
	if rs.inflightN.Add(-1) == 0 && rs.retired.Load() {
		t.dropSeries(rs)
	}
}

// statusWriter records the status and body size of a response. It keeps the
// optional interfaces the proxy relies on: http.Flusher, http.Hijacker and
// Unwrap for http.ResponseController (deadlines, full duplex).
type statusWriter struct {
	w        http.ResponseWriter
	rs       *routeState
	status   int
	bytes    int64
	upgraded bool
	// writeErr is the first error a write or flush to the client returned.
	writeErr error
}

func (s *statusWriter) reset(w http.ResponseWriter, rs *routeState) {
	*s = statusWriter{w: w, rs: rs}
}

func (s *statusWriter) Header() http.Header { return s.w.Header() }

func (s *statusWriter) WriteHeader(code int) {
	if s.status == 0 {
		switch {
		case code == http.StatusSwitchingProtocols:
			s.status = code
			s.markUpgraded()
		case code >= 200:
			s.status = code
		}
		// Other 1xx (103 Early Hints) are interim: the final status follows.
	}
	s.w.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	n, err := s.w.Write(b)
	s.bytes += int64(n)
	if err != nil && s.writeErr == nil {
		s.writeErr = err
	}
	return n, err
}

// Started reports whether the final status went out, so the recover stage
// knows a panic can no longer be answered and must abort the response.
func (s *statusWriter) Started() bool { return s.status != 0 }

// Flush sends buffered data (streaming, server-sent events).
func (s *statusWriter) Flush() {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	if err := http.NewResponseController(s.w).Flush(); err != nil && s.writeErr == nil {
		s.writeErr = err
	}
}

// Hijack hands the connection over (WebSocket through httputil.ReverseProxy,
// which writes the 101 on the hijacked connection itself).
func (s *statusWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, rw, err := http.NewResponseController(s.w).Hijack()
	if err == nil && s.status == 0 {
		s.status = http.StatusSwitchingProtocols
		s.markUpgraded()
	}
	return c, rw, err
}

func (s *statusWriter) markUpgraded() {
	if !s.upgraded {
		s.upgraded = true
		s.rs.ws.Inc()
	}
}

// Unwrap lets http.ResponseController reach the server's writer.
func (s *statusWriter) Unwrap() http.ResponseWriter { return s.w }

var (
	_ http.Flusher  = (*statusWriter)(nil)
	_ http.Hijacker = (*statusWriter)(nil)
)
