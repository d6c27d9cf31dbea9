package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/portico-gw/portico/internal/identity"
	"github.com/portico-gw/portico/internal/problem"
	"github.com/portico-gw/portico/internal/ratelimit/algo"
	"github.com/portico-gw/portico/internal/reqctx"
)

// Canonical header keys, assigned directly so that no per-request
// canonicalization allocates.
const (
	hdrPolicy     = "Ratelimit-Policy"
	hdrRateLimit  = "Ratelimit"
	hdrRetryAfter = "Retry-After"
	hdrXLimit     = "X-Ratelimit-Limit"
	hdrXRemaining = "X-Ratelimit-Remaining"
	hdrXReset     = "X-Ratelimit-Reset"
)

// group is the policies of one phase that share a key expression, an
// on_missing_key mode and a store mode: one subject, one store call.
type group struct {
	key       *Key
	onMissing missingMode
	lease     bool      // decided through the lease store
	enforce   []*policy // decided all-or-nothing together
	shadow    []*policy // decided after enforcement passed; never block
	id        uint64    // mixes the group into negative-cache keys
}

type limiter struct {
	s      *Service
	rt     *runtime
	route  string
	phase  Phase
	groups []group
	// routeItems are the RateLimit-Policy members of all the route's
	// enforcing policies (both phases) in config order; policyHdr is them
	// joined, shared by every response that needs no override.
	routeItems []*policy
	policyHdr  []string
	seed       maphash.Seed
	next       http.Handler
}

// Middleware returns the rate-limit stage of one route for one phase. names
// are ALL the route's policies (both phases); those whose key belongs to
// phase are enforced here, and every response of the route carries the
// RateLimit-Policy of all of them. The gateway calls it twice per route
// (PreAuth before auth, PostAuth after) and rebuilds both on reload, after
// Apply. Unknown names are an error.
//
// Pre-auth quota is spent when a request passes the pre-auth stage, whatever
// happens after (a 401, or a post-auth 429): those limits protect the
// gateway from the work that follows them.
func (s *Service) Middleware(route string, names []string, phase Phase) (func(http.Handler) http.Handler, error) {
	return s.middleware(s.cur.Load(), route, names, phase)
}

func (s *Service) middleware(rt *runtime, route string, names []string, phase Phase) (func(http.Handler) http.Handler, error) {
	if phase != PreAuth && phase != PostAuth {
		return nil, fmt.Errorf("rate limit for route %s: unknown phase %d", route, phase)
	}
	l := &limiter{s: s, rt: rt, route: route, phase: phase, seed: maphash.MakeSeed()}
	var items []string
	seen := map[string]bool{}
	for _, name := range names {
		p, ok := rt.policies[name]
		if !ok {
			return nil, fmt.Errorf("route %s: unknown rate-limit policy %q", route, name)
		}
		if seen[name] {
			continue
		}
		seen[name] = true
		if !p.shadow {
			l.routeItems = append(l.routeItems, p)
			items = append(items, p.item)
		}
		if p.key.Phase() != phase {
			continue
		}
		gi := -1
		for i := range l.groups {
			if l.groups[i].key.Text == p.key.Text && l.groups[i].onMissing == p.onMissing && l.groups[i].lease == p.lease {
				gi = i
				break
			}
		}
		if gi < 0 {
			l.groups = append(l.groups, group{key: p.key, onMissing: p.onMissing, lease: p.lease})
			gi = len(l.groups) - 1
		}
		g := &l.groups[gi]
		if p.shadow {
			g.shadow = append(g.shadow, p)
		} else {
			if len(g.enforce) == 64 {
				return nil, fmt.Errorf("route %s: more than 64 policies share key %s", route, p.key.Text)
			}
			g.enforce = append(g.enforce, p)
		}
	}
	for i := range l.groups {
		g := &l.groups[i]
		var sb strings.Builder
		sb.WriteString(g.key.Text)
		for _, p := range g.enforce {
			sb.WriteString("\x00" + p.name + "\x00" + strconv.FormatInt(p.cost, 10))
		}
		g.id = maphash.String(l.seed, sb.String())
	}
	if len(items) > 0 && rt.headers != headersNone {
		l.policyHdr = []string{strings.Join(items, ", ")}
	}
	if len(l.groups) == 0 && (phase == PostAuth || l.policyHdr == nil) {
		return func(next http.Handler) http.Handler { return next }, nil
	}
	return func(next http.Handler) http.Handler {
		c := *l
		c.next = next
		return &c
	}, nil
}

