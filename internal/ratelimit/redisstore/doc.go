// Package redisstore is the rate-limit Store shared by a fleet of gateway
// nodes: state lives in Redis (standalone, or Redis Cluster), and every
// decision is one atomic Lua script call.
//
// # Layout in Redis
//
// All checks of one subject live under one key, rl:{H}, where H is the first
// 64 bits of the subject's SHA-256 in hex (a hash clients cannot aim). The braces are a Cluster hash tag, so the
// subject's HASH (one field per policy) and its sliding-log sorted sets
// (rl:{H}:log:<policy>) share a slot and one script touches them all: no
// CROSSSLOT, no multi-key races. Every key the script writes carries a TTL
// (rounded up, at least 1 ms) long enough for the state to matter, so
// abandoned subjects vanish by themselves.
//
// # Exact mode
//
// Store.Decide runs one EVALSHA per decision (EVAL when the server lost the
// script: after SCRIPT FLUSH, a restart, a failover or on a new shard). The
// script reads Redis TIME once (µs) and runs, for each policy, a Lua mirror of
// algo.Step, the Go reference; it writes the new states only when every policy
// admitted the request, so a rejection by one policy consumes nothing from the
// others. Redis's own clock is the only clock, so node clock skew changes no
// decision. Concurrent Decide calls share connections through rueidis's
// auto-pipelining.
//
// # Lease mode
//
// LeaseStore (NewLeaseStore) takes small batches of quota from Redis and
// spends them locally until they are used up or expire, so a hot key costs a
// script call per batch rather than per request. The script grants at most
// what the quota still has, and batches shrink to one unit as it runs out, so
// the fleet never admits more than the limit; the only error is quota stranded
// in leases that lapse unused.
//
// # Fleet size
//
// StartHeartbeat announces a node in the sorted set rl:nodes; Nodes counts the
// nodes seen in the last five seconds. Lease sizes and the core's local
// fallback (a per-node share of each limit) both use it.
package redisstore
