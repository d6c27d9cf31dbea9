package redisstore

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/portico-gw/portico/internal/config"
	"github.com/portico-gw/portico/internal/ratelimit"
	"github.com/portico-gw/portico/internal/ratelimit/algo"
)

func TestClientOption(t *testing.T) {
	tests := []struct {
		name    string
		cfg     config.Store
		addrs   []string
		user    string
		pass    string
		db      int
		single  bool
		tls     bool
		wantErr string
	}{
		{name: "url", cfg: config.Store{URL: "redis://10.1.2.3:6380/2"}, addrs: []string{"10.1.2.3:6380"}, db: 2, single: true},
		{name: "url acl", cfg: config.Store{URL: "redis://app:s3cret@h:6379/0"}, addrs: []string{"h:6379"}, user: "app", pass: "s3cret", single: true},
		{name: "rediss", cfg: config.Store{URL: "rediss://h"}, addrs: []string{"h:6379"}, single: true, tls: true},
		{name: "cluster", cfg: config.Store{Cluster: []string{"a:1", "b:2"}, Username: "u", Password: "p"},
			addrs: []string{"a:1", "b:2"}, user: "u", pass: "p"},
		{name: "cluster tls", cfg: config.Store{Cluster: []string{"a:1"}, TLS: &config.ClientTLS{ServerName: "redis.internal"}},
			addrs: []string{"a:1"}, tls: true},
		{name: "both", cfg: config.Store{URL: "redis://h", Cluster: []string{"a:1"}}, wantErr: "exclusive"},
		{name: "neither", cfg: config.Store{}, wantErr: "need url or cluster"},
		{name: "bad scheme", cfg: config.Store{URL: "http://h"}, wantErr: "scheme"},
		{name: "missing ca", cfg: config.Store{URL: "rediss://h", TLS: &config.ClientTLS{CA: "/nonexistent/ca.pem"}}, wantErr: "tls ca"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opt, err := clientOption(tc.cfg)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(opt.InitAddress, tc.addrs) || opt.Username != tc.user || opt.Password != tc.pass ||
				opt.SelectDB != tc.db || opt.ForceSingleClient != tc.single || (opt.TLSConfig != nil) != tc.tls {
				t.Fatalf("option = addrs %v user %q pass %q db %d single %v tls %v", opt.InitAddress, opt.Username,
					opt.Password, opt.SelectDB, opt.ForceSingleClient, opt.TLSConfig != nil)
			}
			if !opt.DisableCache || opt.DisableAutoPipelining || !opt.AlwaysPipelining {
				t.Fatal("want client-side caching off and auto-pipelining on")
			}
			if opt.Dialer.Timeout != 200*time.Millisecond {
				t.Fatalf("dial timeout %v, want 200ms for the default 20ms decisions", opt.Dialer.Timeout)
			}
		})
	}
}

func TestSubjectKey(t *testing.T) {
	k := subjectKey("claim:sub=alice")
	if len(k) != 21 || !strings.HasPrefix(k, "rl:{") || !strings.HasSuffix(k, "}") {
		t.Fatalf("key %q", k)
	}
	if subjectKey("claim:sub=alice") != k || subjectKey("claim:sub=bob") == k {
		t.Fatal("key must be a function of the subject")
	}
	// The log key shares the hash tag, hence the slot.
	if rueidisSlot(k) != rueidisSlot(k+":log:per-user") {
		t.Fatal("log key in another slot")
	}
	if n := testing.AllocsPerRun(100, func() { _ = subjectKey("ip=192.0.2.1") }); n > 1 {
		t.Fatalf("subjectKey allocs = %v, want <= 1", n)
	}
}

