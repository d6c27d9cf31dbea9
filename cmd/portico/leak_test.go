package main

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package when the demo or a command leaves goroutines
// behind after it stopped. Idle keep-alive loops of the tests' HTTP clients
// are not leaks.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
	)
}