// reqState is the per-request scratch space, pooled.
type reqState struct {
	buf     []byte
	pending []pendingGroup
	checks  []Check
	pols    []*policy // the policy of each check
	out     []algo.Decision
	decided []decidedGroup
	hdr     []byte
}

type decidedGroup struct {
	subject string // points into buf
	store   Store  // the store that decided it (for refunds)
	lo, hi  int    // range in checks/out
	by      source
}

type pendingGroup struct {
	g       *group
	subject string
	ov      string
}

type source uint8

const (
	srcStore source = iota + 1
	srcLocal        // the local fallback store
	srcOpen         // fail_open (no state)
	srcNeg          // negative cache
)

var statePool = sync.Pool{New: func() any {
	return &reqState{buf: make([]byte, 0, 256), hdr: make([]byte, 0, 128)}
}}

// putState returns st to the pool unless a huge key value (a long header)
// grew its buffer: the pool must not pin such memory for every request.
func putState(st *reqState) {
	if cap(st.buf) > 4096 || cap(st.hdr) > 4096 {
		return
	}
	statePool.Put(st)
}

func (st *reqState) reset() {
	st.buf = st.buf[:0]
	clear(st.pending) // drop pointers into the old runtime
	st.pending = st.pending[:0]
	st.checks = st.checks[:0]
	clear(st.pols)
	st.pols = st.pols[:0]
	st.out = st.out[:0]
	st.decided = st.decided[:0]
	st.hdr = st.hdr[:0]
}

// verdict is the outcome of a request's enforcing checks.
type verdict struct {
	rejected    bool
	violated    []*policy
	retryAfter  int64 // µs, max over violated; algo.Never if any can never pass
	missing     string
	unavailable bool
	gone        error
	// best is the check with the least remaining (or the violated one).
	best       *policy
	bestParams algo.Params
	bestDec    algo.Decision
	delay      int64
}

