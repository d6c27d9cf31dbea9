package main

import (
	"bytes"
	"net"
	"strings"
	"testing"

	"github.com/portico-gw/portico/internal/config"
	"github.com/portico-gw/portico/internal/gateway"
)

// TestDemoCommandsPasteIntoAnyShell: the curl commands the demo prints keep
// shell glob characters (?, *, [) inside quotes, so they paste as they are
// into zsh, which refuses an unmatched glob, as well as into bash.
func TestDemoCommandsPasteIntoAnyShell(t *testing.T) {
	var ls gateway.Listeners
	for _, p := range []*net.Listener{&ls.Public, &ls.Admin} {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		*p = l
	}
	var out bytes.Buffer
	printDemo(&out, &ls, "TOKEN", "/tmp/demo")
	curls := 0
	for _, line := range strings.Split(out.String(), "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "curl ") {
			continue
		}
		curls++
		if cmd, _, ok := strings.Cut(line, "#"); ok {
			line = cmd // a comment after the command
		}
		quote := byte(0)
		for i := 0; i < len(line); i++ {
			c := line[i]
			switch {
			case quote != 0:
				if c == quote {
					quote = 0
				}
			case c == '"' || c == '\'':
				quote = c
			case c == '?' || c == '*' || c == '[':
				t.Errorf("unquoted %q in %q", c, line)
			}
		}
	}
	if curls == 0 {
		t.Fatalf("no curl commands printed:\n%s", out.String())
	}
}

// TestDemoAccessLogFlag: `portico demo --access-log` turns the access log on
// and the default leaves it off, also after a reload (which reads the
// files again). The demo's platform file says access_log: false, which the
// flag used to leave in force, so the flag did nothing.
func TestDemoAccessLogFlag(t *testing.T) {
	for _, want := range []bool{true, false} {
		dir := t.TempDir()
		if err := writeDemoConfigs(dir, want); err != nil {
			t.Fatal(err)
		}
		cfg, err := config.Load(dir)
		if err != nil {
			t.Fatal(err)
		}
		if got := cfg.Logging.AccessLog; got == nil || *got != want {
			t.Errorf("--access-log=%v: logging.access_log is %v", want, got)
		}
	}
}
