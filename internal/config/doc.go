// Package config defines Portico's configuration schema and loads it: YAML
// decoding with positions, ${VAR} expansion, defaults, merging several files
// and strict validation that reports every error as FILE:LINE:COL: FIELD: message.
//
// # Loading
//
// Load (or a Loader, which keeps parsed files between reloads) reads files
// and directories, decodes each file through the goccy/go-yaml syntax tree
// so that every value keeps its position, merges the files (section 4 of
// DESIGN.md: singletons in one file, names unique across files, references
// across files), applies the defaults of defaults.go and validates the
// result. Either a complete *Config comes back, or nil and an *Errors
// holding every problem found, sorted by file, line and column.
//
// The pipeline is: read -> parse (files in parallel; YAML parsing is most of
// the cost) -> decode in file order (strict: unknown keys and wrong
// types are errors; ${VAR} expanded in scalar values) -> defaults ->
// validate. A value that failed to decode is not validated again, so one
// mistake gives one message. When a file does not parse at all, validation
// across files is skipped, since every name that file defines would look
// undefined elsewhere.
//
// # Positions
//
// Field paths name values the way errors print them: routes[3].match.path,
// upstreams.posts.targets[0].url. Config.Where maps such a path to
// FILE:LINE:COL for later stages that find problems the loader cannot (a
// certificate that does not load), and NewError builds an Error in the same
// form.
//
// # Docs
//
// docs/configuration.md and docs/portico.schema.json are generated from the
// types in types.go and the table in docgen_test.go by
// `go test ./internal/config -update`, and a test fails when they are stale.
package config
