package upstream

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/portico-gw/portico/internal/config"
	"github.com/portico-gw/portico/internal/problem"
)

// Pool is one upstream as configured by one Plan: an http.RoundTripper
// safe for concurrent use, meant as the Transport of an
// httputil.ReverseProxy and as the backend caller of aggregation. Its
// settings are immutable; its state (health, ejections, breaker, counts) is
// shared with the Registry and with other Pools of the same upstream.
type Pool struct {
	reg     *Registry
	up      *upstream
	name    string
	targets []*target
	weights []int
	bal     balancer
	tr      *transports
	br      *breaker

	balance       string
	retries       int
	budget        float64
	timeout       time.Duration
	readIdle      time.Duration // read_idle_timeout; 0: off
	preserveHost  bool
	maxInflight   int64
	ignoreAllDown bool
	ejectAfter    int64 // consecutive failures; 0: passive ejection off
	ejectBase     int64 // ns
	sendable      bool  // Send can take requests: every target takes the lean client
}

var _ http.RoundTripper = (*Pool)(nil)

const (
	// maxBufferedBody is the largest request body (with a known
	// Content-Length) kept in memory so that an idempotent request can be
	// replayed to another target.
	maxBufferedBody = 64 << 10
	// maxDrain bounds how much of a retried response is read so its
	// connection can be reused; a longer body costs the connection instead.
	maxDrain = 64 << 10
	// maxEjectionFactor caps the doubling of passive ejections.
	maxEjectionFactor = 10
)

// newPool builds the pool of p on u, serving through tr and guarded by br
// (nil: no breaker): the transport and breaker in force once its plan is
// committed.
func newPool(r *Registry, u *upstream, p *preparedUpstream, tr *transports, br *breaker, targets []*target) *Pool {
	cfg := p.cfg
	weights := make([]int, len(p.targets))
	urls := make([]string, len(p.targets))
	for i, pt := range p.targets {
		weights[i], urls[i] = pt.weight, pt.url
	}
	pl := &Pool{
		reg: r, up: u, name: p.name, targets: targets, weights: weights,
		bal: newBalancer(cfg.Balance, weights, p.hash, urls),
		tr:  tr, br: br, balance: cfg.Balance,
		retries: 1, budget: defaultRetryBudget,
		timeout: cfg.Timeout.D(), readIdle: config.DefaultReadIdleTimeout.D(),
		preserveHost: cfg.PreserveHost,
		maxInflight:  int64(cfg.MaxInflight),
	}
	if pl.balance == "" {
		pl.balance = "round_robin"
	}
	pl.sendable = pl.allLean()
	if cfg.Retries != nil {
		pl.retries = max(*cfg.Retries, 0)
	}
	if cfg.RetryBudget != nil {
		pl.budget = *cfg.RetryBudget
	}
	if cfg.ReadIdleTimeout != nil {
		pl.readIdle = max(cfg.ReadIdleTimeout.D(), 0)
	}
	if hc := cfg.HealthCheck; hc != nil {
		pl.ignoreAllDown = hc.AllUnhealthy == "ignore"
	}
	if ps := cfg.Passive; ps != nil {
		pl.ejectAfter = int64(ps.ConsecutiveFailures)
		if pl.ejectAfter <= 0 {
			pl.ejectAfter = 5
		}
		pl.ejectBase = int64(ps.Ejection.D())
		if pl.ejectBase <= 0 {
			pl.ejectBase = int64(30 * time.Second)
		}
	}
	return pl
}

// Name returns the upstream's name.
func (p *Pool) Name() string { return p.name }

// The 503s below carry Retry-After: a second for transient conditions
// (shedding, no healthy target yet), the rest of the open period for the
// breaker, so well-behaved clients back off instead of hammering.

func errOverloaded() error {
	e := problem.New(http.StatusServiceUnavailable, "upstream_overloaded",
		"the upstream has too many requests in flight")
	e.RetryAfter = time.Second
	return e
}

func errBreakerOpen(retryAfter time.Duration) error {
	e := problem.New(http.StatusServiceUnavailable, "breaker_open",
		"the upstream is failing; requests to it are paused")
	e.RetryAfter = max(retryAfter, time.Second)
	return e
}

