package redisstore

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	_ "embed"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/redis/rueidis"

	"github.com/portico-gw/portico/internal/config"
	"github.com/portico-gw/portico/internal/ratelimit"
	"github.com/portico-gw/portico/internal/ratelimit/algo"
)

// DefaultTimeout bounds one decision (one script round trip) when
// config.Store.Timeout is zero. A decision that takes longer returns an error
// and the core applies the policy's on_store_error.
const DefaultTimeout = 20 * time.Millisecond

//go:embed decide.lua
var decideLua string

// Deps are the Store's dependencies.
type Deps struct {
	// Logger receives connection warnings; nil discards them.
	Logger *slog.Logger
}

// Store is the Redis-backed rate-limit store. It is safe for concurrent use.
type Store struct {
	client  rueidis.Client
	timeout time.Duration
	log     *slog.Logger
	script  *rueidis.Lua
	beat    *rueidis.Lua
	shards  int // 1, or clusterShards with Redis Cluster

	nodes atomic.Int64 // fleet size from the last heartbeat; 0 = unknown

	beatFailures atomic.Int64 // heartbeats failed in a row
	beatWarnedAt atomic.Int64 // unix ns of the last "heartbeat failed" warning
	calls        atomic.Int64 // script calls sent (EVALSHA and its EVAL fallback count once)

	paramsMu sync.RWMutex
	params   map[algo.Params]*paramStrings

	stop      chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup
}

var _ ratelimit.ShardedStore = (*Store)(nil)

// clusterShards is the number of shards a Redis Cluster store reports: slot
// ranges of 256 slots, each with a breaker of its own in the core. A
// cluster's masters own contiguous slot ranges (as created, and resharding
// moves ranges), so nearly every range has one owner, and a failing master
// opens the breakers of its own ranges only.
const clusterShards = 64

// Shards is 1 for one server and clusterShards for Redis Cluster.
func (s *Store) Shards() int { return s.shards }

// Shard returns the slot range of subject's keys.
func (s *Store) Shard(subject string) int {
	if s.shards <= 1 {
		return 0
	}
	tag := subjectTag(subject)
	return int(clusterSlot(tag[:])) * s.shards / clusterSlots
}

// clusterSlots is the number of Redis Cluster hash slots.
const clusterSlots = 16384

// clusterSlot is the Cluster hash slot of a key whose hash tag is tag:
// CRC16 (XMODEM) mod 16384. A byte at a time from a table: lease-mode
// decisions ask for it on every request.
func clusterSlot(tag []byte) uint16 {
	var crc uint16
	for _, c := range tag {
		crc = crc<<8 ^ crc16Table[byte(crc>>8)^c]
	}
	return crc % clusterSlots
}

// crc16Table is CRC16 (XMODEM, polynomial 0x1021) of each byte value.
var crc16Table = func() (t [256]uint16) {
	for i := range t {
		crc := uint16(i) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
		t[i] = crc
	}
	return t
}()

// New connects to Redis as cfg says: cfg.URL (redis:// or rediss://, with
// user:pass@ for ACLs and /db) for one server, or cfg.Cluster (seed
// addresses) with cfg.Username, cfg.Password and cfg.TLS for Redis Cluster.
// cfg.Timeout bounds each decision (DefaultTimeout when zero).
//
// With a single server, New succeeds even when Redis is unreachable (a
// gateway must start while its store is down; decisions fail until Redis is
// back, and the core falls back). A cluster needs one reachable seed to learn
// its slot map, so New fails without one.
func New(cfg config.Store, deps Deps) (*Store, error) {
	log := deps.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	opt, err := clientOption(cfg)
	if err != nil {
		return nil, err
	}
	client, err := rueidis.NewClient(opt)
	if err != nil {
		if client == nil {
			return nil, fmt.Errorf("redisstore: connect: %w", err)
		}
		log.Warn("rate-limit store unreachable at start; decisions fail until it is back",
			"addr", opt.InitAddress[0], "error", err)
	}
	s := newStore(client, cfg.Timeout.D(), log)
	if len(cfg.Cluster) > 0 {
		s.shards = clusterShards
	}
	s.preload()
	return s, nil
}

