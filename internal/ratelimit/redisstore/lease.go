package redisstore

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/portico-gw/portico/internal/ratelimit"
	"github.com/portico-gw/portico/internal/ratelimit/algo"
)

// Lease tuning. A lease lives at most min(window/10, MaxLeaseTTL) (for
// buckets the window is the time to refill the burst) and never past the
// end of the window it was taken in, so quota of one window is never spent
// in the next.
const (
	MaxLeaseTTL = 250 * time.Millisecond
	// minLeaseLimitPerNode: a policy whose limit is below 8 units per live
	// node is decided exactly; its batches would be single units anyway.
	minLeaseLimitPerNode = 8
	// maxLeaseSubjects bounds the remembered leases per shard; beyond it,
	// lapsed ones are swept.
	maxLeaseSubjects = 1 << 14
	leaseShards      = 64
)

// LeaseStore is a ratelimit.Store that decides fixed windows, sliding
// counters and buckets from quota leased in batches from a Store, so a hot
// key costs one script call per batch rather than one per request.
//
// The script grants g = min(max(k, cost), room) units, k = clamp(want, 1,
// room/(4*nodes)), where want is this node's recent rate times the lease
// life: batches track the local rate while quota is plentiful and shrink to
// single units as it runs out. A lease lapses when used up or at its expiry,
// measured on the local monotonic clock from the moment the request left
// (earlier than Redis's own now, so a lease never outlives its window).
// Since every granted unit was counted in Redis first, the fleet never
// admits more than an exact decision would; units stranded in lapsed leases
// are the only error, and they under-admit.
//
// Sliding logs, leaky buckets with max_delay, peeks (cost 0) and policies
// with a limit below 8 units per node are decided exactly through the Store.
// A rejection from Redis is remembered per policy (a negative cache) for its
// RetryAfter, so a throttled hot key costs no round trips either; the cache
// can only reject, never admit.
type LeaseStore struct {
	s      *Store
	nodes  func() int
	clock  func() int64 // local monotonic µs
	shards [leaseShards]leaseShard
}

var _ ratelimit.Store = (*LeaseStore)(nil)

type leaseShard struct {
	mu sync.Mutex
	m  map[string][]*lease
}

// lease is one node's batch of one policy's quota for one subject.
type lease struct {
	policy string

	mu       sync.Mutex
	params   algo.Params
	gen      uint64 // bumped at each grant, so a give-back never reaches a newer lease
	tokens   int64
	back     int64 // unspent units to give back with the next grant call
	window   int64 // the window start the current lease belongs to
	expires  int64 // local µs
	localAt  int64 // local µs when the granting call was sent
	redisAt  int64 // the script's now for that call
	last     algo.Decision
	fetching chan struct{} // non-nil while a grant is being fetched

	// demand since the last grant, for the next batch size
	used    int64
	grantAt int64

	// negative cache: requests of at least deniedCost are rejected locally
	// until deniedUntil
	deniedUntil int64
	deniedCost  int64
	deniedDec   algo.Decision
}

// NewLeaseStore wraps s for lease mode. nodes reports the live fleet size
// (Store.Nodes; 0 or less counts as 1).
func NewLeaseStore(s *Store, nodes func() int) *LeaseStore {
	start := time.Now()
	l := &LeaseStore{s: s, nodes: nodes, clock: func() int64 { return time.Since(start).Microseconds() }}
	for i := range l.shards {
		l.shards[i].m = make(map[string][]*lease)
	}
	return l
}

// Decide implements ratelimit.Store.
func (l *LeaseStore) Decide(ctx context.Context, subject string, checks []ratelimit.Check, out []algo.Decision) error {
	_, err := l.decide(ctx, subject, checks, out)
	return err
}

func (l *LeaseStore) fleet() int {
	n := 1
	if l.nodes != nil {
		n = max(l.nodes(), 1)
	}
	return n
}

