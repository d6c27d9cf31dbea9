// Package aggregate implements Backend-for-Frontend endpoints: one client
// request fans out to several upstream calls, whose JSON bodies are shaped
// (fields, drop, rename, pick, into) and merged into one response.
//
// An endpoint is compiled once per configuration by NewEndpoint: templates,
// field paths and the dependency graph of `after` are parsed and checked
// there, so a request only renders templates, runs the backend calls and
// walks each body once.
//
// # Backend calls
//
// Every backend is a typed function, func(ctx, *Input) (*Result, error), in
// the manner of Lura's proxies: fetching, decoding and shaping compose as
// such functions. Independent backends run in parallel; a backend with
// `after: NAME` starts once NAME has answered and may read `{NAME.field}`
// from NAME's raw (unshaped) body. A backend whose dependency failed is
// skipped and counts as failed. The request's own goroutine makes one of
// the calls; the others run on the endpoint's parked worker goroutines,
// which keep the stacks they grew from one call to the next (see
// workers.go).
//
// Each backend runs under its own deadline: its `timeout`, capped by the
// endpoint's remaining time less a small reserve (5% of the endpoint
// timeout, at most 10ms), so that the endpoint still answers with what it
// has when one backend is slow.
//
// # Shaping
//
// Shaping works at the JSON token level in a single pass per body, without
// decoding into map[string]any: numbers keep their exact text (64-bit ids
// survive), object keys keep their order. The operators apply in the order
// fields, drop, rename, pick, into. See docs/bff.md for examples.
//
// # Merging
//
// The response is one JSON object. A backend with `into` places its value
// under that key; a backend without `into` must yield an object, whose
// members are merged into the response. Backends are merged in config
// order and a key that is already present is never overwritten: the
// earlier backend wins, so adding a backend at the end of the list cannot
// change what existing clients see.
//
// # Failures
//
// An optional backend that fails or times out is left out; the response
// names it in Portico-Partial and carries Cache-Control: no-store. A
// required backend's 4xx becomes the endpoint's status, its 5xx or
// connection error a 502 and its timeout a 504, rendered by problem.Write
// with a detail naming the backend.
package aggregate
