//go:build unix

package aggregate

import (
	"syscall"
	"time"
)

// processCPU is the user and system CPU time of this process so far; the
// benchmarks that report it keep their backends in a child process, so it
// is the endpoint's own cost (with the round tripper's).
func processCPU() (time.Duration, bool) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, false
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), true
}