func errNoHealthyTarget() error {
	e := problem.New(http.StatusServiceUnavailable, "no_healthy_target",
		"no healthy upstream target is available")
	e.RetryAfter = time.Second
	return e
}

// RoundTrip sends req to one of the pool's targets and returns the first
// response that is final by the retry rules, or the last error.
//
// Per attempt: beyond max_inflight requests in flight for the upstream it
// fails at once (503 upstream_overloaded); while the breaker is open it fails
// without touching the upstream (503 breaker_open); the balancer picks among
// healthy, non-ejected targets (503 no_healthy_target when none, unless
// all_unhealthy: ignore); the request goes out with the target's scheme and
// host (and Host header, unless preserve_host); the attempt is cancelled if
// no response headers arrive within timeout (504 upstream_timeout).
//
// Retries (up to retries, to a target not yet tried when there is one):
// idempotent methods (GET, HEAD, OPTIONS, PUT, DELETE, TRACE) on connection
// errors, attempt timeouts, 502, 503 and 504; any method when the connection
// could not be opened (a dial error, so not one byte was sent). A body is
// replayed only from req.GetBody, or from a copy made up front when the
// method is idempotent and Content-Length is at most 64 KiB; otherwise only
// a dial error, after which the body is provably unread, allows a retry.
// Retries stay within retry_budget of the upstream's requests over 10 s
// (at least minRetries), and none starts once req's context is done.
//
// The returned response's body must be closed: that ends the request's
// in-flight accounting (max_inflight, least_request). Other errors come
// from the transport as they are; problem.FromUpstream maps them.
func (p *Pool) RoundTrip(req *http.Request) (*http.Response, error) {
	var tr trip
	if err := p.admit(&tr, req); err != nil {
		return nil, err
	}
	return p.run(&tr)
}

// trip is one request's way through the pool, across its attempts.
type trip struct {
	req     *http.Request
	ctx     context.Context
	rb      replay
	now     int64 // unix ns, as of the latest attempt's end
	attempt int
	tried   uint64 // bit i: target i was tried
	lastRes *http.Response
	lastErr error
	// res and err end the trip when begin finds no attempt to make.
	res *http.Response
	err error
}

// admit counts req in flight (or refuses it past max_inflight) and readies
// the replay of its body.
func (p *Pool) admit(tr *trip, req *http.Request) error {
	up := p.up
	if n := up.inflight.Add(1); p.maxInflight > 0 && n > p.maxInflight {
		up.inflight.Add(-1)
		closeRequestBody(req)
		return errOverloaded()
	}
	tr.req, tr.ctx = req, req.Context()
	tr.now = p.reg.now().UnixNano()
	up.budget.add(tr.now, 1, 0)
	if err := p.initReplay(&tr.rb, req); err != nil {
		up.inflight.Add(-1)
		return err
	}
	return nil
}

// run makes attempts until one's result is final by the retry rules.
func (p *Pool) run(tr *trip) (*http.Response, error) {
	for ; ; tr.attempt++ {
		i, probe, body, ok := p.begin(tr)
		if !ok {
			return tr.res, tr.err
		}
		res, err := p.attempt(tr.ctx, tr.req, p.targets[i], body, tr.rb.getBody, probe)
		if p.settled(tr, res, err) {
			return tr.res, tr.err
		}
	}
}

// begin readies attempt tr.attempt: the breaker's permission, the target
// (index i) and the body to send. When there is no attempt to make, ok is
// false and tr.res, tr.err end the trip.
func (p *Pool) begin(tr *trip) (i int, probe bool, body io.ReadCloser, ok bool) {
	up, rb, now := p.up, &tr.rb, tr.now
	if p.br != nil {
		allowed, pr := p.br.allow(now)
		if !allowed {
			if tr.attempt == 0 {
				rb.abort()
				up.inflight.Add(-1)
				tr.err = errBreakerOpen(p.br.retryAfter(now))
				return -1, false, nil, false
			}
			tr.res, tr.err = p.final(rb, tr.lastRes, tr.lastErr)
			return -1, false, nil, false
		}
		probe = pr
	}
	i = p.pick(tr.req, now, tr.tried)
	if i < 0 {
		if probe {
			p.br.record(now, outcomeNeutral, true)
		}
		if tr.attempt == 0 {
			rb.abort()
			up.inflight.Add(-1)
			tr.err = errNoHealthyTarget()
			return -1, false, nil, false
		}
		tr.res, tr.err = p.final(rb, tr.lastRes, tr.lastErr)
		return -1, false, nil, false
	}
	body = tr.req.Body
	if tr.attempt > 0 {
		// This retry is on: the previous response goes away.
		if tr.lastRes != nil {
			drainClose(tr.lastRes.Body)
		}
		var err error
		if body, err = rb.next(); err != nil {
			if probe {
				p.br.record(now, outcomeNeutral, true)
			}
			rb.finish()
			up.inflight.Add(-1)
			tr.err = err
			return -1, false, nil, false
		}
		up.retryCtr.Inc()
		up.budget.add(now, 0, 1)
	} else if rb.mode != replayNone {
		body = rb.first()
	}
	if i < 64 {
		tr.tried |= 1 << uint(i)
	}
	return i, probe, body, true
}

