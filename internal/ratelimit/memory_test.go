package ratelimit

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/portico-gw/portico/internal/ratelimit/algo"
)

const sec = int64(1_000_000)

// t0 is a midnight in 2026 in µs (a multiple of every window used here).
const t0 = int64(20775*86_400) * sec

func fixed(limit int64, window time.Duration) algo.Params {
	return algo.Params{Kind: algo.FixedWindow, Limit: limit, Window: window.Microseconds()}
}

func TestMemoryAllOrNothing(t *testing.T) {
	m := NewMemory(MemoryConfig{})
	checks := []Check{
		{Policy: "per-second", Params: fixed(5, time.Second), Cost: 1},
		{Policy: "per-hour", Params: fixed(3, time.Hour), Cost: 1},
		{Policy: "log", Params: algo.Params{Kind: algo.SlidingWindowLog, Limit: 10, Window: sec}, Cost: 1},
	}
	out := make([]algo.Decision, len(checks))
	for i := range 3 {
		if err := m.DecideAt(t0+int64(i), "ip=1", checks, out); err != nil {
			t.Fatal(err)
		}
		for j, d := range out {
			if !d.Allowed {
				t.Fatalf("request %d check %d rejected: %+v", i, j, d)
			}
		}
	}
	// The per-hour policy now rejects; the others must not be consumed.
	for i := range 10 {
		if err := m.DecideAt(t0+10+int64(i), "ip=1", checks, out); err != nil {
			t.Fatal(err)
		}
		if out[1].Allowed {
			t.Fatal("per-hour admitted a 4th request")
		}
	}
	peek := []Check{
		{Policy: "per-second", Params: fixed(5, time.Second)},
		{Policy: "log", Params: algo.Params{Kind: algo.SlidingWindowLog, Limit: 10, Window: sec}},
	}
	pout := make([]algo.Decision, 2)
	if err := m.DecideAt(t0+100, "ip=1", peek, pout); err != nil {
		t.Fatal(err)
	}
	if pout[0].Remaining != 2 || pout[1].Remaining != 7 {
		t.Fatalf("after rejections: per-second remaining %d (want 2), log remaining %d (want 7)", pout[0].Remaining, pout[1].Remaining)
	}
	// Another subject is independent state.
	if err := m.DecideAt(t0+100, "ip=2", checks, out); err != nil || !out[1].Allowed {
		t.Fatalf("other subject: %v %+v", err, out[1])
	}
}

func TestMemoryRefund(t *testing.T) {
	m := NewMemory(MemoryConfig{})
	checks := []Check{
		{Policy: "a", Params: fixed(2, time.Minute), Cost: 1},
		{Policy: "b", Params: algo.Params{Kind: algo.TokenBucket, Limit: 2, Window: sec}, Cost: 1},
	}
	out := make([]algo.Decision, 2)
	for range 2 {
		if err := m.DecideAt(t0, "s", checks, out); err != nil || !out[0].Allowed || !out[1].Allowed {
			t.Fatalf("%v %+v", err, out)
		}
		m.RefundAt(t0, "s", checks)
	}
	_ = m.DecideAt(t0, "s", checks, out)
	if out[0].Remaining != 1 || out[1].Remaining != 1 {
		t.Fatalf("refunds did not give units back: %+v", out)
	}
}

