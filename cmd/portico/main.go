// Command portico is the Portico API gateway.
//
//	portico run -c FILE_OR_DIR [-c ...] [--watch]   serve
//	portico validate -c FILE_OR_DIR [-c ...]        check a config
//	portico demo [--access-log]                     the social-feed demo
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
	"sync/atomic"
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
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "devel"
	}
	return versionOf(bi)
}

// versionOf is the version a build reports: the module version, or "devel"
// for a build from a checkout (which Go records as "(devel)"), followed by
// the first 12 hex digits of the VCS revision when the build recorded one.
// It is also portico_build_info's version label.
func versionOf(bi *debug.BuildInfo) string {
	v := bi.Main.Version
	if v == "" || v == "(devel)" {
		v = "devel"
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			return v + "+" + s.Value[:12]
		}
	}
	return v
}

// The synopsis of each command, as its usage and the overview print it.
const (
	synopsisRun      = "portico run -c FILE_OR_DIR [-c ...] [--watch]"
	synopsisValidate = "portico validate -c FILE_OR_DIR [-c ...]"
	synopsisDemo     = "portico demo [--access-log]"
	synopsisSLORules = "portico slo rules -c FILE_OR_DIR [-c ...]"
)

const usage = `portico: an API gateway

usage:
  ` + synopsisRun + `   serve the gateway
  ` + synopsisValidate + `        check a config and exit
  ` + synopsisDemo + `                     run the social-feed demo
  ` + synopsisSLORules + `       print Prometheus rules for the SLOs
  portico version                                 print the version

Exit status: 0 on success, 1 when a config is invalid or serving fails,
2 for a usage error. -h after a command prints its flags.
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
		if len(args) == 2 && (args[1] == "-h" || args[1] == "--help" || args[1] == "help") {
			fmt.Fprintf(stdout, "usage: %s\n", synopsisSLORules)
			return 0
		}
		if len(args) < 2 || args[1] != "rules" {
			fmt.Fprintf(stderr, "usage: %s\n", synopsisSLORules)
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

// parseFlags parses the flags of one command. -h or --help prints the
// command's usage on stdout and ends with exit code 0, as `portico --help`
// does; any other flag error is printed with the usage on stderr and ends
// with 2. ok is false when the command must end with code.
func parseFlags(fs *flag.FlagSet, synopsis string, args []string, stdout, stderr io.Writer) (code int, ok bool) {
	fs.SetOutput(stderr)
	fs.Usage = func() {} // printed below, where it belongs
	usage := func(w io.Writer) {
		fmt.Fprintf(w, "usage: %s\n", synopsis)
		fs.SetOutput(w)
		fs.PrintDefaults()
		fs.SetOutput(stderr)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			usage(stdout)
			return 0, false
		}
		usage(stderr) // after the error line flag printed
		return 2, false
	}
	if fs.NArg() > 0 {
		// Parsing stops at the first argument that is not a flag, so
		// `-c a.yaml b.yaml --watch` would drop b.yaml and --watch unseen.
		fmt.Fprintf(stderr, "unexpected argument %q (every config file or directory needs its own -c)\n", fs.Arg(0))
		usage(stderr)
		return 2, false
	}
	return 0, true
}

// parseConfigFlags parses the flags of a command that takes -c (repeatable,
// also spelled --config). ok is false when the command must end with code.
func parseConfigFlags(name, synopsis string, args []string, stdout, stderr io.Writer, extra func(*flag.FlagSet)) (paths []string, code int, ok bool) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	var p pathsFlag
	fs.Var(&p, "c", "config file or directory (repeatable)")
	fs.Var(&p, "config", "same as -c")
	if extra != nil {
		extra(fs)
	}
	if code, ok := parseFlags(fs, synopsis, args, stdout, stderr); !ok {
		return nil, code, false
	}
	if len(p) == 0 {
		fmt.Fprintf(stderr, "portico %s: at least one -c FILE_OR_DIR is required\nusage: %s\n", name, synopsis)
		return nil, 2, false
	}
	return p, 0, true
}

func cmdValidate(args []string, stdout, stderr io.Writer) int {
	paths, code, ok := parseConfigFlags("validate", synopsisValidate, args, stdout, stderr, nil)
	if !ok {
		return code
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
	paths, code, ok := parseConfigFlags("slo rules", synopsisSLORules, args, stdout, stderr, nil)
	if !ok {
		return code
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
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: parseLevel(level)}))
}

func parseLevel(level string) slog.Level {
	switch level {
	case "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}

// configLevel is the process log's level: logging.level of the config in
// force, read at each log call, so that every kind of reload (SIGHUP,
// --watch, POST /admin/reload) changes it as it changes the rest.
type configLevel struct {
	start slog.Level // until the gateway exists
	gw    atomic.Pointer[gateway.Gateway]
}

func (l *configLevel) Level() slog.Level {
	if gw := l.gw.Load(); gw != nil {
		return parseLevel(gw.Config().Logging.Level)
	}
	return l.start
}

func cmdRun(args []string, stdout, stderr io.Writer) int {
	var watch bool
	paths, code, ok := parseConfigFlags("run", synopsisRun, args, stdout, stderr, func(fs *flag.FlagSet) {
		fs.BoolVar(&watch, "watch", false, "reload when a config file changes")
	})
	if !ok {
		return code
	}
	// SIGHUP is caught from here on: its default action ends the process,
	// and a reload asked for while the gateway starts (connecting to Redis,
	// say) must not kill it. serve reloads once for it when it listens.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	cfg, err := config.Load(paths...)
	if err != nil {
		fmt.Fprintln(stderr, strings.TrimRight(err.Error(), "\n"))
		return 1
	}
	level := &configLevel{start: parseLevel(cfg.Logging.Level)}
	logger := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: level}))
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
	err = serve(ctx, cfg, gateway.Options{Paths: paths, Logger: logger, AccessLog: stdout, Version: buildVersion()}, hup, watch,
		func(gw *gateway.Gateway, _ *gateway.Listeners) { level.gw.Store(gw) })
	if err != nil {
		logger.Error("portico stopped", "err", err.Error())
		return 1
	}
	return 0
}

// serve runs a gateway until ctx is done: a value on hup (SIGHUP, caught
// by the caller; nil for none) reloads, --watch reloads on file changes.
// ready, when set, is called with the gateway once it listens.
func serve(ctx context.Context, cfg *config.Config, opts gateway.Options, hup <-chan os.Signal, watch bool, ready func(*gateway.Gateway, *gateway.Listeners)) error {
	gw, err := gateway.New(cfg, opts)
	if err != nil {
		return err
	}
	defer gw.Close()
	ls, err := gw.Listen()
	if err != nil {
		return err
	}
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
