// Package router matches a request to one of a fixed set of routes by host,
// path, method, headers and query, and cleans request paths before matching.
//
// A Router is compiled once from a list of entries and is then immutable and
// safe for concurrent use; matching allocates nothing for paths without
// percent-escapes. The precedence rules (DESIGN.md section 4, "Routing
// precedence"):
//
//   - Host: exact (case-insensitive, port ignored, trailing dot ignored)
//     before "*.suffix" (longest suffix first; any depth of subdomain, never
//     the apex) before routes without a host. A tier whose routes do not
//     match falls through to the next.
//   - Path: exact before "{param}" patterns (more literal segments first; at
//     equal counts, the pattern with the earlier literal) before prefixes
//     "/x/*" (more segments first). "/api/*" matches "/api", "/api/" and
//     "/api/x"; the rest of the path is the parameter "*". A trailing slash
//     is significant: "/a/" and "/a" are different paths.
//   - Then the method (GET also accepts HEAD unless a route with the same
//     pattern lists HEAD itself; a CORS preflight, OPTIONS with
//     Origin and Access-Control-Request-Method, is matched under the method
//     it asks for, so the route's CORS stage can answer it), then headers
//     (exact value, case-insensitive name) and query parameters (exact
//     value). A route whose conditions fail is skipped and the next
//     candidate tried, so a route with headers {X-Version: "2"} shadows a
//     general one only for requests carrying that header.
//   - Equal candidates keep their order in the entry list.
//
// When no route matches but some route matched host and path under another
// method, the result is MethodNotAllowed with the Allow header value.
//
// Paths are matched segment by segment on the escaped form, each segment
// decoded, so "/api/a%2Fb" has the two segments "api" and "a/b" and never
// matches "/api/a/b" or "/api/{x}/{y}".
package router