func TestMemoryEvictsOnlyIdle(t *testing.T) {
	// 256 shards * 2 keys = 512 states at most.
	m := NewMemory(MemoryConfig{MaxKeys: 512})
	p := []Check{{Policy: "p", Params: fixed(1, time.Second), Cost: 1}}
	out := make([]algo.Decision, 1)
	var full int
	held := map[int]bool{}
	// Fill with throttled keys (limit 1, used 1) until the store refuses.
	for i := range 5000 {
		err := m.DecideAt(t0, "k"+strconv.Itoa(i), p, out)
		if errors.Is(err, ErrStoreFull) {
			full++
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		held[i] = true
	}
	if full == 0 {
		t.Fatal("store never refused a new key while full of throttled keys")
	}
	if n := m.Len(); n > 512 {
		t.Fatalf("store holds %d keys, bound 512", n)
	}
	// Every key admitted earlier is still throttled: nothing was evicted.
	for i := range held {
		if err := m.DecideAt(t0+1, "k"+strconv.Itoa(i), p, out); err != nil || out[0].Allowed {
			t.Fatalf("throttled key %d: err %v, allowed %v: it was evicted", i, err, out[0].Allowed)
		}
	}
	// Once the window is over, the state is idle and new keys evict it
	// (each new key throttled for its own second, then idle in turn).
	for i := range 1000 {
		if err := m.DecideAt(t0+sec*int64(1+i), "new"+strconv.Itoa(i), p, out); err != nil {
			t.Fatalf("new key %d after the window: %v", i, err)
		}
	}
	if n := m.Len(); n > 512 {
		t.Fatalf("store holds %d keys, bound 512", n)
	}
}

// TestMemoryHerd releases 200 goroutines on a barrier against limit 100 and
// requires exactly 100 admissions, for every algorithm.
func TestMemoryHerd(t *testing.T) {
	params := map[string]algo.Params{
		"fixed":   fixed(100, time.Minute),
		"counter": {Kind: algo.SlidingWindowCounter, Limit: 100, Window: 60 * sec},
		"log":     {Kind: algo.SlidingWindowLog, Limit: 100, Window: 60 * sec},
		"token":   {Kind: algo.TokenBucket, Limit: 100, Window: 60 * sec},
		"leaky":   {Kind: algo.LeakyBucket, Limit: 100, Window: 60 * sec},
	}
	for name, p := range params {
		t.Run(name, func(t *testing.T) {
			m := NewMemory(MemoryConfig{})
			checks := []Check{{Policy: name, Params: p, Cost: 1}}
			var admitted atomic.Int64
			var start, done sync.WaitGroup
			start.Add(1)
			for range 200 {
				done.Go(func() {
					out := make([]algo.Decision, 1)
					start.Wait()
					if err := m.Decide(context.Background(), "hot", checks, out); err != nil {
						t.Error(err)
					}
					if out[0].Allowed {
						admitted.Add(1)
					}
				})
			}
			start.Done()
			done.Wait()
			if n := admitted.Load(); n != 100 {
				t.Fatalf("admitted %d, want exactly 100", n)
			}
		})
	}
}

func TestClockMonotonic(t *testing.T) {
	c := NewClock(nil)
	prev := c.Micros()
	if d := prev - time.Now().UnixMicro(); d > sec || d < -sec {
		t.Fatalf("clock is %dµs away from the wall clock", d)
	}
	for range 1000 {
		now := c.Micros()
		if now < prev {
			t.Fatalf("clock went back from %d to %d", prev, now)
		}
		prev = now
	}
	fake := time.Unix(100, 0)
	if got := NewClock(func() time.Time { return fake }).Micros(); got != 100*sec {
		t.Fatalf("injected clock read %d", got)
	}
}

func benchSubjects(n int) []string {
	s := make([]string, n)
	for i := range s {
		s[i] = "ip=10." + strconv.Itoa(i/65536) + "." + strconv.Itoa(i/256%256) + "." + strconv.Itoa(i%256)
	}
	return s
}

// BenchmarkMemoryDecide: one check per decision on 100k distinct keys.
// "prebuilt" passes the time in and uses prebuilt subject strings;
// "clock+key" reads the clock and builds the subject per decision.
func BenchmarkMemoryDecide(b *testing.B) {
	const keys = 100_000
	subjects := benchSubjects(keys)
	checks := []Check{{Policy: "per-ip", Params: algo.Params{Kind: algo.TokenBucket, Limit: 1 << 30, Window: 1}, Cost: 1}}
	warm := func(m *Memory) {
		out := make([]algo.Decision, 1)
		for _, s := range subjects {
			_ = m.DecideAt(t0, s, checks, out)
		}
	}
	b.Run("prebuilt", func(b *testing.B) {
		m := NewMemory(MemoryConfig{})
		warm(m)
		out := make([]algo.Decision, 1)
		b.ReportAllocs()
		i := 0
		now := t0
		cpu := startCPU()
		for b.Loop() {
			i++
			if i == keys {
				i = 0
				now++
			}
			_ = m.DecideAt(now, subjects[i], checks, out)
		}
		cpu.report(b)
	})
	b.Run("prebuilt-1k", func(b *testing.B) {
		// 1024 distinct keys: the state stays in cache, so this measures
		// the code rather than memory latency.
		m := NewMemory(MemoryConfig{})
		out := make([]algo.Decision, 1)
		b.ReportAllocs()
		i := 0
		cpu := startCPU()
		for b.Loop() {
			i = (i + 1) & 1023
			_ = m.DecideAt(t0, subjects[i], checks, out)
		}
		cpu.report(b)
	})
	b.Run("clock+key", func(b *testing.B) {
		m := NewMemory(MemoryConfig{})
		warm(m)
		out := make([]algo.Decision, 1)
		buf := make([]byte, 0, 64)
		ctx := context.Background()
		b.ReportAllocs()
		i := 0
		cpu := startCPU()
		for b.Loop() {
			i++
			if i == keys {
				i = 0
			}
			buf = append(buf[:0], "ip=10."...)
			buf = strconv.AppendInt(buf, int64(i/65536), 10)
			buf = append(buf, '.')
			buf = strconv.AppendInt(buf, int64(i/256%256), 10)
			buf = append(buf, '.')
			buf = strconv.AppendInt(buf, int64(i%256), 10)
			_ = m.Decide(ctx, unsafe.String(unsafe.SliceData(buf), len(buf)), checks, out)
		}
		cpu.report(b)
	})
	b.Run("parallel", func(b *testing.B) {
		m := NewMemory(MemoryConfig{})
		warm(m)
		b.ReportAllocs()
		var seq atomic.Int64
		cpu := startCPU()
		defer cpu.report(b)
		b.RunParallel(func(pb *testing.PB) {
			out := make([]algo.Decision, 1)
			i := int(seq.Add(1)) * 7919
			for pb.Next() {
				i++
				_ = m.DecideAt(t0, subjects[i%keys], checks, out)
			}
		})
	})
}

// cpuMeter reports CPU time (user+system of the process) per operation
// beside the wall-clock ns/op: on a machine shared with other work the wall
// figure measures the contention, the CPU figure the code.
type cpuMeter struct{ start time.Duration }

func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func startCPU() cpuMeter { return cpuMeter{start: processCPU()} }

func (c cpuMeter) report(b *testing.B) {
	if b.N > 0 {
		b.ReportMetric(float64(processCPU()-c.start)/float64(b.N), "cpu-ns/op")
	}
}

// TestAllocationBudget pins the memory store's hot path: no allocation per
// decision (TestMiddlewareAllocs pins the middleware's one).
func TestAllocationBudget(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation budgets are not meaningful under the race detector")
	}
	m := NewMemory(MemoryConfig{})
	checks := []Check{{Policy: "p", Params: algo.Params{Kind: algo.TokenBucket, Limit: 1 << 30, Window: 1}, Cost: 1}}
	out := make([]algo.Decision, 1)
	now := t0
	if n := testing.AllocsPerRun(1000, func() {
		now++
		_ = m.DecideAt(now, "ip=10.1.2.3", checks, out)
	}); n != 0 {
		t.Fatalf("memory decision allocates %v times", n)
	}
}

