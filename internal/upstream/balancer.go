package upstream

import (
	"errors"
	"math/bits"
	"math/rand/v2"
	"net/http"
	"net/textproto"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/portico-gw/portico/internal/reqctx"
)

// balancer picks one target index among those c allows, or -1 when none is
// allowed. Implementations are built per Pool (per config) and must be safe
// for concurrent use and allocation-free.
type balancer interface {
	pick(req *http.Request, c pickCtx) int
}

var (
	_ balancer = (*roundRobin)(nil)
	_ balancer = (*leastRequest)(nil)
	_ balancer = (*weightedRandom)(nil)
	_ balancer = (*ringHash)(nil)
)

// pickCtx says which targets may be picked. It is passed by value so that
// calling through the balancer interface does not make it escape.
type pickCtx struct {
	targets      []*target
	now          int64
	tried        uint64 // bit i: target i was tried by this request (i < 64)
	ignoreHealth bool   // panic mode: all targets down, all_unhealthy: ignore
	// ignoreEjection: every healthy target is ejected (others went down
	// after the ejections); a failing target beats none.
	ignoreEjection bool
}

func (c pickCtx) ok(i int) bool {
	if i < 64 && c.tried&(1<<uint(i)) != 0 {
		return false
	}
	if c.ignoreHealth {
		return true
	}
	t := c.targets[i]
	return t.healthy.Load() && (t.ejectedUntil.Load() <= c.now || c.ignoreEjection)
}

// newBalancer is the one place a balance name becomes an implementation.
func newBalancer(name string, weights []int, hk hashKey, urls []string) balancer {
	switch name {
	case "least_request":
		return newLeastRequest(weights)
	case "random":
		return &weightedRandom{weights: weights}
	case "consistent_hash":
		return newRingHash(weights, urls, hk)
	}
	return &roundRobin{weights: weights, current: make([]int, len(weights))}
}

// roundRobin is nginx's smooth weighted round robin: each pick adds every
// eligible target's weight to its current value, takes the largest and
// subtracts the total from it. Weights 5,1,1 give a a b a c a a instead of
// a a a a a b c, and an ineligible target simply sits out.
type roundRobin struct {
	mu      sync.Mutex
	weights []int
	current []int
}

func (b *roundRobin) pick(_ *http.Request, c pickCtx) int {
	if len(b.weights) == 1 {
		if c.ok(0) {
			return 0
		}
		return -1
	}
	b.mu.Lock()
	best, total := -1, 0
	for i, w := range b.weights {
		if !c.ok(i) {
			continue
		}
		b.current[i] += w
		total += w
		if best < 0 || b.current[i] > b.current[best] {
			best = i
		}
	}
	if best >= 0 {
		b.current[best] -= total
	}
	b.mu.Unlock()
	return best
}

// leastRequest draws two distinct targets at random, each with probability
// proportional to its weight, and takes the one with fewer requests in
// flight ("power of two choices"; a tie keeps the first draw). Close to the
// least loaded without a global scan or a herd on one target; when nothing
// is in flight the shares follow the weights exactly.
type leastRequest struct {
	weights []int
	cum     []int // cum[i] = weights[0] + ... + weights[i]
}

func newLeastRequest(weights []int) *leastRequest {
	b := &leastRequest{weights: weights, cum: make([]int, len(weights))}
	sum := 0
	for i, w := range weights {
		sum += w
		b.cum[i] = sum
	}
	return b
}

// draw returns target i with probability weights[i]/total.
func (b *leastRequest) draw() int {
	r := rand.IntN(b.cum[len(b.cum)-1])
	lo, hi := 0, len(b.cum)-1
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if b.cum[m] > r {
			hi = m
		} else {
			lo = m + 1
		}
	}
	return lo
}

// drawTries bounds the redraws when draws hit ineligible targets before
// falling back to a weighted draw among the eligible ones.
const drawTries = 4

func (b *leastRequest) pick(_ *http.Request, c pickCtx) int {
	n := len(b.weights)
	if n == 1 {
		if c.ok(0) {
			return 0
		}
		return -1
	}
	x := -1
	for range drawTries {
		if i := b.draw(); c.ok(i) {
			x = i
			break
		}
	}
	if x < 0 {
		if x = b.among(c, -1); x < 0 {
			return -1
		}
	}
	y := -1
	for range drawTries {
		if i := b.draw(); i != x && c.ok(i) {
			y = i
			break
		}
	}
	if y < 0 {
		if y = b.among(c, x); y < 0 {
			return x
		}
	}
	if c.targets[y].inflight.Load() < c.targets[x].inflight.Load() {
		return y
	}
	return x
}

// among draws an eligible target other than skip with probability
// proportional to its weight, or returns -1 when there is none: for when
// random draws keep hitting ineligible targets. Each of the two draws of
// pick keeps its distribution whichever way it was made, so an idle pool's
// shares follow the weights however many targets are out (a scan for the
// least loaded would send all of an idle pool's traffic to one target).
func (b *leastRequest) among(c pickCtx, skip int) int { return weightedDraw(b.weights, c, skip) }

// weightedRandom picks each eligible target with probability weight/total.
type weightedRandom struct {
	weights []int
}

