package main

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

const porticoBase = `version: 1
server: {listen: "$PUBLIC"$TLS}
admin: {listen: "$ADMIN"}
logging: {level: warn, access_log: false}
upstreams:
  bench: {targets: [{url: "http://$UPSTREAM"}], max_inflight: 100000}
`

const plainRoute = `routes:
  - name: bench
    match: {path: "/*"}
    upstream: bench
    public: true
`

func porticoConfig(tls string, rest ...string) string {
	return strings.Replace(porticoBase, "$TLS", tls, 1) + strings.Join(rest, "")
}

func (e *env) scenario(ctx context.Context, name string, o options) ([]*table, error) {
	if name == "bff" {
		return e.bff(ctx, o)
	}
	t, err := e.oneTable(ctx, name, o)
	if err != nil {
		return nil, err
	}
	return []*table{t}, nil
}

func (e *env) oneTable(ctx context.Context, name string, o options) (*table, error) {
	switch name {
	case "plain":
		return e.throughput(ctx, o, "Plain proxy, 100-byte JSON, 64 connections", "/small", 64)
	case "plain-4k":
		return e.throughput(ctx, o, "Plain proxy, 4 KB JSON, 64 connections", "/json", 64)
	case "plain-512":
		return e.throughput(ctx, o, "Plain proxy, 100-byte JSON, 512 connections", "/small", 512)
	case "latency":
		return e.latency(ctx, o)
	case "edge-one-token":
		return e.edge(ctx, o, false)
	case "edge-many-tokens":
		return e.edge(ctx, o, true)
	case "h2":
		return e.h2(ctx, o)
	case "redis-exact":
		return e.redis(ctx, o, "exact")
	case "redis-lease":
		return e.redis(ctx, o, "lease")
	case "idle-conns":
		return e.idle(ctx, o)
	case "sparse-conns":
		return e.sparse(ctx, o)
	case "engine-spike":
		return e.engineSpike(ctx, o)
	}
	return nil, fmt.Errorf("unknown scenario %q", name)
}

// throughput: direct, nginx and portico (plain route: metrics and stats on,
// access log off) under wrk, interleaved.
func (e *env) throughput(ctx context.Context, o options, title, path string, conns int) (*table, error) {
	direct, ng, pt, err := e.lineup(ctx, "plain", porticoConfig("", plainRoute), conns, nil)
	if err != nil {
		return nil, err
	}
	defer stopAll(ng, pt)
	std, err := e.startFloor(ctx, "stdlib-proxy", "stdproxy", "/small")
	if err != nil {
		return nil, err
	}
	defer std.stop()
	t := newTable(title, fmt.Sprintf("`wrk -t2 -c%d -d%s --latency URL%s`; stdlib-proxy is `httputil.ReverseProxy` with a `BufferPool` and a tuned transport, doing nothing else (the net/http floor)", conns, o.duration, path),
		"direct", "nginx", "stdlib-proxy", "portico")
	for r := 0; r < o.rounds; r++ {
		for _, s := range []*system{direct, ng, std, pt} {
			if s == nil {
				continue
			}
			smp, err := measure(ctx, s, s.base+path, conns, o, nil, "")
			if err != nil {
				return nil, fmt.Errorf("%s: %w", s.name, err)
			}
			fmt.Printf("   round %d %-12s %8.0f req/s  p50 %.2f ms  p99 %.2f ms\n", r+1, s.name, smp.rps, smp.p50ms, smp.p99ms)
			t.add(s.name, smp)
		}
	}
	t.extra = append(t.extra, floorLine(t, "portico", "stdlib-proxy"))
	return t, nil
}

// floorLine compares sys with the floor system of the same table: req/s
// and CPU per request as ratios of medians.
func floorLine(t *table, sys, floor string) string {
	rps := func(s sample) float64 { return s.rps }
	cpu := func(s sample) float64 { return s.cpuMsPer1k }
	return fmt.Sprintf("%s against %s (the net/http floor, same run): %s of its req/s, %s of its CPU per request.",
		sys, floor, ratio(t.med(sys, rps), t.med(floor, rps)), ratio(t.med(sys, cpu), t.med(floor, cpu)))
}

