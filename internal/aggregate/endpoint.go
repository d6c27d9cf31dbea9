package aggregate

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/klauspost/compress/flate"
	"github.com/klauspost/compress/gzip"

	"github.com/portico-gw/portico/internal/config"
	"github.com/portico-gw/portico/internal/identity"
	"github.com/portico-gw/portico/internal/problem"
	"github.com/portico-gw/portico/internal/reqctx"
	"github.com/portico-gw/portico/internal/upstream"
)

// DefaultMaxBackendBodyBytes caps a backend body when the BFF sets no
// max_backend_body_bytes.
const DefaultMaxBackendBodyBytes = 5 << 20

// Deps are an endpoint's dependencies.
type Deps struct {
	// Logger receives backend failures (debug for optional backends, warn
	// for required ones). Nil discards.
	Logger *slog.Logger
	// Upstreams maps upstream names to their round trippers (the gateway's
	// *upstream.Pool). A round tripper receives requests whose URL carries
	// the path and query; scheme and host are placeholders ("http" and the
	// upstream name) that the pool replaces with a target. The request's
	// Host is the client's, which the pool replaces with the target's
	// unless the upstream has preserve_host.
	Upstreams map[string]http.RoundTripper
	// Now is the clock; nil means time.Now. Deadlines are computed from it.
	Now func() time.Time
}

// Input is what a backend call reads: the client request and, for a
// backend with after, its dependency's result.
type Input struct {
	// Request is the inbound request (headers, query).
	Request *http.Request
	// Info is the gateway's request state; nil outside the gateway.
	Info *reqctx.Info

	id    *identity.Identity
	idSet bool
	query url.Values
	dep   *Result
	// hdr is the backends' request header, worked out once per client
	// request, with hdrN values in all; cs is this call's scratch.
	hdr  []headerField
	hdrN int
	cs   *callState
}

func (in *Input) identity() *identity.Identity {
	if !in.idSet {
		in.id, in.idSet = reqctx.IdentityFrom(in.Request.Context()), true
	}
	return in.id
}

func (in *Input) queryValues() url.Values {
	if in.query == nil {
		in.query = in.Request.URL.Query()
	}
	return in.query
}

// Result is one backend's answer.
type Result struct {
	// Status is the upstream's status code.
	Status int
	// Body is the raw, decoded (gunzipped), unshaped body; {NAME.field}
	// templates read it.
	Body []byte
	// Value is the shaped JSON value placed into the response.
	Value []byte

	// text: the body was not JSON and Value is it as a JSON string, which
	// goes under the backend's name when it has no into.
	text bool
}

// BackendFunc is one backend call as a typed function. Fetching, decoding
// and shaping compose as BackendFuncs.
type BackendFunc func(ctx context.Context, in *Input) (*Result, error)

// backend is one compiled backend of an endpoint.
type backend struct {
	name     string
	optional bool
	timeout  time.Duration
	dep      int   // index of the after backend, or -1
	children []int // backends that wait for this one
	// into is the response key, with intoJSON its quoted form; empty means
	// merge the value's members into the response.
	into     string
	intoB    []byte
	intoJSON []byte
	// nameB and nameJSON place a non-JSON body without into.
	nameB    []byte
	nameJSON []byte
	shaper   *shaper
	call     BackendFunc
	// sends is the backend's fetcher when its upstream can write a request
	// and have its answer read later (an upstream.Sender), nil otherwise.
	sends *fetcher
}

// endpoint is one compiled BFF endpoint; it is immutable once built.
type endpoint struct {
	bff, name string
	backends  []*backend
	roots     []int
	timeout   time.Duration
	reserve   time.Duration
	maxBody   int64
	log       *slog.Logger
	// usesQuery and usesClaims say some template reads {query.X} or
	// {claims.X}, so the query is parsed and the identity found once per
	// request rather than once per backend.
	usesQuery, usesClaims bool
	// sends: some backend's upstream can send (backend.sends).
	sends   bool
	now     func() time.Time
	workers *workerPool
	gzips   sync.Pool // *gzip.Reader
	states  sync.Pool // *runState
}

