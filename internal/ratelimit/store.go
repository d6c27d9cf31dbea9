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
//
// out[i] is algo.Step's decision for check i taken on its own; when any
// check is rejected nothing is written, and the checks that passed still
// report Allowed with the Remaining they would have left. A check with
// Cost 0 (a peek) never writes state.
//
// The state of a check is identified by (subject, Check.Policy): the same
// policy name on another subject, or another policy on the same subject, is
// independent state. subject may point into a reused buffer: a store must
// not retain it (nor a string sliced from it) after the call returns.
//
// Refund gives back, for each check, Check.Cost units that an earlier Decide
// on the same subject admitted (algo.Refund semantics, at the store's current
// time). The core calls it when a request's checks span several subjects:
// they are decided in order, and when a later subject rejects, the earlier
// subjects' admissions are refunded, so the request as a whole consumes
// nothing. Error bound: between Decide and Refund (one round trip) other
// requests saw the units taken, so at most the refunded cost per round trip
// can have been rejected wrongly; nothing is ever admitted wrongly. A refund
// that fails is logged and dropped (the units stay consumed: the safe side).
type Store interface {
	Decide(ctx context.Context, subject string, checks []Check, out []algo.Decision) error
	Refund(ctx context.Context, subject string, checks []Check) error
}

// A ShardedStore keeps each subject on one of several shards that fail
// independently (the masters of a Redis Cluster, each owning slot ranges).
// The Service keeps one breaker per shard, so a failing master sends only
// its own subjects to on_store_error while the others still decide on the
// store.
type ShardedStore interface {
	Store
	// Shards is the number of shards, fixed for the store's life.
	Shards() int
	// Shard returns the shard of subject, in [0, Shards()).
	Shard(subject string) int
}
