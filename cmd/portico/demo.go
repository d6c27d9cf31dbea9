package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/portico-gw/portico/examples/socialfeed"
	"github.com/portico-gw/portico/internal/config"
	"github.com/portico-gw/portico/internal/gateway"
)

// cmdDemo runs the social-feed demo: the identity provider, the six example
// services, and the gateway with both BFFs, all on loopback, from the
// embedded configuration. No Redis, no files to prepare.
func cmdDemo(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	accessLog := fs.Bool("access-log", false, "print one JSON access-log line per request")
	if code, ok := parseFlags(fs, synopsisDemo, args, stdout, stderr); !ok {
		return code
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := runDemo(ctx, stdout, stderr, *accessLog, nil); err != nil {
		fmt.Fprintf(stderr, "portico demo: %v\n", err)
		return 1
	}
	return 0
}

// runDemo is cmdDemo without the signal handling, for tests. ready is called
// once everything listens.
func runDemo(ctx context.Context, stdout, stderr io.Writer, accessLog bool, ready func(*gateway.Gateway, string)) error {
	logger := newLogger(stderr, "info")
	idp, err := socialfeed.NewIdP()
	if err != nil {
		return err
	}
	services := append([]socialfeed.Service{{Name: "identity", Addr: socialfeed.IdPAddr, Handler: idp.Handler()}},
		socialfeed.Services(socialfeed.DefaultLatency)...)
	servers, err := socialfeed.Start(services, logger)
	if err != nil {
		return fmt.Errorf("%w (is another demo running?)", err)
	}
	defer servers.Close()

	dir, err := os.MkdirTemp("", "portico-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if err := writeDemoConfigs(dir, accessLog); err != nil {
		return err
	}
	cfg, err := config.Load(dir)
	if err != nil {
		return err
	}
	token, err := idp.Token("alice", "feed:read posts:read", 24*time.Hour)
	if err != nil {
		return err
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	return serve(ctx, cfg, gateway.Options{Paths: []string{dir}, Logger: logger, AccessLog: stdout, Version: buildVersion()}, hup, false,
		func(gw *gateway.Gateway, ls *gateway.Listeners) {
			waitReady(ls.Public.Addr().String())
			printDemo(stdout, ls, token, dir)
			if ready != nil {
				ready(gw, token)
			}
		})
}

// writeDemoConfigs writes the demo's config files into dir with the access
// log as --access-log asks. The choice goes into the files rather than the
// loaded config so that a reload (which the demo invites) keeps it.
func writeDemoConfigs(dir string, accessLog bool) error {
	if err := socialfeed.WriteConfigs(dir); err != nil {
		return err
	}
	path := filepath.Join(dir, "platform.yaml")
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	const off, on = "\n  access_log: false\n", "\n  access_log: true\n"
	want, other := off, on
	if accessLog {
		want, other = on, off
	}
	if !bytes.Contains(b, []byte(want)) {
		if !bytes.Contains(b, []byte(other)) {
			return fmt.Errorf("%s sets no logging.access_log for --access-log to change", path)
		}
		b = bytes.Replace(b, []byte(other), []byte(want), 1)
	}
	return os.WriteFile(path, b, 0o644)
}

func waitReady(addr string) {
	for range 50 {
		c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if err == nil {
			c.Close()
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func printDemo(w io.Writer, ls *gateway.Listeners, token, dir string) {
	gw := "http://" + ls.Public.Addr().String()
	adm := "http://" + ls.Admin.Addr().String()
	fmt.Fprintf(w, `
Portico social-feed demo
  gateway    %[1]s
  admin      %[2]s   (dashboard: %[2]s/dashboard/)
  services   users :7001, posts :7002, recommendations :7003, notifications :7004, ads :7005, analytics :7006
  identity   http://%[5]s/.well-known/jwks.json
  config     %[4]s (edit a file, then: curl -X POST %[2]s/admin/reload)

Demo token (user alice, 24h):
  export TOKEN=%[3]s

Try:
  curl -s %[1]s/mobile/feed -H "Authorization: Bearer $TOKEN" --compressed | head -c 600; echo
  curl -s %[1]s/web/feed -H "Authorization: Bearer $TOKEN" | head -c 600; echo
  curl -si %[1]s/mobile/feed -H "Authorization: Bearer $TOKEN" -H "Accept-Encoding: zstd" -o /dev/null -D -
  curl -s %[1]s/api/users/alice
  curl -s "%[1]s/api/posts/feed/alice?limit=2"
  curl -si %[1]s/mobile/feed                  # 401 problem+json
  curl -s -X POST %[1]s/api/analytics/events -d '[{"type":"view"}]'
  curl -s %[2]s/admin/stats
  curl -s %[2]s/metrics | grep portico_requests_total
  open %[2]s/dashboard/

Ctrl-C drains and stops.
`, gw, adm, token, dir, socialfeed.IdPAddr)
}