// NewEndpoint compiles one BFF endpoint into a handler. Every template,
// field path, upstream name and the after graph is checked here; a request
// never meets a config error.
func NewEndpoint(bff *config.BFF, ep *config.Endpoint, deps Deps) (http.Handler, error) {
	if bff == nil || ep == nil {
		return nil, errors.New("aggregate: nil bff or endpoint")
	}
	where := fmt.Sprintf("bff %s endpoint %s", bff.Name, ep.Name)
	if len(ep.Backends) == 0 {
		return nil, fmt.Errorf("%s: no backends", where)
	}
	e := &endpoint{
		bff:     bff.Name,
		name:    ep.Name,
		timeout: ep.Timeout.D(),
		maxBody: int64(bff.MaxBackendBodyBytes),
		log:     deps.Logger,
		now:     deps.Now,
		workers: &workerPool{max: maxWorkers, sweepEvery: workerSweep},
	}
	if e.maxBody <= 0 {
		e.maxBody = DefaultMaxBackendBodyBytes
	}
	if e.log == nil {
		e.log = slog.New(slog.DiscardHandler)
	}
	if e.now == nil {
		e.now = time.Now
	}
	// The reserve leaves the endpoint time to answer with what it has after
	// a backend's default deadline passes.
	e.reserve = min(e.timeout/20, 10*time.Millisecond)

	index := make(map[string]int, len(ep.Backends))
	intos := make(map[string]string, len(ep.Backends))
	for i, bc := range ep.Backends {
		name := bc.Name
		if name == "" {
			name = bc.Into
		}
		if name == "" {
			name = bc.Upstream
		}
		if name == "" {
			return nil, fmt.Errorf("%s: backends[%d]: no name, into or upstream", where, i)
		}
		if _, dup := index[name]; dup {
			return nil, fmt.Errorf("%s: backend name %q is used twice", where, name)
		}
		index[name] = i
		if bc.Into != "" {
			if other, dup := intos[bc.Into]; dup {
				return nil, fmt.Errorf("%s: backends %q and %q both use into %q", where, other, name, bc.Into)
			}
			intos[bc.Into] = name
		}
	}
	params := pathParams(ep.Path)
	for i, bc := range ep.Backends {
		b, err := e.compileBackend(bc, ep.Backends, index, params, deps)
		if err != nil {
			return nil, fmt.Errorf("%s: backend %s: %w", where, nameOf(bc, i), err)
		}
		e.backends = append(e.backends, b)
		e.sends = e.sends || b.sends != nil
	}
	for i, b := range e.backends {
		if b.dep < 0 {
			e.roots = append(e.roots, i)
		} else {
			e.backends[b.dep].children = append(e.backends[b.dep].children, i)
		}
	}
	// With one after per backend, a cycle is a chain that comes back.
	for i := range e.backends {
		seen := 0
		for j := e.backends[i].dep; j >= 0; j = e.backends[j].dep {
			if j == i || seen > len(e.backends) {
				return nil, fmt.Errorf("%s: backend %s: after forms a cycle", where, e.backends[i].name)
			}
			seen++
		}
	}
	return e, nil
}

func nameOf(bc *config.Backend, i int) string {
	switch {
	case bc.Name != "":
		return bc.Name
	case bc.Into != "":
		return bc.Into
	case bc.Upstream != "":
		return bc.Upstream
	}
	return fmt.Sprintf("#%d", i)
}

// pathParams lists the {name} parameters of an endpoint path; nil when the
// endpoint has no path (then {param} templates are not checked here).
func pathParams(p string) []string {
	if p == "" {
		return nil
	}
	params := []string{}
	for {
		i := strings.IndexByte(p, '{')
		if i < 0 {
			return params
		}
		j := strings.IndexByte(p[i:], '}')
		if j < 0 {
			return params
		}
		params = append(params, p[i+1:i+j])
		p = p[i+j+1:]
	}
}

func (e *endpoint) compileBackend(bc *config.Backend, all []*config.Backend, index map[string]int, params []string, deps Deps) (*backend, error) {
	b := &backend{
		name:     nameOf(bc, 0),
		optional: bc.Optional,
		timeout:  bc.Timeout.D(),
		dep:      -1,
		into:     bc.Into,
	}
	if bc.Timeout < 0 {
		return nil, errors.New("negative timeout")
	}
	if bc.After != "" {
		j, ok := index[bc.After]
		if !ok {
			return nil, fmt.Errorf("after: no backend named %q", bc.After)
		}
		if all[j] == bc {
			return nil, errors.New("after names the backend itself")
		}
		b.dep = j
	}
	b.nameB, b.nameJSON = []byte(b.name), appendJSONString(nil, []byte(b.name))
	if b.into != "" {
		b.intoB = []byte(b.into)
		b.intoJSON = appendJSONString(nil, []byte(b.into))
	}
	rt := deps.Upstreams[bc.Upstream]
	if rt == nil {
		return nil, fmt.Errorf("unknown upstream %q", bc.Upstream)
	}
	tmpl, err := parseTemplate(bc.Path, bc.After)
	if err != nil {
		return nil, err
	}
	sh, err := compileShape(shapeSpec{Fields: bc.Fields, Drop: bc.Drop, Rename: bc.Rename, Pick: bc.Pick})
	if err != nil {
		return nil, err
	}
	b.shaper = sh
	method := strings.ToUpper(bc.Method)
	if method == "" {
		method = http.MethodGet
	}
	for _, p := range tmpl.parts {
		switch p.src {
		case srcParam:
			if params != nil && !slices.Contains(params, p.text) {
				return nil, fmt.Errorf("path %q: {%s} is not a parameter of the endpoint path", bc.Path, p.text)
			}
		case srcQuery:
			e.usesQuery = true
		case srcClaim:
			e.usesClaims = true
		}
	}
	f := &fetcher{e: e, b: b, upstream: bc.Upstream, method: method, tmpl: tmpl, rt: rt}
	b.call = f.call
	if sr, ok := rt.(upstream.Sender); ok && sr.CanSend(method) {
		f.sr, b.sends = sr, f
	}
	return b, nil
}

// fetcher makes one backend's upstream request and shapes the answer.
type fetcher struct {
	e        *endpoint
	b        *backend
	upstream string
	method   string
	tmpl     *template
	rt       http.RoundTripper
	sr       upstream.Sender // rt, when it can send
}

// statusError is a non-2xx answer from a backend.
type statusError struct{ status int }

func (e *statusError) Error() string {
	return "upstream answered " + strconv.Itoa(e.status) + " " + http.StatusText(e.status)
}

