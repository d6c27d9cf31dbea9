// Package proxy forwards one request to one upstream: the terminal handler
// of a plain (non-aggregated) route.
//
// The common exchange, HTTP/1.x without an upgrade or Expect, goes through
// forward (forward.go): the proxy's own copy of what
// net/http/httputil.ReverseProxy does for it, step for step, without the
// request copies, deep header copies and per-answer allocations that made
// ReverseProxy the largest cost of a plain request. This departs from the
// design's "proxy through httputil.ReverseProxy" for that path alone, for
// speed (the plain route's profiles, docs/benchmarks.md); a test sends the same requests both ways and
// requires the upstream and the client to see the same exchange. Upgrades,
// Expect: 100-continue and HTTP/2 (gRPC among it) stay with ReverseProxy,
// configured with Rewrite; websocket.go adds what its WebSocket tunnels
// lack (a check of the 101, the client's early bytes, an idle timeout).
//
// Both paths drop the client's Forwarded and X-Forwarded-* headers before
// setting our own, share a pool of 32 KiB copy buffers, and render every
// failure through problem.FromUpstream and problem.Write. Hop-by-hop headers
// (RFC 9110 section 7.6.1, including those named in Connection) are removed
// both ways; trailers and 1xx responses pass through (no 1xx to an HTTP/1.0
// client: RFC 9110 section 15.2). Bodies stream both ways;
// text/event-stream and unknown-length responses are flushed as they come,
// other responses are written through the server's buffer.
//
// gRPC (HTTP/2 with Content-Type application/grpc*) passes through the same
// way: trailers and both streams are ReverseProxy's. The proxy adds the
// call's deadline: grpc-timeout, counted from reqctx.Info.Start (the
// gateway's arrival time) and forwarded as what is left of it, bounds the
// exchange until response headers when shorter than the route timeout,
// and then the stream too; past it the call ends with grpc-status 4
// (DEADLINE_EXCEEDED), in a trailers-only answer before the headers, in
// the trailers after (grpc.go).
// MaxBodyBytes bounds each request message of a gRPC call rather than its
// stream; a message over it ends the call with grpc-status 8
// (RESOURCE_EXHAUSTED) the same two ways, and resets the upstream's stream
// before any of that message reaches it (grpcMessageLimit).
//
// What the handler expects of the inbound request (the gateway prepares it):
//   - r.URL carries the cleaned path: Path decoded and RawPath escaped, as
//     router.SetPath stores a router.CleanPath result, so that
//     r.URL.EscapedPath() is the cleaned path with the client's escaping
//     (a %2F stays %2F upstream).
//   - reqctx.Info in the context, when there is one, supplies RequestID
//     (sent upstream and returned), Params (for rewrite templates) and
//     Start (a gRPC call's grpc-timeout counts from it); the
//     handler writes the chosen backend's name into Info.Upstream.
//   - r.RemoteAddr is the peer's address (after the PROXY protocol, if any).
package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/portico-gw/portico/internal/config"
	"github.com/portico-gw/portico/internal/problem"
	"github.com/portico-gw/portico/internal/reqctx"
	"github.com/portico-gw/portico/internal/router"
)

// Backend is one side of a route's (possibly weighted) split.
type Backend struct {
	// Name names the upstream; it is written to reqctx.Info.Upstream.
	Name string
	// Weight is the share of requests; with one backend it is ignored,
	// with several, each must be positive.
	Weight int
	// Transport sends the request; usually the upstream's *upstream.Pool,
	// which picks a target and rewrites scheme and host per attempt.
	Transport http.RoundTripper
	// Target is the upstream's first target URL. Its scheme and host start
	// the outbound URL (a Pool overrides them); a path in it is prepended
	// to the outbound path.
	Target *url.URL
	// PreserveHost sends the client's Host header instead of the target's.
	PreserveHost bool
}