func (l *limiter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if len(l.groups) == 0 {
		l.setPolicyHeader(w.Header(), "")
		l.next.ServeHTTP(w, r)
		return
	}
	ctx := r.Context()
	info := reqctx.From(ctx)
	var id *identity.Identity
	if l.phase == PostAuth {
		id = reqctx.IdentityFrom(ctx)
	}
	st := statePool.Get().(*reqState)
	st.reset()
	defer putState(st)

	var v verdict
	now := l.s.clock.Micros()
	overrideKey := ""
	// First every subject and the negative cache, so that a subject known
	// to be over its limit costs no store call at all (not even for the
	// groups before it, which would then need refunds).
	for gi := range l.groups {
		g := &l.groups[gi]
		if len(g.enforce) == 0 {
			continue
		}
		start := len(st.buf)
		buf, ov, miss, ok := g.key.appendSubject(st.buf, r, info, id, l.route, false)
		if !ok {
			switch g.onMissing {
			case missingSkip:
				st.buf = buf[:start]
				continue
			case missingShared:
				buf, ov, _, _ = g.key.appendSubject(buf[:start], r, info, id, l.route, true)
			default:
				st.buf = buf
				v.rejected = true
				v.missing = miss.String()
				for _, p := range g.enforce {
					v.violated = append(v.violated, p)
					p.counters.limited.Inc()
				}
				v.retryAfter = algo.Never
				v.best, v.bestParams = g.enforce[0], g.enforce[0].params
			}
		}
		if v.rejected {
			break
		}
		st.buf = buf
		subject := unsafe.String(unsafe.SliceData(st.buf[start:]), len(st.buf)-start)
		if ov != "" {
			overrideKey = ov
		}
		if l.cachedReject(g, subject, ov, now, &v) {
			break
		}
		st.pending = append(st.pending, pendingGroup{g: g, subject: subject, ov: ov})
	}
	if !v.rejected {
		for i := range st.pending {
			pg := &st.pending[i]
			if l.decideGroup(ctx, st, pg.g, pg.subject, pg.ov, now, &v) {
				break
			}
		}
	}
	if v.gone != nil {
		l.refund(ctx, st)
		problem.Write(w, r, problem.FromUpstream(v.gone))
		return
	}
	h := w.Header()
	l.setPolicyHeader(h, overrideKey)
	if v.unavailable {
		l.refund(ctx, st)
		h[hdrRetryAfter] = []string{"1"}
		problem.Write(w, r, problem.New(http.StatusServiceUnavailable, "ratelimit_unavailable",
			"the rate-limit store is unavailable and this route's policy fails closed"))
		return
	}
	if v.rejected {
		l.refund(ctx, st)
		l.reject(w, r, st, &v)
		return
	}
	for i := range st.decided {
		d := &st.decided[i]
		if d.by == srcStore {
			for j := d.lo; j < d.hi; j++ {
				l.policyOf(st, j).counters.allowed.Inc()
			}
		}
	}
	if v.best != nil && l.rt.headers != headersNone {
		l.setStatus(h, st, &v)
	}
	l.decideShadow(ctx, r, st, info, id)
	if v.delay > 0 {
		if err := l.s.wait(ctx, time.Duration(v.delay)*time.Microsecond); err != nil {
			problem.Write(w, r, problem.FromUpstream(err))
			return
		}
	}
	l.next.ServeHTTP(w, r)
}

// policyOf returns the policy of check j.
func (l *limiter) policyOf(st *reqState, j int) *policy { return st.pols[j] }

// decideGroup decides g's enforcing policies for subject and folds the
// result into v. It reports whether the request is settled (rejected,
// unavailable or gone), so that later groups are not asked.
func (l *limiter) decideGroup(ctx context.Context, st *reqState, g *group, subject, ov string, now int64, v *verdict) bool {
	lo := len(st.checks)
	for _, p := range g.enforce {
		params := p.params
		if ov != "" && p.overrides != nil {
			if op, ok := p.overrides[ov]; ok {
				params = op
			}
		}
		st.checks = append(st.checks, Check{Policy: p.name, Params: params, Cost: p.cost})
		st.pols = append(st.pols, p)
		st.out = append(st.out, algo.Decision{})
	}
	hi := len(st.checks)
	checks, out := st.checks[lo:hi], st.out[lo:hi]
	negKey := maphash.String(l.seed, subject) ^ g.id

	store := l.s.storeFor(g.lease)
	by, err := l.s.decide(ctx, store, l.rt, subject, checks, out, g.enforce, now)
	st.decided = append(st.decided, decidedGroup{subject: subject, lo: lo, hi: hi, by: by, store: store})
	if err != nil {
		if errors.Is(err, errUnavailable) {
			v.unavailable = true
		} else {
			v.gone = err
		}
		st.decided = st.decided[:len(st.decided)-1]
		return true
	}
	var mask uint64
	var retry int64
	for i := range out {
		d := &out[i]
		p := g.enforce[i]
		if !d.Allowed {
			mask |= 1 << i
			v.violated = append(v.violated, p)
			if by == srcStore {
				p.counters.limited.Inc()
			}
			if d.RetryAfter == algo.Never || retry == algo.Never {
				retry = algo.Never
			} else {
				retry = max(retry, d.RetryAfter)
			}
			if !v.rejected || v.best == nil {
				v.best, v.bestParams, v.bestDec = p, checks[i].Params, *d
			}
			v.rejected = true
			continue
		}
		if d.Delay > v.delay {
			v.delay = d.Delay
		}
		if !v.rejected && (v.best == nil || d.Remaining < v.bestDec.Remaining) {
			v.best, v.bestParams, v.bestDec = p, checks[i].Params, *d
		}
	}
	if mask != 0 {
		v.retryAfter = retry
		// The group consumed nothing (all-or-nothing): forget it for refunds.
		st.decided = st.decided[:len(st.decided)-1]
		if by == srcStore && retry > 0 {
			// Measured from when the answer arrived.
			at := now
			if l.s.memory == nil {
				at = l.s.clock.Micros()
			}
			l.s.neg.put(negKey, at+retry, mask, at)
		}
		return true
	}
	return false
}