// bodyError is a backend body the endpoint cannot use.
type bodyError struct{ err error }

func (e *bodyError) Error() string { return e.err.Error() }
func (e *bodyError) Unwrap() error { return e.err }

var errTooLarge = errors.New("body larger than max_backend_body_bytes")

func (f *fetcher) call(ctx context.Context, in *Input) (*Result, error) {
	out, err := f.request(ctx, in)
	if err != nil {
		return nil, err
	}
	resp, err := f.rt.RoundTrip(out)
	return f.answer(in.cs, out, resp, err)
}

// request renders the outbound request for in, under ctx.
func (f *fetcher) request(ctx context.Context, in *Input) (*http.Request, error) {
	cs := in.cs
	if cs == nil {
		in.cs = new(callState)
		cs = in.cs
	}
	if in.hdr == nil {
		in.hdr, in.hdrN = appendHeaderFields(nil, make([]string, 0, fixedFields), in.Request, in.Info)
	}
	s := &cs.scan
	var err error
	cs.target, err = f.tmpl.render(cs.target[:0], in, s)
	if err != nil {
		return nil, err
	}
	// The URL is built directly: there is nothing to parse, and the round
	// tripper sets scheme and host anyway.
	u := cs.url
	if u == nil {
		u = new(url.URL)
	}
	// A target like the last one on this state (a path without
	// placeholders, the same user again) keeps its string.
	if string(cs.target) != cs.targetStr {
		cs.targetStr = string(cs.target)
	}
	path, query, _ := strings.Cut(cs.targetStr, "?")
	*u = url.URL{Scheme: "http", Host: f.upstream, RawQuery: query}
	if strings.IndexByte(path, '%') >= 0 {
		if u.Path, err = url.PathUnescape(path); err != nil {
			return nil, fmt.Errorf("rendered path %q: %w", path, err)
		}
		u.RawPath = path
	} else {
		u.Path = path
	}
	// Only the request itself is new for every call, since it carries ctx;
	// the template stays on the stack. Host is the client's: a pool with
	// preserve_host keeps it, the others send their target's.
	out := http.Request{
		Method: f.method, URL: u, Host: in.Request.Host,
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: cs.header(in.hdr, in.hdrN),
	}
	return out.WithContext(ctx), nil
}

// answer reads and shapes the answer (resp, err) to the request out.
func (f *fetcher) answer(cs *callState, out *http.Request, resp *http.Response, err error) (*Result, error) {
	if err != nil {
		// The transport may still be writing the request: its URL and
		// header stay with it, and the next call makes new ones.
		cs.url, cs.hdr, cs.vals = nil, nil, nil
		return nil, err
	}
	// Closing the body below ends the transport's use of the request
	// (net/http's rule for reusing one), before the next call on cs.
	cs.url = out.URL
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		// Drain a little so the connection can be reused.
		_, _ = io.CopyN(io.Discard, resp.Body, 4<<10)
		return nil, &statusError{status: resp.StatusCode}
	}
	body := cs.body[:0]
	// A HEAD answer has no body; its Content-Length is the resource's,
	// which readBody would take for the body's size.
	if f.method != http.MethodHead {
		body, err = f.e.readBody(resp, cs.body)
		cs.body = body
		if err != nil {
			return nil, err
		}
	}
	ct := resp.Header.Get("Content-Type")
	isJS := isJSON(ct)
	val, inBody, err := f.shape(&cs.scan, ct, isJS, body, cs.value[:0])
	if errors.Is(err, errInvalidUTF8) || errors.Is(err, errLoneSurrogate) {
		// JSON between systems is UTF-8 (RFC 8259 section 8.1): a stray
		// byte passed on would make the whole merged response unparsable
		// to strict clients, and so would the escape of half a surrogate
		// pair. Each becomes U+FFFD, as in a text body (and in a string
		// encoding/json decodes); rare, so a copy.
		body = bytes.ToValidUTF8(body, []byte("\uFFFD"))
		replaceLoneSurrogates(body)
		val, inBody, err = f.shape(&cs.scan, ct, isJS, body, cs.value[:0])
	}
	// An unshaped body is its own value (a sub-slice, no copy); only a
	// value built in the value buffer goes back into it.
	if !inBody {
		cs.value = val[:0]
	}
	if err != nil {
		return nil, &bodyError{err: err}
	}
	cs.res = Result{Status: resp.StatusCode, Body: body, Value: val, text: len(body) > 0 && !isJS}
	return &cs.res, nil
}

// shape turns a body into the value placed in the response. inBody says
// the value is a sub-slice of body rather than built in dst.
func (f *fetcher) shape(s *scanner, contentType string, isJS bool, body, dst []byte) (val []byte, inBody bool, err error) {
	if len(body) == 0 {
		// Null is no object either: merged as nothing, a required
		// backend's data would vanish from a 200 that no one marks partial.
		if f.b.into == "" {
			return dst, false, errors.New("the body is empty and the backend has no into to place null under")
		}
		return append(dst, "null"...), false, nil
	}
	if !isJS {
		if !f.b.shaper.none {
			return dst, false, fmt.Errorf("content type %q is not JSON, but fields, drop, rename or pick need JSON", contentType)
		}
		return appendJSONString(dst, body), false, nil
	}
	if f.b.shaper.none {
		val, err = s.validate(body)
		inBody = err == nil
	} else {
		val, err = f.b.shaper.apply(s, body, dst)
	}
	if err != nil {
		return dst, false, err
	}
	if f.b.into == "" && (len(val) == 0 || val[0] != '{') {
		return dst, false, errors.New("the value is not an object and the backend has no into to place it under")
	}
	return val, inBody, nil
}

