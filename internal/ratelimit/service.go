package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/portico-gw/portico/internal/config"
	"github.com/portico-gw/portico/internal/ratelimit/algo"
)

// Deps are the Service's dependencies.
type Deps struct {
	// Logger receives store failures, breaker transitions and shadow
	// rejections; nil discards.
	Logger *slog.Logger
	// Registerer receives portico_ratelimit_decisions_total; nil registers
	// nothing (the counters still count).
	Registerer prometheus.Registerer
	// Now is the clock; nil means a monotonic clock (NewClock(nil)). Tests
	// inject a fake clock; every time the Service reads (store time,
	// negative cache, breaker) comes from it.
	Now func() time.Time
	// Store is the shared store (e.g. redisstore); nil means an in-process
	// Memory store. A store of type redis in the config must be supplied.
	Store Store
	// LeaseStore decides the policies with mode: lease (e.g. a
	// redisstore.LeaseStore over Store). nil: every policy is decided
	// exactly through Store (with the memory store, lease mode has nothing
	// to save and is exact by nature).
	LeaseStore Store
	// Nodes returns the live node count for the `local` fallback; nil (or a
	// result below 1) means rate_limits.expected_nodes.
	Nodes func() int
	// Wait waits d or until ctx ends, for leaky-bucket delays; nil uses a
	// timer. Tests inject it to observe delays without sleeping.
	Wait func(ctx context.Context, d time.Duration) error
	// MaxKeys bounds each memory store (primary when memory, and the local
	// fallback); 0 means DefaultMaxKeys.
	MaxKeys int
}

// Decision labels of portico_ratelimit_decisions_total.
const (
	labelAllowed  = "allowed"
	labelLimited  = "limited"
	labelError    = "error"
	labelFallback = "fallback"
	labelShadow   = "shadow"
)

type failMode uint8

const (
	failLocal failMode = iota + 1
	failOpen
	failClosed
)

type missingMode uint8

const (
	missingDeny missingMode = iota + 1
	missingSkip
	missingShared
)

type headerMode uint8

const (
	headersIETF headerMode = iota + 1
	headersLegacy
	headersNone
)

// policy is one compiled policy of the current config.
type policy struct {
	name      string
	key       *Key
	params    algo.Params
	overrides map[string]algo.Params
	cost      int64
	shadow    bool
	lease     bool // decided through the lease store
	onMissing missingMode
	onError   failMode
	// item is the policy's RateLimit-Policy list member for base params;
	// overrideItems the same per override key.
	item          string
	overrideItems map[string]string
	counters      *policyCounters
	// violatedExtra is the problem.Error.Extra of a 429 that only this
	// policy caused; shared and never written after compile.
	violatedExtra map[string]any
}

type policyCounters struct {
	allowed, limited, errored, fallback, shadow prometheus.Counter
	shadowLog                                   onceASecond
}

// onceASecond lets a log line through at most once a second, so a failing
// store or a busy shadow policy does not turn every request into a line
// (the counters count them all).
type onceASecond struct{ last atomic.Int64 } // µs

// due reports whether a line may be logged at now (µs), and if so counts
// it as logged; of concurrent callers one wins.
func (o *onceASecond) due(now int64) bool {
	last := o.last.Load()
	return now-last >= 1_000_000 && o.last.CompareAndSwap(last, now)
}

// runtime is one applied config: immutable once published.
type runtime struct {
	policies      map[string]*policy
	headers       headerMode
	expectedNodes int
}

// Service is the long-lived rate limiter: stores, breaker, negative cache,
// metrics and the current policies. Reloads call Apply and build new
// middlewares; counters survive because state is keyed by policy name and
// subject, not by config object.
type Service struct {
	log          *slog.Logger
	clock        *Clock
	store        Store
	leaseStore   Store   // nil: lease-mode policies are decided by store
	memory       *Memory // the primary store when it is the in-process one
	local        *Memory // the `local` fallback
	storeTimeout time.Duration
	nodes        func() int
	wait         func(ctx context.Context, d time.Duration) error
	breakers     []*breaker       // one per shard of the shared store
	shardOf      func(string) int // nil with one shard
	neg          *negCache
	decisions    *prometheus.CounterVec
	storeWarn    onceASecond // store failures
	refundWarn   onceASecond // failed refunds

	mu       sync.Mutex // guards counters and serializes Apply
	counters map[string]*policyCounters
	cur      atomic.Pointer[runtime]
}

