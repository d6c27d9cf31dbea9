//go:build race

package compress

// raceEnabled: the race detector makes sync.Pool drop objects at random,
// so allocation budgets are only checked without it.
const raceEnabled = true
