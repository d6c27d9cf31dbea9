package telemetry

import (
	"bufio"
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
				if !finished {
					// The handler panicked: the recover stage outside
					// answers 500, so count it as that.
					if sw.status == 0 {
						sw.status = http.StatusInternalServerError
					}
					t.finish(rs, sw, r, info, span, start)
				}
			}()
			next.ServeHTTP(sw, r)
			finished = true
			t.finish(rs, sw, r, info, span, start)
		})
	}
}

func (t *Telemetry) finish(rs *routeState, sw *statusWriter, r *http.Request, info *reqctx.Info, span trace.Span, start time.Time) {
	end := t.now()
	d := end.Sub(start)
	status := sw.status
	if status == 0 {
		if r.Context().Err() != nil {
			status = problem.StatusClientClosed
		} else {
			status = http.StatusOK // net/http sends 200 for an empty response
		}
	}
	rs.inflightN.Add(-1)
	rs.inflight.Dec()
	if sw.upgraded {
		rs.ws.Dec()
	}
	t.counter(rs, methodIndex(r.Method), status).Inc()
	rs.hist.Observe(d.Seconds())
	rs.stats.record(end, status, d)
	if f := rs.slo.Load(); f != nil {
		(*f)(status, d, end)
	}
	if span != nil {
		endSpan(span, status)
	}
	if t.accessOn.Load() {
		t.logAccess(rs.name, r, info, status, sw.bytes, d, end)
	}
	sw.w = nil
	sw.rs = nil
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
	return n, err
}

// Flush sends buffered data (streaming, server-sent events).
func (s *statusWriter) Flush() {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	_ = http.NewResponseController(s.w).Flush()
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