// settled takes an attempt's result: it reports true when the result is
// final (tr.res, tr.err are then the trip's), false when a retry follows.
func (p *Pool) settled(tr *trip, res *http.Response, err error) bool {
	tr.now = p.reg.now().UnixNano()
	if tr.attempt >= p.retries || !p.retryable(tr.ctx, tr.req, res, err, &tr.rb, tr.now) {
		tr.res, tr.err = p.final(&tr.rb, res, err)
		return true
	}
	tr.lastRes, tr.lastErr = res, err
	return false
}

// final hands the last attempt's result to the caller; the request stays in
// flight until the response body is closed.
func (p *Pool) final(rb *replay, res *http.Response, err error) (*http.Response, error) {
	rb.finish()
	if res == nil {
		p.up.inflight.Add(-1)
		return nil, err
	}
	if tb, ok := res.Body.(interface{ setUpstream(*atomic.Int64) }); ok {
		tb.setUpstream(&p.up.inflight)
	} else {
		p.up.inflight.Add(-1)
	}
	return res, nil
}

// pick asks the balancer for an untried eligible target, then for any
// eligible one; when none is, for a healthy one although ejected (passive
// ejection never takes the last eligible target, but active checks may
// take the others down while it is ejected: it still beats a 503), then
// (panic mode) for any target at all. Each step prefers untried targets.
func (p *Pool) pick(req *http.Request, now int64, tried uint64) int {
	c := pickCtx{targets: p.targets, now: now, tried: tried}
	if i := p.bal.pick(req, c); i >= 0 {
		return i
	}
	if tried != 0 {
		c.tried = 0
		if i := p.bal.pick(req, c); i >= 0 {
			return i
		}
	}
	c.ignoreEjection, c.tried = true, tried
	if i := p.pickAny(req, c); i >= 0 {
		return i
	}
	if !p.ignoreAllDown {
		return -1
	}
	c.ignoreHealth, c.tried = true, tried
	return p.pickAny(req, c)
}

// pickAny picks an untried target c allows, else any that c allows.
func (p *Pool) pickAny(req *http.Request, c pickCtx) int {
	if i := p.bal.pick(req, c); i >= 0 || c.tried == 0 {
		return i
	}
	c.tried = 0
	return p.bal.pick(req, c)
}

// attemptState is one attempt's bookkeeping, its outbound request and,
// once headers arrived, its response body wrapper (one allocation for all):
// closing the body ends the attempt, dropping the target's (and, for the
// response RoundTrip returns, the upstream's) in-flight count and releasing
// the attempt's context.
type attemptState struct {
	io.ReadCloser // the response body
	p             *Pool
	t             *target
	up            *atomic.Int64 // set on the final response only
	cancel        context.CancelFunc
	timer         *time.Timer
	// timer state: 0 waiting for headers, 1 headers arrived, 2 fired.
	state  atomic.Int32
	closed atomic.Bool
	out    http.Request // the request as sent to t
	url    url.URL      // out.URL
	// stalled: a read of the body failed on the read idle timeout (the
	// failure is recorded once).
	stalled bool
	idle    *idleWatch // Go's transport only (the lean client uses deadlines); nil: none
}

