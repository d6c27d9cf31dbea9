// Command bench is Portico's load harness. It starts its own upstream (a
// separate process), Portico (the binary built from this tree), nginx as a
// reverse proxy when it is installed, and measures each with wrk, in
// interleaved rounds (direct, nginx, portico, direct, nginx, portico, ...),
// reporting medians and every figure as a ratio to nginx and to the direct
// call. Everything listens on 127.0.0.1 and every run is bounded in time.
//
//	go run ./bench                         # the plain-proxy scenario, 3 rounds
//	go run ./bench -scenarios all -out docs/benchmarks.md
//
// wrk is required (Debian package wrk: apt-get install wrk); nginx is
// optional (apt-get install nginx-light) and h2load optional (nghttp2-client).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

type options struct {
	scenarios []string
	rounds    int
	duration  time.Duration
	warmup    time.Duration
	rate      int
	out       string
	keep      bool
	env       string // extra environment for portico, e.g. "GOGC=100,GOMAXPROCS=1"
}

var allScenarios = []string{"plain", "plain-4k", "plain-512", "latency", "edge-one-token", "edge-many-tokens",
	"bff", "h2", "redis-exact", "redis-lease", "idle-conns", "sparse-conns", "engine-spike"}

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "upstream":
			runUpstream(os.Args[2:])
			return
		case "stdproxy":
			runStdProxy(os.Args[2:])
			return
		case "fanout":
			runFanout(os.Args[2:])
			return
		case "openloop":
			runOpenLoop(os.Args[2:])
			return
		}
	}
	var o options
	var scen string
	flag.StringVar(&scen, "scenarios", "plain", "comma-separated scenarios, or all: "+strings.Join(allScenarios, ","))
	flag.IntVar(&o.rounds, "rounds", 3, "interleaved rounds per scenario (at least 3 for a median)")
	flag.DurationVar(&o.duration, "duration", 8*time.Second, "measured wrk run")
	flag.DurationVar(&o.warmup, "warmup", 2*time.Second, "discarded warm-up run before each measured run")
	flag.IntVar(&o.rate, "rate", 5000, "constant request rate of the open-loop latency scenario")
	flag.StringVar(&o.out, "out", "", "append the results to this markdown file (e.g. docs/benchmarks.md)")
	flag.BoolVar(&o.keep, "keep", false, "keep the work directory (configs, logs)")
	flag.StringVar(&o.env, "portico-env", "", "comma-separated VAR=value set for portico only (e.g. GOGC=100), named in the report")
	flag.Parse()
	if scen == "all" {
		o.scenarios = allScenarios
	} else {
		for _, s := range strings.Split(scen, ",") {
			s = strings.TrimSpace(s)
			if !slices.Contains(allScenarios, s) {
				fmt.Fprintf(os.Stderr, "bench: unknown scenario %q (have %s)\n", s, strings.Join(allScenarios, ", "))
				os.Exit(2)
			}
			o.scenarios = append(o.scenarios, s)
		}
	}
	if _, err := exec.LookPath("wrk"); err != nil {
		fmt.Fprintln(os.Stderr, "bench: wrk is required: apt-get install wrk (a Go load generator on the same 2 cores would skew every ratio)")
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options) error {
	work, err := os.MkdirTemp("", "portico-bench-")
	if err != nil {
		return err
	}
	if !o.keep {
		defer os.RemoveAll(work)
	} else {
		fmt.Println("work directory:", work)
	}
	env, err := newEnv(ctx, work)
	if err != nil {
		return err
	}
	defer env.close()
	if o.env != "" {
		env.porticoEnv = strings.Split(o.env, ",")
	}

	var report []*table
	for _, s := range o.scenarios {
		if ctx.Err() != nil {
			break
		}
		fmt.Printf("\n== %s\n", s)
		ts, err := env.scenario(ctx, s, o)
		if err != nil {
			fmt.Printf("   skipped: %v\n", err)
			continue
		}
		for _, t := range ts {
			fmt.Print(t.markdown())
		}
		report = append(report, ts...)
	}
	if o.out != "" && len(report) > 0 {
		return appendReport(o.out, env, o, report)
	}
	return nil
}

func appendReport(path string, env *env, o options, tables []*table) error {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	fmt.Fprintf(f, "\n## Run of %s\n\n", time.Now().UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(f, "- machine: %d cores, %s; %s\n", env.machine.cores, env.machine.cpu, env.machine.kernel)
	fmt.Fprintf(f, "- commit: %s; %s; wrk %s; nginx %s\n", env.machine.commit, env.machine.goVersion, env.machine.wrk, orNone(env.nginxVersion))
	envFlag := ""
	if o.env != "" {
		envFlag = fmt.Sprintf(" -portico-env %s", o.env)
	}
	fmt.Fprintf(f, "- command: `go run ./bench -scenarios %s -rounds %d -duration %s -warmup %s%s -out %s`\n",
		strings.Join(o.scenarios, ","), o.rounds, o.duration, o.warmup, envFlag, filepath.ToSlash(path))
	fmt.Fprintf(f, "- medians over %d interleaved rounds; ratios are of medians from the same run\n\n", o.rounds)
	for _, t := range tables {
		fmt.Fprint(f, t.markdown())
		fmt.Fprintln(f)
	}
	return nil
}

func orNone(s string) string {
	if s == "" {
		return "not installed"
	}
	return s
}
