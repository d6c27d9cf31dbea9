package main

import (
	"os"
	"runtime"
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
	// Goroutines that ended since the last reclaim (or the peak since) that
	// make a collection worth it: each served connection leaves a stack and
	// net/http's pooled buffers behind, some 16 KiB, which only a collection
	// frees (see server.idle_release_after).
	minReclaimGoroutines = 1000
)

// idleReclaimer watches the runtime's allocation counter and, on the first
// quiet tick after garbage has piled up or many goroutines have ended,
// collects and returns the freed pages to the OS. It then waits for new
// garbage: one idle period costs one reclaim.
type idleReclaimer struct {
	samples        []metrics.Sample
	lastAllocs     uint64
	peakGoroutines uint64 // since the last reclaim
	primed         bool
	free           func()
}

// reclaim runs two collections: the first moves what sync.Pools hold
// (net/http's per-connection buffers among them) to their victim caches,
// the second frees it and hands the freed pages, dead goroutines' stacks
// included, back to the OS.
func reclaim() {
	runtime.GC()
	debug.FreeOSMemory()
}

const (
	mAllocs     = iota // cumulative bytes allocated
	mLive              // live heap after the last collection
	mObjects           // heap objects, live and not yet swept dead
	mUnused            // reserved for objects, not in use
	mFree              // free and not yet returned to the OS
	mGoroutines        // goroutines alive now
)

func newIdleReclaimer() *idleReclaimer {
	names := []string{
		mAllocs:     "/gc/heap/allocs:bytes",
		mLive:       "/gc/heap/live:bytes",
		mObjects:    "/memory/classes/heap/objects:bytes",
		mUnused:     "/memory/classes/heap/unused:bytes",
		mFree:       "/memory/classes/heap/free:bytes",
		mGoroutines: "/sched/goroutines:goroutines",
	}
	r := &idleReclaimer{samples: make([]metrics.Sample, len(names)), free: reclaim}
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
	goroutines := r.samples[mGoroutines].Value.Uint64()
	r.peakGoroutines = max(r.peakGoroutines, goroutines)
	if !quiet {
		return false
	}
	live := r.samples[mLive].Value.Uint64()
	held := r.samples[mObjects].Value.Uint64() + r.samples[mUnused].Value.Uint64() + r.samples[mFree].Value.Uint64()
	spare := held - min(held, live)
	garbage := spare >= minReclaimBytes && spare >= live/4
	ended := r.peakGoroutines-goroutines >= minReclaimGoroutines
	if !garbage && !ended {
		return false
	}
	r.free()
	r.peakGoroutines = goroutines
	// The collection itself allocates a little; do not count it as traffic.
	metrics.Read(r.samples[:1])
	r.lastAllocs = r.samples[mAllocs].Value.Uint64()
	return true
}
