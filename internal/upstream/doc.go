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
// process. Registry.Apply is called on every config load and returns fresh,
// immutable Pools that share that state, so a reload never resets a breaker
// or marks a dead target healthy again.
package upstream