// latency: a constant request rate (open loop) below saturation; added
// latency over the direct call.
func (e *env) latency(ctx context.Context, o options) (*table, error) {
	direct, ng, pt, err := e.lineup(ctx, "plain", porticoConfig("", plainRoute), 64, nil)
	if err != nil {
		return nil, err
	}
	defer stopAll(ng, pt)
	std, err := e.startFloor(ctx, "stdlib-proxy", "stdproxy", "/small")
	if err != nil {
		return nil, err
	}
	defer std.stop()
	t := newTable(fmt.Sprintf("Latency at a constant %d req/s (open loop), 100-byte JSON, 64 connections", o.rate),
		"latency measured from each request's scheduled send time, so queueing counts (no coordinated omission); req/s is the achieved rate; the generator is the harness's own raw HTTP/1.1 client (wrk has no constant-rate mode)",
		"direct", "nginx", "stdlib-proxy", "portico")
	for r := 0; r < o.rounds; r++ {
		for _, s := range []*system{direct, ng, std, pt} {
			if s == nil {
				continue
			}
			var cpu0 float64
			if s.proc != nil {
				cpu0 = s.proc.cpu()
			}
			res := openLoop(ctx, s.base+"/small", o.rate, o.duration, 64)
			smp := sample{rps: res.rps, p50ms: ms(res.p50), p99ms: ms(res.p99), errors: res.errors}
			if s.proc != nil && res.requests > 0 {
				cpu := s.proc.cpu() - cpu0
				smp.cpuMsPer1k = cpu * 1000 / (float64(res.requests) / 1000)
				smp.rssMiB = s.proc.rssMiB()
			}
			fmt.Printf("   round %d %-8s %8.0f req/s  p50 %.3f ms  p99 %.3f ms\n", r+1, s.name, smp.rps, smp.p50ms, smp.p99ms)
			t.add(s.name, smp)
			time.Sleep(500 * time.Millisecond)
		}
	}
	d99 := t.med("direct", func(s sample) float64 { return s.p99ms })
	p99 := t.med("portico", func(s sample) float64 { return s.p99ms })
	d50 := t.med("direct", func(s sample) float64 { return s.p50ms })
	p50 := t.med("portico", func(s sample) float64 { return s.p50ms })
	t.extra = append(t.extra, fmt.Sprintf("Added by portico over the direct call (medians): p50 %+.3f ms, p99 %+.3f ms.", p50-d50, p99-d99))
	t.extra = append(t.extra, fmt.Sprintf("Added by stdlib-proxy over the direct call (medians): p50 %+.3f ms, p99 %+.3f ms.",
		t.med("stdlib-proxy", func(s sample) float64 { return s.p50ms })-d50, t.med("stdlib-proxy", func(s sample) float64 { return s.p99ms })-d99))
	return t, nil
}

