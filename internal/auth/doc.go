// Package auth authenticates requests at the edge: JWTs verified against a
// JWKS (fetched over HTTP or read from a file) or an HMAC secret, and API
// keys compared by their SHA-256. The accepted caller becomes an
// identity.Identity in reqctx.Info, which later stages (rate limiting by
// claim or consumer, aggregation templates, access logs) read.
//
// The package has two lifetimes, as the gateway has:
//
//   - A Registry lives as long as the process. It owns what must survive a
//     config reload: the JWKS key sets and their background refreshers, the
//     verified-token caches and the portico_auth_failures_total metric.
//   - A Set is built from one config and is immutable. The gateway asks it
//     for one middleware per route (Set.Middleware) and for the identity
//     header names it must strip on every route (Set.IdentityHeaders,
//     StripIdentityHeaders).
//
// A reload has two phases, so that a config refused by a later stage
// leaves auth as it was. Registry.Prepare builds a Plan, whose Set is
// usable at once, without touching the running config: its key sets keep
// refreshing, and new JWKS URLs are fetched once but get no refresher.
// Plan.Commit, called when the whole config is accepted, stops the key sets
// no longer used, starts the new ones and keeps the plan's caches for the
// next reload; a refused Plan is simply dropped. Registry.Apply does both
// at once.
//
// Cheap checks run before any signature check: token shape, header JSON,
// algorithm allow-list, and the time, issuer and audience claims read from
// the unverified payload, which may only reject a token, never accept one.
// A verified token is cached (keyed by the token itself, see tokenCache)
// until its exp but at most five minutes, so a client that sends the same
// token on every call pays for one signature check, not one per request.
//
// A token not seen before costs one signature check and little else: the
// header and claims are read by a small JSON decoder that matches
// encoding/json exactly (jsondecode.go), into one string that the claims
// share, and the signature is checked by the standard library with the
// signing input and digest on the stack.
//
// docs/authentication.md is the user-facing description of providers,
// precedence, headers, caching, failure reasons and key rotation.
package auth
