package redisstore

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/portico-gw/portico/internal/config"
	"github.com/portico-gw/portico/internal/ratelimit"
	"github.com/portico-gw/portico/internal/ratelimit/algo"
)

// TestCluster runs the store against a 3-master Redis Cluster it starts
// itself: multi-key scripts stay in one slot (no CROSSSLOT), heartbeats
// work, and accuracy holds while the hot subject's slot moves to another
// master under load (MIGRATING/IMPORTING, MIGRATE key by key, SETSLOT
// NODE), so decisions cross MOVED, ASK and TRYAGAIN.
func TestCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster")
	}
	cl := startCluster(t, 3)
	cfg := config.Store{Type: "redis", Cluster: cl.addrs()}
	ctx := context.Background()
	node := make([]rueidis.Client, len(cl.nodes))
	for i, n := range cl.nodes {
		node[i] = rawClient(t, n.addr)
	}

	t.Run("one slot per subject", func(t *testing.T) {
		cfg := cfg
		cfg.Timeout = config.Duration(2 * time.Second)
		s, err := New(cfg, Deps{})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		checks := []ratelimit.Check{
			{Policy: "fw", Params: fixed(5, time.Minute), Cost: 1},
			{Policy: "log-a", Params: algo.Params{Kind: algo.SlidingWindowLog, Limit: 5, Window: 60_000_000}, Cost: 1},
			{Policy: "log-b", Params: algo.Params{Kind: algo.SlidingWindowLog, Limit: 3, Window: 60_000_000}, Cost: 1},
			{Policy: "tb", Params: algo.Params{Kind: algo.TokenBucket, Limit: 5, Window: 1_000_000}, Cost: 1},
		}
		out := make([]algo.Decision, len(checks))
		// Many subjects, so every master serves some.
		for i := range 60 {
			subj := fmt.Sprint("cluster-subject-", i)
			for j := range 4 {
				if err := s.Decide(ctx, subj, checks, out); err != nil {
					t.Fatalf("subject %d: %v", i, err)
				}
				if all := out[0].Allowed && out[1].Allowed && out[2].Allowed && out[3].Allowed; all != (j < 3) {
					t.Fatalf("subject %d request %d: %+v", i, j, out)
				}
			}
			if err := s.Refund(ctx, subj, checks); err != nil {
				t.Fatal(err)
			}
		}
		s.beatOnce(ctx, "cluster-node", noNow)
		if s.Nodes() != 1 {
			t.Fatalf("nodes = %d", s.Nodes())
		}
	})

	for _, c := range clusterCases(longTests()) {
		t.Run("migrate/"+c.String(), func(t *testing.T) {
			c.subject = uniqueSubject(t, "hot")
			slot := int64(rueidisSlot(subjectKey(c.subject)))
			src := cl.slotOwner(ctx, t, node, slot)
			dst := (src + 1) % len(cl.nodes)
			before := scriptCalls(t, cl.addrs())
			evs, res := runAccuracy(t, cfg, c, func() {
				cl.migrateSlot(ctx, t, node, slot, src, dst)
			})
			res.calls = scriptCalls(t, cl.addrs()) - before
			if got := cl.slotOwner(ctx, t, node, slot); got != dst {
				t.Fatalf("slot %d served by node %d after the move, want %d", slot, got, dst)
			}
			checkAccuracy(t, c, evs, &res)
			logAccuracy(t, c, res)
		})
	}
}

// clusterCases are the runs through the cluster, each moving the hot slot:
// by default a fixed window (one key per subject) and a sliding log (two
// keys, so TRYAGAIN while they sit on both sides); with PORTICO_LONG=1 also
// the other kinds and lease mode.
func clusterCases(long bool) []accCase {
	cs := []accCase{
		{params: fixed(100, 250*time.Millisecond), offered: 10, dur: time.Second},
		{params: algo.Params{Kind: algo.SlidingWindowLog, Limit: 100, Window: 250_000}, offered: 2, dur: time.Second},
	}
	if long {
		cs = append(cs,
			accCase{params: algo.Params{Kind: algo.SlidingWindowCounter, Limit: 100, Window: 250_000}, offered: 10, dur: 2 * time.Second},
			accCase{params: algo.Params{Kind: algo.TokenBucket, Limit: 20, Window: 2500}, offered: 10, dur: 2 * time.Second},
			accCase{params: fixed(10_000, time.Second), lease: true, offered: 2, dur: 3 * time.Second},
			accCase{params: algo.Params{Kind: algo.TokenBucket, Limit: 2_000, Window: 100}, lease: true, offered: 2, dur: 3 * time.Second},
		)
	}
	return cs
}
