package upstream

import (
	"syscall"
	"time"
)

// threadCPU returns the CPU time consumed by the calling OS thread. On a
// shared, oversubscribed machine wall-clock ns/op mostly measures waiting
// for a core; CPU time of a locked thread measures the work.
func threadCPU() (time.Duration, bool) {
	const rusageThread = 1 // RUSAGE_THREAD, Linux only
	var ru syscall.Rusage
	if err := syscall.Getrusage(rusageThread, &ru); err != nil {
		return 0, false
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), true
}
