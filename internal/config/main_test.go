package config

import (
	"testing"

	"go.uber.org/goleak"
)

// Load parses several files on parallel goroutines; none may outlive it.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