// Config is one route's proxy settings.
type Config struct {
	// Route is the route name, for logs.
	Route    string
	Backends []Backend
	// Rewrite changes the outbound path: Path is a template with {name}
	// (a path parameter, escaped as one segment) and {*} (the rest of a
	// prefix route, as the client escaped it); StripPrefix removes a
	// leading run of whole segments. At most one of them. Nil: the path is
	// forwarded as it is.
	Rewrite *config.Rewrite
	// RequestHeaders are applied to the outbound request last (remove, then
	// set), so they can override anything the proxy set.
	RequestHeaders *config.HeaderRules
	// ResponseHeaders are applied to every response of the route, the
	// gateway's own errors included.
	ResponseHeaders *config.HeaderRules
	// Timeout bounds the whole exchange until response headers, retries
	// included; 0 means none. When it passes the client gets 504. The body
	// that follows is not bounded by it.
	Timeout config.Duration
	// MaxBodyBytes bounds the request body; 0 means no limit. A larger
	// Content-Length is refused with 413 before the upstream is contacted;
	// a body without one is counted while it streams and the exchange
	// fails with 413 when it grows past the limit.
	//
	// For a gRPC call (problem.IsGRPC: HTTP/2, application/grpc, not
	// gRPC-Web) it bounds each request message instead, by the length in
	// the message's prefix, so a stream may carry any number of messages.
	// A message over it is not forwarded: the upstream's stream is reset
	// (RST_STREAM CANCEL) and the client gets grpc-status 8
	// (RESOURCE_EXHAUSTED), trailers-only before the response headers, in
	// the trailers after them.
	MaxBodyBytes config.Size
	// TrustedProxies are the peers whose X-Forwarded-For chain (and
	// X-Forwarded-Proto and X-Forwarded-Host) is kept. From any other peer
	// those headers are replaced.
	TrustedProxies []netip.Prefix
	// WebSocket lets WebSocket opening handshakes ("Upgrade: websocket" on
	// a GET over HTTP/1.1 without a body) through; other upgrade protocols
	// and other requests never are. The tunnel closes once it was idle in
	// both directions for the serving http.Server's IdleTimeout (else its
	// ReadTimeout; neither: never). When false, Upgrade and
	// Connection are stripped and the request is proxied as a plain one:
	// RFC 9110 section 7.8 lets a server ignore Upgrade, and the client
	// then sees the upstream's ordinary answer instead of a 101.
	WebSocket bool
	// StripUpstreamCORS drops the upstream's Access-Control-* response
	// headers; set it when the route has a CORS stage, which owns them.
	StripUpstreamCORS bool
}

// Deps are the proxy's dependencies.
type Deps struct {
	// Logger receives one record per failed exchange; nil discards.
	Logger *slog.Logger
	// BufferPool is shared by all routes (see NewBufferPool); nil gives
	// this handler a pool of its own.
	BufferPool httputil.BufferPool
}

// NewBufferPool returns a pool of 32 KiB copy buffers for ReverseProxy.
// Create one per process and pass it to every New.
func NewBufferPool() httputil.BufferPool {
	return &bufferPool{p: sync.Pool{New: func() any { return new([bufferSize]byte) }}}
}

const bufferSize = 32 << 10

// bufferPool stores array pointers: converting the slice back to one on Put
// allocates nothing, where storing a *[]byte would allocate a slice header.
type bufferPool struct{ p sync.Pool }

func (b *bufferPool) Get() []byte { return b.p.Get().(*[bufferSize]byte)[:] }

func (b *bufferPool) Put(s []byte) {
	if cap(s) >= bufferSize {
		b.p.Put((*[bufferSize]byte)(s[:bufferSize]))
	}
}

type handler struct {
	route     string
	backends  []*backend
	cum       []uint64 // cumulative weights
	total     uint64
	rewrite   *template
	strip     []string // decoded segments of strip_prefix
	reqSet    []headerKV
	reqRemove []string
	resSet    []headerKV
	resRemove []string
	timeout   time.Duration
	maxBody   int64
	tooLarge  *problem.Error
	// msgTooLarge fails a gRPC call one of whose request messages is
	// over maxBody (grpc-status 8 RESOURCE_EXHAUSTED).
	msgTooLarge *problem.Error
	trusted     []netip.Prefix
	websocket   bool
	stripCORS   bool
	log         *slog.Logger
	buffers     httputil.BufferPool
}

