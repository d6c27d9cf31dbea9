package ratelimit

import (
	"context"
	"errors"
	"hash/maphash"
	"math"
	"sync"
	"time"

	"github.com/portico-gw/portico/internal/ratelimit/algo"
)

// ErrStoreFull is returned by the memory store when a new key arrives while
// its shard is at capacity and holds no idle state to evict. Throttled state
// is never evicted (that would unblock the client it throttles), so the new
// key is refused instead and the caller applies the policy's on_store_error.
var ErrStoreFull = errors.New("ratelimit: memory store full of active keys")

const (
	memShards = 256
	// DefaultMaxKeys bounds the memory store: 1M (subject, policy) states per
	// node, about 64 MiB.
	DefaultMaxKeys = 1 << 20
	// maxInline is the number of checks per subject decided without a heap
	// allocation.
	maxInline = 8
)

// Clock is a monotonic microsecond clock: the wall time when it was made
// plus the monotonic time elapsed since, so a wall clock stepped back (NTP)
// never moves it backwards. Tests inject their own now function instead.
type Clock struct {
	start time.Time
	base  int64
	now   func() time.Time
}

// NewClock returns a Clock. A nil now reads the process's monotonic clock;
// a non-nil now (an injected test clock) is read as it is.
func NewClock(now func() time.Time) *Clock {
	c := &Clock{now: now}
	if now == nil {
		c.start = time.Now()
		c.base = c.start.UnixMicro()
	}
	return c
}

// Micros returns the current time in µs since the Unix epoch.
func (c *Clock) Micros() int64 {
	if c.now != nil {
		return c.now().UnixMicro()
	}
	return c.base + int64(time.Since(c.start)/time.Microsecond)
}

// MemoryConfig configures a Memory store.
type MemoryConfig struct {
	// MaxKeys bounds the number of (subject, policy) states; 0 means
	// DefaultMaxKeys. The bound is enforced per shard (MaxKeys/256 each).
	MaxKeys int
	// Clock supplies Decide's time; nil means a monotonic NewClock(nil).
	Clock *Clock
}

// Memory is the in-process Store: 256 shards, each a mutex and an
// open-addressing table (table.go) from a 64-bit hash of (subject, policy) to
// a fixed-size state. All checks of one subject live in one shard and are
// decided under its lock, all-or-nothing. Hashes are seeded per process
// (maphash), so a client cannot aim keys at one shard; a 64-bit collision
// between two live keys is a 2^-64 event per pair.
type Memory struct {
	seed     maphash.Seed
	perShard int
	clock    *Clock
	shards   [memShards]memShard
}

type memShard struct {
	mu   sync.Mutex
	tab  table
	logs map[uint64][]int64 // sliding window log entries, by key
	scan int                // eviction cursor
	// noIdleBefore: a full eviction scan found nothing idle before this
	// time (µs), so a key spray against a shard full of throttled keys is
	// refused without rescanning it on every request.
	noIdleBefore int64
	_            [32]byte // keep neighbouring shards' locks off one cache line
}

// slot is the fixed-size state of one key (40 bytes): its hash (0: empty),
// algo.State without the log, and the time from which it is idle
// (evictable).
type slot struct {
	key     uint64
	a, b, c int64
	idle    int64
}

var _ Store = (*Memory)(nil)

// NewMemory returns an empty memory store.
func NewMemory(cfg MemoryConfig) *Memory {
	m := &Memory{seed: maphash.MakeSeed(), clock: cfg.Clock}
	maxKeys := cfg.MaxKeys
	if maxKeys <= 0 {
		maxKeys = DefaultMaxKeys
	}
	m.perShard = max(1, maxKeys/memShards)
	if m.clock == nil {
		m.clock = NewClock(nil)
	}
	// The largest table that holds perShard keys at most 13/16 full.
	limit := (m.perShard*16+12)/13 + 1
	for i := range m.shards {
		m.shards[i].logs = make(map[uint64][]int64)
		m.shards[i].tab.limit = limit
	}
	return m
}

// Decide implements Store at the store clock's current time.
func (m *Memory) Decide(_ context.Context, subject string, checks []Check, out []algo.Decision) error {
	return m.DecideAt(m.clock.Micros(), subject, checks, out)
}

// Refund implements Store at the store clock's current time.
func (m *Memory) Refund(_ context.Context, subject string, checks []Check) error {
	m.RefundAt(m.clock.Micros(), subject, checks)
	return nil
}

// Len returns the number of states held.
func (m *Memory) Len() int {
	n := 0
	for i := range m.shards {
		sh := &m.shards[i]
		sh.mu.Lock()
		n += sh.tab.n
		sh.mu.Unlock()
	}
	return n
}

func (m *Memory) keys(subject string, checks []Check, keys []uint64) *memShard {
	hs := maphash.String(m.seed, subject)
	for i := range checks {
		// The algorithm is part of the key: a reload that changes a
		// policy's algorithm starts it from empty state rather than
		// reading one algorithm's state as another's.
		hp := maphash.String(m.seed, checks[i].Policy) + uint64(checks[i].Params.Kind)
		// Mix so that (subject, policy) pairs do not cancel out.
		keys[i] = fixKey(hs ^ (hp*0x9e3779b97f4a7c15 + 0x632be59bd9b4e019))
	}
	return &m.shards[hs>>56]
}