// edge: the full edge pipeline (JWT RS256, a memory rate limit that never
// limits, metrics, stats; access log off) beside Portico's own plain route.
func (e *env) edge(ctx context.Context, o options, manyTokens bool) (*table, error) {
	keys, err := newSigner(e.work)
	if err != nil {
		return nil, err
	}
	edgeCfg := porticoConfig("", fmt.Sprintf(`auth:
  bench-jwt: {type: jwt, jwks_file: %q, issuer: "https://id.bench", audiences: [bench], algorithms: [RS256]}
rate_limits:
  policies:
    per-ip: {algorithm: token_bucket, rate: 10000000, per: 1s, key: ip}
    per-user: {algorithm: sliding_window_counter, limit: 1000000000, window: 1m, key: "claim:sub"}
routes:
  - name: plain
    match: {path: "/plain/*"}
    upstream: bench
    rewrite: {strip_prefix: /plain}
    public: true
  - name: edge
    match: {path: "/*"}
    upstream: bench
    auth: [bench-jwt]
    rate_limit: [per-ip, per-user]
`, keys.jwksPath))
	title := "Full edge pipeline (JWT RS256 + rate limits + metrics), one token (verified-token cache hits), 64 connections"
	var headers []string
	script := ""
	tokens := 1
	if manyTokens {
		// Enough distinct tokens that wrk does not wrap around in one run:
		// 25,000 a second is above what two cores verify (RS256 alone is
		// about 40 µs of CPU), and the table says whether a run wrapped.
		tokens = max(40000, int(o.duration.Seconds()*25000))
		title = "Full edge pipeline, a different token on every request (each verified once), 64 connections"
		fmt.Printf("   signing %d RS256 tokens\n", tokens)
		if script, err = keys.tokenScript(e.work, tokens); err != nil {
			return nil, err
		}
	} else {
		tok, err := keys.token("user-1")
		if err != nil {
			return nil, err
		}
		headers = []string{"Authorization: Bearer " + tok}
	}
	ng, err := e.startNginx(ctx, 64, nil)
	if err != nil {
		return nil, err
	}
	if ng != nil {
		defer ng.proc.stop()
	}
	direct := &system{name: "direct", base: "http://" + e.upAddr}
	t := newTable(title, "portico-plain is a public route on the same process; portico-edge adds JWT verification and two rate-limit policies (ip before auth, claim:sub after)",
		"direct", "nginx", "portico-plain", "portico-edge")
	var requests, rounds float64
	for r := 0; r < o.rounds; r++ {
		// A fresh process per round, so each round starts with a cold token cache.
		pt, err := e.startPortico(ctx, "edge", edgeCfg)
		if err != nil {
			return nil, err
		}
		runs := []struct {
			s       *system
			label   string
			path    string
			headers []string
			script  string
		}{
			{direct, "direct", "/small", nil, ""},
			{ng, "nginx", "/small", nil, ""},
			{pt, "portico-plain", "/plain/small", nil, ""},
			{pt, "portico-edge", "/small", headers, script},
		}
		for _, run := range runs {
			if run.s == nil {
				continue
			}
			oo := o
			if run.label == "portico-edge" && manyTokens {
				oo.warmup = 0 // a warm-up would spend tokens and fill the cache
			}
			smp, err := measure(ctx, run.s, run.s.base+run.path, 64, oo, run.headers, run.script)
			if err != nil {
				pt.proc.stop()
				return nil, fmt.Errorf("%s: %w", run.label, err)
			}
			if run.label == "portico-edge" {
				requests += smp.rps * o.duration.Seconds()
				rounds++
			}
			fmt.Printf("   round %d %-14s %8.0f req/s  p50 %.2f ms  p99 %.2f ms  errors %d\n", r+1, run.label, smp.rps, smp.p50ms, smp.p99ms, smp.errors)
			t.add(run.label, smp)
		}
		pt.proc.stop()
	}
	plain := t.med("portico-plain", func(s sample) float64 { return s.rps })
	edge := t.med("portico-edge", func(s sample) float64 { return s.rps })
	t.extra = append(t.extra, fmt.Sprintf("portico-edge keeps %s of portico-plain's req/s.", ratio(edge, plain)))
	if manyTokens && rounds > 0 {
		t.extra = append(t.extra, fmt.Sprintf("%d distinct tokens for about %.0f requests per run: %s.", tokens, requests/rounds,
			map[bool]string{true: "no token was sent twice", false: "tokens wrapped around, so some requests hit the cache"}[requests/rounds <= float64(tokens)]))
	}
	return t, nil
}