// isJSON accepts application/json, any +json type and a missing type. It
// reads the media type by hand: mime.ParseMediaType allocates a parameter
// map per call, twice per backend on the hot path.
func isJSON(ct string) bool {
	if ct == "" {
		return true
	}
	mt, _, _ := strings.Cut(ct, ";")
	mt = strings.TrimSpace(mt)
	const suffix = "+json"
	return strings.EqualFold(mt, "application/json") ||
		len(mt) > len(suffix) && strings.EqualFold(mt[len(mt)-len(suffix):], suffix) && strings.IndexByte(mt, '/') > 0
}

func (e *endpoint) readBody(resp *http.Response, dst []byte) ([]byte, error) {
	var r io.Reader = resp.Body
	switch enc := strings.ToLower(resp.Header.Get("Content-Encoding")); enc {
	case "", "identity":
	case "gzip", "x-gzip":
		zr, _ := e.gzips.Get().(*gzip.Reader)
		var err error
		if zr == nil {
			zr, err = gzip.NewReader(resp.Body)
		} else {
			err = zr.Reset(resp.Body)
		}
		if err == io.EOF {
			// No body at all (a 204 that kept the header): nothing to
			// decode, and an empty body is null like any other.
			return dst[:0], nil
		}
		if err != nil {
			return dst[:0], &bodyError{err: fmt.Errorf("gzip: %w", err)}
		}
		defer e.gzips.Put(zr)
		r = zr
	default:
		return dst[:0], &bodyError{err: fmt.Errorf("unsupported content encoding %q", enc)}
	}
	// Read up to one byte past the cap, to tell "exactly the cap" from
	// "larger"; the cap counts decoded bytes, so a gzip bomb stops here too.
	dst = dst[:0]
	limit := e.maxBody + 1
	cl := resp.ContentLength
	// An encoded body's length is not the decoded size the cap counts.
	if cl > e.maxBody && r == resp.Body {
		return dst, &bodyError{err: errTooLarge}
	}
	if cap(dst) == 0 || int64(cap(dst)) < min(cl, limit) {
		dst = make([]byte, 0, max(min(cl, limit), 4096))
	}
	for int64(len(dst)) < limit {
		if len(dst) == cap(dst) {
			dst = append(dst, 0)[:len(dst)]
		}
		room := min(int64(cap(dst)), limit) - int64(len(dst))
		n, err := r.Read(dst[len(dst) : int64(len(dst))+room])
		dst = dst[:len(dst)+n]
		if err == io.EOF {
			// The last read may bring the byte past the cap with EOF.
			if int64(len(dst)) > e.maxBody {
				break
			}
			return dst, nil
		}
		if err != nil {
			if r != resp.Body && corruptGzip(err) {
				// The upstream answered; its body is what is wrong.
				err = &bodyError{err: err}
			}
			return dst, err
		}
	}
	return dst, &bodyError{err: errTooLarge}
}

// corruptGzip reports whether err is the gzip decoder's finding that the
// data is not valid gzip, as opposed to the connection failing under it.
// A stream that ends early (io.ErrUnexpectedEOF) is not counted: it cannot
// be told from a connection cut mid-answer.
func corruptGzip(err error) bool {
	var ce flate.CorruptInputError
	return errors.Is(err, gzip.ErrChecksum) || errors.Is(err, gzip.ErrHeader) || errors.As(err, &ce)
}

// skipHeader names the fields not copied to backends: hop-by-hop fields
// (RFC 9110 section 7.6.1), what the gateway sets itself (the forwarding
// fields among them: a client's own X-Forwarded-For is not to be trusted
// here; the gateway already resolved the client address through
// trusted_proxies), and fields that would make a backend answer something
// other than a full JSON body (conditionals, ranges).
func skipHeader(k string) bool {
	switch k {
	case "Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate", "Proxy-Authorization",
		"Te", "Trailer", "Transfer-Encoding", "Upgrade",
		"Cookie", "Host", "Content-Length", "Content-Type", "Accept-Encoding", "Accept", "Expect",
		"If-None-Match", "If-Modified-Since", "If-Match", "If-Unmodified-Since", "If-Range", "Range",
		"X-Request-Id", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "Forwarded", "X-Real-Ip":
		return true
	}
	return false
}

// headerField is one field of the backends' request header.
type headerField struct {
	key  string
	vals []string
}

// fixedFields is how many values the gateway itself sets (see
// appendHeaderFields).
const fixedFields = 6

