package redisstore

import (
	"testing"

	"go.uber.org/goleak"
)

// Every Store, heartbeat and test node must be closed by the end of a test
// run; rueidis's connection goroutines included.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
