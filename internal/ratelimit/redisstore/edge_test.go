package redisstore

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/portico-gw/portico/internal/config"
	"github.com/portico-gw/portico/internal/ratelimit"
	"github.com/portico-gw/portico/internal/ratelimit/algo"
	"github.com/portico-gw/portico/internal/reqctx"
)

// svcEnv is a ratelimit.Service deciding through a real Redis store, seen
// the way a client sees it: through the middleware of one route.
type svcEnv struct {
	t   *testing.T
	svc *ratelimit.Service
	reg *prometheus.Registry
	h   http.Handler
}

func newSvcEnv(t *testing.T, cfg config.RateLimits, deps ratelimit.Deps, route []string) *svcEnv {
	t.Helper()
	e := &svcEnv{t: t, reg: prometheus.NewRegistry()}
	deps.Registerer = e.reg
	if cfg.ExpectedNodes == 0 {
		cfg.ExpectedNodes = 1
	}
	if cfg.Store.Timeout == 0 {
		// Correctness, not latency, is judged here (-race, a shared machine).
		cfg.Store.Timeout = config.Duration(2 * time.Second)
	}
	svc, err := ratelimit.NewService(cfg, deps)
	if err != nil {
		t.Fatal(err)
	}
	e.svc = svc
	e.h = e.route("r", route)
	return e
}

// route builds the handler of another route over the same Service.
func (e *svcEnv) route(name string, policies []string) http.Handler {
	e.t.Helper()
	pre, err := e.svc.Middleware(name, policies, ratelimit.PreAuth)
	if err != nil {
		e.t.Fatal(err)
	}
	post, err := e.svc.Middleware(name, policies, ratelimit.PostAuth)
	if err != nil {
		e.t.Fatal(err)
	}
	final := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })
	return pre(post(final))
}

// do sends one request from client ip with the given header pairs.
func (e *svcEnv) do(ip string, hdr ...string) *httptest.ResponseRecorder {
	return e.doOn(e.h, ip, hdr...)
}

func (e *svcEnv) doOn(h http.Handler, ip string, hdr ...string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Set(hdr[i], hdr[i+1])
	}
	info := &reqctx.Info{Route: "r", ClientIP: netip.MustParseAddr(ip), RequestID: "req"}
	r = r.WithContext(reqctx.With(r.Context(), info))
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

