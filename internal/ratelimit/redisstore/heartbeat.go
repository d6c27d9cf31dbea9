package redisstore

import (
	"context"
	"strconv"
	"time"
)

// NodesKey is the sorted set of live nodes: member = node id, score = the
// Redis TIME (µs) of its last heartbeat.
const NodesKey = "rl:nodes"

// Heartbeat timing: a node beats every HeartbeatEvery and counts as live for
// NodeTTL after its last beat, so one lost beat does not shrink the fleet.
const (
	HeartbeatEvery = time.Second
	NodeTTL        = 5 * time.Second
)

// heartbeatLua records a beat and counts the live nodes on Redis's clock.
// KEYS[1] = rl:nodes; ARGV[1] = node id; ARGV[2] = now µs or "" for TIME;
// ARGV[3] = liveness window µs. Returns {now, live}.
const heartbeatLua = `
local now
if ARGV[2] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[2])
end
local win = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], string.format('%d', now), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. string.format('%d', now - win))
local n = redis.call('ZCARD', KEYS[1])
redis.call('PEXPIRE', KEYS[1], string.format('%d', math.ceil(2 * win / 1000)))
return {now, n}
`

// StartHeartbeat announces nodeID in rl:nodes now and then every
// HeartbeatEvery until ctx ends or the Store is closed; on the way out it
// removes nodeID, so the others see the fleet shrink at once. The first beat
// runs before StartHeartbeat returns, so Nodes is current right after it
// (unless Redis is unreachable: beats that fail are logged and retried on
// the next tick, and Nodes keeps its last value).
func (s *Store) StartHeartbeat(ctx context.Context, nodeID string) {
	s.beatOnce(ctx, nodeID, noNow)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		t := time.NewTicker(HeartbeatEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				s.leave(nodeID)
				return
			case <-s.stop:
				s.leave(nodeID)
				return
			case <-t.C:
				s.beatOnce(ctx, nodeID, noNow)
			}
		}
	}()
}

// Nodes is the number of nodes that beat in the last NodeTTL, as of this
// process's last heartbeat; 0 means unknown (no heartbeat succeeded yet), and
// the core then assumes its configured expected_nodes.
func (s *Store) Nodes() int { return int(s.nodes.Load()) }

// beatOnce records one beat at now (noNow: Redis TIME) and refreshes the
// cached fleet size.
func (s *Store) beatOnce(ctx context.Context, nodeID string, now int64) {
	ctx, cancel := context.WithTimeout(ctx, s.beatTimeout())
	defer cancel()
	nowArg := ""
	if now != noNow {
		nowArg = strconv.FormatInt(now, 10)
	}
	res, err := s.beat.Exec(ctx, s.client, []string{NodesKey},
		[]string{nodeID, nowArg, strconv.FormatInt(NodeTTL.Microseconds(), 10)}).AsIntSlice()
	if err != nil || len(res) != 2 {
		// Beats run every second: while Redis is down, warn on the first
		// failure and then once a minute with the count, not every beat.
		n := s.beatFailures.Add(1)
		if t := time.Now().UnixNano(); n == 1 || t-s.beatWarnedAt.Load() >= int64(beatWarnEvery) {
			s.beatWarnedAt.Store(t)
			s.log.Warn("rate-limit heartbeat failed", "node", nodeID, "failures_in_a_row", n, "error", err)
		}
		return
	}
	if n := s.beatFailures.Swap(0); n > 0 {
		s.log.Info("rate-limit heartbeat recovered", "node", nodeID, "failures_in_a_row", n)
	}
	s.nodes.Store(res[1])
}

// beatWarnEvery spaces the warnings of a heartbeat that keeps failing.
const beatWarnEvery = time.Minute

func (s *Store) leave(nodeID string) {
	ctx, cancel := context.WithTimeout(context.Background(), s.beatTimeout())
	defer cancel()
	if err := s.client.Do(ctx, s.client.B().Zrem().Key(NodesKey).Member(nodeID).Build()).Error(); err != nil {
		s.log.Warn("rate-limit heartbeat: leaving the fleet failed", "node", nodeID, "error", err)
	}
}

// beatTimeout is longer than a decision's: a heartbeat is off the request
// path, and a slow one should still count.
func (s *Store) beatTimeout() time.Duration { return max(10*s.timeout, 500*time.Millisecond) }
