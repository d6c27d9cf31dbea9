package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// engineSpike compares a tuned net/http proxy path with a fasthttp one for
// the same route and edge work (bench/enginespike), beside nginx, the direct
// call and Portico's plain route.
func (e *env) engineSpike(ctx context.Context, o options) (*table, error) {
	bin := filepath.Join(e.work, "enginespike")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, ".")
	build.Dir = filepath.Join("bench", "enginespike")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		return nil, fmt.Errorf("build the engine spike: %w", err)
	}
	start := func(engine string) (*system, error) {
		return e.startPrinting(ctx, engine, "/small", bin, "-engine", engine, "-listen", "127.0.0.1:0", "-upstream", e.upAddr)
	}
	nh, err := start("nethttp")
	if err != nil {
		return nil, err
	}
	defer nh.proc.stop()
	fh, err := start("fasthttp")
	if err != nil {
		return nil, err
	}
	defer fh.proc.stop()
	hy, err := start("hybrid")
	if err != nil {
		return nil, err
	}
	defer hy.proc.stop()
	direct, ng, pt, err := e.lineup(ctx, "plain", porticoConfig("", plainRoute), 64, nil)
	if err != nil {
		return nil, err
	}
	defer stopAll(ng, pt)
	t := newTable("Engine spike: tuned net/http vs fasthttp for the same proxy route, 100-byte JSON, 64 connections",
		"nethttp, fasthttp and hybrid are bench/enginespike: the same edge work (request id, X-Forwarded-*, hop-by-hop both ways, timeouts, streaming) and nothing else; hybrid is net/http's server with fasthttp's client for the upstream (the request written and the answer read on the handler's goroutine); portico is the full gateway's plain route (routing, metrics, stats)",
		"direct", "nginx", "nethttp", "hybrid", "fasthttp", "portico")
	for r := 0; r < o.rounds; r++ {
		for _, s := range []*system{direct, ng, nh, hy, fh, pt} {
			if s == nil {
				continue
			}
			smp, err := measure(ctx, s, s.base+"/small", 64, o, nil, "")
			if err != nil {
				return nil, fmt.Errorf("%s: %w", s.name, err)
			}
			fmt.Printf("   round %d %-8s %8.0f req/s  p50 %.2f ms  p99 %.2f ms\n", r+1, s.name, smp.rps, smp.p50ms, smp.p99ms)
			t.add(s.name, smp)
		}
	}
	return t, nil
}
