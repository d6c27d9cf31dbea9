// Package upstream turns a configured upstream (a named list of targets) into
// a Pool: an http.RoundTripper that picks a target with a balancer, skips
// targets that active health checks marked down or that passive outlier
// detection ejected, sheds load beyond max_inflight, fails fast while the
// upstream's circuit breaker is open, bounds each attempt until response
// headers, and retries only when doing so is safe (see Pool.RoundTrip).
//
// All state that must outlive a config reload (health, ejections, breakers,
// in-flight counts, recent error rates, transports with their warm
// connections, Prometheus collectors) lives in a Registry created once per
// process. A config load goes in two phases. Registry.Prepare checks the
// config's upstreams and returns a Plan holding fresh, immutable Pools that
// share that state, so a reload never resets a breaker or marks a dead
// target healthy again; it changes nothing in the Registry. Plan.Commit then
// makes the config the Registry's: it registers new upstreams and targets
// (and their metric series), applies transport, breaker and health check
// changes, and drops what the config no longer has. A gateway commits only
// once the rest of its config compiled, so a refused reload, whose Plan is
// simply dropped, leaves the running config's upstreams, health checks,
// breakers and metrics exactly as they were. Registry.Apply does both
// phases at once.
package upstream