// appendHeaderFields works out, once per client request, the header that
// every backend call carries: the inbound fields a backend may see (the
// auth stage's forwarded identity headers, traceparent, tracestate and the
// like) and the fields the gateway sets, whose values go into fixed (of
// capacity fixedFields). It returns the fields and their number of values.
func appendHeaderFields(dst []headerField, fixed []string, r *http.Request, info *reqctx.Info) ([]headerField, int) {
	src := r.Header
	conn := src["Connection"]
	n := 0
	for k, vv := range src {
		if skipHeader(k) || len(conn) > 0 && connectionNames(conn, k) {
			continue
		}
		dst = append(dst, headerField{key: k, vals: vv})
		n += len(vv)
	}
	set := func(k, v string) {
		fixed = append(fixed, v)
		dst = append(dst, headerField{key: k, vals: fixed[len(fixed)-1:]})
		n++
	}
	rid := ""
	if info != nil {
		rid = info.RequestID
	}
	if rid == "" {
		rid = src.Get("X-Request-Id")
	}
	if rid != "" {
		set("X-Request-Id", rid)
	}
	if info != nil && info.ClientIP.IsValid() {
		set("X-Forwarded-For", info.ClientIP.String())
	}
	// As on a route: what a trusted proxy says of the client's scheme and
	// host (it terminated TLS, say), else what this hop saw.
	proto, host := "http", r.Host
	if r.TLS != nil {
		proto = "https"
	}
	if info != nil && info.PeerTrusted {
		if v := src["X-Forwarded-Proto"]; len(v) > 0 {
			proto = v[0]
		}
		if v := src["X-Forwarded-Host"]; len(v) > 0 {
			host = v[0]
		}
	}
	set("X-Forwarded-Proto", proto)
	set("X-Forwarded-Host", host)
	set("Accept-Encoding", "gzip")
	set("Accept", "application/json")
	return dst, n
}

// connectionNames says whether the Connection field values conn name the
// field k (RFC 9110 section 7.6.1: those fields are hop-by-hop too).
func connectionNames(conn []string, k string) bool {
	for _, v := range conn {
		for v != "" {
			var t string
			t, v, _ = strings.Cut(v, ",")
			if strings.EqualFold(strings.TrimSpace(t), k) {
				return true
			}
		}
	}
	return false
}

// callState is one backend's scratch for one call, kept with the pooled
// runState from request to request: nothing per call is allocated but the
// outbound request and its target string.
type callState struct {
	res       Result
	scan      scanner
	target    []byte
	targetStr string
	body      []byte
	value     []byte
	// url, hdr and vals are the outbound request's; a call whose round trip
	// failed drops them (the transport may still read them).
	url  *url.URL
	hdr  http.Header
	vals []string
}

// header fills the call's own header with fields, n values in all. Values
// are copied into the call's own slice, each capped, so that a round
// tripper that appends cannot touch the inbound request or another
// backend's header.
func (cs *callState) header(fields []headerField, n int) http.Header {
	h := cs.hdr
	if h == nil {
		h = make(http.Header, len(fields))
		cs.hdr = h
	}
	vals := cs.vals[:0]
	if cap(vals) < n {
		vals = make([]string, 0, n)
	}
	for _, f := range fields {
		start := len(vals)
		vals = append(vals, f.vals...)
		h[f.key] = vals[start:len(vals):len(vals)]
	}
	cs.vals = vals
	return h
}

// maxKeptBuf caps the buffers a pooled state keeps: one 5 MiB body should
// not pin 5 MiB per pooled state.
const maxKeptBuf = 1 << 20

// reset readies cs for the next request, keeping its buffers and dropping
// what it held of this one.
func (cs *callState) reset() {
	cs.res = Result{}
	if cap(cs.body) > maxKeptBuf {
		cs.body = nil
	}
	if cap(cs.value) > maxKeptBuf {
		cs.value = nil
	}
	if cap(cs.target) > maxKeptBuf {
		cs.target = nil
	}
	clear(cs.hdr)
	clear(cs.vals)
	cs.vals = cs.vals[:0]
}

// runState is one request's fan-out state; each backend index is written
// by one goroutine only, and read after wg.Wait.
type runState struct {
	in      []Input
	results []*Result
	errs    []*problem.Error
	calls   []callState
	// sent holds the calls the handler's goroutine sent, by backend;
	// queue lists them in the order they are read (a call whose retry
	// was sent comes again at the end).
	sent   []sentCall
	queue  []int
	fatal  atomic.Int32 // first required backend to fail, or -1
	wg     sync.WaitGroup
	cancel context.CancelFunc
	// hdr and fixed hold the backends' request header (appendHeaderFields).
	hdr   []headerField
	fixed []string
	// scan and out merge the response.
	scan scanner
	out  []byte
}

func (e *endpoint) getState() *runState {
	if st, ok := e.states.Get().(*runState); ok {
		return st
	}
	n := len(e.backends)
	return &runState{in: make([]Input, n), results: make([]*Result, n), errs: make([]*problem.Error, n),
		calls: make([]callState, n), sent: make([]sentCall, n), fixed: make([]string, 0, fixedFields)}
}