// Refund implements ratelimit.Store. A leased unit goes back into this
// node's lease while it lives (its quota was taken from Redis with the
// batch); units of exactly decided checks go back to Redis.
func (l *LeaseStore) Refund(ctx context.Context, subject string, checks []ratelimit.Check) error {
	nodes := l.fleet()
	now := l.clock()
	var exact []ratelimit.Check
	for i := range checks {
		c := &checks[i]
		if !leasable(c, nodes) {
			if c.Cost > 0 {
				exact = append(exact, *c)
			}
			continue
		}
		ls := l.get(subject, c.Policy, now)
		ls.mu.Lock()
		if ls.params == c.Params && now < ls.expires {
			ls.tokens += c.Cost
		}
		ls.mu.Unlock()
	}
	if len(exact) == 0 {
		return nil
	}
	return l.s.Refund(ctx, subject, exact)
}

// leasable reports whether c may be decided from a lease.
func leasable(c *ratelimit.Check, nodes int) bool {
	p := &c.Params
	switch {
	case c.Cost <= 0:
		return false
	case p.Kind == algo.SlidingWindowLog:
		return false
	case p.Kind == algo.LeakyBucket && p.MaxDelay > 0:
		return false
	case p.Limit < minLeaseLimitPerNode*int64(nodes):
		return false
	}
	return true
}

// leaseTTL is min(window/10, MaxLeaseTTL) in µs, at least 1.
func leaseTTL(p *algo.Params) int64 {
	w := p.Window
	if p.Kind == algo.TokenBucket || p.Kind == algo.LeakyBucket {
		w = p.Limit * p.Window
	}
	return max(min(w/10, MaxLeaseTTL.Microseconds()), 1)
}

// get returns the lease of (subject, policy), creating it.
func (l *LeaseStore) get(subject, policy string, now int64) *lease {
	sh := &l.shards[fnv32(subject)%leaseShards]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	for _, ls := range sh.m[subject] {
		if ls.policy == policy {
			return ls
		}
	}
	if len(sh.m) >= maxLeaseSubjects {
		sh.sweep(now)
	}
	// subject may live in the caller's reused buffer: keep a copy.
	ls := &lease{policy: strings.Clone(policy)}
	if _, ok := sh.m[subject]; !ok {
		subject = strings.Clone(subject)
	}
	sh.m[subject] = append(sh.m[subject], ls)
	return ls
}

// sweep drops subjects whose leases have all lapsed and hold no negative
// cache entry.
func (sh *leaseShard) sweep(now int64) {
	for subj, ls := range sh.m {
		idle := true
		for _, x := range ls {
			x.mu.Lock()
			if x.fetching != nil || now < x.expires || now < x.deniedUntil {
				idle = false
			}
			x.mu.Unlock()
		}
		if idle {
			delete(sh.m, subj)
		}
	}
}

func fnv32(s string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(s); i++ {
		h ^= uint32(s[i])
		h *= 16777619
	}
	return h
}

// take outcomes
const (
	takeOK     = iota // taken from the lease
	takeDenied        // rejected by the negative cache
	takeFetch         // needs a grant (this caller fetches)
	takeWait          // another caller is fetching; wait on the channel
)

// take tries to spend cost from the lease at local time now.
func (ls *lease) take(p algo.Params, cost, now int64) (int, uint64, chan struct{}) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if ls.params != p {
		// A reload changed the numbers: what this lease holds was granted
		// under the old ones (and a bucket's units given back under new
		// ones could be worth more time than they took).
		ls.params, ls.tokens, ls.back, ls.expires, ls.deniedUntil = p, 0, 0, 0, 0
	}
	if now < ls.deniedUntil && cost >= ls.deniedCost {
		return takeDenied, 0, nil
	}
	if ls.tokens >= cost && now < ls.expires {
		ls.tokens -= cost
		ls.used += cost
		return takeOK, ls.gen, nil
	}
	if ls.fetching != nil {
		return takeWait, 0, ls.fetching
	}
	// What is left (lapsed, or too little for cost) goes back with the
	// next grant's call, added to what a fetch given up before its call
	// (to wait for another lease) left there.
	ls.back += ls.tokens
	ls.tokens = 0
	ls.fetching = make(chan struct{})
	return takeFetch, 0, nil
}

// giveBack returns cost to the lease it was taken from, if that lease is
// still the current one.
func (ls *lease) giveBack(gen uint64, cost int64) {
	ls.mu.Lock()
	if ls.gen == gen {
		ls.tokens += cost
		ls.used -= cost
	}
	ls.mu.Unlock()
}

