// Package admin serves the admin listener: health and readiness probes, the
// Prometheus metrics, the JSON admin API (routes, upstreams, live stats,
// SLOs, reload) and the embedded live dashboard.
//
// Every answer carries an X-Request-Id and every error is RFC 9457
// problem+json with that id as request_id, as on the public listener.
//
// The handler knows nothing about the gateway's types: every view is a
// function in Deps returning a JSON-ready value, so the gateway decides what
// to show and this package only serves, authenticates and renders it.
package admin

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	_ "embed"
	"encoding/base64"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/portico-gw/portico/internal/problem"
	"github.com/portico-gw/portico/internal/reqctx"
)

// Deps are what the admin API shows and does. A nil view function answers
// 503 (not available in this process); Ready nil means always ready.
type Deps struct {
	// Token returns the admin token. When it is not empty, it is required
	// as "Authorization: Bearer TOKEN" on /admin/*, /dashboard/ and
	// /debug/pprof/ (the dashboard page also accepts ?token=, since a
	// browser cannot add the header to a navigation). /healthz, /readyz and
	// /metrics never need it: probes and scrapers. It is called on every
	// request, so a config reload rotates the token at once; nil means no
	// token.
	Token func() string
	// Profiler, when set, serves /debug/pprof/ (behind the token).
	Profiler http.Handler
	// Metrics serves GET /metrics.
	Metrics http.Handler
	// Ready reports whether the gateway serves traffic (false while
	// draining).
	Ready func() bool
	// Reload applies the configuration again. An error wrapping a
	// *problem.Error answers with that error's status; any other error is
	// taken as a rejected configuration (400) and its text, one problem per
	// line, is returned in the problem's "errors" member.
	Reload func() error
	// Views for GET /admin/routes, /admin/upstreams, /admin/stats and
	// /admin/slo.
	Routes, Upstreams, Stats, SLO func() any
	// Logger records reloads requested here; nil discards.
	Logger *slog.Logger
}

//go:embed dashboard.html
var dashboardHTML []byte

type server struct {
	deps Deps
	csp  string
}

// New returns the admin listener's handler.
func New(deps Deps) http.Handler {
	s := &server{deps: deps}
	if s.deps.Logger == nil {
		s.deps.Logger = slog.New(slog.DiscardHandler)
	}
	if s.deps.Token == nil {
		s.deps.Token = func() string { return "" }
	}
	s.csp = dashboardCSP(dashboardHTML)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, r, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", s.readyz)
	mux.HandleFunc("GET /metrics", s.metrics)
	mux.Handle("GET /admin/routes", s.auth(s.view(func() func() any { return s.deps.Routes })))
	mux.Handle("GET /admin/upstreams", s.auth(s.view(func() func() any { return s.deps.Upstreams })))
	mux.Handle("GET /admin/stats", s.auth(s.view(func() func() any { return s.deps.Stats })))
	mux.Handle("GET /admin/slo", s.auth(s.view(func() func() any { return s.deps.SLO })))
	mux.Handle("POST /admin/reload", s.auth(http.HandlerFunc(s.reload)))
	if deps.Profiler != nil {
		mux.Handle("GET /debug/pprof/", s.auth(deps.Profiler))
		mux.Handle("POST /debug/pprof/", s.auth(deps.Profiler)) // pprof's symbol lookup
	}
	mux.Handle("GET /dashboard/{$}", s.authOrQuery(http.HandlerFunc(s.dashboard)))
	mux.HandleFunc("GET /dashboard", func(w http.ResponseWriter, r *http.Request) {
		u := "/dashboard/"
		if r.URL.RawQuery != "" {
			u += "?" + r.URL.RawQuery
		}
		http.Redirect(w, r, u, http.StatusMovedPermanently)
	})
	// Every method: with "GET /" the mux answered other methods itself, in
	// plain text and with 405 even for unknown paths. Here a known path asked
	// with another method gets a 405 problem naming the methods it serves.
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		var allow []string
		for _, m := range []string{http.MethodGet, http.MethodPost} {
			if _, pattern := mux.Handler(&http.Request{Method: m, URL: r.URL, Host: r.Host}); pattern != "/" {
				allow = append(allow, m)
				if m == http.MethodGet {
					allow = append(allow, http.MethodHead)
				}
			}
		}
		if len(allow) > 0 {
			w.Header().Set("Allow", strings.Join(allow, ", "))
			problem.WriteStatus(w, r, http.StatusMethodNotAllowed, "method_not_allowed", "use "+strings.Join(allow, " or "))
			return
		}
		problem.WriteStatus(w, r, http.StatusNotFound, "not_found", "no such admin endpoint")
	})
	return withRequestID(mux)
}

