package main

import (
	"bytes"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"
)

// TestExitCodes: usage errors exit 2, a config that cannot be read or is
// invalid exits 1 naming the file, for every command that takes -c.
func TestExitCodes(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.yaml")
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("version: 1\nrouts: []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	good := filepath.Join(dir, "good.yaml")
	if err := os.WriteFile(good, []byte("version: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		args   []string
		code   int
		stderr string // a substring stderr must hold
	}{
		{[]string{}, 2, "usage"},
		{[]string{"serve"}, 2, `unknown command "serve"`},
		{[]string{"validate", "-c", bad, "--strict"}, 2, "flag provided but not defined: -strict"},
		{[]string{"run", "--wacth", "-c", bad}, 2, "flag provided but not defined: -wacth"},
		{[]string{"slo"}, 2, "usage: portico slo rules"},
		{[]string{"slo", "rules"}, 2, "-c FILE_OR_DIR is required"},
		{[]string{"run"}, 2, "-c FILE_OR_DIR is required"},
		{[]string{"validate", "-c", missing}, 1, missing},
		{[]string{"run", "-c", missing}, 1, missing},
		{[]string{"slo", "rules", "-c", missing}, 1, missing},
		{[]string{"validate", "-c", bad}, 1, bad + ":2:"},
		{[]string{"run", "-c", bad}, 1, bad + ":2:"},
		{[]string{"validate", "--config", bad}, 1, bad + ":2:"},
		// A second file without its own -c, and a flag after it, were
		// silently dropped: the good file alone validated.
		{[]string{"validate", "-c", good, bad}, 2, `unexpected argument "` + bad + `"`},
		{[]string{"run", "-c", bad, good, "--watch"}, 2, `unexpected argument "` + good + `"`},
		{[]string{"slo", "rules", "-c", good, bad}, 2, `unexpected argument "` + bad + `"`},
		{[]string{"validate", good}, 2, `unexpected argument "` + good + `"`},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var out, errb bytes.Buffer
			code := run(tc.args, &out, &errb)
			if code != tc.code || !strings.Contains(errb.String(), tc.stderr) {
				t.Fatalf("exit %d, want %d; stderr %q, want it to hold %q", code, tc.code, errb.String(), tc.stderr)
			}
		})
	}
}

// TestTuneRuntimeKeepsOperatorGOGC: an operator's GOGC and GOMEMLIMIT win
// over the gateway's defaults.
func TestTuneRuntimeKeepsOperatorGOGC(t *testing.T) {
	t.Setenv("GOGC", "150")
	t.Setenv("GOMEMLIMIT", "123456789")
	oldGC := debug.SetGCPercent(150)
	oldLimit := debug.SetMemoryLimit(123456789)
	t.Cleanup(func() { debug.SetGCPercent(oldGC); debug.SetMemoryLimit(oldLimit) })

	tuneRuntime()
	if got := debug.SetGCPercent(150); got != 150 {
		t.Errorf("GOGC=150 set, tuneRuntime changed the GC percent to %d", got)
	}
	if got := debug.SetMemoryLimit(-1); got != 123456789 {
		t.Errorf("GOMEMLIMIT set, tuneRuntime changed the memory limit to %d", got)
	}
}

// TestHelpExitsZero: -h or --help after a command prints its usage on
// stdout and exits 0, as `portico --help` does; it is not a usage error.
func TestHelpExitsZero(t *testing.T) {
	for _, args := range [][]string{
		{"--help"}, {"run", "-h"}, {"run", "--help"}, {"validate", "-h"},
		{"slo", "rules", "--help"}, {"slo", "-h"}, {"demo", "-h"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			var out, errb bytes.Buffer
			code := run(args, &out, &errb)
			if code != 0 || !strings.Contains(out.String(), "usage") {
				t.Fatalf("exit %d, want 0 with the usage on stdout; stdout %q, stderr %q", code, out.String(), errb.String())
			}
		})
	}
}

// TestVersionOf: a build from a checkout reports "devel" (Go records it as
// "(devel)"), with the VCS revision when the build has one; a module build
// its version.
func TestVersionOf(t *testing.T) {
	rev := debug.BuildSetting{Key: "vcs.revision", Value: "0123456789abcdef0123"}
	for _, c := range []struct {
		main     string
		settings []debug.BuildSetting
		want     string
	}{
		{"(devel)", nil, "devel"},
		{"", nil, "devel"},
		{"(devel)", []debug.BuildSetting{rev}, "devel+0123456789ab"},
		{"v1.4.0", nil, "v1.4.0"},
		{"v1.4.0", []debug.BuildSetting{rev}, "v1.4.0+0123456789ab"},
	} {
		bi := &debug.BuildInfo{Main: debug.Module{Version: c.main}, Settings: c.settings}
		if got := versionOf(bi); got != c.want {
			t.Errorf("version %q with %v: got %q, want %q", c.main, c.settings, got, c.want)
		}
	}
	var out, errb bytes.Buffer
	if run([]string{"version"}, &out, &errb); strings.Contains(out.String(), "(devel)") {
		t.Errorf("portico version printed %q", out.String())
	}
}