// idleWatch is the read idle timeout of an answer that came through Go's
// transport, which offers no connection deadline: a timer that cancels the
// attempt's context once a read of the body has waited for the timeout
// without a byte. Only the time spent inside Read counts (the caller may
// take long to write what it read to a slow client: the upstream is not
// idle then), and a byte of a request body still streaming up counts as
// activity too (a client-streaming gRPC call may legitimately get no
// answer bytes for long). The timer is re-armed for what is left when it
// fires early, not reset per read: a read costs two clock readings and
// atomic stores.
type idleWatch struct {
	d       time.Duration // 0: off
	timer   *time.Timer
	last    atomic.Int64 // monotonic ns of the latest activity or read start
	reading atomic.Bool
	fired   atomic.Bool
	req     activityBody // the request body, counting its reads as activity
}

// monoBase makes monotonic nanoseconds out of time.Since.
var monoBase = time.Now()

func monoNow() int64 { return int64(time.Since(monoBase)) }

// activityBody is a request body whose reads (by the transport, sending
// it) count as activity of the exchange for the read idle timeout.
type activityBody struct {
	rc io.ReadCloser
	w  *idleWatch
}

func (b *activityBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if n > 0 {
		b.w.last.Store(monoNow())
	}
	return n, err
}

func (b *activityBody) Close() error { return b.rc.Close() }

// Read reads the response body; a read that failed on the read idle
// timeout returns a *ReadIdleError and records a failure of the target.
func (a *attemptState) Read(p []byte) (int, error) {
	w := a.idle
	if w == nil || w.timer == nil {
		n, err := a.ReadCloser.Read(p)
		if err != nil && err != io.EOF && !a.stalled {
			if _, ok := err.(*ReadIdleError); ok {
				a.stall()
			}
		}
		return n, err
	}
	w.last.Store(monoNow())
	w.reading.Store(true)
	n, err := a.ReadCloser.Read(p)
	w.reading.Store(false)
	if n > 0 {
		w.last.Store(monoNow())
	}
	if err != nil && err != io.EOF && w.fired.Load() {
		err = &ReadIdleError{Idle: w.d}
		if !a.stalled {
			a.stall()
		}
	}
	return n, err
}

// watchIdle starts the read idle timer of a response body from Go's
// transport (a.cancel cancels its request).
func (a *attemptState) watchIdle() {
	w := a.idle
	w.last.Store(monoNow())
	w.timer = time.AfterFunc(w.d, a.idleCheck)
}

func (a *attemptState) idleCheck() {
	w := a.idle
	if a.closed.Load() {
		return
	}
	if !w.reading.Load() {
		w.timer.Reset(w.d) // not waiting on the upstream now
		return
	}
	if quiet := time.Duration(monoNow() - w.last.Load()); quiet < w.d {
		w.timer.Reset(w.d - quiet)
		return
	}
	w.fired.Store(true) // before the cancellation, which the read sees
	a.cancel()
}

// stall records the read idle timeout of an answer whose headers counted
// as a success: a failure of the target for passive health, the breaker and
// portico_upstream_requests_total{code="error"}; and a log record.
func (a *attemptState) stall() {
	a.stalled = true
	p, t := a.p, a.t
	if p == nil {
		return
	}
	now := p.reg.now().UnixNano()
	if p.br != nil {
		p.br.recordLate(now)
	}
	t.errCtr.Inc()
	t.win.add(now, 0, 1)
	p.reg.log.Warn("upstream read idle timeout: the answer's body stalled; exchange aborted",
		"upstream", p.name, "target", t.url, "read_idle_timeout", p.readIdle)
	if p.ejectAfter > 0 && t.consecFail.Add(1) >= p.ejectAfter {
		p.eject(t, now)
	}
}

func (a *attemptState) fire() {
	if a.state.CompareAndSwap(0, 2) {
		a.cancel()
	}
}

// arrived reports whether the headers beat the timer.
func (a *attemptState) arrived() bool {
	if a.timer == nil {
		return true
	}
	ok := a.state.CompareAndSwap(0, 1)
	a.timer.Stop()
	return ok
}

// end releases the attempt; it runs once.
func (a *attemptState) end() {
	if !a.closed.CompareAndSwap(false, true) {
		return
	}
	if a.idle != nil && a.idle.timer != nil {
		a.idle.timer.Stop()
	}
	a.t.inflight.Add(-1)
	if a.up != nil {
		a.up.Add(-1)
	}
	if a.cancel != nil {
		a.cancel()
	}
}

func (a *attemptState) Close() error {
	err := a.ReadCloser.Close()
	a.end()
	return err
}