// bff: one client call fanned out to 6 backends that each answer in 5 ms.
// Latency at one connection against a direct 5 ms call; gateway CPU per
// merged request at 16 connections, where the runtime's idle wake-ups are
// no longer charged to a few requests (at one connection they dominate).
// stdlib-fanout is the least net/http can do for the same merge.
func (e *env) bff(ctx context.Context, o options) ([]*table, error) {
	var ups, backends strings.Builder
	for i := 1; i <= 6; i++ {
		fmt.Fprintf(&ups, "  b%d: {targets: [{url: \"http://$UPSTREAM\"}], max_inflight: 100000}\n", i)
		fmt.Fprintf(&backends, "          - {upstream: b%d, path: \"/small?delay=5&b=%d\", into: b%d}\n", i, i, i)
	}
	cfg := porticoConfig("", ups.String(), `bffs:
  bench:
    prefix: /bff
    public: true
    endpoints:
      - name: feed
        path: /feed
        timeout: 2s
        backends:
`, backends.String())
	pt, err := e.startPortico(ctx, "bff", cfg)
	if err != nil {
		return nil, err
	}
	defer pt.proc.stop()
	fan, err := e.startFloor(ctx, "stdlib-fanout", "fanout", "/")
	if err != nil {
		return nil, err
	}
	defer fan.stop()
	seq, err := e.startFloor(ctx, "seq-fanout", "fanout", "/", "-sequential")
	if err != nil {
		return nil, err
	}
	defer seq.stop()
	direct := &system{name: "direct", base: "http://" + e.upAddr}
	runs := []struct {
		s    *system
		name string
		path string
	}{{direct, "direct", "/small?delay=5"}, {fan, "stdlib-fanout", "/"}, {seq, "seq-fanout", "/"}, {pt, "portico-bff", "/bff/feed"}}
	note := "direct is one 5 ms call to the same backend; stdlib-fanout is six goroutines doing `Transport.RoundTrip` and `io.ReadAll`, then one JSON object written out (the net/http floor); seq-fanout is the same with no goroutine per call: the handler writes all six requests on keep-alive sockets of its own, then reads the six answers in order (the design of Portico's BFF since its upstream pools can send a request and read the answer later, here bare: the floor of that design); nginx cannot aggregate, so it is not in these tables"
	var tables []*table
	for _, conns := range []int{1, 16} {
		t := newTable(fmt.Sprintf("BFF fan-out to 6 backends that each answer in 5 ms, compression off, %d connection(s)", conns),
			fmt.Sprintf("`wrk -t%d -c%d`; %s", min(conns, 2), conns, note), "direct", "stdlib-fanout", "seq-fanout", "portico-bff")
		for r := 0; r < o.rounds; r++ {
			for _, run := range runs {
				smp, err := measure(ctx, run.s, run.s.base+run.path, conns, o, nil, "")
				if err != nil {
					return nil, fmt.Errorf("%s: %w", run.name, err)
				}
				fmt.Printf("   c%d round %d %-14s %6.0f req/s  p50 %.3f ms  p99 %.3f ms  errors %d\n", conns, r+1, run.name, smp.rps, smp.p50ms, smp.p99ms, smp.errors)
				t.add(run.name, smp)
			}
		}
		p50 := func(s sample) float64 { return s.p50ms }
		p99 := func(s sample) float64 { return s.p99ms }
		cpu := func(s sample) float64 { return s.cpuMsPer1k }
		for _, sys := range []string{"stdlib-fanout", "seq-fanout", "portico-bff"} {
			t.extra = append(t.extra, fmt.Sprintf("%s over the direct 5 ms call (medians): p50 %+.3f ms, p99 %+.3f ms; CPU per merged request %.0f µs.",
				sys, t.med(sys, p50)-t.med("direct", p50), t.med(sys, p99)-t.med("direct", p99), t.med(sys, cpu)))
		}
		t.extra = append(t.extra, floorLine(t, "portico-bff", "stdlib-fanout"))
		tables = append(tables, t)
	}
	return tables, nil
}

