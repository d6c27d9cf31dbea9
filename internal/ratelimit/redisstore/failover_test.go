package redisstore

import (
	"context"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/portico-gw/portico/internal/config"
	"github.com/portico-gw/portico/internal/ratelimit"
	"github.com/portico-gw/portico/internal/ratelimit/algo"
)

// TestClusterFailover (PORTICO_LONG=1) kills the master serving a subject
// in a 3-master, 3-replica cluster while decisions run: they fail (the
// core's on_store_error applies) until the replica is promoted, then the
// client finds the new master by itself and decides on the replicated
// state, without CROSSSLOT and without a restart.
func TestClusterFailover(t *testing.T) {
	if !longTests() {
		t.Skip("PORTICO_LONG=1: starts six servers and waits for a failover")
	}
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		skipOrFail(t, "redis-cli not installed: %v", err)
	}
	dir := t.TempDir()
	var procs []*redisProc
	for range 6 {
		procs = append(procs, startRedis(t, dir, func(port int) []string {
			return []string{"--cluster-enabled", "yes", "--cluster-node-timeout", "1000",
				"--cluster-config-file", filepath.Join(dir, "nodes-"+strconv.Itoa(port)+".conf")}
		}))
	}
	args := []string{"--cluster", "create"}
	for _, p := range procs {
		args = append(args, p.addr)
	}
	args = append(args, "--cluster-replicas", "1", "--cluster-yes")
	if out, err := exec.Command(cli, args...).CombinedOutput(); err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	info := func(p *redisProc, what string) string {
		out, _ := exec.Command(cli, "-h", "127.0.0.1", "-p", strconv.Itoa(p.port), "cluster", what).Output()
		return string(out)
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, p := range procs {
		for !strings.Contains(info(p, "info"), "cluster_state:ok") {
			if time.Now().After(deadline) {
				t.Fatalf("%s never ok", p.addr)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	s, err := New(config.Store{Type: "redis", Cluster: []string{procs[0].addr}, Timeout: config.Duration(200 * time.Millisecond)}, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	subject := uniqueSubject(t, "failover")
	checks := []ratelimit.Check{
		{Policy: "fw", Params: fixed(1_000_000, time.Hour), Cost: 1},
		{Policy: "log", Params: algo.Params{Kind: algo.SlidingWindowLog, Limit: 1000, Window: time.Hour.Microseconds()}, Cost: 1},
	}
	out := make([]algo.Decision, len(checks))
	for i := range 100 {
		if err := s.Decide(ctx, subject, checks, out); err != nil || !out[0].Allowed {
			t.Fatalf("decision %d before the failover: %+v %v", i, out, err)
		}
	}
	// WAIT for the replica to have the 100 decisions, so the count after
	// the failover is known.
	slot := strconv.Itoa(int(rueidisSlot(subjectKey(subject))))
	var master *redisProc
	nodes := info(procs[0], "nodes")
	for _, line := range strings.Split(nodes, "\n") {
		f := strings.Fields(line)
		if len(f) < 9 || !strings.Contains(f[2], "master") {
			continue
		}
		for _, r := range f[8:] {
			lo, hi, _ := strings.Cut(r, "-")
			l, _ := strconv.Atoi(lo)
			h, _ := strconv.Atoi(hi)
			if sl, _ := strconv.Atoi(slot); sl >= l && sl <= h {
				for _, p := range procs {
					if strings.HasPrefix(f[1], p.addr+"@") {
						master = p
					}
				}
			}
		}
	}
	if master == nil {
		t.Fatalf("no master for slot %s in\n%s", slot, nodes)
	}
	// The replica's first sync may still be running after the create.
	for i := 0; ; i++ {
		out, err := exec.Command(cli, "-p", strconv.Itoa(master.port), "wait", "1", "1000").Output()
		if err == nil && strings.TrimSpace(string(out)) == "1" {
			break
		}
		if i == 30 {
			t.Fatalf("WAIT: %q %v", out, err)
		}
	}
	master.kill()
	start := time.Now()
	failed := 0
	var lastErr error
	for {
		err := s.Decide(ctx, subject, checks, out)
		if err == nil {
			break
		}
		if strings.Contains(err.Error(), "CROSSSLOT") {
			t.Fatal(err)
		}
		failed++
		lastErr = err
		if time.Since(start) > 30*time.Second {
			t.Fatalf("no decision 30s after the master died (%d failed, last: %v)", failed, lastErr)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("decisions resumed %v after the kill (%d failed; last error: %v)", time.Since(start), failed, lastErr)
	if want := int64(1_000_000 - 101); out[0].Remaining != want || out[1].Remaining != 1000-101 {
		t.Fatalf("after the failover: remaining %d and %d, want %d and %d (replicated state lost?)",
			out[0].Remaining, out[1].Remaining, want, 1000-101)
	}
}