// cachedReject answers from the negative cache: a subject the store
// rejected recently is rejected here, with the store's RetryAfter counting
// down on the local clock.
func (l *limiter) cachedReject(g *group, subject, ov string, now int64, v *verdict) bool {
	mask, until, ok := l.s.neg.get(maphash.String(l.seed, subject)^g.id, now)
	if !ok {
		return false
	}
	v.rejected = true
	v.retryAfter = until - now
	for i, p := range g.enforce {
		if mask&(1<<i) == 0 {
			continue
		}
		v.violated = append(v.violated, p)
		p.counters.limited.Inc()
		if v.best == nil {
			v.best, v.bestParams = p, p.params
			if op, ok := p.overrides[ov]; ok && ov != "" {
				v.bestParams = op
			}
			v.bestDec = algo.Decision{RetryAfter: until - now}
		}
	}
	return true
}

func (l *limiter) itemFor(p *policy, ov string) string {
	if ov != "" && p.overrideItems != nil {
		if it, ok := p.overrideItems[ov]; ok {
			return it
		}
	}
	return p.item
}

// refund gives back what the request's admitted groups took, on the store
// that decided them (a fail_open decision took nothing).
func (l *limiter) refund(ctx context.Context, st *reqState) {
	for i := range st.decided {
		d := &st.decided[i]
		checks := st.checks[d.lo:d.hi]
		switch d.by {
		case srcLocal:
			// Only the local-mode checks took units, at their scaled params.
			n := l.s.nodeCount(l.rt)
			for j := range checks {
				if l.policyOf(st, d.lo+j).onError != failLocal {
					continue
				}
				c := [1]Check{checks[j]}
				c[0].Params = localParams(c[0].Params, n)
				l.s.local.RefundAt(l.s.clock.Micros(), d.subject, c[:])
			}
		case srcStore:
			if err := l.s.refund(ctx, d.store, d.subject, checks); err != nil {
				// At most one line per second, as for failed decisions: a
				// slow or flapping store fails refunds at the rate of the
				// requests a later policy rejects.
				if l.s.refundWarn.due(l.s.clock.Micros()) {
					l.s.log.Warn("rate-limit refund failed; the units stay consumed",
						slog.String("route", l.route), slog.Any("error", err))
				}
			}
		}
	}
	st.decided = st.decided[:0]
}

// violatedExtra is the problem body's "violated-policies" member; a single
// policy (the common case) uses its precomputed, read-only map.
func violatedExtra(ps []*policy) map[string]any {
	if len(ps) == 1 {
		return ps[0].violatedExtra
	}
	names := make([]string, len(ps))
	for i, p := range ps {
		names[i] = p.name
	}
	return map[string]any{"violated-policies": names}
}

