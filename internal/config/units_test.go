package config

import (
	"testing"
	"time"
)

func TestParseDuration(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
		err  bool
	}{
		{in: "0", want: 0},
		{in: "0s", want: 0},
		{in: "300ms", want: 300 * time.Millisecond},
		{in: "5s", want: 5 * time.Second},
		{in: "1m30s", want: 90 * time.Second},
		{in: "1.5h", want: 90 * time.Minute},
		{in: "28d", want: 28 * 24 * time.Hour},
		{in: "2w", want: 14 * 24 * time.Hour},
		{in: "1w2d3h", want: 9*24*time.Hour + 3*time.Hour},
		{in: " 10s ", want: 10 * time.Second},
		{in: "", err: true},
		{in: "10", err: true},
		{in: "5s3", err: true},
		{in: "-5s", err: true},
		{in: "1y", err: true},
		{in: "ms", err: true},
		{in: ".s", err: true},
		{in: "1us", err: true},
		{in: "5 s", err: true},
		{in: "9999999999w", err: true},
		{in: "1e3s", err: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseDuration(tt.in)
			if (err != nil) != tt.err {
				t.Fatalf("ParseDuration(%q) error = %v, want error %v", tt.in, err, tt.err)
			}
			if err == nil && got.D() != tt.want {
				t.Errorf("ParseDuration(%q) = %v, want %v", tt.in, got.D(), tt.want)
			}
		})
	}
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		err  bool
	}{
		{in: "0", want: 0},
		{in: "65536", want: 65536},
		{in: "512B", want: 512},
		{in: "1KiB", want: 1024},
		{in: "10MiB", want: 10 << 20},
		{in: "2GiB", want: 2 << 30},
		{in: "1KB", want: 1000},
		{in: "5MB", want: 5_000_000},
		{in: "1GB", want: 1_000_000_000},
		{in: "10 MiB", want: 10 << 20},
		{in: "", err: true},
		{in: "MiB", err: true},
		{in: "-1", err: true},
		{in: "1.5MiB", err: true},
		{in: "1TiB", err: true},
		{in: "1kib", err: true},
		{in: "99999999999999999999", err: true},
		{in: "9999999999GiB", err: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseSize(tt.in)
			if (err != nil) != tt.err {
				t.Fatalf("ParseSize(%q) error = %v, want error %v", tt.in, err, tt.err)
			}
			if err == nil && int64(got) != tt.want {
				t.Errorf("ParseSize(%q) = %d, want %d", tt.in, got, tt.want)
			}
		})
	}
}

// TestUnitsInYAML checks that Size takes plain integers and strings, and
// Duration only strings with a unit (or 0).
func TestUnitsInYAML(t *testing.T) {
	c, err := load1(t, `version: 1
server:
  max_header_bytes: 4096
  max_body_bytes: 2MiB
  idle_timeout: 1m
  drain_delay: 0
`+minimalRoute)
	if err != nil {
		t.Fatal(err)
	}
	s := c.Server
	if s.MaxHeaderBytes != 4096 || s.MaxBodyBytes != 2<<20 || s.IdleTimeout.D() != time.Minute || s.DrainDelay != 0 {
		t.Errorf("got %+v", s)
	}
}
