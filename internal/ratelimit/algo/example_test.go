package algo_test

import (
	"fmt"

	"github.com/portico-gw/portico/internal/ratelimit/algo"
)

// A token bucket of burst 3 refilling one unit every 100ms: three requests
// pass at once, the fourth is told when to come back, and nothing it did
// changed the state.
func ExampleStep() {
	p := algo.Params{Kind: algo.TokenBucket, Limit: 3, Window: 100_000}
	var s algo.State
	now := int64(1_800_000_000_000_000) // µs
	for i := range 4 {
		d := algo.Step(&p, &s, now, 1)
		fmt.Printf("request %d: allowed=%v remaining=%d retry_after=%dµs reset_after=%dµs\n",
			i+1, d.Allowed, d.Remaining, d.RetryAfter, d.ResetAfter)
	}
	// Output:
	// request 1: allowed=true remaining=2 retry_after=0µs reset_after=100000µs
	// request 2: allowed=true remaining=1 retry_after=0µs reset_after=200000µs
	// request 3: allowed=true remaining=0 retry_after=0µs reset_after=300000µs
	// request 4: allowed=false remaining=0 retry_after=100000µs reset_after=300000µs
}
