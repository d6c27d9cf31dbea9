package gateway

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package when a test leaves goroutines behind: every
// gateway a test starts must stop its listeners, health checkers, JWKS
// refreshers, SLO loop and access-log writer on Close. The HTTP clients the
// tests use keep idle keep-alive connections, whose loops are not leaks.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
	)
}