type backend struct {
	name         string
	target       *url.URL
	basePath     string // escaped target path without trailing '/'
	preserveHost bool
	transport    http.RoundTripper
	rp           *httputil.ReverseProxy // for what forward leaves to it
}

type headerKV struct {
	k string
	v []string
}

// Precomputed X-Forwarded-Proto values. Each slice has cap 1, so an append
// by a later stage copies instead of writing into the shared array.
var (
	protoHTTP  = []string{"http"}
	protoHTTPS = []string{"https"}
)

// corsResponseHeaders are the CORS response headers of the Fetch standard.
var corsResponseHeaders = [...]string{
	"Access-Control-Allow-Origin", "Access-Control-Allow-Credentials", "Access-Control-Expose-Headers",
	"Access-Control-Allow-Methods", "Access-Control-Allow-Headers", "Access-Control-Max-Age",
}

// New builds the proxy handler of one route.
func New(cfg Config, deps Deps) (http.Handler, error) {
	if len(cfg.Backends) == 0 {
		return nil, errors.New("proxy: no backends")
	}
	h := &handler{
		route:     cfg.Route,
		timeout:   cfg.Timeout.D(),
		maxBody:   int64(cfg.MaxBodyBytes),
		trusted:   cfg.TrustedProxies,
		websocket: cfg.WebSocket,
		stripCORS: cfg.StripUpstreamCORS,
		log:       deps.Logger,
	}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	if h.maxBody < 0 || h.timeout < 0 {
		return nil, errors.New("proxy: negative timeout or max body bytes")
	}
	if h.maxBody > 0 {
		h.tooLarge = problem.New(http.StatusRequestEntityTooLarge, "body_too_large",
			fmt.Sprintf("the request body exceeds %d bytes", h.maxBody))
		h.msgTooLarge = problem.New(http.StatusRequestEntityTooLarge, "grpc_message_too_large",
			fmt.Sprintf("a request message exceeds %d bytes", h.maxBody))
	}
	pool := deps.BufferPool
	if pool == nil {
		pool = NewBufferPool()
	}
	h.buffers = pool
	errLog := slog.NewLogLogger(h.log.Handler(), slog.LevelWarn)
	for i, b := range cfg.Backends {
		if b.Transport == nil || b.Target == nil || b.Target.Scheme == "" || b.Target.Host == "" {
			return nil, fmt.Errorf("proxy: backend %d (%q): transport and an absolute target URL are required", i, b.Name)
		}
		if len(cfg.Backends) > 1 {
			if b.Weight <= 0 {
				return nil, fmt.Errorf("proxy: backend %q: weight must be positive in a split", b.Name)
			}
			h.total += uint64(b.Weight)
			h.cum = append(h.cum, h.total)
		}
		be := &backend{
			name:         b.Name,
			target:       b.Target,
			basePath:     strings.TrimSuffix(b.Target.EscapedPath(), "/"),
			preserveHost: b.PreserveHost,
			transport:    b.Transport,
		}
		be.rp = &httputil.ReverseProxy{
			Rewrite:        h.rewriteRequest,
			Transport:      swapTrace{next: b.Transport},
			BufferPool:     pool,
			ErrorLog:       errLog,
			ModifyResponse: h.modifyResponse,
			ErrorHandler:   h.handleError,
		}
		h.backends = append(h.backends, be)
	}
	if rw := cfg.Rewrite; rw != nil {
		switch {
		case rw.Path != "" && rw.StripPrefix != "":
			return nil, errors.New("proxy: rewrite: path and strip_prefix are exclusive")
		case rw.Path != "":
			t, err := parseTemplate(rw.Path)
			if err != nil {
				return nil, fmt.Errorf("proxy: rewrite.path: %w", err)
			}
			h.rewrite = t
		case rw.StripPrefix != "":
			p := strings.Trim(rw.StripPrefix, "/")
			if !strings.HasPrefix(rw.StripPrefix, "/") || p == "" {
				return nil, fmt.Errorf("proxy: rewrite.strip_prefix %q: want a path like /api", rw.StripPrefix)
			}
			h.strip = strings.Split(p, "/")
			for _, seg := range h.strip {
				if seg == "" || seg == "." || seg == ".." {
					return nil, fmt.Errorf("proxy: rewrite.strip_prefix %q: empty or dot segment", rw.StripPrefix)
				}
			}
		}
	}
	var err error
	if h.reqSet, h.reqRemove, err = compileRules(cfg.RequestHeaders); err != nil {
		return nil, fmt.Errorf("proxy: request_headers: %w", err)
	}
	if h.resSet, h.resRemove, err = compileRules(cfg.ResponseHeaders); err != nil {
		return nil, fmt.Errorf("proxy: response_headers: %w", err)
	}
	return h, nil
}

