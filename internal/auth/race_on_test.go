//go:build race

package auth

// raceEnabled: the race detector allocates on its own, so allocation
// budgets are only checked without it.
const raceEnabled = true