func (a *attemptState) setUpstream(c *atomic.Int64) { a.up = c }

// attemptRWBody keeps the io.Writer of a 101 Switching Protocols body,
// which httputil.ReverseProxy needs to splice an upgraded connection.
type attemptRWBody struct {
	*attemptState
	w io.Writer
}

func (b attemptRWBody) Write(p []byte) (int, error) { return b.w.Write(p) }

// CloseWrite half-closes the upgraded connection (a client's half-close,
// which ReverseProxy passes on): without it, ReverseProxy ends the whole
// tunnel when the client stops sending, and the client misses what the
// upstream still had to say.
func (b attemptRWBody) CloseWrite() error {
	if cw, ok := b.w.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return http.ErrNotSupported
}

func (p *Pool) attempt(ctx context.Context, req *http.Request, t *target, body io.ReadCloser,
	getBody func() (io.ReadCloser, error), probe bool) (*http.Response, error) {
	a := &attemptState{}
	out := a.prepare(p, req, t, body, getBody)
	rt := p.tr.forTarget(t)
	lean, _ := rt.(*h1Client)
	var (
		fields  headFields
		invalid error // of a request the lean client takes: never sent
	)
	if lean != nil {
		var ok bool
		if ok, invalid = scanRequest(out, &fields); !ok {
			rt, lean = lean.fallback, nil
		}
	}
	start := time.Now()
	deadline := p.deadline(ctx, start)
	t.inflight.Add(1)
	var (
		res      *http.Response
		err      error
		timedOut bool
	)
	switch {
	case lean != nil && invalid != nil:
		err = invalid
	case lean != nil:
		// The lean client bounds the exchange with the connection's
		// deadline: no context, timer or goroutine per attempt.
		res, err = lean.roundTrip(out, &fields, deadline, p.readIdle)
		timedOut = err == errAttemptTimeout
	case !deadline.IsZero() || p.readIdle > 0:
		var actx context.Context
		actx, a.cancel = context.WithCancel(ctx)
		if !deadline.IsZero() {
			a.timer = time.AfterFunc(p.timeout, a.fire)
		}
		if p.readIdle > 0 {
			a.idle = &idleWatch{d: p.readIdle}
			if out.Body != nil && out.Body != http.NoBody {
				a.idle.req = activityBody{rc: out.Body, w: a.idle}
				out.Body = &a.idle.req
			}
		}
		res, err = rt.RoundTrip(out.WithContext(actx))
		timedOut = !a.arrived()
	default:
		res, err = rt.RoundTrip(out)
	}
	return p.conclude(ctx, a, res, err, timedOut, probe, start)
}

// prepare fills a with the request as sent to t and returns it; out keeps
// req's context.
func (a *attemptState) prepare(p *Pool, req *http.Request, t *target, body io.ReadCloser,
	getBody func() (io.ReadCloser, error)) *http.Request {
	a.p, a.t, a.out, a.url = p, t, *req, *req.URL
	out := &a.out
	a.url.Scheme, a.url.Host = t.scheme, t.host
	out.URL = &a.url
	if !p.preserveHost || out.Host == "" {
		out.Host = t.host
	}
	out.Body = body
	if getBody != nil {
		out.GetBody = getBody
	}
	return out
}

// deadline is the attempt's deadline, until response headers, for an
// attempt starting at start. It is left out when the caller's own deadline
// comes no later: that one ends the attempt first, and is classified as
// the caller's, as it would be with the attempt's timer running behind it.
func (p *Pool) deadline(ctx context.Context, start time.Time) time.Time {
	if p.timeout <= 0 {
		return time.Time{}
	}
	deadline := start.Add(p.timeout)
	if d, ok := ctx.Deadline(); ok && !d.After(deadline) {
		return time.Time{}
	}
	return deadline
}