// reject writes the 429 (problem+json with violated-policies and
// Retry-After, RFC 9457 and draft-ietf-httpapi-ratelimit-headers).
func (l *limiter) reject(w http.ResponseWriter, r *http.Request, st *reqState, v *verdict) {
	h := w.Header()
	if v.missing != "" {
		// No quota was consulted, so there is none to report: "r=0;t=0"
		// would tell the client to retry at once, and an earlier phase's
		// field (r > 0) would contradict the 429.
		delete(h, hdrRateLimit)
		delete(h, hdrXLimit)
		delete(h, hdrXRemaining)
		delete(h, hdrXReset)
	} else if v.best != nil && l.rt.headers != headersNone {
		// The violated policy is the one the client must wait for.
		d := v.bestDec
		d.Remaining = min(d.Remaining, v.bestParams.Limit)
		if v.retryAfter > 0 {
			d.ResetAfter = v.retryAfter
		}
		v.bestDec = d
		l.writeStatus(h, st, v)
	}
	if v.retryAfter > 0 {
		h[hdrRetryAfter] = []string{strconv.FormatInt(ceilSeconds(v.retryAfter), 10)}
	}
	detail := "rate limit exceeded"
	switch {
	case v.missing != "":
		detail = "the request has no " + v.missing + ", which the rate-limit key of policy " + v.violated[0].name + " requires"
	case v.retryAfter == algo.Never:
		detail = "the request costs more than the rate limit allows at once"
	}
	problem.Write(w, r, &problem.Error{
		Status: http.StatusTooManyRequests,
		Code:   "rate_limited",
		Detail: detail,
		Extra:  violatedExtra(v.violated),
	})
}

// setPolicyHeader sets RateLimit-Policy to all the route's policies; with
// an override in force the list is rebuilt with its numbers.
func (l *limiter) setPolicyHeader(h http.Header, ov string) {
	if l.policyHdr == nil {
		return
	}
	if ov != "" {
		changed := false
		for _, p := range l.routeItems {
			if _, ok := p.overrideItems[ov]; ok {
				changed = true
				break
			}
		}
		if changed {
			var b strings.Builder
			for i, p := range l.routeItems {
				if i > 0 {
					b.WriteString(", ")
				}
				b.WriteString(l.itemFor(p, ov))
			}
			h[hdrPolicy] = []string{b.String()}
			return
		}
	}
	h[hdrPolicy] = l.policyHdr
}

// setStatus sets RateLimit (and legacy X-RateLimit-*) for an admitted
// request, unless an earlier phase already reported a policy with less
// remaining.
func (l *limiter) setStatus(h http.Header, st *reqState, v *verdict) {
	if l.phase == PostAuth {
		if prev, ok := h[hdrRateLimit]; ok && len(prev) == 1 {
			if r, ok := remainingOf(prev[0]); ok && r <= v.bestDec.Remaining {
				return
			}
		}
	}
	l.writeStatus(h, st, v)
}

func (l *limiter) writeStatus(h http.Header, st *reqState, v *verdict) {
	d := &v.bestDec
	t := ceilSeconds(d.ResetAfter)
	b := appendSFString(st.hdr[:0], v.best.name)
	b = append(b, ";r="...)
	b = strconv.AppendInt(b, d.Remaining, 10)
	b = append(b, ";t="...)
	b = strconv.AppendInt(b, t, 10)
	st.hdr = b
	hb := newHeaderBlock(len(b))
	h[hdrRateLimit] = hb.set(0, b)
	if l.rt.headers == headersLegacy {
		h[hdrXLimit] = hb.set(1, strconv.AppendInt(st.hdr[:0], v.bestParams.Limit, 10))
		h[hdrXRemaining] = hb.set(2, strconv.AppendInt(st.hdr[:0], d.Remaining, 10))
		h[hdrXReset] = hb.set(3, strconv.AppendInt(st.hdr[:0], t, 10))
	}
}

// headerBlock holds the per-response header values in one allocation: the
// value slices and the bytes their strings point into. The block lives as
// long as the response's header map refers to it and is never written
// after set returns, so the strings stay immutable.
type headerBlock struct {
	vals [4][1]string
	buf  []byte
	used int
}

// headerBlockInline is the value bytes kept inside the block itself.
const headerBlockInline = 96

type inlineBlock struct {
	headerBlock
	bytes [headerBlockInline]byte
}

