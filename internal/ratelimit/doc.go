// Package ratelimit is Portico's rate limiting: the memory store, key
// extraction, the per-route middleware (headers, 429s, shadow mode,
// overrides), the local negative cache and the store-failure fallback with
// its circuit breaker. The algorithms are pure steps in package algo; the
// shared Redis store lives in package redisstore and implements Store.
//
// A Service is long-lived (created once per process): it owns the metrics,
// the stores and all counters, so a config reload changes limits but keeps
// every counter, keyed by policy name and subject. A reload is two steps:
// Prepare compiles the policies into a Plan the new middlewares are built
// from, and Commit puts it in force once the whole config has compiled
// (Apply does both).
package ratelimit