func (e *endpoint) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	info := reqctx.From(r.Context())
	st := e.getState()
	st.fatal.Store(-1)
	var (
		ctx    context.Context
		cancel context.CancelFunc
	)
	if e.timeout > 0 {
		// The endpoint's time runs from when the gateway received the
		// request, so time spent in auth and rate limiting counts.
		now := e.now()
		start := now
		if info != nil && !info.Start.IsZero() && info.Start.Before(now) {
			start = info.Start
		}
		ctx, cancel = context.WithTimeout(r.Context(), start.Add(e.timeout-e.reserve).Sub(now))
	} else {
		ctx, cancel = context.WithCancel(r.Context())
	}
	st.cancel = cancel
	release := func() {}
	if e.sends {
		// One cancellation hook for every call this goroutine sends.
		ctx, release = upstream.WithCancelGroup(ctx)
	}
	// Facts every backend may read are looked up once, before the fan-out.
	base := Input{Request: r, Info: info}
	if e.usesQuery {
		base.query = r.URL.Query()
	}
	if e.usesClaims {
		base.id, base.idSet = reqctx.IdentityFrom(r.Context()), true
	}
	st.hdr, base.hdrN = appendHeaderFields(st.hdr[:0], st.fixed[:0], r, info)
	base.hdr = st.hdr
	for i := range st.in {
		st.in[i] = base
		st.in[i].cs = &st.calls[i]
	}
	e.fanOut(ctx, st)
	st.wg.Wait()
	release()
	cancel()

	if f := st.fatal.Load(); f >= 0 {
		perr := st.errs[f]
		// A backend's 4xx is usually the client's doing (an unknown id);
		// only gateway-side failures deserve a warning.
		level := slog.LevelWarn
		if perr.Status < 500 {
			level = slog.LevelDebug
		}
		if perr.Status != problem.StatusClientClosed {
			e.log.LogAttrs(r.Context(), level, "required backend failed",
				slog.String("bff", e.bff), slog.String("endpoint", e.name),
				slog.String("backend", e.backends[f].name), slog.Any("error", perr))
		}
		problem.Write(w, r, perr)
	} else if err := r.Context().Err(); err != nil {
		// The client left while optional calls were out: they were cut
		// for it, and a partial 200 would be logged as a success to no one.
		problem.Write(w, r, &problem.Error{Status: problem.StatusClientClosed, Code: "client_closed",
			Detail: "client closed the request", Cause: err})
	} else {
		e.respond(w, st)
	}
	for i := range e.backends {
		st.calls[i].reset()
		st.results[i], st.errs[i] = nil, nil
		st.in[i] = Input{}
	}
	clear(st.hdr)
	st.hdr = st.hdr[:0]
	st.queue = st.queue[:0]
	clear(st.fixed[:cap(st.fixed)])
	if cap(st.out) > maxKeptBuf {
		st.out = nil
	}
	st.cancel = nil
	e.states.Put(st)
}

// sentCall is a backend call whose request is written and whose answer
// is still to be read.
type sentCall struct {
	call   upstream.Pending
	out    *http.Request
	ctx    context.Context // the backend's, under its own timeout
	cancel context.CancelFunc
}

// fanOut runs the backends. Those whose upstream can send have their
// requests written from this goroutine before any answer is read, and
// their answers read here in turn; the others go to workers. When nothing
// was sent, the last root runs on this goroutine, as a worker would run it.
//
// Read in turn, a failed required backend is seen once the answers before
// it have been read, rather than the moment it fails; the endpoint's
// timeout still bounds the wait, and its error is the same. An answer that
// the upstream pool retries has its retry sent when it is read, and is
// read again after the others.
func (e *endpoint) fanOut(ctx context.Context, st *runState) {
	last := -1 // a root that does not send: run here or on a worker
	for _, i := range e.roots {
		if e.backends[i].sends != nil {
			continue
		}
		if last >= 0 {
			e.spawn(ctx, st, last)
		}
		last = i
	}
	for _, i := range e.roots {
		if e.backends[i].sends != nil {
			e.send(ctx, st, i)
		}
	}
	if len(st.queue) == 0 {
		if last >= 0 {
			e.run(ctx, st, last)
		}
		return
	}
	if last >= 0 {
		e.spawn(ctx, st, last)
	}
	read := 0
	defer func() {
		// Only a panic leaves calls unread: they are ended, so that their
		// connections and in-flight counts are not lost.
		if read < len(st.queue) {
			st.cancel()
			for _, i := range st.queue[read:] {
				if sc := st.sent[i]; sc.call != nil {
					if resp, err := sc.call.Wait(); err == nil {
						resp.Body.Close()
					}
					if sc.cancel != nil {
						sc.cancel()
					}
				}
			}
		}
	}()
	var timedOut []timedOutCall
	for ; read < len(st.queue); read++ {
		i := st.queue[read]
		if s, ok := st.sent[i].call.(upstream.Stepper); ok && s.Step() {
			// Its answer asked for a retry, which is on its way: the
			// answers behind it are read first, so that the retries of
			// several calls overlap rather than wait for one another.
			st.queue = append(st.queue, i)
			continue
		}
		if tc, ok := e.receive(ctx, st, i); !ok {
			timedOut = append(timedOut, tc)
		}
	}
	// A required call that failed because the endpoint's deadline passed
	// while it was awaited is recorded after the calls read behind it.
	// Those are read late and taken when their answers are there, and one
	// that failed by itself is the failure to report, as it would be were
	// every call awaited on its own goroutine (the first to fail wins).
	for _, tc := range timedOut {
		e.settle(ctx, st, tc.i, nil, tc.err, tc.sc.ctx)
		if tc.sc.cancel != nil {
			tc.sc.cancel()
		}
	}
}

// pastDeadline reports whether ctx's deadline has passed. It reads the
// clock, not ctx.Err(): a connection's deadline at the same instant can
// end a read before the context's own timer has fired.
func pastDeadline(ctx context.Context) bool {
	d, ok := ctx.Deadline()
	return ok && !time.Now().Before(d)
}