import (
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// Spec is what one route matches. Host is "" (any host), an exact name or
// "*.suffix". Path is a pattern: literal segments, whole-segment "{name}"
// parameters, and an optional final "/*" making it a prefix. Patterns are
// written decoded (a '%' in a pattern is a literal percent sign). Methods
// empty means any method but CONNECT and TRACE, which a route takes only
// when it lists them. Headers and Query map names to exact values.
type Spec struct {
	Host    string
	Path    string
	Methods []string
	Headers map[string]string
	Query   map[string]string
}

// Entry is one route: what it matches and the value Match returns for it.
type Entry[T any] struct {
	Spec  Spec
	Value T
}

// Status is the outcome of Match.
type Status uint8

// The outcomes of Match.
const (
	NotFound Status = iota
	Found
	MethodNotAllowed
)

func (s Status) String() string {
	switch s {
	case Found:
		return "found"
	case MethodNotAllowed:
		return "method not allowed"
	}
	return "not found"
}

// Result says how Match ended. Allow is set for MethodNotAllowed: the value
// of the Allow header to send with the 405.
type Result struct {
	Status Status
	Allow  string
}

// maxSegments bounds the segments of a pattern. Deeper request paths can
// still match prefixes.
const maxSegments = 32

// maxCandidates is how many path candidates per host tier are kept without
// allocating; a path that more patterns match is matched on the heap.
const maxCandidates = 16

// Router matches requests against compiled routes.
type Router[T any] struct {
	exact    map[string]*node[T] // lower-case host -> path trie
	wildcard map[string]*node[T] // lower-case suffix of "*.suffix" -> path trie
	anyHost  *node[T]
	// exactLens and wildLens have bit n set when some key has length n
	// (lengths of 63 and more share bit 63), so most misses skip hashing.
	exactLens, wildLens uint64
	// maxDepth is the deepest pattern; only that many segments are split.
	maxDepth int
}

// node is one segment position of a path trie. A node's depth equals the
// index of the path segment it consumes, so a walk visits each node at most
// once.
type node[T any] struct {
	lit map[string]*node[T] // canonical literal segment -> child
	// edges mirrors lit when it is small: comparing a few strings is
	// cheaper than hashing one.
	edges  []edge[T]
	param  *node[T]     // a "{name}" segment
	full   *terminal[T] // patterns ending here
	prefix *terminal[T] // patterns ending here with "/*"
}

// terminal holds the routes of one pattern shape, in entry order.
type edge[T any] struct {
	seg  string
	next *node[T]
}

// maxEdges is the most literal children searched linearly.
const maxEdges = 8

type terminal[T any] struct {
	routes []*route[T]
	lits   int // literal segments
	segs   int // all segments (before "*")
	prefix bool
	// anyMethod: some route here lists no methods (see route).
	anyMethod bool
	mask      uint16
	other     []string
	allow     string
}

type route[T any] struct {
	value T
	// anyMethod: the route lists no methods. It then takes every method
	// but CONNECT and TRACE (mask holds the other standard ones): neither
	// is anything a proxied API expects, TRACE echoes the request back
	// (cross-site tracing) and CONNECT asks for a tunnel. As in nginx, a
	// route that wants them lists them.
	anyMethod bool
	mask      uint16
	// impliedHead: HEAD is in mask only because GET is; a route at the
	// same path that lists HEAD itself takes HEAD requests instead.
	impliedHead bool
	other       []string // non-standard methods
	headers     []kv     // canonical header name -> value
	query       []kv
	params      []paramRef
}

type kv struct{ k, v string }

type paramRef struct {
	seg  int
	name string
}

// Standard methods get one bit each; allowOrder is the order of Allow.
var allowOrder = [...]string{
	http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
	http.MethodDelete, http.MethodOptions, http.MethodConnect, http.MethodTrace,
}

// anyMethodMask is what a route that lists no methods takes of the
// standard ones: all but CONNECT and TRACE.
var anyMethodMask = func() uint16 {
	var mask uint16
	for _, m := range allowOrder {
		mask |= methodBit(m)
	}
	return mask &^ (methodBit(http.MethodConnect) | methodBit(http.MethodTrace))
}()

func methodBit(m string) uint16 {
	switch m {
	case http.MethodGet:
		return 1 << 0
	case http.MethodHead:
		return 1 << 1
	case http.MethodPost:
		return 1 << 2
	case http.MethodPut:
		return 1 << 3
	case http.MethodPatch:
		return 1 << 4
	case http.MethodDelete:
		return 1 << 5
	case http.MethodOptions:
		return 1 << 6
	case http.MethodConnect:
		return 1 << 7
	case http.MethodTrace:
		return 1 << 8
	}
	return 0
}

// New compiles entries into a Router. It returns an error naming the entry
// for invalid hosts or patterns; it never panics on any input.
func New[T any](entries []Entry[T]) (*Router[T], error) {
	rt := &Router[T]{
		exact:    map[string]*node[T]{},
		wildcard: map[string]*node[T]{},
		anyHost:  &node[T]{},
	}
	for i := range entries {
		if err := rt.add(&entries[i]); err != nil {
			return nil, fmt.Errorf("route %d (host %q, path %q): %w", i, entries[i].Spec.Host, entries[i].Spec.Path, err)
		}
	}
	rt.finish(rt.anyHost)
	for _, n := range rt.exact {
		rt.finish(n)
	}
	for _, n := range rt.wildcard {
		rt.finish(n)
	}
	return rt, nil
}

func (rt *Router[T]) add(e *Entry[T]) error {
	root, err := rt.hostRoot(e.Spec.Host)
	if err != nil {
		return err
	}
	p, err := parsePattern(e.Spec.Path)
	if err != nil {
		return err
	}
	rt.maxDepth = max(rt.maxDepth, len(p.segs))
	r := &route[T]{value: e.Value, anyMethod: len(e.Spec.Methods) == 0}
	if r.anyMethod {
		r.mask = anyMethodMask
	}
	for _, m := range e.Spec.Methods {
		if !httpguts.ValidHeaderFieldName(m) {
			return fmt.Errorf("invalid method %q", m)
		}
		m = strings.ToUpper(m)
		if bit := methodBit(m); bit != 0 {
			r.mask |= bit
		} else if !slices.Contains(r.other, m) {
			r.other = append(r.other, m)
		}
	}
	if r.mask&methodBit(http.MethodGet) != 0 && r.mask&methodBit(http.MethodHead) == 0 {
		r.mask |= methodBit(http.MethodHead)
		r.impliedHead = true
	}
	for _, name := range sortedKeys(e.Spec.Headers) {
		if !httpguts.ValidHeaderFieldName(name) {
			return fmt.Errorf("invalid header name %q", name)
		}
		r.headers = append(r.headers, kv{http.CanonicalHeaderKey(name), e.Spec.Headers[name]})
	}
	for _, name := range sortedKeys(e.Spec.Query) {
		if name == "" {
			return fmt.Errorf("empty query parameter name")
		}
		r.query = append(r.query, kv{name, e.Spec.Query[name]})
	}

	n := root
	for i, s := range p.segs {
		if s.param != "" {
			r.params = append(r.params, paramRef{seg: i, name: s.param})
			if n.param == nil {
				n.param = &node[T]{}
			}
			n = n.param
			continue
		}
		if n.lit == nil {
			n.lit = map[string]*node[T]{}
		}
		c := n.lit[s.lit]
		if c == nil {
			c = &node[T]{}
			n.lit[s.lit] = c
		}
		n = c
	}
	slot := &n.full
	if p.prefix {
		slot = &n.prefix
	}
	if *slot == nil {
		*slot = &terminal[T]{lits: p.lits, segs: len(p.segs), prefix: p.prefix}
	}
	(*slot).routes = append((*slot).routes, r)
	return nil
}

// hostRoot returns the trie for host, creating it.
func (rt *Router[T]) hostRoot(host string) (*node[T], error) {
	if host == "" {
		return rt.anyHost, nil
	}
	h := strings.TrimSuffix(strings.ToLower(host), ".")
	m, lens := rt.exact, &rt.exactLens
	if suffix, ok := strings.CutPrefix(h, "*."); ok {
		h, m, lens = suffix, rt.wildcard, &rt.wildLens
	}
	if h == "" || !validHost(h) {
		return nil, fmt.Errorf("invalid host %q (want a name, or *.suffix)", host)
	}
	n := m[h]
	if n == nil {
		n = &node[T]{}
		m[h] = n
	}
	*lens |= lenBit(len(h))
	return n, nil
}

// finish precomputes each terminal's Allow value and the small edge lists.
func (rt *Router[T]) finish(n *node[T]) {
	if len(n.lit) <= maxEdges {
		for _, k := range slices.Sorted(maps.Keys(n.lit)) {
			n.edges = append(n.edges, edge[T]{seg: k, next: n.lit[k]})
		}
		n.lit = nil
	}
	for _, t := range []*terminal[T]{n.full, n.prefix} {
		if t == nil {
			continue
		}
		explicitHead := false
		for _, r := range t.routes {
			explicitHead = explicitHead || (!r.anyMethod && !r.impliedHead && r.mask&methodBit(http.MethodHead) != 0)
		}
		for _, r := range t.routes {
			if explicitHead && r.impliedHead {
				r.mask &^= methodBit(http.MethodHead)
			}
			t.anyMethod = t.anyMethod || r.anyMethod
			t.mask |= r.mask
			for _, m := range r.other {
				if !slices.Contains(t.other, m) {
					t.other = append(t.other, m)
				}
			}
		}
		slices.Sort(t.other)
		t.allow = allowString(t.mask, t.other)
	}
	for _, c := range n.lit {
		rt.finish(c)
	}
	for _, e := range n.edges {
		rt.finish(e.next)
	}
	if n.param != nil {
		rt.finish(n.param)
	}
}

func lenBit(n int) uint64 { return 1 << min(n, 63) }

func allowString(mask uint16, other []string) string {
	var parts []string
	for _, m := range allowOrder {
		if mask&methodBit(m) != 0 {
			parts = append(parts, m)
		}
	}
	parts = append(parts, other...)
	return strings.Join(parts, ", ")
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func validHost(h string) bool {
	if len(h) > 253 {
		return false
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		switch {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-', c == '.', c == '_':
		case c == '[' || c == ']' || c == ':': // IPv6 literal
		default:
			return false
		}
	}
	if strings.ContainsAny(h, "[]:") && !(h[0] == '[' && h[len(h)-1] == ']') {
		return false // a port, or a malformed IPv6 literal
	}
	return !strings.Contains(h, "..")
}
