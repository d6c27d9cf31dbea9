package main

import (
	"os"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"
	"time"
)

// tuneRuntime sets garbage-collector defaults that suit a proxy, unless the
// operator set GOGC or GOMEMLIMIT. A proxy allocates many short-lived
// objects per request and keeps a small live heap, so the default GOGC=100
// spends a large share of CPU on collections that free almost everything;
// GOGC=400 trades a few MiB of heap for that CPU. The memory limit (90% of
// the cgroup's memory.max when there is one) makes the collector work
// harder only when memory actually runs short, so the higher GOGC cannot
// push the process into an out-of-memory kill.
//
// The headroom GOGC=400 buys is garbage waiting for the next collection,
// and an idle process never reaches it: after a burst, or with thousands
// of idle keep-alive connections, the garbage of their last requests stays
// resident. So while the defaults are ours, a background loop hands that
// memory back to the OS once allocation goes quiet (see idleReclaimer).
func tuneRuntime() {
	ours := os.Getenv("GOGC") == "" && os.Getenv("GOMEMLIMIT") == ""
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		if limit := cgroupMemoryLimit(); limit > 0 {
			debug.SetMemoryLimit(limit / 10 * 9)
		}
	}
	if ours {
		go newIdleReclaimer().loop(reclaimTick)
	}
}

// cgroupMemoryLimit reads the cgroup v2 (then v1) memory limit; 0 when
// there is none.
func cgroupMemoryLimit() int64 {
	for _, path := range []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"} {
		b, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		s := strings.TrimSpace(string(b))
		if s == "max" {
			return 0
		}
		v, err := strconv.ParseInt(s, 10, 64)
		// cgroup v1 reports "no limit" as a huge number near 2^63.
		if err != nil || v <= 0 || v > 1<<50 {
			return 0
		}
		return v
	}
	return 0
}

const (
	reclaimTick = 500 * time.Millisecond
	// Under this much allocation per tick (about 1 MiB/s, some hundred
	// requests a second) the process counts as quiet. Busier than that,
	// the collector runs often enough on its own.
	quietAllocBytes = 512 << 10
	// A forced collection costs a mark of the live heap; it is worth it
	// only when it gives back at least this much, and a quarter of the live
	// heap, so a large steady heap is not marked again for a small gain.
	minReclaimBytes = 16 << 20
)

// idleReclaimer watches the runtime's allocation counter and, on the first
// quiet tick after garbage has piled up, runs one full collection and
// returns the freed pages to the OS (debug.FreeOSMemory). It then waits
// for new garbage: one idle period costs one collection.
type idleReclaimer struct {
	samples    []metrics.Sample
	lastAllocs uint64
	primed     bool
	free       func()
}

const (
	mAllocs  = iota // cumulative bytes allocated
	mLive           // live heap after the last collection
	mObjects        // heap objects, live and not yet swept dead
	mUnused         // reserved for objects, not in use
	mFree           // free and not yet returned to the OS
)

func newIdleReclaimer() *idleReclaimer {
	names := []string{
		mAllocs:  "/gc/heap/allocs:bytes",
		mLive:    "/gc/heap/live:bytes",
		mObjects: "/memory/classes/heap/objects:bytes",
		mUnused:  "/memory/classes/heap/unused:bytes",
		mFree:    "/memory/classes/heap/free:bytes",
	}
	r := &idleReclaimer{samples: make([]metrics.Sample, len(names)), free: debug.FreeOSMemory}
	for i, n := range names {
		r.samples[i].Name = n
	}
	return r
}

func (r *idleReclaimer) loop(tick time.Duration) {
	t := time.NewTicker(tick)
	defer t.Stop()
	for range t.C {
		r.step()
	}
}

// step takes one sample and reclaims when the process has been quiet since
// the previous one and enough memory would come back. It reports whether
// it reclaimed.
func (r *idleReclaimer) step() bool {
	metrics.Read(r.samples)
	allocs := r.samples[mAllocs].Value.Uint64()
	quiet := r.primed && allocs-r.lastAllocs < quietAllocBytes
	r.lastAllocs, r.primed = allocs, true
	if !quiet {
		return false
	}
	live := r.samples[mLive].Value.Uint64()
	held := r.samples[mObjects].Value.Uint64() + r.samples[mUnused].Value.Uint64() + r.samples[mFree].Value.Uint64()
	if held <= live {
		return false
	}
	if spare := held - live; spare < minReclaimBytes || spare < live/4 {
		return false
	}
	r.free()
	// The collection itself allocates a little; do not count it as traffic.
	metrics.Read(r.samples[:1])
	r.lastAllocs = r.samples[mAllocs].Value.Uint64()
	return true
}