// preload loads the scripts on every known node, so the first decisions do
// not pay for EVAL's compile. Best effort: a node that misses it (or loses
// it later) answers NOSCRIPT and gets EVAL once.
func (s *Store) preload() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	for _, c := range s.client.Nodes() {
		for _, src := range []string{decideLua, heartbeatLua} {
			_ = c.Do(ctx, c.B().ScriptLoad().Script(src).Build()).Error()
		}
	}
}

func newStore(client rueidis.Client, timeout time.Duration, log *slog.Logger) *Store {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	return &Store{
		client:  client,
		timeout: timeout,
		shards:  1,
		log:     log,
		script:  rueidis.NewLuaScript(decideLua),
		beat:    rueidis.NewLuaScript(heartbeatLua),
		params:  make(map[algo.Params]*paramStrings),
		stop:    make(chan struct{}),
	}
}

func clientOption(cfg config.Store) (rueidis.ClientOption, error) {
	var opt rueidis.ClientOption
	switch {
	case cfg.URL != "" && len(cfg.Cluster) > 0:
		return opt, errors.New("redisstore: url and cluster are exclusive")
	case cfg.URL != "":
		o, err := rueidis.ParseURL(cfg.URL)
		if err != nil {
			return opt, fmt.Errorf("redisstore: url: %w", err)
		}
		opt = o
		// A url names one server: never probe it for a cluster (SELECT db
		// would not work there anyway).
		opt.ForceSingleClient = true
	case len(cfg.Cluster) > 0:
		opt.InitAddress = append([]string(nil), cfg.Cluster...)
	default:
		return opt, errors.New("redisstore: need url or cluster")
	}
	if cfg.Username != "" {
		opt.Username = cfg.Username
	}
	if cfg.Password != "" {
		opt.Password = cfg.Password
	}
	if cfg.TLS != nil {
		tc, err := tlsConfig(cfg.TLS, opt.TLSConfig)
		if err != nil {
			return opt, err
		}
		opt.TLSConfig = tc
	}
	// Client-side caching needs CLIENT TRACKING and buys nothing for
	// scripts; auto-pipelining stays on (the rueidis default) so concurrent
	// decisions share round trips.
	opt.DisableCache = true
	// Pipeline mode even for a lone caller: rueidis's synchronous mode
	// enforces a deadline on the socket, so every timed-out decision would
	// close the connection and the next ones would pay a redial (and a TLS
	// handshake). Pipelined, a timed-out reply is just discarded.
	opt.AlwaysPipelining = true
	// A decision that finds no connection waits for the dial (and the
	// HELLO, AUTH and TLS handshake) whatever its own deadline, so the dial
	// timeout is tied to the decision's: ten times it, 200 ms to 1 s.
	timeout := cfg.Timeout.D()
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	opt.Dialer.Timeout = min(max(10*timeout, 200*time.Millisecond), time.Second)
	return opt, nil
}

