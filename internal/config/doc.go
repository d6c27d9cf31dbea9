// Package config defines Portico's configuration schema and loads it: YAML
// decoding with positions, ${VAR} expansion, defaults, merging several files
// and strict validation that reports every error as FILE:LINE:COL: FIELD: message.
package config