func compileRules(hr *config.HeaderRules) (set []headerKV, remove []string, err error) {
	if hr == nil {
		return nil, nil, nil
	}
	for _, k := range sortedKeys(hr.Set) {
		if !httpguts.ValidHeaderFieldName(k) {
			return nil, nil, fmt.Errorf("invalid header name %q", k)
		}
		v := hr.Set[k]
		if strings.ContainsAny(v, "\r\n\x00") {
			return nil, nil, fmt.Errorf("header %q: value has a control character", k)
		}
		set = append(set, headerKV{http.CanonicalHeaderKey(k), []string{v}})
	}
	for _, k := range hr.Remove {
		if !httpguts.ValidHeaderFieldName(k) {
			return nil, nil, fmt.Errorf("invalid header name %q", k)
		}
		remove = append(remove, http.CanonicalHeaderKey(k))
	}
	return set, remove, nil
}

// exchange is the per-request state, one allocation. It is the context of
// the request handed to ReverseProxy, so the hooks find it from any request
// derived from it.
type exchange struct {
	context.Context
	b        *backend
	cancel   context.CancelCauseFunc
	timer    *time.Timer
	deadline time.Time // of the route timeout or grpc-timeout, whichever is first; zero without either
	// grpcDeadline is when a gRPC call's grpc-timeout passes; zero when
	// the request is not gRPC or has none. Unlike the route timeout it
	// also bounds the response body (the stream).
	grpcDeadline time.Time
	gbody        grpcBody
	timedOut     atomic.Bool
	// grpcExpired is set (before timedOut) when the timer that fired
	// stood for the call's grpc-timeout.
	grpcExpired atomic.Bool
	gatewayID   bool // the gateway already set X-Request-Id on the response
	body        limitedBody
	gmsg        *grpcMessageLimit // a gRPC call's request stream under MaxBodyBytes; nil otherwise (kept out of every other exchange)
	// vals backs the per-request header values the proxy sets, so they
	// cost no allocation of their own (each used as vals[i:i+1:i+1]).
	vals [5]string

	// In the same allocation: forward's outbound URL and request body
	// wrapper, and (for both paths) the client trace that passes 1xx
	// answers on to w until the final answer arrived (roundTripped, under
	// mu: the transport may call it from a goroutine of its own).
	url          url.URL
	reqBody      noCloseBody
	trace        httptrace.ClientTrace
	w            http.ResponseWriter
	http10       bool // the client speaks HTTP/1.0: no 1xx answers
	mu           sync.Mutex
	roundTripped bool
}

// Indexes into exchange.vals.
const (
	valXFF = iota
	valXFHost
	valReqID
	valRespID
	valGRPCTimeout
)

// val stores v in slot i and returns it as a one-element header value.
func (ex *exchange) val(i int, v string) []string {
	ex.vals[i] = v
	return ex.vals[i : i+1 : i+1]
}

type exchangeKey struct{}

func (ex *exchange) Value(key any) any {
	if key == (exchangeKey{}) {
		return ex
	}
	return ex.Context.Value(key)
}

