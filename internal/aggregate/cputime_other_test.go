//go:build !unix

package aggregate

import "time"

func processCPU() (time.Duration, bool) { return 0, false }