// withRequestID gives every admin request an id, as the gateway does on the
// public listener (DESIGN.md, "Headers and bodies"): the client's
// X-Request-Id when it is 1-128 characters of [A-Za-z0-9._-], else a
// generated one. The id is returned in X-Request-Id and, through the request
// context, in the request_id member of every problem the admin API answers,
// and the reload log lines carry it, so a refused reload's answer can be
// matched with the log.
func withRequestID(next http.Handler) http.Handler {
	ids := reqctx.NewRequestIDs("admin-")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get("X-Request-Id")
		if !reqctx.ValidRequestID(id) {
			id = ids.Next()
		}
		w.Header().Set("X-Request-Id", id)
		ctx, info := reqctx.NewContext(r.Context())
		info.RequestID = id
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

// requestID is the id withRequestID gave r, for log lines.
func requestID(r *http.Request) string {
	if in := reqctx.From(r.Context()); in != nil {
		return in.RequestID
	}
	return ""
}

func (s *server) readyz(w http.ResponseWriter, r *http.Request) {
	if s.deps.Ready != nil && !s.deps.Ready() {
		writeJSON(w, r, http.StatusServiceUnavailable, map[string]string{"status": "draining"})
		return
	}
	writeJSON(w, r, http.StatusOK, map[string]string{"status": "ready"})
}

func (s *server) metrics(w http.ResponseWriter, r *http.Request) {
	if s.deps.Metrics == nil {
		problem.WriteStatus(w, r, http.StatusServiceUnavailable, "unavailable", "metrics are not available")
		return
	}
	s.deps.Metrics.ServeHTTP(w, r)
}

// view serves the JSON of a view function; get reads the field late so a
// Deps built in steps still works.
func (s *server) view(get func() func() any) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f := get()
		if f == nil {
			problem.WriteStatus(w, r, http.StatusServiceUnavailable, "unavailable", "this view is not available")
			return
		}
		writeJSON(w, r, http.StatusOK, f())
	})
}

func (s *server) reload(w http.ResponseWriter, r *http.Request) {
	if s.deps.Reload == nil {
		problem.WriteStatus(w, r, http.StatusServiceUnavailable, "unavailable", "reload is not available")
		return
	}
	start := time.Now()
	err := s.deps.Reload()
	if err == nil {
		s.deps.Logger.Info("admin: config reloaded", "remote", r.RemoteAddr, "request_id", requestID(r))
		writeJSON(w, r, http.StatusOK, map[string]any{"status": "reloaded", "duration_ms": float64(time.Since(start).Microseconds()) / 1e3})
		return
	}
	s.deps.Logger.Warn("admin: reload failed", "remote", r.RemoteAddr, "request_id", requestID(r), "err", err)
	var pe *problem.Error
	if errors.As(err, &pe) {
		problem.Write(w, r, pe)
		return
	}
	var lines []string
	for _, l := range strings.Split(err.Error(), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	problem.Write(w, r, &problem.Error{Status: http.StatusBadRequest, Code: "invalid_config",
		Detail: "the configuration was rejected; the running one stays in force", Cause: err,
		Extra: map[string]any{"errors": lines}})
}

func tokenOK(got, want string) bool {
	g, w := sha256.Sum256([]byte(got)), sha256.Sum256([]byte(want))
	// Comparing digests keeps the comparison constant-time in the length too.
	return subtle.ConstantTimeCompare(g[:], w[:]) == 1
}

func bearer(r *http.Request) (string, bool) {
	a := r.Header.Get("Authorization")
	if len(a) > 7 && strings.EqualFold(a[:7], "bearer ") {
		return strings.TrimSpace(a[7:]), true
	}
	return "", false
}

func (s *server) unauthorized(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("WWW-Authenticate", `Bearer realm="portico-admin"`)
	problem.WriteStatus(w, r, http.StatusUnauthorized, "unauthorized", "a valid admin bearer token is required")
}

func (s *server) auth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		want := s.deps.Token()
		if want == "" {
			next.ServeHTTP(w, r)
			return
		}
		if tok, ok := bearer(r); !ok || !tokenOK(tok, want) {
			s.unauthorized(w, r)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (s *server) authOrQuery(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		want := s.deps.Token()
		if want == "" {
			next.ServeHTTP(w, r)
			return
		}
		tok, ok := bearer(r)
		if !ok {
			tok, ok = r.URL.Query().Get("token"), r.URL.Query().Has("token")
		}
		if !ok || !tokenOK(tok, want) {
			s.unauthorized(w, r)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (s *server) dashboard(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Security-Policy", s.csp)
	// The token may be in this URL: keep it out of Referer headers.
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	_, _ = w.Write(dashboardHTML)
}

// dashboardCSP allows exactly the page's own inline script (by hash) and
// fetches to this origin; nothing else loads. Styles may be inline because the
// page sets style attributes (bar widths) and CSS cannot run code.
func dashboardCSP(page []byte) string {
	hashOf := func(open, close string) string {
		i := bytes.Index(page, []byte(open))
		if i < 0 {
			return ""
		}
		rest := page[i+len(open):]
		j := bytes.Index(rest, []byte(close))
		if j < 0 {
			return ""
		}
		sum := sha256.Sum256(rest[:j])
		return " 'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
	}
	return "default-src 'none'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none';" +
		" script-src" + hashOf("<script>", "</script>") + "; style-src 'unsafe-inline'"
}

func writeJSON(w http.ResponseWriter, r *http.Request, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		// A view JSON cannot hold (a NaN or an infinity): an error like
		// every other, with the request id to find it by.
		problem.Write(w, r, &problem.Error{Status: http.StatusInternalServerError, Code: "view_encoding",
			Detail: "the view could not be encoded as JSON", Cause: err})
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(b)
	_, _ = w.Write([]byte("\n"))
}
