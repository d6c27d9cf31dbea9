package main

import (
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// rssBytes reads the process's resident set from /proc, as an operator
// would see it.
func rssBytes(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skip("no /proc/self/status:", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				t.Fatalf("VmRSS line %q: %v", line, err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmRSS in /proc/self/status")
	return 0
}

var sink [64][]byte

// makeGarbage allocates n bytes in 8 KiB pieces, touches them and drops
// each soon after, like the requests of a burst: at most 512 KiB is live at
// a time.
func makeGarbage(n int) {
	for i := 0; i < n/(8<<10); i++ {
		b := make([]byte, 8<<10)
		for j := 0; j < len(b); j += 4096 {
			b[j] = 1
		}
		sink[i%len(sink)] = b
	}
	sink = [64][]byte{}
}

// quietHeap starts from a collected heap with the collector off, so the
// garbage a test makes is all still held when the reclaimer looks.
func quietHeap(t *testing.T) *idleReclaimer {
	debug.FreeOSMemory()
	old := debug.SetGCPercent(-1)
	t.Cleanup(func() { debug.SetGCPercent(old) })
	return newIdleReclaimer()
}

// reclaimsAtLeast takes one step of r, which must reclaim and give at
// least n bytes of RSS back.
func reclaimsAtLeast(t *testing.T, r *idleReclaimer, n int64, what string) {
	t.Helper()
	before := rssBytes(t)
	if !r.step() {
		t.Fatalf("%s did not reclaim", what)
	}
	if after := rssBytes(t); before-after < n {
		t.Errorf("%s: RSS went from %d MiB to %d MiB; want at least %d MiB back", what, before>>20, after>>20, n>>20)
	}
}

func TestIdleReclaimerGivesMemoryBackWhenQuiet(t *testing.T) {
	r := quietHeap(t)
	r.step() // primes the allocation counter

	makeGarbage(96 << 20)
	if r.step() {
		t.Fatal("reclaimed in the tick that allocated 96 MiB: the process was busy")
	}
	reclaimsAtLeast(t, r, 48<<20, "a quiet tick with 96 MiB of garbage held")
	if r.step() {
		t.Error("reclaimed again with no new garbage: one idle period should cost one collection")
	}
}

func TestIdleReclaimerLeavesSmallGainsAlone(t *testing.T) {
	r := quietHeap(t)
	r.step()
	makeGarbage(4 << 20)
	r.step() // the busy tick
	if r.step() {
		t.Error("reclaimed for 4 MiB of garbage, under the 16 MiB floor")
	}
}

// deepStack grows the calling goroutine's stack by about n KiB.
//
//go:noinline
func deepStack(n int, done <-chan struct{}) byte {
	var pad [1024]byte
	if n <= 1 {
		<-done
		return pad[0]
	}
	pad[1] = deepStack(n-1, done)
	return pad[1]
}

// The goroutines of served connections end (net/http lets go of idle
// ones, see server.idle_release_after) without leaving heap garbage: their
// stacks and pooled buffers come back only through collections, which a
// quiet process does not run on its own.
func TestIdleReclaimerGivesBackWhatEndedGoroutinesHeld(t *testing.T) {
	r := quietHeap(t)
	r.step()
	const n = 3000
	var pool sync.Pool
	done := make(chan struct{})
	var started, ended sync.WaitGroup
	for range n {
		started.Add(1)
		ended.Add(1)
		go func() {
			defer ended.Done()
			buf := make([]byte, 4<<10)
			for j := range len(buf) / 4096 {
				buf[j*4096] = 1
			}
			started.Done()
			deepStack(12, done)
			pool.Put(buf) // as net/http returns a connection's buffers
		}()
	}
	started.Wait()
	r.step() // the tick that saw them run, and allocate
	if r.step() {
		t.Fatal("reclaimed while the goroutines still run")
	}
	close(done)
	ended.Wait()
	// Each held a 16 KiB stack and a 4 KiB buffer: about 58 MiB in all.
	reclaimsAtLeast(t, r, 30<<20, "a quiet tick after 3,000 goroutines ended")
	if r.step() {
		t.Error("reclaimed again with nothing new ended")
	}
}
