package config

import (
	"testing"
	"time"
)

// upstreams.NAME.read_idle_timeout: unset is the default (5m), a value is
// kept, and 0 turns the bound off rather than meaning "unset".
func TestReadIdleTimeout(t *testing.T) {
	for _, tc := range []struct {
		name, field string
		want        time.Duration
	}{
		{"default", "", 5 * time.Minute},
		{"explicit", "read_idle_timeout: 30s", 30 * time.Second},
		{"off", "read_idle_timeout: 0", 0},
		{"off with unit", "read_idle_timeout: 0s", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := mustLoad(t, "version: 1\nupstreams:\n  app:\n    targets: [{url: \"http://127.0.0.1:7001\"}]\n    "+
				tc.field+"\nroutes:\n  - {name: r, match: {path: /}, upstream: app, public: true}\n")
			got := c.Upstreams["app"].ReadIdleTimeout
			if got == nil || got.D() != tc.want {
				t.Errorf("read_idle_timeout = %v, want %v", got, tc.want)
			}
		})
	}
}