// timedOutCall is a required sent call that the endpoint's deadline ended.
type timedOutCall struct {
	i   int
	err error
	sc  sentCall
}

// spawn runs backend i on a worker.
func (e *endpoint) spawn(ctx context.Context, st *runState, i int) {
	st.wg.Add(1)
	e.workers.do(task{e: e, ctx: ctx, st: st, i: i})
}

// backendContext is a call's context for backend b: ctx, under b's own
// timeout when it has one.
func (e *endpoint) backendContext(ctx context.Context, b *backend) (context.Context, context.CancelFunc) {
	if b.timeout > 0 {
		return context.WithTimeout(ctx, b.timeout)
	}
	return ctx, nil
}

// send writes backend i's request and queues the call to be read; a
// request its upstream will not send goes to a worker instead.
func (e *endpoint) send(ctx context.Context, st *runState, i int) {
	b := e.backends[i]
	in := &st.in[i]
	if b.dep >= 0 {
		in.dep = st.results[b.dep]
	}
	bctx, cancel := e.backendContext(ctx, b)
	out, err := b.sends.request(bctx, in)
	if err == nil {
		err = bctx.Err()
	}
	if err == nil {
		if c, ok := b.sends.sr.Send(out); ok {
			st.sent[i] = sentCall{call: c, out: out, ctx: bctx, cancel: cancel}
			st.queue = append(st.queue, i)
			return
		}
	}
	if err != nil {
		e.settle(ctx, st, i, nil, err, bctx)
	}
	if cancel != nil {
		cancel()
	}
	if err == nil {
		e.spawn(ctx, st, i) // the pool would not send it
	}
}

// receive reads the answer of backend i's sent call.
// It reports false, leaving the outcome to the caller, for a required
// backend that timed out once the endpoint's deadline (ctx's) passed.
func (e *endpoint) receive(ctx context.Context, st *runState, i int) (timedOutCall, bool) {
	sc := st.sent[i]
	st.sent[i] = sentCall{}
	resp, err := sc.call.Wait()
	res, err := e.backends[i].sends.answer(&st.calls[i], sc.out, resp, err)
	if err != nil && !e.backends[i].optional && pastDeadline(ctx) &&
		e.classify(e.backends[i], err, sc.ctx, st.in[i].Request.Context()).Code == "backend_timeout" {
		return timedOutCall{i: i, err: err, sc: sc}, false
	}
	e.settle(ctx, st, i, res, err, sc.ctx)
	if sc.cancel != nil {
		sc.cancel()
	}
	return timedOutCall{}, true
}

// settle records the outcome of backend i, read by the handler's
// goroutine, and starts its dependents: sent when they can be, on workers
// otherwise.
func (e *endpoint) settle(ctx context.Context, st *runState, i int, res *Result, err error, bctx context.Context) {
	b := e.backends[i]
	if err != nil {
		st.errs[i] = e.classify(b, err, bctx, st.in[i].Request.Context())
		e.failed(st, i)
		for _, k := range b.children {
			e.skip(st, k, i)
		}
		return
	}
	st.results[i] = res
	for _, k := range b.children {
		if e.backends[k].sends != nil {
			e.send(ctx, st, k)
		} else {
			e.spawn(ctx, st, k)
		}
	}
}

// run executes backend i and then, on the same goroutine, the last of its
// dependents (the others go to workers).
func (e *endpoint) run(ctx context.Context, st *runState, i int) {
	for {
		b := e.backends[i]
		in := &st.in[i]
		if b.dep >= 0 {
			in.dep = st.results[b.dep]
		}
		bctx, cancel := e.backendContext(ctx, b)
		res, err := b.call(bctx, in)
		if err != nil {
			st.errs[i] = e.classify(b, err, bctx, in.Request.Context())
			e.failed(st, i)
		} else {
			st.results[i] = res
		}
		if cancel != nil {
			cancel()
		}
		kids := b.children
		if len(kids) == 0 {
			return
		}
		if err != nil {
			for _, k := range kids {
				e.skip(st, k, i)
			}
			return
		}
		for _, k := range kids[:len(kids)-1] {
			e.spawn(ctx, st, k)
		}
		i = kids[len(kids)-1]
	}
}

// failed records that backend i failed; a required backend ends the
// fan-out at once, since the endpoint can only answer with an error.
func (e *endpoint) failed(st *runState, i int) {
	if e.backends[i].optional {
		return
	}
	if st.fatal.CompareAndSwap(-1, int32(i)) {
		st.cancel()
	}
}

// skip marks backend i and its dependents failed because dep failed.
func (e *endpoint) skip(st *runState, i, dep int) {
	b := e.backends[i]
	de := st.errs[dep]
	st.errs[i] = &problem.Error{
		Status: de.Status,
		Code:   de.Code,
		Detail: fmt.Sprintf("backend %s was skipped because backend %s failed: %s", b.name, e.backends[dep].name, de.Detail),
		Cause:  de,
		Extra:  map[string]any{"backend": b.name},
	}
	e.failed(st, i)
	for _, k := range b.children {
		e.skip(st, k, i)
	}
}

