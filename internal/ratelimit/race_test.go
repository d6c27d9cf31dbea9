//go:build race

package ratelimit

// raceEnabled: the race detector makes sync.Pool drop items, so allocation
// budgets are not checked under it.
const raceEnabled = true