// rueidisSlot computes a key's Cluster slot: CRC16 (XMODEM) of the hash tag
// (or the whole key) mod 16384.
func rueidisSlot(key string) uint16 {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			key = key[i+1 : i+1+j]
		}
	}
	var crc uint16
	for k := 0; k < len(key); k++ {
		crc ^= uint16(key[k]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc % 16384
}

func fixed(limit int64, window time.Duration) algo.Params {
	return algo.Params{Kind: algo.FixedWindow, Limit: limit, Window: window.Microseconds()}
}

// TestDecideRealClock runs decisions on Redis TIME: limits hold, a
// rejection by one policy consumes nothing from the others, a cost above the
// limit is rejected as Never, and Refund gives units back.
func TestDecideRealClock(t *testing.T) {
	s := newTestStore(t, sharedRedisAddr(t))
	ctx := context.Background()

	t.Run("limit", func(t *testing.T) {
		subj := uniqueSubject(t, "a")
		checks := []ratelimit.Check{{Policy: "p", Params: fixed(3, time.Hour), Cost: 1}}
		out := make([]algo.Decision, 1)
		for i := range 5 {
			if err := s.Decide(ctx, subj, checks, out); err != nil {
				t.Fatal(err)
			}
			if out[0].Allowed != (i < 3) {
				t.Fatalf("request %d: %+v", i, out[0])
			}
		}
		if out[0].RetryAfter <= 0 || out[0].RetryAfter > time.Hour.Microseconds() || out[0].Remaining != 0 {
			t.Fatalf("rejection %+v", out[0])
		}
		if err := s.Refund(ctx, subj, checks); err != nil {
			t.Fatal(err)
		}
		if err := s.Decide(ctx, subj, checks, out); err != nil || !out[0].Allowed {
			t.Fatalf("after refund: %+v %v", out[0], err)
		}
	})

	t.Run("all or nothing", func(t *testing.T) {
		subj := uniqueSubject(t, "b")
		perSec := ratelimit.Check{Policy: "sec", Params: fixed(5, time.Hour), Cost: 1}
		perHour := ratelimit.Check{Policy: "hour", Params: fixed(2, time.Hour), Cost: 1}
		both := []ratelimit.Check{perSec, perHour}
		out := make([]algo.Decision, 2)
		for range 4 {
			if err := s.Decide(ctx, subj, both, out); err != nil {
				t.Fatal(err)
			}
		}
		// Two admitted, two rejected by "hour": "sec" must have 3 left.
		one := make([]algo.Decision, 1)
		if err := s.Decide(ctx, subj, []ratelimit.Check{{Policy: "sec", Params: perSec.Params}}, one); err != nil {
			t.Fatal(err)
		}
		if one[0].Remaining != 3 {
			t.Fatalf("sec remaining = %d, want 3 (rejected requests consumed quota)", one[0].Remaining)
		}
	})

	t.Run("cost above limit", func(t *testing.T) {
		out := make([]algo.Decision, 1)
		err := s.Decide(ctx, uniqueSubject(t, "c"), []ratelimit.Check{{Policy: "p", Params: fixed(3, time.Minute), Cost: 4}}, out)
		if err != nil || out[0].Allowed || out[0].RetryAfter != algo.Never {
			t.Fatalf("%+v %v", out[0], err)
		}
	})

	t.Run("short out", func(t *testing.T) {
		err := s.Decide(ctx, "x", []ratelimit.Check{{Policy: "p", Params: fixed(3, time.Minute), Cost: 1}}, nil)
		if err == nil {
			t.Fatal("want an error for a short out slice")
		}
	})
}

// TestKeysHaveTTL scans a private server after decisions of every kind,
// leases, refunds and heartbeats: every key must carry a TTL.
func TestKeysHaveTTL(t *testing.T) {
	p := startRedis(t, t.TempDir(), nil)
	s := newTestStore(t, p.addr)
	ctx := context.Background()
	params := []algo.Params{
		fixed(5, time.Second),
		{Kind: algo.SlidingWindowLog, Limit: 5, Window: 2 * time.Second.Microseconds()},
		{Kind: algo.SlidingWindowCounter, Limit: 5, Window: 3 * time.Second.Microseconds()},
		{Kind: algo.TokenBucket, Limit: 5, Window: 1000},
		{Kind: algo.LeakyBucket, Limit: 1, Window: 1000, MaxDelay: 5000},
		{Kind: algo.TokenBucket, Limit: 3, Window: 1}, // a 3 µs bucket: TTL rounds up to 1 ms
	}
	var checks []ratelimit.Check
	for i, pr := range params {
		checks = append(checks, ratelimit.Check{Policy: fmt.Sprint("p", i), Params: pr, Cost: 1})
	}
	out := make([]algo.Decision, len(checks))
	for i := range 20 {
		subj := fmt.Sprint("ttl-", i%4)
		if err := s.Decide(ctx, subj, checks[i%len(checks):], out); err != nil {
			t.Fatal(err)
		}
		if i%5 == 0 {
			if err := s.Refund(ctx, subj, checks[:2]); err != nil {
				t.Fatal(err)
			}
		}
	}
	ls := NewLeaseStore(s, func() int { return 1 })
	lease := []ratelimit.Check{{Policy: "lease", Params: fixed(1000, time.Second), Cost: 1}}
	for range 10 {
		if err := ls.Decide(ctx, "ttl-lease", lease, out); err != nil {
			t.Fatal(err)
		}
	}
	s.beatOnce(ctx, "node-a", noNow)

	raw := rawClient(t, p.addr)
	keys, err := raw.Do(ctx, raw.B().Keys().Pattern("*").Build()).AsStrSlice()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) < 6 {
		t.Fatalf("only %d keys written: %v", len(keys), keys)
	}
	for _, k := range keys {
		ttl, err := raw.Do(ctx, raw.B().Pttl().Key(k).Build()).AsInt64()
		if err != nil {
			t.Fatal(err)
		}
		// -2 is a key that expired between KEYS and PTTL (the 3 µs bucket).
		if ttl <= 0 && ttl != -2 {
			t.Errorf("key %q has PTTL %d", k, ttl)
		}
	}
}

