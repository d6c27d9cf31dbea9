package redisstore

import (
	"testing"

	"github.com/portico-gw/portico/internal/config"
)

// TestAccuracyLong is the full accuracy matrix on the shared Redis: every
// kind at 2x and 10x offered load in exact mode, and every leasable kind at
// 2x and 10x in lease mode (a limit of 10,000 per window), 50 nodes each.
// It runs with PORTICO_LONG=1 (minutes; the default run has TestAccuracy's
// subset, and TestCluster's long cases join in too).
func TestAccuracyLong(t *testing.T) {
	if !longTests() {
		t.Skip("set PORTICO_LONG=1 for the full accuracy matrix")
	}
	addr := sharedRedisAddr(t)
	for _, c := range accuracyCases(true) {
		t.Run(c.String(), func(t *testing.T) {
			before := scriptCalls(t, []string{addr})
			evs, res := runAccuracy(t, config.Store{URL: "redis://" + addr}, c, nil)
			res.calls = scriptCalls(t, []string{addr}) - before
			checkAccuracy(t, c, evs, &res)
			logAccuracy(t, c, res)
		})
	}
}