// TestMemorySlidingLogUntouchedWhenAnotherCheckRejects: a sliding-log check
// that would pass must leave its stored log as it was when another check of
// the same subject rejects (all-or-nothing), even though its step trimmed
// expired entries.
func TestMemorySlidingLogUntouchedWhenAnotherCheckRejects(t *testing.T) {
	m := NewMemory(MemoryConfig{})
	log := algo.Params{Kind: algo.SlidingWindowLog, Limit: 3, Window: 10_000_000}
	fixed := algo.Params{Kind: algo.FixedWindow, Limit: 1, Window: 100_000_000}
	checks := []Check{{Policy: "log", Params: log, Cost: 1}, {Policy: "fixed", Params: fixed, Cost: 1}}
	out := make([]algo.Decision, 2)
	if err := m.DecideAt(1, "s", checks, out); err != nil || !out[0].Allowed || !out[1].Allowed {
		t.Fatalf("first decision: %+v %v", out, err)
	}
	// 11 s later the log's entry has expired; the fixed window still rejects.
	if err := m.DecideAt(11_000_001, "s", checks, out); err != nil || out[1].Allowed {
		t.Fatalf("second decision: %+v %v", out, err)
	}
	peek := []Check{{Policy: "log", Params: log, Cost: 0}}
	if err := m.DecideAt(12_000_000, "s", peek, out[:1]); err != nil {
		t.Fatal(err)
	}
	if out[0].Remaining != 3 {
		t.Fatalf("log remaining %d after a rejected joint decision, want 3 (nothing consumed)", out[0].Remaining)
	}
}