// NewService builds the Service, registers its metric and applies cfg's
// policies.
func NewService(cfg config.RateLimits, deps Deps) (*Service, error) {
	s := &Service{
		log:      deps.Logger,
		clock:    NewClock(deps.Now),
		nodes:    deps.Nodes,
		wait:     deps.Wait,
		neg:      newNegCache(),
		counters: make(map[string]*policyCounters),
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.wait == nil {
		s.wait = timerWait
	}
	s.breakers = []*breaker{newBreaker(s.clock)}
	s.local = NewMemory(MemoryConfig{MaxKeys: deps.MaxKeys, Clock: s.clock})
	switch {
	case deps.Store != nil:
		s.store = deps.Store
		s.leaseStore = deps.LeaseStore
		if ss, ok := deps.Store.(ShardedStore); ok && ss.Shards() > 1 {
			// The lease store keeps a subject's state on the same key, so
			// the shard of Store is that of the lease store too.
			s.breakers = make([]*breaker, ss.Shards())
			for i := range s.breakers {
				s.breakers[i] = newBreaker(s.clock)
			}
			s.shardOf = ss.Shard
		}
		s.storeTimeout = cfg.Store.Timeout.D()
		if s.storeTimeout <= 0 {
			s.storeTimeout = 20 * time.Millisecond
		}
	case cfg.Store.Type == "" || cfg.Store.Type == "memory":
		s.memory = NewMemory(MemoryConfig{MaxKeys: deps.MaxKeys, Clock: s.clock})
		s.store = s.memory
	default:
		return nil, fmt.Errorf("rate_limits.store: type %q needs a store in Deps.Store", cfg.Store.Type)
	}
	s.decisions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "portico_ratelimit_decisions_total",
		Help: "Rate-limit decisions by policy and outcome (allowed, limited, error, fallback, shadow).",
	}, []string{"policy", "decision"})
	if deps.Registerer != nil {
		if err := deps.Registerer.Register(s.decisions); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return nil, fmt.Errorf("register rate-limit metrics: %w", err)
			}
			s.decisions = are.ExistingCollector.(*prometheus.CounterVec)
		}
	}
	if err := s.Apply(cfg.Policies, cfg); err != nil {
		return nil, err
	}
	return s, nil
}

