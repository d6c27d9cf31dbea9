package redisstore

import (
	"context"
	"testing"

	"github.com/portico-gw/portico/internal/ratelimit"
	"github.com/portico-gw/portico/internal/ratelimit/algo"
)

// TestLengthenedWindowRetryAfter: a reload that lengthens a window keeps
// the count until the first boundary of the new length after the stored
// window's start (docs/ratelimiting.md). RetryAfter must point to that
// instant, exactly: a throttled client, and the negative cache that
// rejects for RetryAfter, must not wait up to a whole new window beyond
// it, which they did while the script measured from the stored start.
func TestLengthenedWindowRetryAfter(t *testing.T) {
	s := newTestStore(t, sharedRedisAddr(t))
	ctx := context.Background()
	const sec, minute, hour = int64(1_000_000), 60 * int64(1_000_000), 3600 * int64(1_000_000)
	h0 := int64(1_790_000_000_000_000) / hour * hour
	now := h0 + 5*minute + 30*sec // the reload; the stored window started at h0+5m
	tests := []struct {
		kind      algo.Kind
		wantRetry int64
	}{
		// The hour window h0..h0+1h holds the count: free at h0+1h.
		{algo.FixedWindow, h0 + hour - now},
		// From h0+1h the count of 2 weighs ceil(2*r/1h): 1, leaving room,
		// once r <= 30m, at h0+1h30m.
		{algo.SlidingWindowCounter, h0 + hour + 30*minute - now},
	}
	for _, tc := range tests {
		t.Run(tc.kind.String(), func(t *testing.T) {
			subject := uniqueSubject(t, "grow")
			short := []ratelimit.Check{{Policy: "p", Params: algo.Params{Kind: tc.kind, Limit: 2, Window: minute}, Cost: 1}}
			long := []ratelimit.Check{{Policy: "p", Params: algo.Params{Kind: tc.kind, Limit: 2, Window: hour}, Cost: 1}}
			defer cleanupSubject(t, s, subject, long)
			mem := ratelimit.NewMemory(ratelimit.MemoryConfig{})
			step := func(checks []ratelimit.Check, at int64) algo.Decision {
				t.Helper()
				got, want := make([]algo.Decision, 1), make([]algo.Decision, 1)
				if err := mem.DecideAt(at, subject, checks, want); err != nil {
					t.Fatal(err)
				}
				if _, err := s.exec(ctx, opDecide, subject, checks, nil, got, nil, at); err != nil {
					t.Fatal(err)
				}
				if got[0] != want[0] {
					t.Fatalf("at h0%+ds: redis %+v, memory %+v", (at-h0)/sec, got[0], want[0])
				}
				return got[0]
			}
			for range 2 {
				if d := step(short, h0+5*minute+10*sec); !d.Allowed {
					t.Fatalf("before the reload: %+v", d)
				}
			}
			d := step(long, now)
			if d.Allowed || d.RetryAfter != tc.wantRetry {
				t.Fatalf("after the reload: %+v, want rejected with RetryAfter %d (%ds)", d, tc.wantRetry, tc.wantRetry/sec)
			}
			if d := step(long, now+d.RetryAfter-1); d.Allowed {
				t.Fatalf("admitted 1µs before RetryAfter: %+v", d)
			}
			if d := step(long, now+d.RetryAfter); !d.Allowed {
				t.Fatalf("rejected at RetryAfter: %+v", d)
			}
		})
	}
}

// TestRejectionKeepsLengthenedStateAlive: after a reload lengthens a
// window, a throttled client is rejected, and a rejection writes no state;
// but its keys still carry the TTL their last write gave them under the
// old length. They must be made to live as long as the state matters under
// the new one, or they expire at the old window's end and the client, on
// any node that has not cached the rejection, gets a fresh limit.
func TestRejectionKeepsLengthenedStateAlive(t *testing.T) {
	s := newTestStore(t, sharedRedisAddr(t))
	ctx := context.Background()
	const sec, day = int64(1_000_000), 86_400 * int64(1_000_000)
	// Keys written on a test clock outlive real time by an hour (decide.lua).
	const slackMS = 3_600_000
	v := int64(1_790_000_000_000_000)/day*day + day/2
	for _, kind := range []algo.Kind{algo.FixedWindow, algo.SlidingWindowCounter, algo.SlidingWindowLog} {
		t.Run(kind.String(), func(t *testing.T) {
			subject := uniqueSubject(t, "ttl")
			short := []ratelimit.Check{{Policy: "p", Params: algo.Params{Kind: kind, Limit: 1, Window: sec}, Cost: 1}}
			long := []ratelimit.Check{{Policy: "p", Params: algo.Params{Kind: kind, Limit: 1, Window: day}, Cost: 1}}
			defer cleanupSubject(t, s, subject, long)
			out := make([]algo.Decision, 1)
			if _, err := s.exec(ctx, opDecide, subject, short, nil, out, nil, v); err != nil || !out[0].Allowed {
				t.Fatalf("before the reload: %+v %v", out[0], err)
			}
			if _, err := s.exec(ctx, opDecide, subject, long, nil, out, nil, v+sec/2); err != nil || out[0].Allowed {
				t.Fatalf("after the reload: %+v %v, want rejected", out[0], err)
			}
			keys := []string{subjectKey(subject)}
			if kind == algo.SlidingWindowLog {
				keys = append(keys, subjectKey(subject)+":log:p")
			}
			// The state matters for ResetAfter more; a minute's margin for
			// the real time this test takes.
			want := out[0].ResetAfter/1000 + slackMS - 60_000
			for _, k := range keys {
				ttl, err := s.client.Do(ctx, s.client.B().Pttl().Key(k).Build()).AsInt64()
				if err != nil {
					t.Fatal(err)
				}
				if ttl < want {
					t.Errorf("%s: PTTL %dms after the rejection, want at least %dms (ResetAfter %ds)",
						k, ttl, want, out[0].ResetAfter/sec)
				}
			}
		})
	}
}