func newHeaderBlock(first int) *headerBlock {
	ib := new(inlineBlock)
	ib.buf = ib.bytes[:]
	if first+3*20 > headerBlockInline {
		// A very long policy name: one more allocation.
		ib.buf = make([]byte, first+3*20)
	}
	return &ib.headerBlock
}

// set copies v into the block and returns the header value slice i.
func (hb *headerBlock) set(i int, v []byte) []string {
	n := copy(hb.buf[hb.used:], v)
	hb.vals[i][0] = unsafe.String(unsafe.SliceData(hb.buf[hb.used:]), n)
	hb.used += n
	return hb.vals[i][:]
}

// remainingOf reads the r parameter of a RateLimit field value we wrote.
func remainingOf(s string) (int64, bool) {
	i := strings.Index(s, ";r=")
	if i < 0 {
		return 0, false
	}
	s = s[i+3:]
	j := 0
	for j < len(s) && s[j] >= '0' && s[j] <= '9' {
		j++
	}
	n, err := strconv.ParseInt(s[:j], 10, 64)
	return n, err == nil
}

// decideShadow decides the shadow policies of an admitted request: they
// consume their own quota like enforced ones (so their counts show what
// enforcement would do) but never block; a would-be rejection is counted as
// "shadow" and logged.
func (l *limiter) decideShadow(ctx context.Context, r *http.Request, st *reqState, info *reqctx.Info, id *identity.Identity) {
	for gi := range l.groups {
		g := &l.groups[gi]
		if len(g.shadow) == 0 {
			continue
		}
		start := len(st.buf)
		buf, ov, _, ok := g.key.appendSubject(st.buf, r, info, id, l.route, g.onMissing == missingShared)
		st.buf = buf
		if !ok {
			continue
		}
		subject := unsafe.String(unsafe.SliceData(st.buf[start:]), len(st.buf)-start)
		lo := len(st.checks)
		for _, p := range g.shadow {
			params := p.params
			if op, ok := p.overrides[ov]; ok && ov != "" {
				params = op
			}
			st.checks = append(st.checks, Check{Policy: p.name, Params: params, Cost: p.cost})
			st.pols = append(st.pols, p)
			st.out = append(st.out, algo.Decision{})
		}
		checks, out := st.checks[lo:], st.out[lo:]
		by, err := l.s.decideShadow(ctx, l.s.storeFor(g.lease), subject, checks, out, g.shadow)
		if err != nil || by != srcStore {
			continue
		}
		for i, d := range out {
			p := g.shadow[i]
			if d.Allowed {
				p.counters.allowed.Inc()
				continue
			}
			p.counters.shadow.Inc()
			// One line per policy per second; the shadow counter has them all.
			if p.counters.shadowLog.due(l.s.clock.Micros()) {
				l.s.log.Info("shadow rate-limit policy would reject", slog.String("policy", p.name),
					slog.String("route", l.route), slog.Int64("retry_after_us", d.RetryAfter))
			}
		}
	}
}

var errUnavailable = errors.New("rate-limit store unavailable (fail_closed)")

