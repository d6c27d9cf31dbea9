package slo

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/redis/rueidis"
)

// Fleet mode keeps one Redis hash per SLO and minute,
// PREFIX{NAME}:MINUTE with fields g (good) and b (bad); every node adds its
// own counts with HINCRBY. The hash tag keeps an SLO's keys in one cluster
// slot. Keys live for the SLO window plus a day, so a restarted node reads
// the whole budget back.

// leaseTTL is how long the webhook lease lasts without renewal; Evaluate
// renews it every 10 s.
const leaseTTL = 30 * time.Second

// finalAge: a minute that ended this many minutes ago is complete in Redis
// (nodes flush every 2 s), so it is read once and then served from memory.
const finalAge = 2

const fetchBatch = 512

func (e *Engine) minuteKey(name string, m int64) string {
	return e.prefix + "{" + name + "}:" + strconv.FormatInt(m, 10)
}

// Flush adds this node's counts not yet in Redis (for the last few minutes)
// to the fleet's hashes. Run calls it every 2 s and Evaluate before reading.
func (e *Engine) Flush(ctx context.Context) error {
	if e.redis == nil {
		return nil
	}
	e.evalMu.Lock()
	defer e.evalMu.Unlock()
	return e.flushLocked(ctx, minuteOf(e.now()))
}

// flushMinutes is how far back a flush looks for unsent counts.
const flushMinutes = 5

func (e *Engine) flushLocked(ctx context.Context, nowMin int64) error {
	e.mu.Lock()
	active := append([]*sloState(nil), e.active...)
	e.mu.Unlock()
	type pending struct {
		b    *mbucket
		g, x uint64
	}
	var cmds rueidis.Commands
	var pend []pending
	for _, st := range active {
		ring := st.ring.Load()
		ttl := st.cfg.Load().window + 24*time.Hour
		for m := nowMin - flushMinutes; m <= nowMin; m++ {
			b := ring.bucket(m)
			if b.minute.Load() != m {
				continue
			}
			g, x := b.good.Load(), b.bad.Load()
			dg, dx := g-b.fGood.Load(), x-b.fBad.Load()
			if dg == 0 && dx == 0 {
				continue
			}
			key := e.minuteKey(st.name, m)
			cmds = append(cmds,
				e.redis.B().Hincrby().Key(key).Field("g").Increment(int64(dg)).Build(),
				e.redis.B().Hincrby().Key(key).Field("b").Increment(int64(dx)).Build(),
				e.redis.B().Pexpire().Key(key).Milliseconds(ttl.Milliseconds()).Build())
			pend = append(pend, pending{b, g, x})
		}
	}
	if len(cmds) == 0 {
		return nil
	}
	res := e.redis.DoMulti(ctx, cmds...)
	var errs []error
	for i, p := range pend {
		// A minute is marked sent once all its commands succeeded; otherwise
		// the whole delta is retried next time (a partial failure can count
		// one side twice, which errs on the side of alerting).
		ok := true
		for _, r := range res[3*i : 3*i+3] {
			if err := r.Error(); err != nil {
				errs = append(errs, err)
				ok = false
			}
		}
		if ok {
			p.b.fGood.Store(p.g)
			p.b.fBad.Store(p.x)
		}
	}
	return errors.Join(errs...)
}

// fleetCache holds the fleet's per-minute sums read from Redis.
type fleetCache struct {
	counts      map[int64][2]uint64
	finalBefore int64 // minutes before this one are complete in counts
	// from is the oldest minute counts covers; a reload that lengthens the
	// window moves the span's start before it, and those minutes are read.
	from int64
}

func (f *fleetCache) get(m int64) (uint64, uint64) {
	c := f.counts[m]
	return c[0], c[1]
}

// refreshFleet reads the minutes of st's span that are not final in the
// cache yet: the whole window on the first evaluation, a couple of minutes
// afterwards.
func (e *Engine) refreshFleet(ctx context.Context, st *sloState, cfg *sloConfig, nowMin int64) error {
	span := int64(ringMinutes(cfg.window) - 10)
	lo := nowMin - span + 1
	from := lo
	if st.fleet.counts != nil && st.fleet.from <= lo {
		from = max(lo, st.fleet.finalBefore)
	}
	if st.fleet.counts == nil {
		st.fleet.counts = map[int64][2]uint64{}
	}
	for start := from; start <= nowMin; start += fetchBatch {
		end := min(start+fetchBatch-1, nowMin)
		cmds := make(rueidis.Commands, 0, end-start+1)
		for m := start; m <= end; m++ {
			cmds = append(cmds, e.redis.B().Hmget().Key(e.minuteKey(st.name, m)).Field("g", "b").Build())
		}
		for i, r := range e.redis.DoMulti(ctx, cmds...) {
			vals, err := r.ToArray()
			if err != nil {
				return err
			}
			var c [2]uint64
			for j := 0; j < 2 && j < len(vals); j++ {
				if n, err := vals[j].AsInt64(); err == nil && n > 0 {
					c[j] = uint64(n)
				}
			}
			m := start + int64(i)
			if c == ([2]uint64{}) {
				delete(st.fleet.counts, m)
			} else {
				st.fleet.counts[m] = c
			}
		}
	}
	for m := range st.fleet.counts {
		if m < lo {
			delete(st.fleet.counts, m)
		}
	}
	st.fleet.finalBefore = nowMin - finalAge + 1
	st.fleet.from = lo
	return nil
}

// leaseScript takes the lease when free or renews it when ours.
var leaseScript = rueidis.NewLuaScript(`
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0`)

// holdLease reports whether this node holds (after taking or renewing) the
// webhook lease. A Redis error means no: better a late alert than N copies.
func (e *Engine) holdLease(ctx context.Context) bool {
	n, err := leaseScript.Exec(ctx, e.redis, []string{e.prefix + "leader"},
		[]string{e.nodeID, strconv.FormatInt(leaseTTL.Milliseconds(), 10)}).AsInt64()
	if err != nil {
		e.logger.Warn("slo: webhook lease", "err", err)
		return false
	}
	return n == 1
}

func (e *Engine) alertKey(name, severity string) string {
	return e.prefix + "{" + name + "}:alert:" + severity
}

// fleetAlert reports whether the fleet last announced severity as firing.
func (e *Engine) fleetAlert(ctx context.Context, name, severity string) (bool, error) {
	v, err := e.redis.Do(ctx, e.redis.B().Get().Key(e.alertKey(name, severity)).Build()).ToString()
	if rueidis.IsRedisNil(err) {
		return false, nil
	}
	return v == "1", err
}

func (e *Engine) setFleetAlert(ctx context.Context, name, severity string, firing bool, window time.Duration) error {
	v := "0"
	if firing {
		v = "1"
	}
	return e.redis.Do(ctx, e.redis.B().Set().Key(e.alertKey(name, severity)).Value(v).
		Px(window+24*time.Hour).Build()).Error()
}
