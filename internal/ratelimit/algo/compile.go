package algo

import (
	"fmt"
	"time"

	"github.com/portico-gw/portico/internal/config"
)

// Validate reports whether p keeps every computation of Step exact and free
// of overflow (all values below 2^53).
func (p *Params) Validate() error {
	switch p.Kind {
	case FixedWindow, SlidingWindowCounter, SlidingWindowLog, TokenBucket, LeakyBucket:
	default:
		return fmt.Errorf("unknown algorithm kind %d", p.Kind)
	}
	if p.Limit < 1 || p.Limit > MaxLimit {
		return fmt.Errorf("limit %d out of range [1, %d]", p.Limit, MaxLimit)
	}
	if p.Kind == SlidingWindowLog && p.Limit > MaxLogLimit {
		return fmt.Errorf("sliding_window_log limit %d above %d (use sliding_window_counter)", p.Limit, MaxLogLimit)
	}
	if p.Window < 1 || p.Window > MaxWindow {
		return fmt.Errorf("window %dµs out of range [1µs, %dµs]", p.Window, MaxWindow)
	}
	if p.Kind.Bucket() && p.Limit > MaxProduct/p.Window {
		return fmt.Errorf("burst %d times emission interval %dµs exceeds %dµs", p.Limit, p.Window, MaxProduct)
	}
	if p.MaxDelay < 0 || p.MaxDelay > MaxProduct {
		return fmt.Errorf("max_delay %dµs out of range", p.MaxDelay)
	}
	if p.MaxDelay > 0 && p.Kind != LeakyBucket {
		return fmt.Errorf("max_delay applies to leaky_bucket only")
	}
	return nil
}

// ParseKind maps a config algorithm name to its Kind.
func ParseKind(name string) (Kind, error) {
	switch name {
	case "fixed_window":
		return FixedWindow, nil
	case "sliding_window_log":
		return SlidingWindowLog, nil
	case "sliding_window_counter":
		return SlidingWindowCounter, nil
	case "token_bucket":
		return TokenBucket, nil
	case "leaky_bucket":
		return LeakyBucket, nil
	}
	return 0, fmt.Errorf("unknown algorithm %q (fixed_window, sliding_window_log, sliding_window_counter, token_bucket, leaky_bucket)", name)
}

// Compile turns a policy (with override applied when non-nil) into Params.
//
// Windowed kinds take limit and window (an override's non-zero limit and
// window replace them). Buckets take rate per `per` (default 1s) and burst
// (token_bucket: default rate; leaky_bucket: default 1); an override's rate,
// per and burst replace them, and an override's limit is taken as the burst.
// When an override changes the rate of a token bucket whose burst was left
// at its default (equal to the rate), the burst follows the new rate.
//
// The emission interval per/rate is rounded UP to whole µs (never faster than
// configured): at most 1µs slower per unit, e.g. 10^9/day runs at 86.4µs ->
// 87µs (0.7% fewer); rates above 10^6/s per key are held to 10^6/s.
func Compile(p *config.Policy, override *config.PolicyOverride) (Params, error) {
	kind, err := ParseKind(p.Algorithm)
	if err != nil {
		return Params{}, err
	}
	out := Params{Kind: kind}
	if kind.Bucket() {
		rate, per, burst := p.Rate, p.Per.D(), p.Burst
		defaultBurst := burst == 0 || (kind == TokenBucket && burst == rate)
		if override != nil {
			if override.Rate > 0 {
				rate = override.Rate
			}
			if override.Per > 0 {
				per = override.Per.D()
			}
			if override.Burst > 0 {
				burst = override.Burst
			} else if override.Limit > 0 {
				burst = override.Limit
			} else if override.Rate > 0 && defaultBurst {
				burst = 0
			}
		}
		if per == 0 {
			per = time.Second
		}
		if rate < 1 {
			return Params{}, fmt.Errorf("rate must be at least 1, got %d", rate)
		}
		if burst == 0 {
			if kind == TokenBucket {
				burst = rate
			} else {
				burst = 1
			}
		}
		perUS := per.Microseconds()
		if perUS < 1 {
			return Params{}, fmt.Errorf("per %v is below 1µs", per)
		}
		out.Limit = burst
		out.Window = (perUS + rate - 1) / rate
		if kind == LeakyBucket {
			out.MaxDelay = p.MaxDelay.D().Microseconds()
		}
	} else {
		limit, window := p.Limit, p.Window.D()
		if override != nil {
			if override.Limit > 0 {
				limit = override.Limit
			}
			if override.Window > 0 {
				window = override.Window.D()
			}
		}
		out.Limit = limit
		out.Window = window.Microseconds()
	}
	if err := out.Validate(); err != nil {
		return Params{}, err
	}
	return out, nil
}
