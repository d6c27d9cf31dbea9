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
// way. The access log keeps the status sent and adds "aborted" and
// "outcome_status".
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
}

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
		} else if sw.writeErr != nil && sw.status < 500 && clientWriteErr(sw.writeErr) {
			// The handler finished but the client did not get it all.
			o.status = problem.StatusClientClosed
			o.aborted = true
		}
	}
	return o
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
	rs.inflightN.Add(-1)
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