// Deadline reports the route deadline (or the call's grpc-timeout when that
// is earlier), so that the dialer and the upstream pool (which never starts
// a retry past it) see the remaining budget. The context is not a deadline
// context because a deadline would also cut the response body short; the
// timer behind it stops once headers arrive (or, for a gRPC call's
// deadline, is re-armed for the stream and ends it with trailers).
func (ex *exchange) Deadline() (time.Time, bool) {
	d, ok := ex.Context.Deadline()
	if !ex.deadline.IsZero() && (!ok || ex.deadline.Before(d)) {
		return ex.deadline, true
	}
	return d, ok
}

func (ex *exchange) expire() {
	cause := ex.timeoutCause()
	if cause == errGRPCDeadline {
		ex.grpcExpired.Store(true)
	}
	ex.timedOut.Store(true)
	ex.cancel(cause)
}

// grpcDeadlinePassed reports whether the call's grpc-timeout has passed.
func (ex *exchange) grpcDeadlinePassed() bool {
	return !ex.grpcDeadline.IsZero() && !time.Now().Before(ex.grpcDeadline)
}

// timeoutCause tells which deadline a fired timer stood for. A timer never
// fires early, and grpcDeadline was computed from the instant the timer was
// armed, so "past grpcDeadline" means the call's own deadline passed.
func (ex *exchange) timeoutCause() error {
	if ex.grpcDeadlinePassed() {
		return errGRPCDeadline
	}
	return errRouteTimeout
}

// errRouteTimeout is the cancellation cause when the route timeout fires:
// ctx.Err() is then context.Canceled (the context is cancelled, not past a
// deadline, so the body is not bound by it), and context.Cause(ctx) this
// error, which matches errors.Is(err, context.DeadlineExceeded).
var errRouteTimeout = fmt.Errorf("route timeout: %w", context.DeadlineExceeded)

func exchangeFrom(ctx context.Context) *exchange {
	if ex, ok := ctx.(*exchange); ok {
		return ex
	}
	ex, _ := ctx.Value(exchangeKey{}).(*exchange)
	return ex
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h.maxBody > 0 && r.ContentLength > h.maxBody && !problem.IsGRPC(r) {
		// A gRPC call's limit is per message (grpcMessageLimit): a
		// stream longer than the limit may well be all small messages.
		h.fail(w, r, nil, h.tooLarge)
		return
	}
	b := h.backends[0]
	if h.total > 0 {
		n := rand.Uint64N(h.total)
		for i, c := range h.cum {
			if n < c {
				b = h.backends[i]
				break
			}
		}
	}
	info := reqctx.From(r.Context())
	if info != nil {
		info.Upstream = b.name
	}
	wh := w.Header()
	for _, kv := range h.resSet {
		wh[kv.k] = kv.v[:1:1]
	}
	for _, k := range h.resRemove {
		delete(wh, k)
	}

	ex := &exchange{Context: r.Context(), b: b, w: w, gatewayID: len(wh["X-Request-Id"]) > 0, http10: !r.ProtoAtLeast(1, 1)}
	ex.trace.Got1xxResponse = ex.got1xx // either path passes 1xx answers through it
	var grpcTimeout time.Duration
	hasGRPCTimeout, grpcCall := false, false
	if isGRPC(r) {
		grpcTimeout, hasGRPCTimeout = h.grpcTimeout(r)
		grpcCall = problem.IsGRPC(r) // not gRPC-Web, whose framing may be base64
	}
	if h.timeout > 0 || hasGRPCTimeout {
		// A deadline would also cut the body short; the timer is stopped
		// once the response headers arrived (modifyResponse), or, for a
		// gRPC call with grpc-timeout, re-armed for the rest of the call.
		ctx, cancel := context.WithCancelCause(r.Context())
		defer cancel(nil)
		ex.Context, ex.cancel = ctx, cancel
		now := time.Now()
		d := h.timeout
		if hasGRPCTimeout {
			// The client's deadline runs from when it sent the call;
			// the time the gateway already spent on it (auth, rate
			// limits, a queue) is gone from it.
			start := now
			if info != nil && !info.Start.IsZero() && info.Start.Before(now) {
				start = info.Start
			}
			ex.grpcDeadline = start.Add(grpcTimeout)
			if left := ex.grpcDeadline.Sub(now); d == 0 || left < d {
				d = left
			}
		}
		ex.deadline = now.Add(d)
		if d <= 0 {
			// The call's deadline passed before it got here (the
			// gateway's own stages used it up): it ends now, cancelled
			// before the transport sends anything, rather than on a
			// timer that may lose the race with the send.
			ex.expire()
		} else {
			ex.timer = time.AfterFunc(d, ex.expire)
			defer ex.timer.Stop()
		}
	}
	body := r.Body
	if h.maxBody > 0 && r.Body != nil && r.Body != http.NoBody {
		switch {
		case grpcCall:
			ex.gmsg = &grpcMessageLimit{rc: r.Body, max: h.maxBody, err: h.msgTooLarge}
			body = ex.gmsg
		case r.ContentLength < 0:
			ex.body = limitedBody{rc: r.Body, n: h.maxBody, err: h.tooLarge}
			body = &ex.body
		}
	}
	if canForward(r) {
		h.forward(w, r, ex, body)
		return
	}
	out := r.WithContext(ex)
	out.Body = body
	if h.tunnels(r) {
		w = &upgradeWriter{ResponseWriter: w, idle: serverIdleTimeout(r)}
	}
	b.rp.ServeHTTP(w, out)
}

