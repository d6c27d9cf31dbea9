package ratelimit

import (
	"context"

	"github.com/portico-gw/portico/internal/ratelimit/algo"
)

// Check is one policy to decide for one subject.
type Check struct {
	// Policy is the policy name (it names the state inside the subject key).
	Policy string
	Params algo.Params
	Cost   int64
}

// Store decides rate-limit checks against shared or local state.
//
// Decide decides every check of one subject atomically and all-or-nothing:
// if any check is rejected, none of them consumes quota. subject is the
// evaluated key expression (e.g. "claim:sub=alice"); all checks share it, so
// the Redis store keeps them in one hash-tagged key and one script call.
// out has len(checks) and receives the decisions in order. A store error
// (Redis unreachable, timeout) is returned as err and the caller applies the
// policy's on_store_error.
type Store interface {
	Decide(ctx context.Context, subject string, checks []Check, out []algo.Decision) error
}
