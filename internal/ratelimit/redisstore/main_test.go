package redisstore

import (
	"testing"

	"go.uber.org/goleak"
)

// Every Store, heartbeat and test node must be closed by the end of a test
// run, rueidis's connection goroutines included.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// After a slot moves, rueidis closes the connections it dropped
		// five seconds later and delays a topology refresh by up to a
		// second, in goroutines that sleep and end on their own; no Close
		// waits for them.
		goleak.IgnoreAnyFunction("github.com/redis/rueidis.(*clusterClient)._refresh.func2"),
		goleak.IgnoreAnyFunction("github.com/redis/rueidis.(*clusterClient).redirectOrNew.func1"),
		goleak.IgnoreAnyFunction("github.com/redis/rueidis.(*call).DelayDo.func1"),
	)
}
