package main

import (
	"os"
	"runtime/debug"
	"strconv"
	"strings"
)

// tuneRuntime sets garbage-collector defaults that suit a proxy, unless the
// operator set GOGC or GOMEMLIMIT. A proxy allocates many short-lived
// objects per request and keeps a small live heap, so the default GOGC=100
// spends a large share of CPU on collections that free almost everything;
// GOGC=400 trades a few MiB of heap for that CPU. The memory limit (90% of
// the cgroup's memory.max when there is one) makes the collector work
// harder only when memory actually runs short, so the higher GOGC cannot
// push the process into an out-of-memory kill.
func tuneRuntime() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		if limit := cgroupMemoryLimit(); limit > 0 {
			debug.SetMemoryLimit(limit / 10 * 9)
		}
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