// conclude judges an attempt that began at start by its result: the
// timeout's error, the breaker's record, the target's counts and passive
// health, and the response body wrapped so that closing it ends a.
func (p *Pool) conclude(ctx context.Context, a *attemptState, res *http.Response, err error,
	timedOut, probe bool, start time.Time) (*http.Response, error) {
	t := a.t
	elapsed := time.Since(start)
	if timedOut {
		if res != nil {
			_ = res.Body.Close()
			res = nil
		}
		if cerr := ctx.Err(); cerr == nil {
			err = problem.Wrap(http.StatusGatewayTimeout, "upstream_timeout",
				"the upstream did not answer in time", context.DeadlineExceeded)
		} else if err == errAttemptTimeout {
			// The caller's context ended too: its error, as with the timer.
			err = cerr
		}
	}
	now := p.reg.now().UnixNano()
	o := outcomeSuccess
	switch {
	case err != nil && errors.Is(ctx.Err(), context.Canceled) &&
		!errors.Is(context.Cause(ctx), context.DeadlineExceeded):
		// The client went away: no verdict on the upstream. A passed
		// deadline (the route's timeout) is the upstream's slowness and
		// counts as a failure below.
		o = outcomeNeutral
	case err != nil, res.StatusCode >= 500:
		o = outcomeFailure
	}
	if p.br != nil {
		p.br.record(now, o, probe)
	}
	if o != outcomeNeutral {
		p.observe(t, now, res, o, elapsed)
	}
	if res == nil {
		a.end()
		return nil, err
	}
	a.ReadCloser = res.Body
	if w, ok := res.Body.(io.Writer); ok {
		res.Body = attemptRWBody{attemptState: a, w: w}
	} else {
		res.Body = a
		if a.idle != nil && res.StatusCode != http.StatusSwitchingProtocols && a.ReadCloser != http.NoBody {
			a.watchIdle()
		}
	}
	return res, nil
}

func (p *Pool) observe(t *target, now int64, res *http.Response, o outcome, elapsed time.Duration) {
	if res != nil {
		t.counter(res.StatusCode).Inc()
	} else {
		t.errCtr.Inc()
	}
	p.up.durObs.Observe(elapsed.Seconds())
	var fail int64
	if o == outcomeFailure {
		fail = 1
	}
	t.win.add(now, 1, fail)
	if p.ejectAfter == 0 {
		return
	}
	if fail == 0 {
		if t.consecFail.Load() != 0 {
			t.consecFail.Store(0)
		}
		return
	}
	if t.consecFail.Add(1) >= p.ejectAfter {
		p.eject(t, now)
	}
}

// eject takes t out of rotation for the base ejection time, doubled for
// each ejection that follows soon after the previous one (capped at 10x).
// The doubling starts over once t stayed in rotation for 10x the base time.
// The last eligible target is never ejected: a failing target still beats
// answering every request with 503.
func (p *Pool) eject(t *target, now int64) {
	p.up.ejectMu.Lock()
	defer p.up.ejectMu.Unlock()
	if t.ejectedUntil.Load() > now || t.consecFail.Load() < p.ejectAfter {
		return // another goroutine got here first
	}
	others := false
	for _, o := range p.targets {
		if o != t && o.healthy.Load() && o.ejectedUntil.Load() <= now {
			others = true
			break
		}
	}
	if !others {
		return
	}
	if now-t.lastEjectEnd > p.ejectBase*maxEjectionFactor {
		t.ejections = 0
	}
	t.ejections++
	d := p.ejectBase * maxEjectionFactor
	if t.ejections <= 4 { // 1, 2, 4, 8; then the cap
		d = min(d, p.ejectBase<<(t.ejections-1))
	}
	t.ejectedUntil.Store(now + d)
	t.lastEjectEnd = now + d
	t.consecFail.Store(0)
	t.ejectCtr.Inc()
	p.reg.log.Warn("upstream target ejected", "upstream", p.name, "target", t.url,
		"for", time.Duration(d), "ejections", t.ejections)
}

func idempotent(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodPut, http.MethodDelete, http.MethodTrace:
		return true
	}
	return false
}

// isDialError reports whether err happened while opening the connection,
// before any byte of the request could be written.
func isDialError(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "dial"
}

func (p *Pool) retryable(ctx context.Context, req *http.Request, res *http.Response, err error, rb *replay, now int64) bool {
	if ctx.Err() != nil {
		return false
	}
	idem := idempotent(req.Method)
	dial := false
	if err != nil {
		dial = isDialError(err)
		if !idem && !dial {
			return false
		}
	} else {
		switch res.StatusCode {
		case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
			if !idem {
				return false
			}
		default:
			return false
		}
	}
	if !rb.canReplay(dial) || p.budget <= 0 {
		// retry_budget: 0 allows none; the floor below is for a quiet
		// upstream under a budget, not for one without.
		return false
	}
	reqs, rets := p.up.budget.sum(now)
	allowed := max(int64(p.budget*float64(reqs)), minRetries)
	return rets < allowed
}