func tlsConfig(c *config.ClientTLS, base *tls.Config) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if base != nil {
		tc = base.Clone()
	}
	if c.ServerName != "" {
		tc.ServerName = c.ServerName
	}
	if c.CA != "" {
		pem, err := os.ReadFile(c.CA)
		if err != nil {
			return nil, fmt.Errorf("redisstore: tls ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("redisstore: tls ca %s: no certificate found", c.CA)
		}
		tc.RootCAs = pool
	}
	if c.Cert != "" || c.Key != "" {
		cert, err := tls.LoadX509KeyPair(c.Cert, c.Key)
		if err != nil {
			return nil, fmt.Errorf("redisstore: tls client certificate: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// Close stops heartbeats and closes the connections. Decide after Close
// returns errors.
func (s *Store) Close() {
	s.closeOnce.Do(func() {
		close(s.stop)
		s.wg.Wait()
		s.client.Close()
	})
}

// Decide implements ratelimit.Store: one script call decides every check of
// subject, all-or-nothing, on Redis's clock.
func (s *Store) Decide(ctx context.Context, subject string, checks []ratelimit.Check, out []algo.Decision) error {
	if len(out) < len(checks) {
		return fmt.Errorf("redisstore: out has %d slots for %d checks", len(out), len(checks))
	}
	_, err := s.exec(ctx, opDecide, subject, checks, nil, out, nil, noNow)
	return err
}

// Refund gives back the cost of checks that were admitted earlier but should
// not count (e.g. a request the core decided not to forward). It is
// best-effort in the sense that a refund never makes state better than
// fresh: counts stop at zero, a bucket's TAT stops at now, a sliding log
// drops at most its newest entries. Costs are the checks' Cost fields.
func (s *Store) Refund(ctx context.Context, subject string, checks []ratelimit.Check) error {
	_, err := s.exec(ctx, opRefund, subject, checks, nil, nil, nil, noNow)
	return err
}

// Operations of the script (ARGV[1]).
const (
	opDecide = "d"
	opRefund = "r"
	opLease  = "l"
)

// noNow makes the script read Redis TIME.
const noNow = int64(-1)

// Fields per policy in the script's reply.
const replyPerPolicy = 8

// leaseReq is the per-check input of a lease call.
type leaseReq struct {
	want    int64 // units the node would like (before the script's clamp)
	ttl     int64 // µs a lease may live
	back    int64 // unspent units of the previous lease, given back
	backWin int64 // the window start that lease was taken in
}

// grant is the per-check lease result.
type grant struct {
	granted int64 // units granted (0 when rejected)
	expires int64 // µs after the script's now when the lease lapses
	window  int64 // window start the grant belongs to (windowed kinds)
}

// paramStrings caches a policy's numbers as script arguments.
type paramStrings struct {
	kind, limit, window, maxDelay string
}

func (s *Store) paramArgs(p algo.Params) *paramStrings {
	s.paramsMu.RLock()
	ps := s.params[p]
	s.paramsMu.RUnlock()
	if ps != nil {
		return ps
	}
	ps = &paramStrings{
		kind:     strconv.FormatInt(int64(p.Kind), 10),
		limit:    strconv.FormatInt(p.Limit, 10),
		window:   strconv.FormatInt(p.Window, 10),
		maxDelay: strconv.FormatInt(p.MaxDelay, 10),
	}
	s.paramsMu.Lock()
	// Bounded by the configured policies and overrides; a reload with new
	// numbers adds entries, which is rare enough not to need eviction.
	if len(s.params) < 1<<16 {
		s.params[p] = ps
	}
	s.paramsMu.Unlock()
	return ps
}

// exec runs the script once for subject. now is the test clock (noNow for
// Redis TIME); nodes is the fleet size for lease clamps. out (decisions) and
// grants may be nil. It returns the now the script used.
func (s *Store) exec(ctx context.Context, op, subject string, checks []ratelimit.Check,
	leases []leaseReq, out []algo.Decision, grants []grant, now int64) (int64, error) {
	return s.execNodes(ctx, op, subject, checks, leases, out, grants, now, 1)
}

func (s *Store) execNodes(ctx context.Context, op, subject string, checks []ratelimit.Check,
	leases []leaseReq, out []algo.Decision, grants []grant, now int64, nodes int) (int64, error) {
	if len(checks) == 0 {
		return 0, nil
	}
	if out != nil && len(out) < len(checks) {
		return 0, fmt.Errorf("redisstore: out has %d slots for %d checks", len(out), len(checks))
	}
	base := subjectKey(subject)
	logs := 0
	for i := range checks {
		if checks[i].Params.Kind == algo.SlidingWindowLog {
			logs++
		}
	}
	// Keys and arguments share one allocation.
	buf := make([]string, 1+logs+4+10*len(checks))
	keys := buf[: 1 : 1+logs]
	keys[0] = base
	args := buf[1+logs : 1+logs : len(buf)]
	nowArg := ""
	if now != noNow {
		nowArg = strconv.FormatInt(now, 10)
	}
	args = append(args, op, nowArg, strconv.Itoa(len(checks)), strconv.Itoa(max(nodes, 1)))
	for i := range checks {
		c := &checks[i]
		if c.Params.Kind == algo.SlidingWindowLog {
			keys = append(keys, base+":log:"+c.Policy)
		}
		ps := s.paramArgs(c.Params)
		want, ttl, back, backWin := "0", "0", "0", "0"
		if leases != nil {
			want = strconv.FormatInt(leases[i].want, 10)
			ttl = strconv.FormatInt(leases[i].ttl, 10)
			back = strconv.FormatInt(leases[i].back, 10)
			backWin = strconv.FormatInt(leases[i].backWin, 10)
		}
		args = append(args, c.Policy, ps.kind, ps.limit, ps.window, ps.maxDelay,
			strconv.FormatInt(c.Cost, 10), want, ttl, back, backWin)
	}

	// The core already bounds each call by the same timeout; a context of
	// our own (three allocations) only when the caller's is looser.
	if dl, ok := ctx.Deadline(); !ok || time.Until(dl) > s.timeout {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.timeout)
		defer cancel()
	}
	res, err := s.call(ctx, keys, args)
	if err != nil {
		return 0, fmt.Errorf("redisstore: %w", err)
	}
	if len(res) != 2+replyPerPolicy*len(checks) {
		return 0, fmt.Errorf("redisstore: script reply has %d values for %d checks", len(res), len(checks))
	}
	used, err := res[0].AsInt64()
	if err != nil {
		return 0, fmt.Errorf("redisstore: script reply: %w", err)
	}
	for i := range checks {
		var v [replyPerPolicy]int64
		for j := range v {
			if v[j], err = res[2+replyPerPolicy*i+j].AsInt64(); err != nil {
				return 0, fmt.Errorf("redisstore: script reply: %w", err)
			}
		}
		if out != nil {
			out[i] = algo.Decision{Allowed: v[0] == 1, Remaining: v[1], RetryAfter: v[2], ResetAfter: v[3], Delay: v[4]}
		}
		if grants != nil {
			grants[i] = grant{granted: v[5], expires: v[6], window: v[7]}
		}
	}
	return used, nil
}

// call runs the script. EVALSHA falls back to EVAL on NOSCRIPT (rueidis's
// Lua helper), and MOVED and ASK are followed by the cluster client. A
// TRYAGAIN (a slot mid-migration holding some of the subject's keys on each
// side) or CLUSTERDOWN (a failover in progress) is retried here until the
// deadline: rueidis retries those only for commands marked
// retryable, and marking the script so would also re-run it after a
// connection error, when the first run may already have counted.
func (s *Store) call(ctx context.Context, keys, args []string) ([]rueidis.RedisMessage, error) {
	for attempt := 0; ; attempt++ {
		s.calls.Add(1)
		res, err := s.script.Exec(ctx, s.client, keys, args).ToArray()
		if err == nil {
			return res, nil
		}
		re, ok := rueidis.IsRedisErr(err)
		if !ok || !(re.IsTryAgain() || re.IsClusterDown()) {
			return nil, err
		}
		// Until the decision's deadline: a migration step or a failover
		// takes milliseconds.
		t := time.NewTimer(min(time.Duration(attempt+1)*200*time.Microsecond, 2*time.Millisecond))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, err
		case <-t.C:
		}
	}
}

// subjectKey is rl:{H} with H the first 64 bits of the SHA-256 of subject
// in hex. The hash tag keeps a subject's keys in one Cluster slot; hashing
// bounds key length and keeps raw request data (header values, claims) out
// of Redis key names. The hash must resist chosen collisions: subjects carry
// client-chosen values, and with FNV-1a a client could compute, in seconds,
// a header value whose subject lands on another tenant's key and drain its
// quota (TestSubjectKeyChosenCollision). Finding a value for a given key
// under SHA-256 takes about 2^64 tries.
func subjectKey(subject string) string {
	var b [4 + 16 + 1]byte
	copy(b[:], "rl:{")
	tag := subjectTag(subject)
	copy(b[4:], tag[:])
	b[20] = '}'
	return string(b[:])
}

// subjectTag is the hash tag H of subjectKey.
func subjectTag(subject string) (tag [16]byte) {
	const hexd = "0123456789abcdef"
	// Viewed, not copied: Sum256 only reads its input.
	sum := sha256.Sum256(unsafe.Slice(unsafe.StringData(subject), len(subject)))
	for i := 0; i < 8; i++ {
		tag[2*i] = hexd[sum[i]>>4]
		tag[2*i+1] = hexd[sum[i]&0xf]
	}
	return tag
}