// TestNoScriptRecovery flushes the script cache while decisions run: the
// store reloads the script transparently (EVALSHA -> NOSCRIPT -> EVAL) and
// no decision fails or miscounts.
func TestNoScriptRecovery(t *testing.T) {
	p := startRedis(t, t.TempDir(), nil)
	s := newTestStore(t, p.addr)
	raw := rawClient(t, p.addr)
	ctx := context.Background()
	checks := []ratelimit.Check{{Policy: "p", Params: fixed(1_000_000, time.Hour), Cost: 1}}

	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		errs   []error
		denied int
	)
	const workers, per = 8, 300
	for w := range workers {
		wg.Go(func() {
			out := make([]algo.Decision, 1)
			for i := range per {
				if err := s.Decide(ctx, "flush", checks, out); err != nil {
					mu.Lock()
					errs = append(errs, fmt.Errorf("worker %d request %d: %w", w, i, err))
					mu.Unlock()
				} else if !out[0].Allowed {
					mu.Lock()
					denied++
					mu.Unlock()
				}
			}
		})
	}
	for range 5 {
		if err := raw.Do(ctx, raw.B().ScriptFlush().Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	if len(errs) > 0 || denied > 0 {
		t.Fatalf("%d errors, %d denied; first: %v", len(errs), denied, errors.Join(errs[:min(3, len(errs))]...))
	}
	// Flush once more with nothing running: the next decision must still
	// work and see every earlier unit.
	if err := raw.Do(ctx, raw.B().ScriptFlush().Build()).Error(); err != nil {
		t.Fatal(err)
	}
	out := make([]algo.Decision, 1)
	if err := s.Decide(ctx, "flush", checks, out); err != nil {
		t.Fatal(err)
	}
	if want := int64(1_000_000 - workers*per - 1); out[0].Remaining != want {
		t.Fatalf("remaining = %d, want %d", out[0].Remaining, want)
	}
	sum := sha1.Sum([]byte(decideLua))
	n, err := raw.Do(ctx, raw.B().ScriptExists().Sha1(hex.EncodeToString(sum[:])).Build()).AsIntSlice()
	if err != nil || len(n) != 1 || n[0] != 1 {
		t.Fatalf("script not reloaded: %v %v", n, err)
	}
}

// TestErrorsFast: with Redis down (a closed port, or killed mid-run) every
// decision fails within its timeout, so the core's fallback takes over
// without stalling requests.
func TestErrorsFast(t *testing.T) {
	const timeout = 20 * time.Millisecond
	checks := []ratelimit.Check{{Policy: "p", Params: fixed(10, time.Minute), Cost: 1}}
	measure := func(t *testing.T, s *Store) {
		t.Helper()
		out := make([]algo.Decision, 1)
		var worst time.Duration
		var took []time.Duration
		for range 20 {
			start := time.Now()
			err := s.Decide(context.Background(), "down", checks, out)
			d := time.Since(start)
			if err == nil {
				t.Fatal("Decide succeeded with Redis down")
			}
			took = append(took, d)
			worst = max(worst, d)
		}
		slices.Sort(took)
		t.Logf("error latency: median %v, worst %v", took[len(took)/2], worst)
		if took[len(took)/2] > 50*time.Millisecond || worst > 250*time.Millisecond {
			t.Fatalf("errors too slow: median %v, worst %v (timeout %v)", took[len(took)/2], worst, timeout)
		}
	}

	t.Run("closed port", func(t *testing.T) {
		port := freePort(t)
		s, err := New(config.Store{URL: fmt.Sprintf("redis://127.0.0.1:%d", port), Timeout: config.Duration(timeout)}, Deps{})
		if err != nil {
			t.Fatalf("New must succeed with the server down: %v", err)
		}
		defer s.Close()
		measure(t, s)
	})

	t.Run("killed mid-run", func(t *testing.T) {
		p := startRedis(t, t.TempDir(), nil)
		s, err := New(config.Store{URL: "redis://" + p.addr, Timeout: config.Duration(timeout)}, Deps{})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		out := make([]algo.Decision, 1)
		for range 10 {
			// The first decisions run while the machine is busy; give them
			// the benefit of a retry before judging the store.
			if err := s.Decide(context.Background(), "up", checks, out); err != nil {
				t.Logf("decision before the kill: %v", err)
			}
		}
		p.kill()
		measure(t, s)
	})

	t.Run("lease, killed", func(t *testing.T) {
		// A lease keeps deciding locally while it lasts; once it is spent
		// the next grant fails as fast as an exact decision.
		p := startRedis(t, t.TempDir(), nil)
		s, err := New(config.Store{URL: "redis://" + p.addr, Timeout: config.Duration(timeout)}, Deps{})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		l := NewLeaseStore(s, func() int { return 1 })
		lc := []ratelimit.Check{{Policy: "p", Params: fixed(1_000_000, time.Hour), Cost: 1}}
		out := make([]algo.Decision, 1)
		for range 200 {
			_ = l.Decide(context.Background(), "lease-down", lc, out)
		}
		p.kill()
		local := 0
		for {
			start := time.Now()
			err := l.Decide(context.Background(), "lease-down", lc, out)
			d := time.Since(start)
			if err == nil {
				local++
				if local > 1_000_000 {
					t.Fatal("lease never ran out")
				}
				continue
			}
			t.Logf("%d local decisions after the kill; then an error after %v", local, d)
			if d > 100*time.Millisecond {
				t.Fatalf("lease error took %v (timeout %v)", d, timeout)
			}
			break
		}
	})

	t.Run("stalled server", func(t *testing.T) {
		// A server that accepts and never answers (a blackhole): the
		// timeout, not the connection, ends each decision.
		p := startRedis(t, t.TempDir(), nil)
		s, err := New(config.Store{URL: "redis://" + p.addr, Timeout: config.Duration(timeout)}, Deps{})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		out := make([]algo.Decision, 1)
		// A healthy connection first (this machine is busy: the first
		// decisions may miss the 20 ms).
		for i := 0; ; i++ {
			err := s.Decide(context.Background(), "stalled", checks, out)
			if err == nil {
				break
			}
			if i == 50 {
				t.Fatalf("no decision before the stall: %v", err)
			}
		}
		raw := rawClient(t, p.addr)
		before := clientIDs(t, raw)
		if err := p.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = p.cmd.Process.Signal(syscall.SIGCONT) }()
		start := time.Now()
		err = s.Decide(context.Background(), "stalled", checks, out)
		d := time.Since(start)
		if err == nil {
			t.Fatal("Decide succeeded against a stalled server")
		}
		if d > 100*time.Millisecond {
			t.Fatalf("stalled decision took %v (timeout %v)", d, timeout)
		}
		// When the server answers again, the connections it had still
		// serve: a timeout must not cost a reconnect (or a TLS handshake).
		if err := p.cmd.Process.Signal(syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
		var lastErr error
		for range 20 {
			if lastErr = s.Decide(context.Background(), "stalled", checks, out); lastErr == nil {
				break
			}
		}
		if lastErr != nil {
			t.Fatalf("no decision after the server resumed: %v", lastErr)
		}
		after := clientIDs(t, raw)
		for id := range before {
			if !after[id] {
				t.Fatalf("connection %s was closed by a timed-out decision (before %v, after %v)", id, before, after)
			}
		}
	})
}

// clientIDs is the set of connection ids the server has, less c's own.
func clientIDs(t *testing.T, c rueidis.Client) map[string]bool {
	t.Helper()
	ctx := context.Background()
	own, err := c.Do(ctx, c.B().ClientId().Build()).AsInt64()
	if err != nil {
		t.Fatal(err)
	}
	list, err := c.Do(ctx, c.B().ClientList().Build()).ToString()
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	for _, line := range strings.Split(list, "\n") {
		f := strings.Fields(line)
		if len(f) > 0 && strings.HasPrefix(f[0], "id=") && f[0] != fmt.Sprint("id=", own) {
			ids[strings.TrimPrefix(f[0], "id=")] = true
		}
	}
	return ids
}

func TestHeartbeat(t *testing.T) {
	p := startRedis(t, t.TempDir(), nil)
	a := newTestStore(t, p.addr)
	b := newTestStore(t, p.addr)
	ctx := context.Background()
	if a.Nodes() != 0 {
		t.Fatalf("nodes before any heartbeat = %d, want 0 (unknown)", a.Nodes())
	}

	t.Run("liveness window", func(t *testing.T) {
		base := int64(1_790_000_000_000_000)
		a.beatOnce(ctx, "old", base)
		a.beatOnce(ctx, "n1", base+3_000_000)
		if got := a.Nodes(); got != 2 {
			t.Fatalf("nodes = %d, want 2", got)
		}
		// 5.5 s after "old": it has left the window; n1 and n2 remain.
		b.beatOnce(ctx, "n2", base+5_500_000)
		if got := b.Nodes(); got != 2 {
			t.Fatalf("nodes = %d, want 2", got)
		}
		raw := rawClient(t, p.addr)
		if err := raw.Do(ctx, raw.B().Del().Key(NodesKey).Build()).Error(); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("start and leave", func(t *testing.T) {
		actx, cancel := context.WithCancel(ctx)
		a.StartHeartbeat(actx, "gw-a")
		b.StartHeartbeat(ctx, "gw-b") // stopped by Close at cleanup
		if a.Nodes() != 1 || b.Nodes() != 2 {
			t.Fatalf("nodes = %d, %d; want 1, 2", a.Nodes(), b.Nodes())
		}
		cancel()
		// The goroutine removes gw-a on its way out; wait for it through
		// the store's own wait group rather than the clock.
		a.stopAndWait(t)
		raw := rawClient(t, p.addr)
		members, err := raw.Do(ctx, raw.B().Zrange().Key(NodesKey).Min("0").Max("-1").Build()).AsStrSlice()
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(members, []string{"gw-b"}) {
			t.Fatalf("members after gw-a left: %v", members)
		}
	})
}

// A heartbeat that keeps failing warns once (then once a minute), and its
// recovery is logged once.
func TestHeartbeatFailureLogsOnce(t *testing.T) {
	p := startRedis(t, t.TempDir(), nil)
	s := newTestStore(t, p.addr)
	var mu sync.Mutex
	var msgs []string
	s.log = slog.New(recordHandler(func(r slog.Record) {
		mu.Lock()
		msgs = append(msgs, r.Level.String()+" "+r.Message)
		mu.Unlock()
	}))
	down, cancel := context.WithCancel(context.Background())
	cancel() // every beat under it fails, as when Redis cannot be reached
	for range 5 {
		s.beatOnce(down, "gw", noNow)
	}
	s.beatOnce(context.Background(), "gw", noNow)
	s.beatOnce(context.Background(), "gw", noNow)
	mu.Lock()
	defer mu.Unlock()
	want := []string{"WARN rate-limit heartbeat failed", "INFO rate-limit heartbeat recovered"}
	if !slices.Equal(msgs, want) {
		t.Fatalf("logged %q, want %q", msgs, want)
	}
	if s.Nodes() != 1 {
		t.Fatalf("nodes = %d after the recovery, want 1", s.Nodes())
	}
}

// recordHandler is a slog handler that hands each record to f.
type recordHandler func(slog.Record)

func (h recordHandler) Enabled(context.Context, slog.Level) bool      { return true }
func (h recordHandler) Handle(_ context.Context, r slog.Record) error { h(r); return nil }
func (h recordHandler) WithAttrs([]slog.Attr) slog.Handler            { return h }
func (h recordHandler) WithGroup(string) slog.Handler                 { return h }

// stopAndWait waits for the store's heartbeat goroutines (their contexts
// already cancelled).
func (s *Store) stopAndWait(t testing.TB) {
	t.Helper()
	s.wg.Wait()
}

// TestURLAuthAndDB connects with an ACL user from the URL and a database
// number: the state lands in that database, and a wrong password makes
// decisions fail (not New, so the gateway still starts).
func TestURLAuthAndDB(t *testing.T) {
	p := startRedis(t, t.TempDir(), nil)
	ctx := context.Background()
	admin := rawClient(t, p.addr)
	if err := admin.Do(ctx, admin.B().AclSetuser().Username("app").Rule("on", ">s3cret", "~rl:*", "+@all").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	s, err := New(config.Store{URL: "redis://app:s3cret@" + p.addr + "/3", Timeout: config.Duration(2 * time.Second)}, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	out := make([]algo.Decision, 1)
	if err := s.Decide(ctx, "acl", []ratelimit.Check{{Policy: "p", Params: fixed(5, time.Minute), Cost: 1}}, out); err != nil || !out[0].Allowed {
		t.Fatalf("%+v %v", out[0], err)
	}
	db3, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{p.addr}, SelectDB: 3, DisableCache: true, ForceSingleClient: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db3.Close()
	if n, err := db3.Do(ctx, db3.B().Exists().Key(subjectKey("acl")).Build()).AsInt64(); err != nil || n != 1 {
		t.Fatalf("state not in db 3: %d %v", n, err)
	}
	if n, err := admin.Do(ctx, admin.B().Exists().Key(subjectKey("acl")).Build()).AsInt64(); err != nil || n != 0 {
		t.Fatalf("state in db 0: %d %v", n, err)
	}

	bad, err := New(config.Store{URL: "redis://app:wrong@" + p.addr + "/3", Timeout: config.Duration(time.Second)}, Deps{})
	if err != nil {
		t.Fatalf("New must not fail on bad credentials: %v", err)
	}
	defer bad.Close()
	err = bad.Decide(ctx, "acl", []ratelimit.Check{{Policy: "p", Params: fixed(5, time.Minute), Cost: 1}}, out)
	if err == nil {
		t.Fatal("decision succeeded with a wrong password")
	}
	t.Logf("wrong password: %v", err)
}
