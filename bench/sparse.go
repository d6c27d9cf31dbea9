package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

// sparse prices releasing idle connections (server.idle_release_after)
// where it costs most: many keep-alive clients that each pause a little
// longer than the release delay between requests, so that every request
// wakes a released connection. portico runs the defaults (a 10 s delay:
// these connections are never released); portico-release-1s releases
// after 1 s, so every request it serves wakes its connection;
// stdlib-proxy is the net/http floor.
func (e *env) sparse(ctx context.Context, o options) (*table, error) {
	const n, every = 2000, 1500 * time.Millisecond
	pt, err := e.startPortico(ctx, "sparse", porticoConfig("", plainRoute))
	if err != nil {
		return nil, err
	}
	defer pt.stop()
	rel, err := e.startPortico(ctx, "release-1s", porticoConfig(", idle_release_after: 1s", plainRoute))
	if err != nil {
		return nil, err
	}
	rel.name = "portico-release-1s"
	defer rel.stop()
	std, err := e.startFloor(ctx, "stdlib-proxy", "stdproxy", "/small")
	if err != nil {
		return nil, err
	}
	defer std.stop()
	ng, err := e.startNginx(ctx, 64, nil)
	if err != nil {
		return nil, err
	}
	defer ng.stop()
	t := newTable(fmt.Sprintf("%d keep-alive clients, each sending one request every %v", n, every),
		fmt.Sprintf("each client waits %v between requests: under Portico's default idle_release_after of 10 s (portico holds every connection), over the 1 s of portico-release-1s (every request it serves wakes a released connection); %s measured, from %v after one request per connection; req/s is the rate served; latency is measured by the client; RSS is the proxy's with all connections open", every, o.duration, every),
		"nginx", "stdlib-proxy", "portico", "portico-release-1s")
	for r := 0; r < o.rounds; r++ {
		for _, s := range []*system{ng, std, pt, rel} {
			if s == nil {
				continue
			}
			smp, err := sparseRun(ctx, s, n, every, o.duration)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", s.name, err)
			}
			fmt.Printf("   round %d %-13s %6.0f req/s  p50 %.2f ms  p99 %.2f ms  %.1f CPU-ms/1k  RSS %.1f MiB  errors %d\n",
				r+1, s.name, smp.rps, smp.p50ms, smp.p99ms, smp.cpuMsPer1k, smp.rssMiB, smp.errors)
			t.add(s.name, smp)
		}
	}
	cpu := func(s sample) float64 { return s.cpuMsPer1k }
	rss := func(s sample) float64 { return s.rssMiB }
	t.extra = append(t.extra, fmt.Sprintf("portico-release-1s against portico (same run): %s of its CPU per request, %s of its RSS.",
		ratio(t.med("portico-release-1s", cpu), t.med("portico", cpu)), ratio(t.med("portico-release-1s", rss), t.med("portico", rss))))
	return t, nil
}

// sparseRun opens n keep-alive connections to s (one request each), then
// has each send a request every `every`, staggered, for d; it returns the
// proxy's CPU per 1,000 requests over d, the client's latency percentiles
// and the proxy's RSS at the end.
func sparseRun(ctx context.Context, s *system, n int, every, d time.Duration) (sample, error) {
	conns, err := openIdle(ctx, strings.TrimPrefix(s.base, "http://"), n)
	defer closeAll(conns)
	if err != nil {
		return sample{}, err
	}
	req := []byte("GET /small HTTP/1.1\r\nHost: bench\r\n\r\n")
	var (
		mu        sync.Mutex
		latencies []time.Duration
		failed    int
		wg        sync.WaitGroup
	)
	// Every connection idles past the release delay before its first
	// measured request, as before each later one.
	time.Sleep(every)
	cpu0 := s.proc.cpu()
	start := time.Now()
	end := start.Add(d)
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			br := bufio.NewReader(c)
			var mine []time.Duration
			bad := 0
			for at := start.Add(every * time.Duration(i) / time.Duration(n)); at.Before(end) && ctx.Err() == nil; at = at.Add(every) {
				time.Sleep(time.Until(at))
				t0 := time.Now()
				_ = c.SetDeadline(t0.Add(5 * time.Second))
				if _, err := c.Write(req); err != nil {
					bad++
					break
				}
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					bad++
					break
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			latencies = append(latencies, mine...)
			failed += bad
			mu.Unlock()
		}()
	}
	wg.Wait()
	cpu := s.proc.cpu() - cpu0
	rss := s.proc.rssMiB()
	out := sample{rps: float64(len(latencies)) / d.Seconds(), rssMiB: rss, errors: failed}
	if len(latencies) > 0 {
		slices.Sort(latencies)
		out.p50ms = ms(latencies[len(latencies)/2])
		out.p99ms = ms(latencies[len(latencies)*99/100])
		out.setCPU(cpu, float64(len(latencies)))
	}
	time.Sleep(500 * time.Millisecond)
	return out, nil
}