// rewriteRequest builds the outbound request (ReverseProxy.Rewrite).
func (h *handler) rewriteRequest(pr *httputil.ProxyRequest) {
	h.buildOutbound(exchangeFrom(pr.In.Context()), pr.In, pr.Out) // set by ServeHTTP, never nil
}

// buildOutbound sets the outbound URL, Host, X-Forwarded-*, X-Request-Id and the
// route's header rules on out, whose header no longer has the client's
// forwarding or hop-by-hop headers.
func (h *handler) buildOutbound(ex *exchange, in, out *http.Request) {
	b := ex.b
	info := reqctx.From(ex.Context)

	out.URL.Scheme = b.target.Scheme
	out.URL.Host = b.target.Host
	path := h.outboundPath(in.URL.EscapedPath(), info)
	if b.basePath != "" {
		path = b.basePath + path
	}
	setEscapedPath(out.URL, path)
	if b.preserveHost {
		out.Host = in.Host
	} else {
		out.Host = ""
	}

	// X-Forwarded-*: ReverseProxy removed the client's copies from out.
	// The client's own are read only from a trusted peer.
	peer := peerHost(in.RemoteAddr)
	var priorFor, priorProto, priorHost []string
	if h.isTrusted(peer) {
		priorFor, priorProto, priorHost = in.Header["X-Forwarded-For"], in.Header["X-Forwarded-Proto"], in.Header["X-Forwarded-Host"]
	}
	if len(priorFor) > 0 {
		out.Header["X-Forwarded-For"] = []string{strings.Join(priorFor, ", ") + ", " + peer}
	} else if peer != "" {
		out.Header["X-Forwarded-For"] = ex.val(valXFF, peer)
	}
	switch {
	case len(priorProto) > 0:
		out.Header["X-Forwarded-Proto"] = priorProto[:1:1]
	case in.TLS != nil:
		out.Header["X-Forwarded-Proto"] = protoHTTPS
	default:
		out.Header["X-Forwarded-Proto"] = protoHTTP
	}
	if len(priorHost) > 0 {
		out.Header["X-Forwarded-Host"] = priorHost[:1:1]
	} else if in.Host != "" {
		out.Header["X-Forwarded-Host"] = ex.val(valXFHost, in.Host)
	}
	if info != nil && info.RequestID != "" {
		out.Header["X-Request-Id"] = ex.val(valReqID, info.RequestID)
	}
	if !ex.grpcDeadline.IsZero() {
		// What is left of the call's deadline, so that the upstream does
		// not work past it on the time the gateway spent.
		out.Header["Grpc-Timeout"] = ex.val(valGRPCTimeout, formatGRPCTimeout(time.Until(ex.grpcDeadline)))
	}
	if len(out.Header["Upgrade"]) > 0 && !h.tunnels(in) {
		// ReverseProxy put these back for an upgrade; refuse it by
		// forwarding a plain request. Only a WebSocket handshake is ever
		// tunnelled (not h2c or anything else a client may ask for).
		delete(out.Header, "Upgrade")
		delete(out.Header, "Connection")
	}
	for _, k := range h.reqRemove {
		delete(out.Header, k)
	}
	for _, kv := range h.reqSet {
		out.Header[kv.k] = kv.v[:1:1]
	}
}

