// Command portico is the Portico API gateway.
//
//	portico run -c FILE_OR_DIR [-c ...] [--watch]   serve
//	portico validate -c FILE_OR_DIR [-c ...]        check a config
//	portico demo                                    the social-feed demo
//	portico slo rules -c FILE_OR_DIR                Prometheus rules for the SLOs
//	portico version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/portico-gw/portico/internal/config"
	"github.com/portico-gw/portico/internal/gateway"
	"github.com/portico-gw/portico/internal/slo"
)

// version is set at build time with -ldflags "-X main.version=..."; it
// falls back to the module version from the build info.
var version = ""

func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		v := bi.Main.Version
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				if v == "" || v == "(devel)" {
					v = "devel"
				}
				return v + "+" + s.Value[:12]
			}
		}
		if v != "" {
			return v
		}
	}
	return "devel"
}

const usage = `portico: an API gateway

usage:
  portico run -c FILE_OR_DIR [-c ...] [--watch]   serve the gateway
  portico validate -c FILE_OR_DIR [-c ...]        check a config and exit
  portico demo                                    run the social-feed demo
  portico slo rules -c FILE_OR_DIR [-c ...]       print Prometheus rules for the SLOs
  portico version                                 print the version
`

func main() {
	tuneRuntime()
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "run":
		return cmdRun(args[1:], stdout, stderr)
	case "validate":
		return cmdValidate(args[1:], stdout, stderr)
	case "demo":
		return cmdDemo(args[1:], stdout, stderr)
	case "slo":
		if len(args) < 2 || args[1] != "rules" {
			fmt.Fprint(stderr, "usage: portico slo rules -c FILE_OR_DIR [-c ...]\n")
			return 2
		}
		return cmdSLORules(args[2:], stdout, stderr)
	case "version", "--version", "-v":
		fmt.Fprintf(stdout, "portico %s %s %s/%s\n", buildVersion(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "portico: unknown command %q\n\n%s", args[0], usage)
	return 2
}

// pathsFlag collects repeated -c values.
type pathsFlag []string

func (p *pathsFlag) String() string     { return strings.Join(*p, ",") }
func (p *pathsFlag) Set(v string) error { *p = append(*p, v); return nil }

func parseConfigFlags(name string, args []string, stderr io.Writer, extra func(*flag.FlagSet)) ([]string, bool) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var paths pathsFlag
	fs.Var(&paths, "c", "config file or directory (repeatable)")
	fs.Var(&paths, "config", "config file or directory (repeatable)")
	if extra != nil {
		extra(fs)
	}
	if err := fs.Parse(args); err != nil {
		return nil, false
	}
	if len(paths) == 0 {
		fmt.Fprintf(stderr, "portico %s: at least one -c FILE_OR_DIR is required\n", name)
		return nil, false
	}
	return paths, true
}

func cmdValidate(args []string, stdout, stderr io.Writer) int {
	paths, ok := parseConfigFlags("validate", args, stderr, nil)
	if !ok {
		return 2
	}
	cfg, err := config.Load(paths...)
	if err != nil {
		fmt.Fprintln(stderr, strings.TrimRight(err.Error(), "\n"))
		return 1
	}
	endpoints := 0
	for _, b := range cfg.BFFs {
		endpoints += len(b.Endpoints)
	}
	fmt.Fprintf(stdout, "ok: %d file(s), %d route(s), %d BFF endpoint(s), %d upstream(s), %d auth provider(s), %d rate-limit policies, %d SLO(s)\n",
		len(cfg.Files), len(cfg.Routes), endpoints, len(cfg.Upstreams), len(cfg.Auth), len(cfg.RateLimits.Policies), len(cfg.SLOs))
	return 0
}

func cmdSLORules(args []string, stdout, stderr io.Writer) int {
	paths, ok := parseConfigFlags("slo rules", args, stderr, nil)
	if !ok {
		return 2
	}
	cfg, err := config.Load(paths...)
	if err != nil {
		fmt.Fprintln(stderr, strings.TrimRight(err.Error(), "\n"))
		return 1
	}
	out, err := slo.Rules(cfg.SLOs)
	if err != nil {
		fmt.Fprintf(stderr, "portico slo rules: %v\n", err)
		return 1
	}
	_, _ = stdout.Write(out)
	return 0
}

func newLogger(w io.Writer, level string) *slog.Logger {
	var l slog.Level
	switch level {
	case "debug":
		l = slog.LevelDebug
	case "warn":
		l = slog.LevelWarn
	case "error":
		l = slog.LevelError
	default:
		l = slog.LevelInfo
	}
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l}))
}

func cmdRun(args []string, stdout, stderr io.Writer) int {
	var watch bool
	paths, ok := parseConfigFlags("run", args, stderr, func(fs *flag.FlagSet) {
		fs.BoolVar(&watch, "watch", false, "reload when a config file changes")
	})
	if !ok {
		return 2
	}
	cfg, err := config.Load(paths...)
	if err != nil {
		fmt.Fprintln(stderr, strings.TrimRight(err.Error(), "\n"))
		return 1
	}
	logger := newLogger(stderr, cfg.Logging.Level)
	// The first SIGTERM or SIGINT starts the drain; the default action is
	// restored before it starts, so a second one ends the process at once
	// instead of waiting out shutdown_timeout.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	go func() {
		select {
		case <-sigs:
			signal.Reset(syscall.SIGTERM, syscall.SIGINT)
			cancel()
		case <-ctx.Done():
		}
	}()
	err = serve(ctx, cfg, gateway.Options{Paths: paths, Logger: logger, AccessLog: stdout, Version: buildVersion()}, watch, nil)
	if err != nil {
		logger.Error("portico stopped", "err", err.Error())
		return 1
	}
	return 0
}

// serve runs a gateway until ctx is done: SIGHUP reloads, --watch reloads on
// file changes. ready, when set, is called with the gateway once it listens.
func serve(ctx context.Context, cfg *config.Config, opts gateway.Options, watch bool, ready func(*gateway.Gateway, *gateway.Listeners)) error {
	gw, err := gateway.New(cfg, opts)
	if err != nil {
		return err
	}
	defer gw.Close()
	ls, err := gw.Listen()
	if err != nil {
		return err
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				_ = gw.Reload() // errors are logged and counted by the gateway
			}
		}
	}()
	if watch {
		go watchFiles(ctx, opts.Paths, time.Second, func() { _ = gw.Reload() })
	}
	if ready != nil {
		ready(gw, ls)
	}
	if err := gw.Serve(ctx, ls); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}