// want is the batch to ask for: the local rate since the last grant times
// the lease life (at least cost).
func (ls *lease) want(cost, ttl, now int64) int64 {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	used := ls.used + cost
	if ls.grantAt == 0 {
		return cost
	}
	// Half the units the recent rate would spend in a lease life: a lease
	// is then normally used up at mid-life, so few units lapse when the
	// rate dips, for twice the calls of a full-life batch.
	elapsed := max(now-ls.grantAt, 1)
	return max(used*ttl/elapsed/2, cost)
}

// decision is the local view: the quota left at the grant plus what this
// lease still holds, the reset counted down on the local clock.
func (ls *lease) decision(now int64) algo.Decision {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	d := ls.last
	d.Remaining += ls.tokens
	d.ResetAfter = max(d.ResetAfter-(now-ls.localAt), 0)
	return d
}

// redisTime maps a local instant to the Redis clock of the last grant. It
// overestimates by at most the grant's round trip, and stays below the
// lease's Redis expiry while the lease is live.
func (ls *lease) redisTime(now int64) int64 {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	return ls.redisAt + now - ls.localAt
}

// decide returns the Redis time of the decision (for the accuracy oracle):
// the script's now, or its estimate for a local one.
func (l *LeaseStore) decide(ctx context.Context, subject string, checks []ratelimit.Check, out []algo.Decision) (int64, error) {
	nodes := l.fleet()
	var (
		leased []int // indexes of leasable checks
		exact  []int
	)
	for i := range checks {
		if leasable(&checks[i], nodes) {
			leased = append(leased, i)
		} else {
			exact = append(exact, i)
		}
	}
	if len(leased) == 0 {
		return l.s.exec(ctx, opDecide, subject, checks, nil, out, nil, noNow)
	}

	leases := make([]*lease, len(checks))
	gens := make([]uint64, len(checks))
	taken := make([]bool, len(checks))
	giveBackAll := func() {
		for _, i := range leased {
			if taken[i] {
				leases[i].giveBack(gens[i], checks[i].Cost)
				taken[i] = false
			}
		}
	}
	var at int64
	now := l.clock()
	for _, i := range leased {
		leases[i] = l.get(subject, checks[i].Policy, now)
	}
	for {
		now = l.clock()
		var fetch []int
		var wait chan struct{}
		denied := -1
		for _, i := range leased {
			if taken[i] {
				continue
			}
			res, gen, ch := leases[i].take(checks[i].Params, checks[i].Cost, now)
			switch res {
			case takeOK:
				taken[i], gens[i] = true, gen
			case takeDenied:
				denied = i
			case takeFetch:
				fetch = append(fetch, i)
			case takeWait:
				wait = ch
			}
		}
		if denied >= 0 || (wait != nil && len(fetch) > 0) {
			// Release what this request holds before rejecting, or before
			// waiting on another caller's grant (holding a fetch slot while
			// waiting on another could deadlock two multi-policy requests).
			giveBackAll()
			l.endFetch(leases, fetch)
			if denied >= 0 {
				return l.rejectLocal(leases, checks, out, denied, now), nil
			}
		}
		if wait != nil {
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				giveBackAll()
				return 0, ctx.Err()
			}
		}
		if len(fetch) > 0 {
			ok, t, err := l.fetch(ctx, subject, checks, leases, gens, fetch, nodes, out, now)
			if err != nil || !ok {
				giveBackAll()
				if err == nil {
					// out holds the script's decisions for the fetched
					// checks; the others admitted but are not consumed.
					for _, i := range leased {
						if !contains(fetch, i) {
							out[i] = leases[i].decision(now)
						}
					}
					// The exact checks were never asked: they rejected
					// nothing (as in rejectLocal), so the 429 must not
					// name them.
					for _, i := range exact {
						out[i] = algo.Decision{Allowed: true}
					}
				}
				return t, err
			}
			for _, i := range fetch {
				taken[i] = true
			}
			at = t
		}
		break
	}
	for _, i := range leased {
		if at == 0 {
			at = leases[i].redisTime(now)
		}
		out[i] = leases[i].decision(now)
	}
	if len(exact) > 0 {
		sub := make([]ratelimit.Check, len(exact))
		subOut := make([]algo.Decision, len(exact))
		for j, i := range exact {
			sub[j] = checks[i]
		}
		t, err := l.s.exec(ctx, opDecide, subject, sub, nil, subOut, nil, noNow)
		if err != nil {
			giveBackAll()
			return 0, err
		}
		all := true
		for j, i := range exact {
			out[i] = subOut[j]
			all = all && subOut[j].Allowed
		}
		if !all {
			giveBackAll()
		}
		at = t
	}
	return at, nil
}