// drainClose reads a little of a discarded response so its connection can
// be reused, then closes it.
func drainClose(b io.ReadCloser) {
	_, _ = io.CopyN(io.Discard, b, maxDrain)
	_ = b.Close()
}

func closeRequestBody(req *http.Request) {
	if req.Body != nil {
		_ = req.Body.Close()
	}
}

// replay is how a request body is resent on a retry.
type replay struct {
	mode    replayMode
	req     *http.Request
	buf     []byte
	getBody func() (io.ReadCloser, error) // for replayBuffered
	guard   *guardBody
}

type replayMode int8

const (
	replayNone     replayMode = iota // no body, or no retries configured
	replayGetBody                    // req.GetBody makes a fresh copy
	replayBuffered                   // small body of an idempotent request, read up front
	replayGuarded                    // only a dial error (body unread) allows a retry
)

func (p *Pool) initReplay(rb *replay, req *http.Request) error {
	rb.req = req
	if p.retries == 0 || req.Body == nil || req.Body == http.NoBody {
		return nil
	}
	switch {
	case req.GetBody != nil:
		rb.mode = replayGetBody
	case idempotent(req.Method) && req.ContentLength > 0 && req.ContentLength <= maxBufferedBody:
		buf := make([]byte, req.ContentLength)
		_, err := io.ReadFull(req.Body, buf)
		_ = req.Body.Close()
		if err != nil {
			return problem.Wrap(http.StatusBadRequest, "request_body_unreadable",
				"the request body could not be read", err)
		}
		rb.mode, rb.buf = replayBuffered, buf
		// http.Transport resends a request on a kept-alive connection that
		// the server closed before reading it, but only with GetBody.
		rb.getBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf)), nil }
	default:
		rb.mode = replayGuarded
		rb.guard = &guardBody{rc: req.Body, hold: true}
	}
	return nil
}

func (rb *replay) first() io.ReadCloser {
	switch rb.mode {
	case replayBuffered:
		return io.NopCloser(bytes.NewReader(rb.buf))
	case replayGuarded:
		return rb.guard
	}
	return rb.req.Body
}

func (rb *replay) canReplay(dial bool) bool {
	switch rb.mode {
	case replayGuarded:
		return dial && rb.guard.n.Load() == 0
	}
	return true
}

func (rb *replay) next() (io.ReadCloser, error) {
	switch rb.mode {
	case replayGetBody:
		return rb.req.GetBody()
	case replayBuffered:
		return io.NopCloser(bytes.NewReader(rb.buf)), nil
	case replayGuarded:
		rb.guard.rearm()
		return rb.guard, nil
	}
	return rb.req.Body, nil
}

// abort closes a body no attempt took: a RoundTripper closes the request
// body whatever happens.
func (rb *replay) abort() {
	rb.finish()
	if rb.mode != replayBuffered { // a buffered body was closed when read
		closeRequestBody(rb.req)
	}
}

// finish lets the transport's close of a guarded body through.
func (rb *replay) finish() {
	if rb.guard != nil {
		rb.guard.release()
	}
}

// guardBody counts what the transport read and holds back its Close while
// a retry may still need the body: http.Transport closes the request body
// even after a dial error, which would make the body unusable although not
// a byte of it was consumed.
type guardBody struct {
	rc          io.ReadCloser
	n           atomic.Int64
	mu          sync.Mutex
	hold        bool
	closeWanted bool
	closed      bool
}

func (g *guardBody) Read(b []byte) (int, error) {
	n, err := g.rc.Read(b)
	g.n.Add(int64(n))
	return n, err
}

func (g *guardBody) Close() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.hold {
		g.closeWanted = true
		return nil
	}
	if g.closed {
		return nil
	}
	g.closed = true
	return g.rc.Close()
}

func (g *guardBody) rearm() {
	g.mu.Lock()
	g.closeWanted = false
	g.mu.Unlock()
}

func (g *guardBody) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.hold = false
	if g.closeWanted && !g.closed {
		g.closed = true
		_ = g.rc.Close()
	}
}