// modifyResponse runs once response headers arrived (also for a 101).
func (h *handler) modifyResponse(resp *http.Response) error {
	ex := exchangeFrom(resp.Request.Context())
	if ex == nil {
		return nil
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		if err := checkSwitch(resp); err != nil {
			return err
		}
	}
	return h.shapeResponse(ex, resp)
}

// shapeResponse stops the route timer and applies the route's response
// rules (request id, CORS, header rules) to the upstream's answer.
func (h *handler) shapeResponse(ex *exchange, resp *http.Response) error {
	if ex.timer != nil && !ex.timer.Stop() {
		// The route timeout fired as the headers arrived; the exchange
		// is already cancelled, so its body would be cut short.
		return ex.timeoutCause()
	}
	if resp.StatusCode < 100 {
		// The transport takes any three digits; the server panics on
		// writing a status below 100.
		return errBadStatus
	}
	if (!ex.grpcDeadline.IsZero() || ex.gmsg != nil) && isGRPCResponse(resp) {
		if !ex.grpcDeadline.IsZero() {
			// The call's deadline bounds the stream too (the route
			// timeout alone would not): re-arm the timer for what is
			// left of it.
			ex.timer.Reset(time.Until(ex.grpcDeadline))
		}
		// Either may end the call after the headers went out; the
		// status then goes in the trailers (grpcBody).
		ex.gbody = grpcBody{rc: resp.Body, resp: resp, ex: ex}
		resp.Body = &ex.gbody
	}
	if ex.gatewayID {
		delete(resp.Header, "X-Request-Id")
	} else if in := reqctx.From(ex.Context); in != nil && in.RequestID != "" {
		resp.Header["X-Request-Id"] = ex.val(valRespID, in.RequestID)
	}
	if h.stripCORS {
		for _, k := range corsResponseHeaders {
			delete(resp.Header, k)
		}
	}
	for _, k := range h.resRemove {
		delete(resp.Header, k)
	}
	for _, kv := range h.resSet {
		// The value is already in the client's header map.
		delete(resp.Header, kv.k)
	}
	return nil
}

var errBadStatus = errors.New("upstream answered with a status below 100")

// handleError renders a failed exchange (ReverseProxy.ErrorHandler).
func (h *handler) handleError(w http.ResponseWriter, r *http.Request, err error) {
	ex := exchangeFrom(r.Context())
	var pe *problem.Error
	switch {
	case ex != nil && ex.body.exceeded.Load():
		pe = problem.Wrap(h.tooLarge.Status, h.tooLarge.Code, h.tooLarge.Detail, err)
	case ex != nil && ex.gmsg != nil && ex.gmsg.exceeded.Load():
		pe = problem.Wrap(h.msgTooLarge.Status, h.msgTooLarge.Code, h.msgTooLarge.Detail, err)
	case ex != nil && (ex.grpcExpired.Load() || errors.Is(err, errGRPCDeadline) || ex.grpcDeadlinePassed()):
		// Past the call's deadline any failure is DEADLINE_EXCEEDED, even
		// when the upstream, which got the same grpc-timeout, reset the
		// stream before our timer's goroutine ran.
		pe = problem.Wrap(http.StatusGatewayTimeout, "grpc_deadline_exceeded",
			"the upstream did not answer within the call's grpc-timeout", err)
	case ex != nil && ex.timedOut.Load():
		pe = problem.Wrap(http.StatusGatewayTimeout, "route_timeout",
			"the upstream did not answer within the route timeout", err)
	default:
		pe = problem.FromUpstream(err)
	}
	h.fail(w, r, ex, pe)
}

