package router

import (
	"net/http"
	"slices"
	"strings"

	"github.com/portico-gw/portico/internal/reqctx"
)

// matcher is the per-call scratch state; it lives on the caller's stack.
type matcher[T any] struct {
	cp    string                    // canonical path
	segs  [maxSegments + 1][2]int32 // start, end of each segment in cp
	n     int                       // segments split (at most the router's depth)
	over  bool                      // the path has more segments than n
	cands [maxCandidates]*terminal[T]
	nc    int
	// overflow is set when a candidate was dropped from cands; try then
	// walks again into all, unbounded, since the dropped one may be the
	// only route that takes the request (a catch-all under many prefixes).
	overflow bool
	all      []*terminal[T]

	r *http.Request
	// method and, for a CORS preflight, the method it asks about (which
	// the route is matched under, so that its CORS stage can answer).
	method, preMethod string
	bit, preBit       uint16

	// Terminals whose path matched under other methods, for a 405.
	denied      *terminal[T]
	deniedMany  bool
	deniedMask  uint16
	deniedOther []string
}

// Match finds the route for r. path is the cleaned path in ESCAPED form, the
// cleanEscaped result of CleanPath (r.URL.EscapedPath() after SetPath):
// matching splits segments on the escaped form so that %2F never acts as a
// separator. Parameters are appended to params (a caller-owned slice, so a
// reused one makes matching allocation-free) and returned as out: named
// parameters decoded, "*" as the rest of the path after the prefix, still
// escaped (so a %2F in it stays distinguishable from a separator) and
// without a leading '/'.
//
// res.Status is Found, NotFound or MethodNotAllowed (then res.Allow is the
// Allow header value). value is the zero T unless Found.
func (rt *Router[T]) Match(r *http.Request, path string, params []reqctx.Param) (value T, out []reqctx.Param, res Result) {
	out = params
	if path == "" || path[0] != '/' {
		return value, out, Result{}
	}
	var m matcher[T]
	m.cp = path
	if m.split(rt.maxDepth) {
		m.cp = string(appendCanonical(make([]byte, 0, len(path)+8), path))
		m.n, m.over = 0, false
		m.split(rt.maxDepth)
	}
	m.r, m.method = r, r.Method
	m.bit = methodBit(m.method)
	if m.bit == methodBit(http.MethodOptions) {
		if acrm := r.Header["Access-Control-Request-Method"]; len(acrm) > 0 && len(r.Header["Origin"]) > 0 {
			m.preMethod = acrm[0]
			m.preBit = methodBit(m.preMethod)
		}
	}

	var hb [256]byte
	host, hostOK := lowerHost(&hb, r)
	var rte *route[T]
	var t *terminal[T]
	if hostOK && rt.exactLens&lenBit(len(host)) != 0 {
		rte, t = m.try(rt.exact[string(host)])
	}
	if rte == nil && hostOK && rt.wildLens != 0 {
		for i := 1; i < len(host) && rte == nil; i++ {
			if host[i] == '.' && host[i-1] != '.' && rt.wildLens&lenBit(len(host)-i-1) != 0 {
				rte, t = m.try(rt.wildcard[string(host[i+1:])])
			}
		}
	}
	if rte == nil {
		rte, t = m.try(rt.anyHost)
	}
	if rte == nil {
		if m.denied == nil {
			return value, out, Result{}
		}
		allow := m.denied.allow
		if m.deniedMany {
			// Several paths matched (rare): the union, built now.
			allow = allowString(m.deniedMask, slices.Sorted(slices.Values(m.deniedOther)))
		}
		return value, out, Result{Status: MethodNotAllowed, Allow: allow}
	}
	for _, p := range rte.params {
		s := m.segs[p.seg]
		out = append(out, reqctx.Param{Key: p.name, Value: decodeCanonical(m.cp[s[0]:s[1]])})
	}
	if t.prefix {
		out = append(out, reqctx.Param{Key: "*", Value: restAfter(path, t.segs)})
	}
	return rte.value, out, Result{Status: Found}
}

// try matches within one host tier: the path candidates in precedence
// order, then method, headers and query of each route.
func (m *matcher[T]) try(root *node[T]) (*route[T], *terminal[T]) {
	if root == nil {
		return nil, nil
	}
	m.nc, m.overflow = 0, false
	m.walk(root, 0)
	cands := m.cands[:m.nc]
	if m.overflow {
		m.all = make([]*terminal[T], 0, 2*maxCandidates)
		m.walk(root, 0)
		cands, m.all = m.all, nil
	}
	for _, t := range cands {
		if !m.accepts(t.anyMethod, t.mask, t.other) {
			m.deny(t)
			continue
		}
		for _, rte := range t.routes {
			if m.accepts(rte.anyMethod, rte.mask, rte.other) &&
				rte.headersMatch(m.r.Header) && rte.queryMatch(m.r.URL.RawQuery) {
				return rte, t
			}
		}
	}
	return nil, nil
}

// accepts reports whether a method set takes the request's method (or,
// for a preflight, the method it asks about).
func (m *matcher[T]) accepts(anyMethod bool, mask uint16, other []string) bool {
	switch {
	case anyMethod && m.bit == 0, m.bit != 0 && mask&m.bit != 0, m.bit == 0 && slices.Contains(other, m.method):
		return true
	case m.preMethod == "":
		return false
	case m.preBit != 0:
		return mask&m.preBit != 0
	}
	return slices.Contains(other, m.preMethod)
}