// DecideAt is Decide at a caller-supplied time (µs), for callers that read
// the clock once for several decisions and for deterministic tests.
func (m *Memory) DecideAt(now int64, subject string, checks []Check, out []algo.Decision) error {
	var keyBuf [maxInline]uint64
	var stBuf [maxInline]algo.State
	keys, states := keyBuf[:0], stBuf[:0]
	if len(checks) <= maxInline {
		keys, states = keyBuf[:len(checks)], stBuf[:len(checks)]
	} else {
		keys, states = make([]uint64, len(checks)), make([]algo.State, len(checks))
	}
	sh := m.keys(subject, checks, keys)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	allowed := true
	fresh := 0
	for i := range checks {
		c := &checks[i]
		st := &states[i]
		if j := sh.tab.find(keys[i]); j >= 0 {
			sl := &sh.tab.slots[j]
			st.A, st.B, st.C = sl.a, sl.b, sl.c
			if c.Params.Kind == algo.SlidingWindowLog {
				st.Log = sh.logs[keys[i]]
			}
		} else if c.Cost > 0 {
			fresh++
		}
		out[i] = algo.Step(&c.Params, st, now, c.Cost)
		if !out[i].Allowed {
			allowed = false
		}
	}
	if !allowed {
		return nil
	}
	if fresh > 0 && sh.tab.n+fresh > m.perShard {
		if !sh.evict(now, sh.tab.n+fresh-m.perShard) {
			for i := range out {
				out[i] = algo.Decision{}
			}
			return ErrStoreFull
		}
	}
	for i := range checks {
		c := &checks[i]
		if c.Cost <= 0 {
			continue
		}
		// Found again (cache-hot) rather than kept by index: an insert may
		// grow the table and an eviction shifts slots.
		j := sh.tab.find(keys[i])
		if j < 0 {
			j = sh.tab.insert(keys[i])
		}
		st := &states[i]
		sh.tab.slots[j] = slot{key: keys[i], a: st.A, b: st.B, c: st.C, idle: algo.IdleAt(&c.Params, st)}
		if c.Params.Kind == algo.SlidingWindowLog {
			sh.logs[keys[i]] = st.Log
		}
	}
	return nil
}

// RefundAt is Refund at a caller-supplied time (µs).
func (m *Memory) RefundAt(now int64, subject string, checks []Check) {
	var keyBuf [maxInline]uint64
	keys := keyBuf[:0]
	if len(checks) <= maxInline {
		keys = keyBuf[:len(checks)]
	} else {
		keys = make([]uint64, len(checks))
	}
	sh := m.keys(subject, checks, keys)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	for i := range checks {
		c := &checks[i]
		j := sh.tab.find(keys[i])
		if j < 0 {
			continue
		}
		sl := &sh.tab.slots[j]
		st := algo.State{A: sl.a, B: sl.b, C: sl.c}
		if c.Params.Kind == algo.SlidingWindowLog {
			st.Log = sh.logs[keys[i]]
		}
		algo.Refund(&c.Params, &st, now, c.Cost)
		sl.a, sl.b, sl.c, sl.idle = st.A, st.B, st.C, algo.IdleAt(&c.Params, &st)
		if c.Params.Kind == algo.SlidingWindowLog {
			sh.logs[keys[i]] = st.Log
		}
	}
}

// evict frees idle slots (idle time <= now: the window is over or the
// bucket full, so forgetting the state changes no decision) until at least
// need are free, scanning the table at most about once from where the last
// scan stopped. It frees a batch (1/64 of the shard) at once so that a full
// shard does not scan on every insert. It reports whether enough room was
// made; throttled state is never evicted.
func (sh *memShard) evict(now int64, need int) bool {
	if now < sh.noIdleBefore {
		return false
	}
	want := max(need, sh.tab.n/64)
	freed := 0
	size := len(sh.tab.slots)
	minIdle := int64(math.MaxInt64)
	// A removal shifts a later slot into the hole, so the same index is
	// looked at again; visits bound the scan at size+freed steps.
	for visits := 0; visits < size+want && freed < want; visits++ {
		if sh.scan >= size {
			sh.scan = 0
		}
		sl := &sh.tab.slots[sh.scan]
		if sl.key == 0 || sl.idle > now {
			if sl.key != 0 {
				minIdle = min(minIdle, sl.idle)
			}
			sh.scan++
			continue
		}
		delete(sh.logs, sl.key)
		sh.tab.remove(sh.scan)
		freed++
	}
	if freed < need {
		// Everything left is throttled until at least minIdle (a refund
		// could free a slot earlier; the new key is then refused a little
		// longer than necessary, never wrongly admitted).
		sh.noIdleBefore = minIdle
		return false
	}
	sh.noIdleBefore = 0
	return true
}
