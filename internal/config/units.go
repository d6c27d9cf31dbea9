package config

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Duration is a time.Duration written as "300ms", "1m30s", "28d" or "2w".
// Units: ms, s, m, h, d (24h) and w (7d). A bare number is an error, so a
// forgotten unit never means nanoseconds.
type Duration time.Duration

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

func (d Duration) String() string { return time.Duration(d).String() }

// ParseDuration parses a duration with the units ms, s, m, h, d and w.
func ParseDuration(s string) (Duration, error) {
	in := strings.TrimSpace(s)
	if in == "" {
		return 0, fmt.Errorf("empty duration")
	}
	if in == "0" {
		return 0, nil
	}
	var total time.Duration
	rest := in
	for rest != "" {
		i := 0
		for i < len(rest) && (rest[i] >= '0' && rest[i] <= '9' || rest[i] == '.') {
			i++
		}
		if i == 0 {
			return 0, fmt.Errorf("invalid duration %q", s)
		}
		num, err := strconv.ParseFloat(rest[:i], 64)
		if err != nil {
			return 0, fmt.Errorf("invalid duration %q", s)
		}
		rest = rest[i:]
		j := 0
		for j < len(rest) && (rest[j] < '0' || rest[j] > '9') && rest[j] != '.' {
			j++
		}
		var unit time.Duration
		switch rest[:j] {
		case "ms":
			unit = time.Millisecond
		case "s":
			unit = time.Second
		case "m":
			unit = time.Minute
		case "h":
			unit = time.Hour
		case "d":
			unit = 24 * time.Hour
		case "w":
			unit = 7 * 24 * time.Hour
		case "":
			return 0, fmt.Errorf("invalid duration %q: missing unit (ms, s, m, h, d, w)", s)
		default:
			return 0, fmt.Errorf("invalid duration %q: unknown unit %q (ms, s, m, h, d, w)", s, rest[:j])
		}
		rest = rest[j:]
		v := num * float64(unit)
		if v > float64(1<<62) || total+time.Duration(v) < total {
			return 0, fmt.Errorf("invalid duration %q: too large", s)
		}
		total += time.Duration(v)
	}
	return Duration(total), nil
}

// Size is a byte count written as "65536", "1KiB", "10MiB", "1GiB" (binary)
// or "1KB", "1MB", "1GB" (decimal).
type Size int64

// ParseSize parses a byte size with an optional unit.
func ParseSize(s string) (Size, error) {
	in := strings.TrimSpace(s)
	i := 0
	for i < len(in) && in[i] >= '0' && in[i] <= '9' {
		i++
	}
	if i == 0 {
		return 0, fmt.Errorf("invalid size %q", s)
	}
	n, err := strconv.ParseInt(in[:i], 10, 64)
	if err != nil {
		// Only digits were parsed, so the one possible error is range.
		return 0, fmt.Errorf("invalid size %q: too large", s)
	}
	var mult int64
	switch strings.TrimSpace(in[i:]) {
	case "", "B":
		mult = 1
	case "KiB":
		mult = 1 << 10
	case "MiB":
		mult = 1 << 20
	case "GiB":
		mult = 1 << 30
	case "KB":
		mult = 1000
	case "MB":
		mult = 1000 * 1000
	case "GB":
		mult = 1000 * 1000 * 1000
	default:
		return 0, fmt.Errorf("invalid size %q: unknown unit %q (KiB, MiB, GiB, KB, MB, GB)", s, in[i:])
	}
	if n > (1<<62)/mult {
		return 0, fmt.Errorf("invalid size %q: too large", s)
	}
	return Size(n * mult), nil
}