// h2: HTTPS with HTTP/2, h2load against nginx and portico.
func (e *env) h2(ctx context.Context, o options) (*table, error) {
	if _, err := exec.LookPath("h2load"); err != nil {
		return nil, fmt.Errorf("h2load is not installed (apt-get install nghttp2-client)")
	}
	tf, err := writeSelfSigned(e.work)
	if err != nil {
		return nil, err
	}
	_, ng, pt, err := e.lineup(ctx, "h2", porticoConfig(fmt.Sprintf(", tls: {cert: %q, key: %q}", tf.cert, tf.key), plainRoute), 64, tf)
	if err != nil {
		return nil, err
	}
	defer stopAll(ng, pt)
	t := newTable("HTTPS with HTTP/2, 100-byte JSON, 64 connections × 10 streams",
		fmt.Sprintf("`h2load -c64 -m10 -D %d URL/small`; TLS is terminated by the proxy, the upstream is plain HTTP/1.1", int(o.duration.Seconds())),
		"nginx", "portico")
	re := regexp.MustCompile(`finished in [0-9.]+s, ([0-9.]+) req/s`)
	reMean := regexp.MustCompile(`time for request:\s+\S+\s+\S+\s+([0-9.]+)(us|ms|s)`)
	for r := 0; r < o.rounds; r++ {
		for _, s := range []*system{ng, pt} {
			if s == nil {
				continue
			}
			cpu0 := s.proc.cpu()
			out, err := exec.CommandContext(ctx, "h2load", "-c64", "-m10", "-D", strconv.Itoa(int(o.duration.Seconds())), s.base+"/small").CombinedOutput()
			if err != nil {
				return nil, fmt.Errorf("h2load %s: %v: %s", s.name, err, out)
			}
			m := re.FindSubmatch(out)
			if m == nil {
				return nil, fmt.Errorf("h2load %s: no rate in output: %s", s.name, out)
			}
			rps, _ := strconv.ParseFloat(string(m[1]), 64)
			smp := sample{rps: rps, rssMiB: s.proc.rssMiB()}
			if mm := reMean.FindSubmatch(out); mm != nil {
				v, _ := strconv.ParseFloat(string(mm[1]), 64)
				switch string(mm[2]) {
				case "us":
					v /= 1000
				case "s":
					v *= 1000
				}
				smp.p50ms = v // h2load reports the mean; shown in the p50 column
			}
			reqs := rps * o.duration.Seconds()
			if cpu := s.proc.cpu() - cpu0; cpu > 0 && reqs > 0 {
				smp.setCPU(cpu, reqs)
			}
			fmt.Printf("   round %d %-8s %8.0f req/s\n", r+1, s.name, rps)
			t.add(s.name, smp)
			time.Sleep(500 * time.Millisecond)
		}
	}
	t.extra = append(t.extra, "h2load reports a mean request time, not percentiles: the p50 column holds that mean here.")
	return t, nil
}

// redis: a rate limit with the Redis store that never limits, in exact or
// lease mode.
func (e *env) redis(ctx context.Context, o options, mode string) (*table, error) {
	c, err := net.DialTimeout("tcp", "127.0.0.1:6379", time.Second)
	if err != nil {
		return nil, fmt.Errorf("no Redis at 127.0.0.1:6379")
	}
	c.Close()
	cfg := porticoConfig("", fmt.Sprintf(`rate_limits:
  store: {type: redis, url: "redis://127.0.0.1:6379/15"}
  mode: %s
  policies:
    per-ip: {algorithm: sliding_window_counter, limit: 1000000000, window: 1m, key: ip}
routes:
  - name: plain
    match: {path: "/plain/*"}
    upstream: bench
    rewrite: {strip_prefix: /plain}
    public: true
  - name: limited
    match: {path: "/*"}
    upstream: bench
    public: true
    rate_limit: [per-ip]
`, mode))
	direct, ng, pt, err := e.lineup(ctx, "redis-"+mode, cfg, 64, nil)
	if err != nil {
		return nil, err
	}
	defer stopAll(ng, pt)
	label := "portico-redis-" + mode
	t := newTable(fmt.Sprintf("Rate limiting with the Redis store, %s mode (one hot key, never limiting), 64 connections", mode),
		"Redis on 127.0.0.1:6379 shares the two cores", "direct", "nginx", "portico-plain", label)
	for r := 0; r < o.rounds; r++ {
		for _, run := range []struct {
			s     *system
			label string
			path  string
		}{{direct, "direct", "/small"}, {ng, "nginx", "/small"}, {pt, "portico-plain", "/plain/small"}, {pt, label, "/small"}} {
			if run.s == nil {
				continue
			}
			smp, err := measure(ctx, run.s, run.s.base+run.path, 64, o, nil, "")
			if err != nil {
				return nil, fmt.Errorf("%s: %w", run.label, err)
			}
			fmt.Printf("   round %d %-20s %8.0f req/s  p50 %.2f ms  p99 %.2f ms  errors %d\n", r+1, run.label, smp.rps, smp.p50ms, smp.p99ms, smp.errors)
			t.add(run.label, smp)
		}
	}
	return t, nil
}

