//go:build !linux

package upstream

import "time"

func threadCPU() (time.Duration, bool) { return 0, false }