// deny records a terminal whose path matched under other methods.
func (m *matcher[T]) deny(t *terminal[T]) {
	if m.denied == nil {
		m.denied = t
	} else {
		m.deniedMany = true
	}
	m.deniedMask |= t.mask
	for _, o := range t.other {
		if !slices.Contains(m.deniedOther, o) {
			// Clip: never append into a terminal's own slice.
			m.deniedOther = append(slices.Clip(m.deniedOther), o)
		}
	}
}

// split records up to limit segments of the canonical path. It reports
// whether the path holds a '%' (so it is not canonical yet). A plain loop
// beats IndexByte on segments this short.
func (m *matcher[T]) split(limit int) (percent bool) {
	p := m.cp
	start := 1
	for i := 1; i < len(p); i++ {
		switch p[i] {
		case '%':
			percent = true
		case '/':
			if m.n == limit {
				m.over = true
				return percent
			}
			m.segs[m.n] = [2]int32{int32(start), int32(i)}
			m.n++
			start = i + 1
		}
	}
	if m.n == limit {
		m.over = true
		return percent
	}
	m.segs[m.n] = [2]int32{int32(start), int32(len(p))}
	m.n++
	return percent
}

// walk collects the terminals matching from node n at segment i. Literal
// children are tried before the parameter child, which orders equal-rank
// candidates by the earlier literal.
func (m *matcher[T]) walk(n *node[T], i int) {
	if n.prefix != nil {
		m.add(n.prefix)
	}
	if i == m.n {
		if n.full != nil && !m.over {
			m.add(n.full)
		}
		return
	}
	s := m.segs[i]
	seg := m.cp[s[0]:s[1]]
	if n.lit != nil {
		if c := n.lit[seg]; c != nil {
			m.walk(c, i+1)
		}
	} else {
		for k := range n.edges {
			if n.edges[k].seg == seg {
				m.walk(n.edges[k].next, i+1)
				break
			}
		}
	}
	if n.param != nil && seg != "" {
		m.walk(n.param, i+1)
	}
}

// add inserts t after the candidates that rank at least as high, dropping
// the lowest when full (and noting it in overflow).
func (m *matcher[T]) add(t *terminal[T]) {
	if m.all != nil {
		pos := len(m.all)
		for pos > 0 && outranks(t, m.all[pos-1]) {
			pos--
		}
		m.all = slices.Insert(m.all, pos, t)
		return
	}
	pos := m.nc
	for pos > 0 && outranks(t, m.cands[pos-1]) {
		pos--
	}
	if m.nc == maxCandidates {
		m.overflow = true
	}
	if pos == maxCandidates {
		return
	}
	end := min(m.nc, maxCandidates-1)
	copy(m.cands[pos+1:end+1], m.cands[pos:end])
	m.cands[pos] = t
	if m.nc < maxCandidates {
		m.nc++
	}
}

// outranks reports whether a strictly precedes b: full patterns before
// prefixes; among full patterns more literal segments first; among prefixes
// more segments, then more literal segments, first.
func outranks[T any](a, b *terminal[T]) bool {
	if a.prefix != b.prefix {
		return !a.prefix
	}
	if a.prefix && a.segs != b.segs {
		return a.segs > b.segs
	}
	return a.lits > b.lits
}

func (r *route[T]) headersMatch(h http.Header) bool {
	for _, want := range r.headers {
		if !slices.Contains(h[want.k], want.v) {
			return false
		}
	}
	return true
}

func (r *route[T]) queryMatch(raw string) bool {
	for _, want := range r.query {
		if !queryHas(raw, want.k, want.v) {
			return false
		}
	}
	return true
}

// queryHas reports whether the raw query has key=value (after decoding,
// '+' as space) without allocating.
func queryHas(raw, key, value string) bool {
	for raw != "" {
		pair := raw
		if i := strings.IndexByte(raw, '&'); i >= 0 {
			pair, raw = raw[:i], raw[i+1:]
		} else {
			raw = ""
		}
		k, v, _ := strings.Cut(pair, "=")
		if unescapedEqual(k, key) && unescapedEqual(v, value) {
			return true
		}
	}
	return false
}

// unescapedEqual reports whether the query component esc decodes to plain.
func unescapedEqual(esc, plain string) bool {
	j := 0
	for i := 0; i < len(esc); i++ {
		c := esc[i]
		switch {
		case c == '+':
			c = ' '
		case c == '%' && i+2 < len(esc) && isHex(esc[i+1]) && isHex(esc[i+2]):
			c = unhex(esc[i+1])<<4 | unhex(esc[i+2])
			i += 2
		}
		if j >= len(plain) || plain[j] != c {
			return false
		}
		j++
	}
	return j == len(plain)
}

// lowerHost writes r's host, without port or trailing dot, lower-cased into
// buf. ok is false when there is no usable host.
func lowerHost(buf *[256]byte, r *http.Request) (host []byte, ok bool) {
	h := r.Host
	if h == "" && r.URL != nil {
		h = r.URL.Host
	}
	if len(h) > 0 && h[0] == '[' {
		if j := strings.IndexByte(h, ']'); j > 0 {
			h = h[:j+1]
		}
	} else if j := strings.LastIndexByte(h, ':'); j >= 0 {
		h = h[:j]
	}
	h = strings.TrimSuffix(h, ".")
	if h == "" || len(h) > len(buf) {
		return nil, false
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		buf[i] = c
	}
	return buf[:len(h)], true
}

// restAfter returns the escaped path after its first n segments, without
// the leading '/'.
func restAfter(path string, n int) string {
	if n == 0 {
		return path[1:]
	}
	for i := 1; i < len(path); i++ {
		if path[i] == '/' {
			n--
			if n == 0 {
				return path[i+1:]
			}
		}
	}
	return ""
}
