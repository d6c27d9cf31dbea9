package redisstore

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/portico-gw/portico/internal/ratelimit"
	"github.com/portico-gw/portico/internal/ratelimit/algo"
)

// cpuNow is this process's CPU time (user + system).
func cpuNow() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// serverCPU is the redis-server's CPU time (INFO cpu, user + system of the
// main thread and children).
func serverCPU(b *testing.B, addr string) time.Duration {
	b.Helper()
	raw := rawClient(b, addr)
	info, err := raw.Do(context.Background(), raw.B().Info().Section("cpu").Build()).ToString()
	if err != nil {
		b.Fatal(err)
	}
	var total float64
	for _, line := range strings.Split(info, "\r\n") {
		for _, f := range []string{"used_cpu_sys:", "used_cpu_user:"} {
			if v, ok := strings.CutPrefix(line, f); ok {
				x, _ := strconv.ParseFloat(v, 64)
				total += x
			}
		}
	}
	return time.Duration(total * float64(time.Second))
}

// serverStat reads one INFO field (e.g. "total_reads_processed").
func serverStat(b *testing.B, addr, section, field string) int64 {
	b.Helper()
	raw := rawClient(b, addr)
	info, err := raw.Do(context.Background(), raw.B().Info().Section(section).Build()).ToString()
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	return 0
}

func benchSubjects(n int) []string {
	s := make([]string, n)
	for i := range s {
		s[i] = fmt.Sprintf("ip=10.%d.%d.%d", i>>16&255, i>>8&255, i&255)
	}
	return s
}

// BenchmarkExact measures exact-mode decisions on a private redis-server:
// two policies per decision (one key, one script call), 10,000 subjects.
// "parallel" runs 64 concurrent callers sharing auto-pipelined connections
// and reports decisions/s and the server's reads per decision (a read is
// one network batch arriving: below 1 means decisions share round trips);
// "serial" is one caller, so ns/op is the round-trip latency.
func BenchmarkExact(b *testing.B) {
	p := startRedis(b, b.TempDir(), nil)
	s := newTestStore(b, p.addr)
	subjects := benchSubjects(10_000)
	checks := []ratelimit.Check{
		{Policy: "per-ip", Params: algo.Params{Kind: algo.TokenBucket, Limit: 100, Window: 20_000}, Cost: 1},
		{Policy: "per-min", Params: fixed(1_000_000, time.Minute), Cost: 1},
	}
	run := func(b *testing.B, parallel bool) {
		reads := serverStat(b, p.addr, "stats", "total_reads_processed")
		calls := s.calls.Load()
		cpu0, srv0 := cpuNow(), serverCPU(b, p.addr)
		var i atomic.Int64
		b.ReportAllocs()
		b.ResetTimer()
		if parallel {
			b.SetParallelism(32) // 64 callers on 2 cores
			b.RunParallel(func(pb *testing.PB) {
				out := make([]algo.Decision, len(checks))
				for pb.Next() {
					subj := subjects[i.Add(1)%int64(len(subjects))]
					if err := s.Decide(context.Background(), subj, checks, out); err != nil {
						b.Error(err)
						return
					}
				}
			})
		} else {
			out := make([]algo.Decision, len(checks))
			for n := 0; b.Loop(); n++ {
				if err := s.Decide(context.Background(), subjects[n%len(subjects)], checks, out); err != nil {
					b.Fatal(err)
				}
			}
		}
		b.StopTimer()
		d := float64(b.N)
		// The machine is shared: CPU per decision says more than wall time.
		b.ReportMetric(float64(cpuNow()-cpu0)/d, "client-cpu-ns/op")
		b.ReportMetric(float64(serverCPU(b, p.addr)-srv0)/d, "server-cpu-ns/op")
		b.ReportMetric(d/b.Elapsed().Seconds(), "decisions/s")
		b.ReportMetric(float64(serverStat(b, p.addr, "stats", "total_reads_processed")-reads)/d, "reads/decision")
		b.ReportMetric(float64(s.calls.Load()-calls)/d, "calls/decision")
	}
	b.Run("parallel", func(b *testing.B) { run(b, true) })
	b.Run("serial", func(b *testing.B) { run(b, false) })
}

// BenchmarkLeaseHotKey is one hot key decided by 64 concurrent callers in
// lease mode: script calls per decision (target <= 0.02) and ns/op of a
// local decision.
func BenchmarkLeaseHotKey(b *testing.B) {
	p := startRedis(b, b.TempDir(), nil)
	s := newTestStore(b, p.addr)
	l := NewLeaseStore(s, func() int { return 50 })
	checks := []ratelimit.Check{{Policy: "hot", Params: fixed(1_000_000_000, time.Minute), Cost: 1}}
	calls := s.calls.Load()
	b.ReportAllocs()
	b.SetParallelism(32)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		out := make([]algo.Decision, 1)
		for pb.Next() {
			if err := l.Decide(context.Background(), "hot", checks, out); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(s.calls.Load()-calls)/float64(b.N), "calls/decision")
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "decisions/s")
}
