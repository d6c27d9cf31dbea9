//go:build unix

package auth

import (
	"syscall"
	"testing"
	"time"
)

// reportCPU adds a cpu-ns/op metric: the process CPU time (user + system)
// spent per iteration. On a shared, overloaded machine wall-clock ns/op
// includes time spent waiting for a core; CPU time does not, so it is the
// better figure to compare across runs there.
func reportCPU(b *testing.B, run func()) {
	start := cpuTime()
	run()
	if n := b.N; n > 0 {
		b.ReportMetric(float64(cpuTime()-start)/float64(n), "cpu-ns/op")
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