func timerWait(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Apply installs the policies of a new config: Prepare, then Commit.
// Limits and windows may change; counters are kept by policy name and
// subject, and the new numbers apply to them (no reset: see package algo).
// A policy whose algorithm changed starts from empty state in the memory
// stores. It fails without changing anything when a policy does not
// compile; the error names every bad policy. Middlewares built before
// Apply keep the policies they were built with; the gateway rebuilds them.
func (s *Service) Apply(policies map[string]*config.Policy, defaults config.RateLimits) error {
	p, err := s.Prepare(policies, defaults)
	if err != nil {
		return err
	}
	p.Commit()
	return nil
}

// Plan is a compiled set of policies that is not in force yet. The gateway
// builds a new config's middlewares from it and commits it only once the
// whole config has compiled, so a refused reload changes nothing here.
type Plan struct {
	s  *Service
	rt *runtime
}

// Prepare compiles policies without touching the policies in force (nor
// the decision series: those of a new policy appear at Commit). The error
// names every bad policy.
func (s *Service) Prepare(policies map[string]*config.Policy, defaults config.RateLimits) (*Plan, error) {
	rt := &runtime{policies: make(map[string]*policy, len(policies)), expectedNodes: max(1, defaults.ExpectedNodes)}
	var errs []error
	switch defaults.Headers {
	case "", "ietf":
		rt.headers = headersIETF
	case "legacy":
		rt.headers = headersLegacy
	case "none":
		rt.headers = headersNone
	default:
		errs = append(errs, fmt.Errorf("rate_limits.headers: %q is not ietf, legacy or none", defaults.Headers))
	}
	names := make([]string, 0, len(policies))
	for name := range policies {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		p, err := s.compilePolicy(name, policies[name], defaults)
		if err != nil {
			errs = append(errs, fmt.Errorf("rate_limits.policies.%s: %w", name, err))
			continue
		}
		rt.policies[name] = p
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return &Plan{s: s, rt: rt}, nil
}

// Middleware is Service.Middleware over the plan's policies.
func (p *Plan) Middleware(route string, names []string, phase Phase) (func(http.Handler) http.Handler, error) {
	return p.s.middleware(p.rt, route, names, phase)
}

// Commit puts the plan's policies in force for the middlewares built
// afterwards (those built from the plan already use them) and forgets the
// denials remembered under the old limits.
func (p *Plan) Commit() {
	s := p.s
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, pol := range p.rt.policies {
		pol.counters = s.countersFor(name)
	}
	s.cur.Store(p.rt)
	s.neg.invalidate()
}

func (s *Service) compilePolicy(name string, cp *config.Policy, defaults config.RateLimits) (*policy, error) {
	if cp == nil {
		return nil, fmt.Errorf("empty policy")
	}
	p := &policy{name: name, shadow: cp.Shadow, cost: cp.Cost}
	if p.cost == 0 {
		p.cost = 1
	}
	if p.cost < 0 {
		return nil, fmt.Errorf("cost %d is negative", p.cost)
	}
	var err error
	if p.key, err = ParseKey(cp.Key); err != nil {
		return nil, fmt.Errorf("key: %w", err)
	}
	if p.params, err = algo.Compile(cp, nil); err != nil {
		return nil, err
	}
	if p.cost > p.params.Limit {
		return nil, fmt.Errorf("cost %d exceeds the limit %d: no request could pass", p.cost, p.params.Limit)
	}
	p.item = policyItem(name, &p.params)
	p.violatedExtra = map[string]any{"violated-policies": []string{name}}
	if len(cp.Overrides) > 0 {
		if p.key.overrideFrom < 0 {
			return nil, fmt.Errorf("overrides need a key with consumer or claim:NAME")
		}
		p.overrides = make(map[string]algo.Params, len(cp.Overrides))
		p.overrideItems = make(map[string]string, len(cp.Overrides))
		for k, o := range cp.Overrides {
			op, err := algo.Compile(cp, o)
			if err != nil {
				return nil, fmt.Errorf("overrides.%s: %w", k, err)
			}
			p.overrides[k] = op
			p.overrideItems[k] = policyItem(name, &op)
		}
	}
	switch cp.Mode {
	case "", "exact":
	case "lease":
		p.lease = s.leaseStore != nil
	default:
		return nil, fmt.Errorf("mode: %q is not exact or lease", cp.Mode)
	}
	switch cp.OnMissingKey {
	case "", "deny":
		p.onMissing = missingDeny
	case "skip":
		p.onMissing = missingSkip
	case "shared":
		p.onMissing = missingShared
	default:
		return nil, fmt.Errorf("on_missing_key: %q is not deny, skip or shared", cp.OnMissingKey)
	}
	mode := cp.OnStoreError
	if mode == "" {
		mode = defaults.OnStoreError
	}
	switch mode {
	case "", "local":
		p.onError = failLocal
	case "fail_open":
		p.onError = failOpen
	case "fail_closed":
		p.onError = failClosed
	default:
		return nil, fmt.Errorf("on_store_error: %q is not local, fail_open or fail_closed", mode)
	}
	return p, nil
}

// countersFor resolves a policy's series once per process (s.mu held).
func (s *Service) countersFor(name string) *policyCounters {
	if c, ok := s.counters[name]; ok {
		return c
	}
	c := &policyCounters{
		allowed:  s.decisions.WithLabelValues(name, labelAllowed),
		limited:  s.decisions.WithLabelValues(name, labelLimited),
		errored:  s.decisions.WithLabelValues(name, labelError),
		fallback: s.decisions.WithLabelValues(name, labelFallback),
		shadow:   s.decisions.WithLabelValues(name, labelShadow),
	}
	s.counters[name] = c
	return c
}

// policyItem renders one RateLimit-Policy list member (RFC 9651 item: an
// sf-string with integer parameters): q is the limit (the burst for
// buckets), w the window (for buckets the time to refill the burst) in whole
// seconds rounded up, at least 1.
func policyItem(name string, p *algo.Params) string {
	b := appendSFString(nil, name)
	b = append(b, ";q="...)
	b = strconv.AppendInt(b, p.Limit, 10)
	b = append(b, ";w="...)
	b = strconv.AppendInt(b, max(1, ceilSeconds(p.Capacity())), 10)
	return string(b)
}

// appendSFString appends s as an RFC 9651 sf-string: printable ASCII in
// quotes, with '"' and '\' escaped; other bytes (not allowed in sf-strings)
// become '?'. Policy names come from config keys, so this is a safety net.
func appendSFString(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c < 0x20 || c > 0x7e:
			b = append(b, '?')
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}

// ceilSeconds converts µs to whole seconds, rounding up.
func ceilSeconds(us int64) int64 {
	if us <= 0 {
		return 0
	}
	return (us + 999_999) / 1_000_000
}

// localParams scales p to one node's share of n: windowed limits and bucket
// bursts become max(1, ceil(L/n)); a bucket's refill slows n-fold (its
// emission interval grows by n), within algo's bounds.
func localParams(p algo.Params, n int) algo.Params {
	if n <= 1 {
		return p
	}
	nn := int64(n)
	p.Limit = max(1, (p.Limit+nn-1)/nn)
	if p.Kind.Bucket() {
		w := p.Window * nn
		if w > algo.MaxWindow || p.Limit > algo.MaxProduct/w {
			w = min(algo.MaxWindow, algo.MaxProduct/p.Limit)
		}
		p.Window = w
	}
	return p
}

// nodeCount is the N of the local fallback.
func (s *Service) nodeCount(rt *runtime) int {
	if s.nodes != nil {
		if n := s.nodes(); n >= 1 {
			return n
		}
	}
	return rt.expectedNodes
}
