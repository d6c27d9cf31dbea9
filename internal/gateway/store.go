package gateway

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/redis/rueidis"

	"github.com/portico-gw/portico/internal/config"
	"github.com/portico-gw/portico/internal/ratelimit"
	"github.com/portico-gw/portico/internal/ratelimit/redisstore"
)

// storeSet is the rate-limit store chosen by rate_limits.store. It lives as
// long as the process: changing the store needs a restart (DESIGN.md).
type storeSet struct {
	exact ratelimit.Store // nil: the service's own memory store
	lease ratelimit.Store // policies in lease mode; nil with the memory store
	redis *redisstore.Store
	stop  context.CancelFunc
	cfg   config.RateLimits
}

func newStoreSet(cfg config.RateLimits, nodeID string, logger *slog.Logger) (*storeSet, error) {
	s := &storeSet{cfg: cfg}
	if cfg.Store.Type != "redis" {
		return s, nil
	}
	rs, err := redisstore.New(cfg.Store, redisstore.Deps{Logger: logger})
	if err != nil {
		return nil, fmt.Errorf("rate_limits.store: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rs.StartHeartbeat(ctx, nodeID)
	s.redis, s.exact, s.stop = rs, rs, cancel
	s.lease = redisstore.NewLeaseStore(rs, rs.Nodes)
	return s, nil
}

// nodes is the live node count for the local fallback: heartbeats seen in
// Redis, or expected_nodes before any (and with the memory store).
func (s *storeSet) nodes() int {
	if s.redis != nil {
		if n := s.redis.Nodes(); n > 0 {
			return n
		}
	}
	return max(1, s.cfg.ExpectedNodes)
}

// redisClient shares the store's connection with the SLO engine, so SLO
// counts are fleet-wide whenever rate limits are.
func (s *storeSet) redisClient() rueidis.Client {
	if s.redis == nil {
		return nil
	}
	return s.redis.Client()
}

func (s *storeSet) close() {
	if s.stop != nil {
		s.stop()
	}
	if s.redis != nil {
		s.redis.Close()
	}
}

// sloThresholds are the SLO latency objectives known at start; each gets a
// histogram bucket so Prometheus rules can count against it exactly.
func sloThresholds(cfg *config.Config) []time.Duration {
	var out []time.Duration
	for _, s := range cfg.SLOs {
		if s.Latency > 0 {
			out = append(out, s.Latency.D())
		}
	}
	return out
}