// idleSettleAfter is when, after the last idle connection opened, the
// idle scenario starts waiting for RSS to settle: past Portico's default
// idle_release_after (10 s), with time for the reclaim after it.
const idleSettleAfter = 12 * time.Second

// idle: 10,000 idle keep-alive connections, each after one request; RSS
// growth per connection one second after the last connection, and once RSS
// has settled, from idleSettleAfter after it.
func (e *env) idle(ctx context.Context, o options) (*table, error) {
	const n = 10000
	_, ng, pt, err := e.lineup(ctx, "idle", porticoConfig("", plainRoute), 64, nil)
	if err != nil {
		return nil, err
	}
	defer stopAll(ng, pt)
	std, err := e.startFloor(ctx, "stdlib-proxy", "stdproxy", "/small")
	if err != nil {
		return nil, err
	}
	defer std.stop()
	t := newTable(fmt.Sprintf("%d idle HTTP/1.1 keep-alive client connections", n),
		"each connection sends one request, reads the answer and stays open; the RSS column is the proxy's RSS with all of them open, once it has settled (from 12 s after the last connected, four samples 250 ms apart within 0.25 MiB, at most 15 s); stdlib-proxy is the net/http floor (one goroutine and its read and write buffers per connection)",
		"nginx", "stdlib-proxy", "portico")
	for _, s := range []*system{ng, std, pt} {
		if s == nil {
			continue
		}
		before, _ := settledRSS(ctx, s.proc)
		conns, err := openIdle(ctx, strings.TrimPrefix(s.base, "http://"), n)
		if err != nil {
			closeAll(conns)
			return nil, fmt.Errorf("%s: %w", s.name, err)
		}
		time.Sleep(time.Second)
		at1s := s.proc.rssMiB()
		// Portico releases a connection idle for server.idle_release_after
		// (10 s by default) and then reclaims what it held; settling starts
		// once that has had time to happen.
		time.Sleep(idleSettleAfter - time.Second)
		after, took := settledRSS(ctx, s.proc)
		closeAll(conns)
		t.add(s.name, sample{rssMiB: after})
		perConn := func(rss float64) float64 { return (rss - before) * 1024 / n }
		t.extra = append(t.extra, fmt.Sprintf("%s: RSS %.1f MiB idle before; with %d connections %.1f MiB once settled (%.1f s after the last connected): %.1f KiB per connection; one second after the last connected, %.1f MiB: %.1f KiB.",
			s.name, before, n, after, (took+idleSettleAfter).Seconds(), perConn(after), at1s, perConn(at1s)))
		fmt.Printf("   %-8s %.1f -> %.1f MiB settled (%.1f KiB per connection; %.1f KiB at 1 s)\n", s.name, before, after, perConn(after), perConn(at1s))
	}
	return t, nil
}

// settledRSS samples p's RSS until it has settled: four samples in a row,
// 250 ms apart, within 0.25 MiB of each other, or 15 s. A Go runtime
// returns a burst's garbage to the OS over seconds after the burst, so an
// idle process's RSS read at one fixed moment depends on that moment.
func settledRSS(ctx context.Context, p *proc) (float64, time.Duration) {
	const every, window, limit = 250 * time.Millisecond, 4, 15 * time.Second
	start := time.Now()
	var last []float64
	for {
		last = append(last, p.rssMiB())
		if len(last) > window {
			last = last[1:]
		}
		if len(last) == window && slices.Max(last)-slices.Min(last) <= 0.25 {
			break
		}
		if time.Since(start) >= limit || ctx.Err() != nil {
			break
		}
		time.Sleep(every)
	}
	return last[len(last)-1], time.Since(start)
}