func contains(xs []int, x int) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

// rejectLocal fills out for a request the negative cache rejected.
func (l *LeaseStore) rejectLocal(leases []*lease, checks []ratelimit.Check, out []algo.Decision, denied int, now int64) int64 {
	for i := range checks {
		out[i] = algo.Decision{}
		if leases[i] != nil {
			out[i] = leases[i].decision(now)
		}
		// Only the denied check rejected: a lease never granted here has a
		// zero (rejecting) last decision, and the 429 must not name it.
		out[i].Allowed = true
	}
	ls := leases[denied]
	ls.mu.Lock()
	d := ls.deniedDec
	d.RetryAfter = max(ls.deniedUntil-now, 1)
	at := ls.redisAt + now - ls.localAt
	ls.mu.Unlock()
	out[denied] = d
	return at
}

// fetch asks the script for grants for the checks in idx (all-or-nothing),
// installs them, and spends this request's cost from each.
func (l *LeaseStore) fetch(ctx context.Context, subject string, checks []ratelimit.Check, leases []*lease,
	gens []uint64, idx []int, nodes int, out []algo.Decision, sent int64) (bool, int64, error) {
	sub := make([]ratelimit.Check, len(idx))
	reqs := make([]leaseReq, len(idx))
	for j, i := range idx {
		sub[j] = checks[i]
		ttl := leaseTTL(&checks[i].Params)
		ls := leases[i]
		ls.mu.Lock()
		back, backWin := ls.back, ls.window
		ls.back = 0
		ls.mu.Unlock()
		reqs[j] = leaseReq{want: ls.want(checks[i].Cost, ttl, sent), ttl: ttl, back: back, backWin: backWin}
	}
	dec := make([]algo.Decision, len(idx))
	grants := make([]grant, len(idx))
	at, err := l.s.execNodes(ctx, opLease, subject, sub, reqs, dec, grants, noNow, nodes)
	if err != nil {
		l.endFetch(leases, idx)
		return false, 0, err
	}
	ok := true
	for j := range idx {
		ok = ok && grants[j].granted > 0
	}
	for j, i := range idx {
		out[i] = dec[j]
	}
	if !ok {
		l.endFetch(leases, idx)
		for j, i := range idx {
			if !dec[j].Allowed {
				ls := leases[i]
				ls.mu.Lock()
				if dec[j].RetryAfter > 0 {
					// Counted from when the call left, not when the reply
					// came: Redis's now lies between the two, so this ends
					// no later than the true retry instant and rejects
					// nothing an exact decision would admit because of the
					// round trip. (The cache only rejects; whatever it lets
					// through, Redis decides.)
					ls.deniedUntil = sent + dec[j].RetryAfter
					ls.deniedCost = checks[i].Cost
					ls.deniedDec = dec[j]
					ls.redisAt, ls.localAt = at, sent
				}
				ls.mu.Unlock()
			}
		}
		return false, at, nil
	}
	for j, i := range idx {
		ls := leases[i]
		ls.mu.Lock()
		ls.gen++
		gens[i] = ls.gen
		ls.tokens = grants[j].granted - checks[i].Cost
		ls.expires = sent + grants[j].expires
		ls.window = grants[j].window
		ls.localAt, ls.redisAt = sent, at
		ls.last = dec[j]
		ls.used, ls.grantAt = checks[i].Cost, sent
		ls.deniedUntil = 0
		ls.mu.Unlock()
	}
	l.endFetch(leases, idx)
	return true, at, nil
}

// endFetch clears the fetch marks of idx and wakes the waiters.
func (l *LeaseStore) endFetch(leases []*lease, idx []int) {
	for _, i := range idx {
		ls := leases[i]
		ls.mu.Lock()
		if ls.fetching != nil {
			close(ls.fetching)
			ls.fetching = nil
		}
		ls.mu.Unlock()
	}
}