// classify turns a backend failure into the gateway error a required
// backend reports.
func (e *endpoint) classify(b *backend, err error, bctx, reqCtx context.Context) *problem.Error {
	extra := map[string]any{"backend": b.name}
	if reqCtx.Err() != nil {
		return &problem.Error{Status: problem.StatusClientClosed, Code: "client_closed",
			Detail: "client closed the request", Cause: err, Extra: extra}
	}
	var (
		se *statusError
		be *bodyError
		me *missingError
	)
	switch {
	case errors.As(err, &se):
		status, code := http.StatusBadGateway, "backend_error"
		// 499 is the gateway's own mark for a client gone (no body, not
		// counted as a failure), which a backend's answer must not borrow.
		if se.status >= 400 && se.status < 500 && se.status != problem.StatusClientClosed {
			status, code = se.status, "backend_rejected"
		}
		return &problem.Error{Status: status, Code: code, Cause: err, Extra: extra,
			Detail: fmt.Sprintf("backend %s answered %d", b.name, se.status)}
	case errors.As(err, &me):
		status, code := http.StatusBadRequest, "missing_template_value"
		if me.dep {
			status, code = http.StatusBadGateway, "backend_bad_body"
		}
		return &problem.Error{Status: status, Code: code, Cause: err, Extra: extra,
			Detail: fmt.Sprintf("backend %s: %s", b.name, me.Error())}
	case errors.As(err, &be):
		return &problem.Error{Status: http.StatusBadGateway, Code: "backend_bad_body", Cause: err, Extra: extra,
			Detail: fmt.Sprintf("backend %s: unusable body: %s", b.name, be.Error())}
	case errors.Is(bctx.Err(), context.DeadlineExceeded):
		return &problem.Error{Status: http.StatusGatewayTimeout, Code: "backend_timeout", Cause: err, Extra: extra,
			Detail: fmt.Sprintf("backend %s did not answer in time", b.name)}
	}
	pe := problem.FromUpstream(err)
	out := &problem.Error{Status: pe.Status, Code: "backend_" + strings.TrimPrefix(pe.Code, "upstream_"),
		Cause: err, Extra: extra, Detail: fmt.Sprintf("backend %s: %s", b.name, pe.Detail)}
	if out.Status != http.StatusGatewayTimeout && out.Status != problem.StatusClientClosed {
		out.Status = http.StatusBadGateway
	}
	return out
}

// respond merges the results in config order; a key already placed is
// never overwritten (the earlier backend wins).
func (e *endpoint) respond(w http.ResponseWriter, st *runState) {
	s := &st.scan
	out := append(st.out[:0], '{')
	s.resetNames()
	first := true
	var partial []string
	for i, b := range e.backends {
		res := st.results[i]
		if res == nil {
			partial = append(partial, b.name)
			if pe := st.errs[i]; pe != nil {
				e.log.LogAttrs(context.Background(), slog.LevelDebug, "optional backend left out",
					slog.String("bff", e.bff), slog.String("endpoint", e.name),
					slog.String("backend", b.name), slog.Any("error", pe))
			}
			continue
		}
		if key, keyJSON := b.intoB, b.intoJSON; key != nil || res.text {
			if key == nil {
				key, keyJSON = b.nameB, b.nameJSON
			}
			if !s.firstName(0, 0, key) {
				continue
			}
			if !first {
				out = append(out, ',')
			}
			first = false
			out = append(out, keyJSON...)
			out = append(out, ':')
			out = append(out, res.Value...)
			continue
		}
		out, first = mergeMembers(s, res.Value, out, first)
	}
	out = append(out, '}')
	st.out = out
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(out)))
	if len(partial) > 0 {
		h.Set("Portico-Partial", strings.Join(partial, ", "))
		h.Set("Cache-Control", "no-store")
	}
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(out)
}

// mergeMembers appends the members of the object val (valid JSON, made by
// the shaper) to out, skipping keys already placed.
func mergeMembers(s *scanner, val, out []byte, first bool) ([]byte, bool) {
	names, ends := s.names, s.nameEnds
	s.in, s.pos, s.depth = val, 0, 0
	s.names, s.nameEnds = names, ends
	s.ws()
	s.pos++ // '{'
	s.ws()
	if s.peek() == '}' {
		return out, first
	}
	for {
		ks, ke, esc, err := s.member()
		if err != nil {
			return out, first
		}
		vs := s.pos
		if s.skipValue() != nil {
			return out, first
		}
		if s.firstName(0, 0, s.keyBytes(ks, ke, esc)) {
			if !first {
				out = append(out, ',')
			}
			first = false
			out = append(out, val[ks:ke]...)
			out = append(out, ':')
			out = append(out, val[vs:s.pos]...)
		}
		if done, err := s.next('}'); err != nil || done {
			return out, first
		}
	}
}

// appendJSONString appends v as a JSON string. Invalid UTF-8 becomes
// U+FFFD, so non-JSON bodies passed through as strings stay valid JSON.
func appendJSONString(dst []byte, v []byte) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	for i := 0; i < len(v); {
		c := v[i]
		if c < 0x80 {
			switch {
			case c == '"' || c == '\\':
				dst = append(dst, '\\', c)
			case c == '\n':
				dst = append(dst, '\\', 'n')
			case c == '\r':
				dst = append(dst, '\\', 'r')
			case c == '\t':
				dst = append(dst, '\\', 't')
			case c < 0x20:
				dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&15])
			default:
				dst = append(dst, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRune(v[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, "\ufffd"...)
		} else {
			dst = append(dst, v[i:i+size]...)
		}
		i += size
	}
	return append(dst, '"')
}