// count reads portico_ratelimit_decisions_total{policy,decision}.
func (e *svcEnv) count(policy, decision string) float64 {
	e.t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		e.t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var p, d string
			for _, lp := range m.GetLabel() {
				switch lp.GetName() {
				case "policy":
					p = lp.GetValue()
				case "decision":
					d = lp.GetValue()
				}
			}
			if p == policy && d == decision {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// violated returns the violated-policies member of a 429 body.
func violated(t *testing.T, body string) []string {
	t.Helper()
	var b struct {
		Violated []string `json:"violated-policies"`
	}
	if err := json.Unmarshal([]byte(body), &b); err != nil {
		t.Fatalf("429 body %q: %v", body, err)
	}
	return b.Violated
}

// freshName is a policy name of its own per run: the state of a policy is
// (subject, policy), so fixed subjects still start empty on the shared Redis.
func freshName(prefix string) string { return fmt.Sprintf("%s-%x", prefix, rand.Uint64()) }

// subjectRecorder remembers the subjects the core asks the store about.
type subjectRecorder struct {
	ratelimit.Store
	mu       sync.Mutex
	subjects []string
}

func (r *subjectRecorder) Decide(ctx context.Context, subject string, checks []ratelimit.Check, out []algo.Decision) error {
	r.mu.Lock()
	if !slices.Contains(r.subjects, subject) {
		r.subjects = append(r.subjects, strings.Clone(subject))
	}
	r.mu.Unlock()
	return r.Store.Decide(ctx, subject, checks, out)
}

// TestSubjectKeyChosenCollision: a client that picks a header value whose
// subject hashes like another tenant's must not share, and so drain, that
// tenant's quota. The attacker's value below gives the subject of tenant
// "acme" the same 64-bit FNV-1a hash (a generalized-birthday search over
// 6-byte blocks of the value finds such a value in seconds), so the Redis
// key name must come from a hash that resists chosen collisions.
func TestSubjectKeyChosenCollision(t *testing.T) {
	const victim, attacker = "acme", "gOOZUJTVe8Xqky9CsYpaZRcx"
	s := newTestStore(t, sharedRedisAddr(t))
	rec := &subjectRecorder{Store: s}
	name := freshName("per-tenant")
	e := newSvcEnv(t, config.RateLimits{OnStoreError: "fail_closed", Policies: map[string]*config.Policy{
		name: {Algorithm: "fixed_window", Limit: 2, Window: config.Duration(time.Hour), Key: "header:X-Tenant", Cost: 1},
	}}, ratelimit.Deps{Store: rec}, []string{name})

	var codes []int
	for range 3 {
		codes = append(codes, e.do("198.51.100.66", "X-Tenant", attacker).Code)
	}
	if fmt.Sprint(codes) != "[200 200 429]" {
		t.Fatalf("attacker's own codes %v, want [200 200 429]", codes)
	}
	if w := e.do("192.0.2.10", "X-Tenant", victim); w.Code != 200 {
		t.Fatalf("tenant %q got %d %s after another tenant spent its own quota", victim, w.Code, w.Body)
	}
	// The precondition that makes this test mean something: the subjects
	// the core built are distinct and collide under FNV-1a.
	if len(rec.subjects) != 2 {
		t.Fatalf("subjects %q", rec.subjects)
	}
	fnv64a := func(s string) uint64 {
		h := fnv.New64a()
		h.Write([]byte(s))
		return h.Sum64()
	}
	if a, b := rec.subjects[0], rec.subjects[1]; fnv64a(a) != fnv64a(b) {
		t.Fatalf("test vector stale: %q and %q no longer collide under FNV-1a (subject encoding changed?)", a, b)
	}
	if subjectKey(rec.subjects[0]) == subjectKey(rec.subjects[1]) {
		t.Fatal("distinct subjects share a Redis key")
	}
}

// TestLeaseRejectionNamesOnlyTheViolatedPolicy: in lease mode a subject may
// hold leased policies and exactly decided ones (a sliding log); when Redis
// refuses the lease, the exact policy, never asked, did not reject: the 429
// must not name it, nor count it as limited.
func TestLeaseRejectionNamesOnlyTheViolatedPolicy(t *testing.T) {
	s := newTestStore(t, sharedRedisAddr(t))
	burst, log := freshName("burst"), freshName("log")
	e := newSvcEnv(t, config.RateLimits{Policies: map[string]*config.Policy{
		burst: {Algorithm: "fixed_window", Limit: 8, Window: config.Duration(time.Hour), Key: "ip", Cost: 1, Mode: "lease"},
		log:   {Algorithm: "sliding_window_log", Limit: 100, Window: config.Duration(time.Hour), Key: "ip", Cost: 1, Mode: "lease"},
	}}, ratelimit.Deps{Store: s, LeaseStore: NewLeaseStore(s, func() int { return 1 })}, []string{burst, log})
	for i := range 8 {
		if w := e.do("192.0.2.20"); w.Code != 200 {
			t.Fatalf("request %d: %d %s", i, w.Code, w.Body)
		}
	}
	w := e.do("192.0.2.20")
	if w.Code != 429 {
		t.Fatalf("9th request: %d", w.Code)
	}
	if got := violated(t, w.Body.String()); !slices.Equal(got, []string{burst}) {
		t.Fatalf("violated-policies %q, want only %q", got, burst)
	}
	if n := e.count(log, "limited"); n != 0 {
		t.Fatalf("%s counted %v limited decisions; it admitted every request", log, n)
	}
	if ra := w.Header().Get("Retry-After"); ra == "" || ra == "0" {
		t.Fatalf("Retry-After %q", ra)
	}
}

// TestLeaseCachedRejectionNamesOnlyTheViolatedPolicy: a node whose lease
// store remembers a rejection (here another route of the same node took it)
// answers locally; a second leased policy of the subject that this node
// never held a lease for did not reject and must not be named either.
func TestLeaseCachedRejectionNamesOnlyTheViolatedPolicy(t *testing.T) {
	addr := sharedRedisAddr(t)
	hourly, burst := freshName("hourly"), freshName("burst")
	cfg := config.RateLimits{Policies: map[string]*config.Policy{
		hourly: {Algorithm: "fixed_window", Limit: 8, Window: config.Duration(time.Hour), Key: "ip", Cost: 1, Mode: "lease"},
		burst:  {Algorithm: "fixed_window", Limit: 1000, Window: config.Duration(time.Minute), Key: "ip", Cost: 1, Mode: "lease"},
	}}
	route := []string{hourly, burst}
	node := func() *svcEnv {
		s := newTestStore(t, addr)
		return newSvcEnv(t, cfg, ratelimit.Deps{Store: s, LeaseStore: NewLeaseStore(s, func() int { return 1 })}, route)
	}
	// Another node spends the hourly quota.
	other := node()
	for i := range 8 {
		if w := other.do("192.0.2.40"); w.Code != 200 {
			t.Fatalf("other node, request %d: %d", i, w.Code)
		}
	}
	e := node()
	for _, h := range []http.Handler{e.h, e.route("r2", route)} {
		w := e.doOn(h, "192.0.2.40")
		if w.Code != 429 {
			t.Fatalf("%d %s", w.Code, w.Body)
		}
		if got := violated(t, w.Body.String()); !slices.Equal(got, []string{hourly}) {
			t.Fatalf("violated-policies %q, want only %q", got, hourly)
		}
	}
	if n := e.count(burst, "limited"); n != 0 {
		t.Fatalf("%s counted %v limited decisions; it never rejected", burst, n)
	}
}

// TestAlgorithmChangeStartsEmpty: docs/ratelimiting.md promises that a
// policy whose algorithm a reload changes starts from empty state. The
// memory store keys state by algorithm; the Redis store keeps one field per
// policy name, so a bucket's theoretical arrival time, up to burst·T in
// the future, must not be read as a window start (which would hold the
// client in one window until that time, with a Retry-After that keeps
// saying one window). Redis must decide as the memory store does. (From a
// fixed window to a sliding counter or back, Redis keeps the current
// window's count, which counts the same requests; not covered here.)
func TestAlgorithmChangeStartsEmpty(t *testing.T) {
	s := newTestStore(t, sharedRedisAddr(t))
	ctx := context.Background()
	const minute = 60 * 1_000_000
	start := int64(1_790_000_000_000_000) / minute * minute
	for _, from := range []algo.Kind{algo.TokenBucket, algo.LeakyBucket} {
		for _, to := range []algo.Kind{algo.FixedWindow, algo.SlidingWindowCounter} {
			t.Run(from.String()+"->"+to.String(), func(t *testing.T) {
				subject := uniqueSubject(t, "alg")
				bucket := []ratelimit.Check{{Policy: "p", Params: algo.Params{Kind: from, Limit: 10, Window: 6 * minute}, Cost: 1}}
				window := []ratelimit.Check{{Policy: "p", Params: algo.Params{Kind: to, Limit: 5, Window: minute}, Cost: 1}}
				defer cleanupSubject(t, s, subject, window)
				mem := ratelimit.NewMemory(ratelimit.MemoryConfig{})
				got, want := make([]algo.Decision, 1), make([]algo.Decision, 1)
				step := func(checks []ratelimit.Check, now int64) {
					t.Helper()
					if err := mem.DecideAt(now, subject, checks, want); err != nil {
						t.Fatal(err)
					}
					if _, err := s.exec(ctx, opDecide, subject, checks, nil, got, nil, now); err != nil {
						t.Fatal(err)
					}
					if got[0] != want[0] {
						t.Fatalf("%v at +%ds: redis %+v, memory %+v", checks[0].Params.Kind,
							(now-start)/1_000_000, got[0], want[0])
					}
				}
				// Drain the bucket: its tat is now an hour ahead.
				for range 10 {
					step(bucket, start+1_000_000)
				}
				for _, at := range []int64{2, 3, 62, 63, 125} {
					for range 6 {
						step(window, start+at*1_000_000)
					}
				}
			})
		}
	}
}

// startRedisOn starts a private redis-server on the given loopback port
// (for a server that comes back where the gateway expects it) and kills it
// at cleanup.
func startRedisOn(t *testing.T, dir string, port int) *redisProc {
	t.Helper()
	cmd := exec.Command(redisServerPath(t), "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", dir,
		"--logfile", filepath.Join(dir, fmt.Sprintf("redis-%d-%d.log", port, time.Now().UnixNano())))
	if err := cmd.Start(); err != nil {
		t.Fatalf("start redis-server: %v", err)
	}
	p := &redisProc{addr: "127.0.0.1:" + strconv.Itoa(port), port: port, cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	t.Cleanup(p.kill)
	if err := waitReady(p, 10*time.Second); err != nil {
		t.Fatalf("redis-server on %s: %v", p.addr, err)
	}
	return p
}

// testClock is the Service's injected clock (breaker probes, negative
// cache, local fallback); Redis keeps its own.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// TestServiceRedisOutage follows one gateway through a Redis that is down
// at start, comes back, is killed mid-traffic and comes back again: while
// it is down the local share decides (max(1, ceil(L/N))), each failure is
// counted, the failure and the breaker's transitions are logged once; a
// probe after the breaker's interval finds Redis back and Redis decides
// again; failed calls leave no pile of connections behind.
func TestServiceRedisOutage(t *testing.T) {
	dir := t.TempDir()
	port := freePort(t)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	var mu sync.Mutex
	var logs []string
	logger := slog.New(recordHandler(func(r slog.Record) {
		mu.Lock()
		logs = append(logs, r.Message)
		mu.Unlock()
	}))
	logged := func(msg string) int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, m := range logs {
			if m == msg {
				n++
			}
		}
		return n
	}
	s, err := New(config.Store{URL: "redis://" + addr, Timeout: config.Duration(2 * time.Second)}, Deps{})
	if err != nil {
		t.Fatalf("New with Redis down: %v", err)
	}
	t.Cleanup(s.Close)
	clk := &testClock{now: time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)}
	name := freshName("per-ip")
	e := newSvcEnv(t, config.RateLimits{ExpectedNodes: 2, OnStoreError: "local", Policies: map[string]*config.Policy{
		name: {Algorithm: "fixed_window", Limit: 4, Window: config.Duration(time.Hour), Key: "ip", Cost: 1},
	}}, ratelimit.Deps{Store: s, Logger: logger, Now: clk.Now}, []string{name})
	codes := func(ip string, n int) string {
		var c []int
		for range n {
			c = append(c, e.do(ip).Code)
		}
		return fmt.Sprint(c)
	}
	calls := func() int64 { return s.calls.Load() }

	// Down at start: the local share of 4 over 2 nodes is 2.
	if got := codes("192.0.2.30", 3); got != "[200 200 429]" {
		t.Fatalf("down at start: %s, want the local share [200 200 429]", got)
	}
	if errs, fb := e.count(name, "error"), e.count(name, "fallback"); errs != 3 || fb != 3 {
		t.Fatalf("down at start: error %v fallback %v, want 3 and 3", errs, fb)
	}
	if n := logged("rate-limit store failed"); n != 1 {
		t.Fatalf("store failure logged %d times, want once", n)
	}
	if n := logged("rate-limit store breaker"); n != 1 {
		t.Fatalf("breaker transitions logged %d, want 1 (open)", n)
	}
	// Many concurrent decisions against the dead server (as under load
	// before the breaker opens).
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			out := make([]algo.Decision, 1)
			_ = s.Decide(context.Background(), "outage", []ratelimit.Check{{Policy: "x", Params: fixed(5, time.Minute), Cost: 1}}, out)
		})
	}
	wg.Wait()

	// Redis comes back: nothing asks it until the probe is due.
	p := startRedisOn(t, dir, port)
	before := calls()
	if got := codes("192.0.2.30", 1); got != "[429]" || calls() != before {
		t.Fatalf("before the probe: %s with %d store calls, want the local [429] and none", got, calls()-before)
	}
	clk.Advance(320 * time.Millisecond) // past 250ms + 25% jitter
	if got := codes("192.0.2.30", 5); got != "[200 200 200 200 429]" {
		t.Fatalf("after recovery: %s, want Redis's limit of 4", got)
	}
	if a, l := e.count(name, "allowed"), e.count(name, "limited"); a != 4 || l != 1 {
		t.Fatalf("after recovery: allowed %v limited %v, want 4 and 1", a, l)
	}
	if n := logged("rate-limit store breaker"); n != 2 {
		t.Fatalf("breaker transitions logged %d, want 2 (open, closed)", n)
	}
	raw := rawClient(t, p.addr)
	if n := len(clientIDs(t, raw)); n > 2 {
		t.Fatalf("the store holds %d connections after the outage, want at most 2", n)
	}

	// Killed mid-traffic: the local share decides again, for a new client
	// as for any.
	p.kill()
	if got := codes("192.0.2.31", 3); got != "[200 200 429]" {
		t.Fatalf("killed: %s, want the local share [200 200 429]", got)
	}
	if errs := e.count(name, "error"); errs != 6 {
		t.Fatalf("error count %v after the second outage, want 6", errs)
	}
	startRedisOn(t, dir, port)
	clk.Advance(320 * time.Millisecond)
	if got := codes("192.0.2.31", 5); got != "[200 200 200 200 429]" {
		t.Fatalf("after the second recovery: %s", got)
	}
}