func (b *weightedRandom) pick(_ *http.Request, c pickCtx) int { return weightedDraw(b.weights, c, -1) }

// weightedDraw draws a target c allows, other than skip, with probability
// proportional to its weight; -1 when there is none.
func weightedDraw(weights []int, c pickCtx, skip int) int {
	total := 0
	for i, w := range weights {
		if i != skip && c.ok(i) {
			total += w
		}
	}
	if total == 0 {
		return -1
	}
	r := rand.IntN(total)
	last := -1
	for i, w := range weights {
		if i == skip || !c.ok(i) {
			continue
		}
		if r < w {
			return i
		}
		r -= w
		last = i
	}
	return last // a target that turned ineligible since the sum
}

// hashKey says what consistent hashing hashes.
type hashKey struct {
	kind string // "header", "claim" or "ip"
	name string // canonical header name or claim name
}

func parseHashKey(s string) (hashKey, error) {
	kind, name, _ := strings.Cut(s, ":")
	switch kind {
	case "ip":
		if name != "" {
			return hashKey{}, errors.New(`"ip" takes no name`)
		}
		return hashKey{kind: "ip"}, nil
	case "header":
		if name == "" {
			return hashKey{}, errors.New(`"header:" needs a header name`)
		}
		return hashKey{kind: "header", name: textproto.CanonicalMIMEHeaderKey(name)}, nil
	case "claim":
		if name == "" {
			return hashKey{}, errors.New(`"claim:" needs a claim name`)
		}
		return hashKey{kind: "claim", name: name}, nil
	}
	return hashKey{}, errors.New(`must be header:NAME, claim:NAME or ip`)
}

// ringHash places vnodesPerWeight points per unit of weight for each target
// on a 64-bit ring; a key goes to the owner of the first point at or after
// its hash, or to the next eligible owner clockwise. When a target leaves
// (or is down), only the keys on its arcs move; the rest keep their target.
// Hashes are FNV-1a with a 64-bit finaliser, fixed across processes, so every
// gateway node maps a key to the same target.
type ringHash struct {
	points []uint64
	owners []int32
	key    hashKey
	random weightedRandom // for requests that lack the key
}

const vnodesPerWeight = 100

func newRingHash(weights []int, urls []string, key hashKey) *ringHash {
	type pt struct {
		h     uint64
		owner int32
	}
	var pts []pt
	for i, w := range weights {
		n := min(w*vnodesPerWeight, 100_000)
		for v := range n {
			pts = append(pts, pt{h: hashString(urls[i] + "#" + strconv.Itoa(v)), owner: int32(i)})
		}
	}
	slices.SortFunc(pts, func(a, b pt) int {
		switch {
		case a.h < b.h:
			return -1
		case a.h > b.h:
			return 1
		}
		return int(a.owner - b.owner)
	})
	r := &ringHash{key: key, random: weightedRandom{weights: weights},
		points: make([]uint64, len(pts)), owners: make([]int32, len(pts))}
	for i, p := range pts {
		r.points[i], r.owners[i] = p.h, p.owner
	}
	return r
}

func (b *ringHash) pick(req *http.Request, c pickCtx) int {
	h, ok := b.keyHash(req)
	if !ok {
		return b.random.pick(req, c)
	}
	return b.lookup(h, c)
}

func (b *ringHash) lookup(h uint64, c pickCtx) int {
	n := len(b.points)
	lo, hi := 0, n
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if b.points[m] < h {
			lo = m + 1
		} else {
			hi = m
		}
	}
	var seen uint64 // owners already found ineligible (first 64)
	for k := range n {
		o := int(b.owners[(lo+k)%n])
		if o < 64 && seen&(1<<uint(o)) != 0 {
			continue
		}
		if c.ok(o) {
			return o
		}
		if o < 64 {
			seen |= 1 << uint(o)
			if bits.OnesCount64(seen) == len(c.targets) {
				return -1
			}
		}
	}
	return -1
}

func (b *ringHash) keyHash(req *http.Request) (uint64, bool) {
	switch b.key.kind {
	case "header":
		v := req.Header[b.key.name]
		if len(v) == 0 || v[0] == "" {
			return 0, false
		}
		return hashString(v[0]), true
	case "claim":
		v, ok := reqctx.IdentityFrom(req.Context()).Claim(b.key.name)
		if !ok || v == "" {
			return 0, false
		}
		return hashString(v), true
	case "ip":
		in := reqctx.From(req.Context())
		if in == nil || !in.ClientIP.IsValid() {
			return 0, false
		}
		a := in.ClientIP.As16()
		h := uint64(fnvOffset)
		for _, c := range a {
			h ^= uint64(c)
			h *= fnvPrime
		}
		return mix64(h), true
	}
	return 0, false
}

const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

func hashString(s string) uint64 {
	h := uint64(fnvOffset)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= fnvPrime
	}
	return mix64(h)
}

// mix64 is the splitmix64 finaliser: FNV alone spreads similar short
// strings ("a#1", "a#2") poorly over the ring.
func mix64(h uint64) uint64 {
	h ^= h >> 30
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 27
	h *= 0x94d049bb133111eb
	h ^= h >> 31
	return h
}
