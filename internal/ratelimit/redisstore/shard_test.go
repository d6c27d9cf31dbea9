package redisstore

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/portico-gw/portico/internal/config"
	"github.com/portico-gw/portico/internal/ratelimit"
	"github.com/portico-gw/portico/internal/ratelimit/algo"
)

// TestShardIsSlotRange: a Cluster store's shard is the 256-slot range of
// the subject's key slot (as the test's own CRC16 computes it); one server
// is one shard.
func TestShardIsSlotRange(t *testing.T) {
	cl := &Store{shards: clusterShards}
	one := newStore(nil, 0, nil)
	seen := make(map[int]bool)
	for i := range 2000 {
		subj := fmt.Sprint("ip=192.0.2.", i)
		want := int(rueidisSlot(subjectKey(subj))) / (clusterSlots / clusterShards)
		if got := cl.Shard(subj); got != want {
			t.Fatalf("Shard(%q) = %d, want %d", subj, got, want)
		}
		seen[want] = true
		if got := one.Shard(subj); got != 0 {
			t.Fatalf("one server: Shard(%q) = %d", subj, got)
		}
	}
	if len(seen) != clusterShards || one.Shards() != 1 || cl.Shards() != clusterShards {
		t.Fatalf("%d shards used of %d; Shards() = %d and %d", len(seen), clusterShards, cl.Shards(), one.Shards())
	}
}

// lastSubject is the store with the subject of its last decision kept; it
// stays a ShardedStore (Shards and Shard are the store's own).
type lastSubject struct {
	*Store
	mu   sync.Mutex
	last string
}

func (l *lastSubject) Decide(ctx context.Context, subject string, checks []ratelimit.Check, out []algo.Decision) error {
	l.mu.Lock()
	l.last = strings.Clone(subject)
	l.mu.Unlock()
	return l.Store.Decide(ctx, subject, checks, out)
}

// TestClusterShardBreakers: when one master of a Redis Cluster dies, the
// subjects on its slots fail (on_store_error applies, here fail_closed)
// and open their own shards' breakers; the subjects on the other masters
// keep being decided on the store. With one breaker for the whole store,
// three failures on the dead master sent every subject to fail_closed.
func TestClusterShardBreakers(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster")
	}
	cl := startCluster(t, 3)
	ctx := context.Background()
	node := make([]rueidis.Client, len(cl.nodes))
	for i, n := range cl.nodes {
		node[i] = rawClient(t, n.addr)
	}
	s, err := New(config.Store{Type: "redis", Cluster: cl.addrs(), Timeout: config.Duration(2 * time.Second)}, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	if s.Shards() != clusterShards {
		t.Fatalf("Shards() = %d, want %d", s.Shards(), clusterShards)
	}
	store := &lastSubject{Store: s}
	name := freshName("per-ip")
	e := newSvcEnv(t, config.RateLimits{ExpectedNodes: 1, OnStoreError: "fail_closed", Policies: map[string]*config.Policy{
		name: {Algorithm: "fixed_window", Limit: 1000, Window: config.Duration(time.Hour), Key: "ip", Cost: 1, OnStoreError: "fail_closed"},
	}}, ratelimit.Deps{Store: store}, []string{name})

	// Learn where each client's subject lives while every master is up.
	owner := func(slot int) int { return cl.slotOwner(ctx, t, node, int64(slot)) }
	const victim = 0
	var dead, healthy []string
	for i := range 60 {
		ip := fmt.Sprint("192.0.2.", i+1)
		if w := e.do(ip); w.Code != 200 {
			t.Fatalf("%s with every master up: %d %s", ip, w.Code, w.Body)
		}
		store.mu.Lock()
		subj := store.last
		store.mu.Unlock()
		slot := int(rueidisSlot(subjectKey(subj)))
		first := s.Shard(subj) * (clusterSlots / clusterShards)
		switch {
		case owner(slot) == victim:
			dead = append(dead, ip)
		case owner(first) != victim && owner(first+clusterSlots/clusterShards-1) != victim:
			// Not a range the victim shares with another master.
			healthy = append(healthy, ip)
		}
	}
	if len(dead) < 3 || len(healthy) < 3 {
		t.Fatalf("%d clients on the victim, %d elsewhere: too few", len(dead), len(healthy))
	}

	cl.nodes[victim].kill()
	for round := range 3 {
		for _, ip := range dead {
			if w := e.do(ip); w.Code != 503 {
				t.Fatalf("round %d: %s on the dead master: %d, want 503 (fail_closed)", round, ip, w.Code)
			}
		}
		for _, ip := range healthy {
			if w := e.do(ip); w.Code != 200 {
				t.Fatalf("round %d: %s on a live master: %d %s, want 200 decided on the store", round, ip, w.Code, w.Body)
			}
		}
	}
	// Every client's first request, then 3 rounds of the healthy ones.
	if got, want := e.count(name, "allowed"), float64(60+3*len(healthy)); got != want {
		t.Fatalf("allowed = %v, want %v", got, want)
	}
}