// stalledRefunds is the real Store, whose server stalls (SIGSTOP) while a
// refund is in flight and resumes after: decisions succeed and refunds time
// out, as with a slow or flapping Redis.
type stalledRefunds struct {
	*Store
	p *redisProc
}

func (s stalledRefunds) Refund(ctx context.Context, subject string, checks []ratelimit.Check) error {
	_ = s.p.cmd.Process.Signal(syscall.SIGSTOP)
	defer func() { _ = s.p.cmd.Process.Signal(syscall.SIGCONT) }()
	return s.Store.Refund(ctx, subject, checks)
}

// TestRefundFailureLogsOnce: a refund (an earlier subject's units given
// back when a later subject rejects) that fails is logged, but at most once
// a second like every other store failure: a slow store fails refunds at the
// rate of such rejections, and a line per request would flood the log.
func TestRefundFailureLogsOnce(t *testing.T) {
	p := startRedis(t, t.TempDir(), nil)
	s := newTestStore(t, p.addr)
	var mu sync.Mutex
	var logs []string
	logger := slog.New(recordHandler(func(r slog.Record) {
		mu.Lock()
		logs = append(logs, r.Message)
		mu.Unlock()
	}))
	clk := &testClock{now: time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)}
	perIP, perTenant := freshName("per-ip"), freshName("per-tenant")
	e := newSvcEnv(t, config.RateLimits{Store: config.Store{Timeout: config.Duration(300 * time.Millisecond)},
		Policies: map[string]*config.Policy{
			perIP:     {Algorithm: "fixed_window", Limit: 100, Window: config.Duration(time.Hour), Key: "ip", Cost: 1},
			perTenant: {Algorithm: "fixed_window", Limit: 1, Window: config.Duration(time.Hour), Key: "header:X-Tenant", Cost: 1},
		}}, ratelimit.Deps{Store: stalledRefunds{Store: s, p: p}, Logger: logger, Now: clk.Now}, []string{perIP, perTenant})
	var codes []int
	for i := range 5 {
		// A tenant's second request is rejected by its own limit after
		// the per-ip policy admitted it: per-ip is refunded, and fails.
		tenant := fmt.Sprint("t", i)
		codes = append(codes, e.do("192.0.2.50", "X-Tenant", tenant).Code, e.do("192.0.2.50", "X-Tenant", tenant).Code)
	}
	if got := fmt.Sprint(codes); got != "[200 429 200 429 200 429 200 429 200 429]" {
		t.Fatalf("codes %s", got)
	}
	mu.Lock()
	defer mu.Unlock()
	n := 0
	for _, m := range logs {
		if m == "rate-limit refund failed; the units stay consumed" {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("five failed refunds within a second logged %d lines, want 1 (%q)", n, logs)
	}
}