// fail logs pe with its cause and writes it.
func (h *handler) fail(w http.ResponseWriter, r *http.Request, ex *exchange, pe *problem.Error) {
	level := slog.LevelWarn
	switch {
	case pe.Status == problem.StatusClientClosed:
		level = slog.LevelDebug
	case pe.Status < 500:
		level = slog.LevelInfo
	}
	h.logExchange(r.Context(), level, "proxy exchange failed", ex, pe.Cause,
		slog.Int("status", pe.Status), slog.String("code", pe.Code))
	problem.Write(w, r, pe)
}

// logExchange logs one exchange's failure with its route, upstream (when
// one was chosen), cause and request id.
func (h *handler) logExchange(ctx context.Context, level slog.Level, msg string, ex *exchange, cause error, attrs ...slog.Attr) {
	if !h.log.Enabled(ctx, level) {
		return
	}
	upstream := ""
	if ex != nil {
		upstream = ex.b.name
	}
	all := append([]slog.Attr{slog.String("route", h.route), slog.String("upstream", upstream)}, attrs...)
	if cause != nil {
		all = append(all, slog.String("cause", cause.Error()))
	}
	if in := reqctx.From(ctx); in != nil {
		all = append(all, slog.String("request_id", in.RequestID))
	}
	h.log.LogAttrs(ctx, level, msg, all...)
}

// isTrusted reports whether the peer address is in trusted_proxies.
func (h *handler) isTrusted(peer string) bool {
	if len(h.trusted) == 0 || peer == "" {
		return false
	}
	a, err := netip.ParseAddr(peer)
	if err != nil {
		return false
	}
	a = a.Unmap()
	for _, p := range h.trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// peerHost returns the address part of a RemoteAddr ("1.2.3.4:5",
// "[::1]:5") without allocating; "" when there is none.
func peerHost(remote string) string {
	if remote == "" {
		return ""
	}
	if remote[0] == '[' {
		if i := strings.IndexByte(remote, ']'); i > 0 {
			return remote[1:i]
		}
		return ""
	}
	if i := strings.LastIndexByte(remote, ':'); i >= 0 && strings.IndexByte(remote[:i], ':') < 0 {
		return remote[:i]
	}
	return remote
}

// setEscapedPath stores an escaped path in u so that u.EscapedPath()
// returns it verbatim (router.SetPath, whose RawPath keeps the
// sub-delimiters as sent).
func setEscapedPath(u *url.URL, esc string) {
	if esc == "" {
		esc = "/"
	}
	dec := esc
	if strings.IndexByte(esc, '%') >= 0 {
		var err error
		if dec, err = url.PathUnescape(esc); err != nil {
			// Not produced by CleanPath; send the path as net/url would.
			u.Path, u.RawPath = esc, ""
			return
		}
	}
	router.SetPath(u, dec, esc)
}

// limitedBody fails the exchange once more than n bytes were read.
type limitedBody struct {
	rc       io.ReadCloser
	n        int64
	err      error
	exceeded atomic.Bool // read by the handler, written by the transport
}

func (l *limitedBody) Read(p []byte) (int, error) {
	if l.exceeded.Load() {
		return 0, l.err
	}
	if int64(len(p)) > l.n+1 {
		p = p[:l.n+1]
	}
	n, err := l.rc.Read(p)
	if int64(n) > l.n {
		l.exceeded.Store(true)
		n, l.n = int(l.n), 0
		return n, l.err
	}
	l.n -= int64(n)
	return n, err
}

func (l *limitedBody) Close() error { return l.rc.Close() }
