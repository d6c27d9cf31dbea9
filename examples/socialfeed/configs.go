package socialfeed

import (
	"embed"
	"io/fs"
	"os"
	"path/filepath"
)

// configFiles are the demo's gateway config: platform.yaml (listeners,
// upstreams, identity provider, policies, plain routes, SLOs) and one file
// per BFF, each owned by its client team.
//
//go:embed *.yaml
var configFiles embed.FS

// Configs returns the embedded config files.
func Configs() fs.FS { return configFiles }

// WriteConfigs writes the embedded config files into dir, so the gateway
// loads them as a config directory (and a reload reads them from there).
func WriteConfigs(dir string) error {
	entries, err := fs.ReadDir(configFiles, ".")
	if err != nil {
		return err
	}
	for _, e := range entries {
		b, err := fs.ReadFile(configFiles, e.Name())
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, e.Name()), b, 0o644); err != nil {
			return err
		}
	}
	return nil
}