// decide asks the store (through the breaker, bounded by the store timeout)
// and on failure applies each policy's on_store_error. It returns who
// decided. The error is errUnavailable when a fail_closed policy could not
// be decided, or the request context's error when the client left.
func (s *Service) decide(ctx context.Context, store Store, rt *runtime, subject string, checks []Check, out []algo.Decision, pols []*policy, now int64) (source, error) {
	err := s.storeDecide(ctx, store, subject, checks, out, now)
	if err == nil {
		return srcStore, nil
	}
	if ctx.Err() != nil {
		return 0, ctx.Err()
	}
	if err != errBreakerOpen {
		// At most one line per second: a failing store must not turn every
		// request into a log line (the error counter counts them all).
		if s.storeWarn.due(s.clock.Micros()) {
			s.log.Warn("rate-limit store failed", slog.Any("error", err))
		}
		for _, p := range pols {
			p.counters.errored.Inc()
		}
	}
	// Fallback: fail_closed wins over the others, then the local share, and
	// fail_open admits what is left.
	var local [maxInline]Check
	localChecks := local[:0]
	for i, p := range pols {
		switch p.onError {
		case failClosed:
			// The refusal is the on_store_error policy at work: count it,
			// also while the breaker is open and no error is counted.
			for _, q := range pols {
				q.counters.fallback.Inc()
			}
			return 0, errUnavailable
		case failLocal:
			c := checks[i]
			c.Params = localParams(c.Params, s.nodeCount(rt))
			localChecks = append(localChecks, c)
		}
	}
	var localOut [maxInline]algo.Decision
	lo := localOut[:len(localChecks)]
	if len(localChecks) > maxInline {
		lo = make([]algo.Decision, len(localChecks))
	}
	if len(localChecks) > 0 {
		if err := s.local.DecideAt(now, subject, localChecks, lo); err != nil {
			// The local store is full of throttled keys: refuse, safely.
			for i := range lo {
				lo[i] = algo.Decision{RetryAfter: probeInterval}
			}
		}
	}
	j := 0
	for i, p := range pols {
		p.counters.fallback.Inc()
		if p.onError == failLocal {
			out[i] = lo[j]
			j++
			continue
		}
		out[i] = algo.Decision{Allowed: true, Remaining: checks[i].Params.Limit}
	}
	if len(localChecks) > 0 {
		return srcLocal, nil
	}
	return srcOpen, nil
}

var errBreakerOpen = errors.New("rate-limit store breaker open")

// storeFor returns the store that decides a group.
func (s *Service) storeFor(lease bool) Store {
	if lease && s.leaseStore != nil {
		return s.leaseStore
	}
	return s.store
}

// storeDecide asks store through the breaker of subject's shard (the
// shared store and its lease wrapper share their breakers: they fail
// together).
func (s *Service) storeDecide(ctx context.Context, store Store, subject string, checks []Check, out []algo.Decision, now int64) error {
	if s.memory != nil {
		return s.memory.DecideAt(now, subject, checks, out)
	}
	shard := 0
	if s.shardOf != nil {
		shard = s.shardOf(subject)
	}
	b := s.breakers[shard]
	use, probe := b.allow()
	if !use {
		return errBreakerOpen
	}
	cctx, cancel := context.WithTimeout(ctx, s.storeTimeout)
	err := store.Decide(cctx, subject, checks, out)
	cancel()
	if err != nil && ctx.Err() != nil {
		// The client left: the failure may be its own, not the store's,
		// so it neither counts nor, for a probe, closes the breaker.
		b.abandon(probe)
		return err
	}
	wasOpen := b.open()
	b.report(err == nil, probe)
	if open := b.open(); open != wasOpen {
		attrs := []slog.Attr{slog.Bool("open", open)}
		if len(s.breakers) > 1 {
			attrs = append(attrs, slog.Int("shard", shard), slog.Int("shards", len(s.breakers)))
		}
		s.log.LogAttrs(ctx, slog.LevelWarn, "rate-limit store breaker", attrs...)
	}
	return err
}

// decideShadow decides shadow checks on the store only: without a store
// there is nothing to learn, and a shadow policy must never cost a fallback.
func (s *Service) decideShadow(ctx context.Context, store Store, subject string, checks []Check, out []algo.Decision, pols []*policy) (source, error) {
	if err := s.storeDecide(ctx, store, subject, checks, out, s.clock.Micros()); err != nil {
		if err != errBreakerOpen {
			for _, p := range pols {
				p.counters.errored.Inc()
			}
		}
		return 0, err
	}
	return srcStore, nil
}

func (s *Service) refund(ctx context.Context, store Store, subject string, checks []Check) error {
	if s.memory != nil {
		s.memory.RefundAt(s.clock.Micros(), subject, checks)
		return nil
	}
	// The refund must reach the store even if the client already left.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.storeTimeout)
	defer cancel()
	return store.Refund(cctx, subject, checks)
}