// TestBreakerProbeOfLeavingClientProvesNothing: the half-open probe is one
// request; when its client has already left, its failed store call says
// nothing about the store, and must neither close the breaker (the next
// requests would wait on a dead store again until three more failures) nor
// keep the probe slot taken: the next request probes instead.
func TestBreakerProbeOfLeavingClientProvesNothing(t *testing.T) {
	p := startRedis(t, t.TempDir(), nil)
	s := newTestStore(t, p.addr)
	var mu sync.Mutex
	transitions := 0
	logger := slog.New(recordHandler(func(r slog.Record) {
		mu.Lock()
		if r.Message == "rate-limit store breaker" {
			transitions++
		}
		mu.Unlock()
	}))
	clk := &testClock{now: time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)}
	name := freshName("per-ip")
	e := newSvcEnv(t, config.RateLimits{Store: config.Store{Timeout: config.Duration(50 * time.Millisecond)},
		OnStoreError: "fail_open", Policies: map[string]*config.Policy{
			name: {Algorithm: "fixed_window", Limit: 100, Window: config.Duration(time.Hour), Key: "ip", Cost: 1},
		}}, ratelimit.Deps{Store: s, Logger: logger, Now: clk.Now}, []string{name})
	logged := func() int {
		mu.Lock()
		defer mu.Unlock()
		return transitions
	}

	// The server stalls: three timeouts open the breaker.
	if err := p.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = p.cmd.Process.Signal(syscall.SIGCONT) }()
	for range 3 {
		e.do("192.0.2.60")
	}
	if n := logged(); n != 1 {
		t.Fatalf("%d breaker transitions logged after three timeouts, want 1 (open)", n)
	}
	clk.Advance(320 * time.Millisecond) // the probe is due

	// The probe's client is gone before the store answers.
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	info := &reqctx.Info{Route: "r", ClientIP: netip.MustParseAddr("192.0.2.60"), RequestID: "req"}
	ctx, cancel := context.WithCancel(reqctx.With(r.Context(), info))
	cancel()
	before := s.calls.Load()
	e.h.ServeHTTP(httptest.NewRecorder(), r.WithContext(ctx))
	if n := logged(); n != 1 {
		t.Fatalf("a probe whose client left changed the breaker (%d transitions logged)", n)
	}
	// The next request probes (and fails: still stalled); the one after it
	// finds the breaker open and costs no store call.
	e.do("192.0.2.60")
	e.do("192.0.2.60")
	if c := s.calls.Load() - before; c > 2 {
		t.Fatalf("%d store calls for the abandoned probe and two requests, want at most 2: the breaker closed", c)
	}
}
