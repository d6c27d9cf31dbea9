//go:build !unix

package auth

import "testing"

func reportCPU(_ *testing.B, run func()) { run() }
