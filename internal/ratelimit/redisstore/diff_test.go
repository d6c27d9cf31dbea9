package redisstore

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/portico-gw/portico/internal/ratelimit"
	"github.com/portico-gw/portico/internal/ratelimit/algo"
)

// refStore is the Go reference for a subject: algo.Step per policy on a
// copy of its state, committed only when every policy admitted, exactly as
// the script does.
type refStore struct {
	states map[string]*algo.State
}

func cloneState(s *algo.State) algo.State {
	c := *s
	c.Log = slices.Clone(s.Log)
	return c
}

func (r *refStore) decide(checks []ratelimit.Check, now int64, out []algo.Decision) {
	next := make([]algo.State, len(checks))
	all := true
	for i, c := range checks {
		st := r.states[c.Policy]
		if st == nil {
			st = &algo.State{}
			r.states[c.Policy] = st
		}
		next[i] = cloneState(st)
		out[i] = algo.Step(&c.Params, &next[i], now, c.Cost)
		all = all && out[i].Allowed
	}
	if all {
		for i, c := range checks {
			*r.states[c.Policy] = next[i]
		}
	}
}

func (r *refStore) refund(checks []ratelimit.Check, now int64) {
	for _, c := range checks {
		if st := r.states[c.Policy]; st != nil {
			algo.Refund(&c.Params, st, now, c.Cost)
		}
	}
}

// randomParams draws a valid policy of kind k with small numbers, so that
// sequences hit limits, window rolls and bucket refills often.
func randomParams(rng *rand.Rand, k algo.Kind) algo.Params {
	p := algo.Params{Kind: k}
	switch k {
	case algo.FixedWindow, algo.SlidingWindowCounter, algo.SlidingWindowLog:
		p.Limit = 1 + rng.Int64N(12)
		p.Window = 1000 + rng.Int64N(5_000_000)
	case algo.TokenBucket:
		p.Limit = 1 + rng.Int64N(8)
		p.Window = 1 + rng.Int64N(500_000)
	case algo.LeakyBucket:
		p.Limit = 1 + rng.Int64N(3)
		p.Window = 1 + rng.Int64N(500_000)
		if rng.IntN(2) == 0 {
			p.MaxDelay = rng.Int64N(4 * p.Window)
		}
	}
	return p
}

var allKinds = []algo.Kind{algo.FixedWindow, algo.SlidingWindowLog, algo.SlidingWindowCounter,
	algo.TokenBucket, algo.LeakyBucket}

// TestDifferential feeds random sequences to algo.Step (the reference) and
// to the Lua script with the same clock: every decision field must agree,
// for each kind alone and for several policies decided all-or-nothing, with
// costs 0..3, the clock moving forward, standing still and sometimes
// stepping back, and refunds in between.
func TestDifferential(t *testing.T) {
	s := newTestStore(t, sharedRedisAddr(t))
	seqs, steps := 12, 120
	if longTests() {
		seqs, steps = 300, 400
	}
	cases := []struct {
		name  string
		kinds func(rng *rand.Rand) []algo.Kind
	}{}
	for _, k := range allKinds {
		cases = append(cases, struct {
			name  string
			kinds func(rng *rand.Rand) []algo.Kind
		}{k.String(), func(*rand.Rand) []algo.Kind { return []algo.Kind{k} }})
	}
	cases = append(cases, struct {
		name  string
		kinds func(rng *rand.Rand) []algo.Kind
	}{"multi", func(rng *rand.Rand) []algo.Kind {
		n := 2 + rng.IntN(3)
		ks := make([]algo.Kind, n)
		for i := range ks {
			ks[i] = allKinds[rng.IntN(len(allKinds))]
		}
		return ks
	}})
	for ci, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for seq := range seqs {
				seed := uint64(ci)<<32 | uint64(seq)
				rng := rand.New(rand.NewPCG(seed, 0x5eed))
				kinds := tc.kinds(rng)
				checks := make([]ratelimit.Check, len(kinds))
				maxW := int64(1)
				for i, k := range kinds {
					checks[i] = ratelimit.Check{Policy: fmt.Sprintf("p%d", i), Params: randomParams(rng, k)}
					maxW = max(maxW, checks[i].Params.Window*max(1, checks[i].Params.Limit/2))
				}
				diffSequence(t, s, rng, seed, checks, steps, maxW, 4, true)
			}
		})
	}
}

// diffSequence runs one random sequence of steps against the reference and
// the script: the clock moves forward by up to maxW/3, stands still or
// steps back by up to maxW/2; costs are 0..maxCost-1; one step in twelve is
// a refund. With reloads, one step in twenty-five first gives a policy new
// numbers of the same kind (limit, window, max_delay), as a reload does:
// the state is kept and read with them.
func diffSequence(t *testing.T, s *Store, rng *rand.Rand, seed uint64, checks []ratelimit.Check, steps int, maxW, maxCost int64, reloads bool) {
	t.Helper()
	ctx := context.Background()
	subject := uniqueSubject(t, fmt.Sprint(seed))
	defer cleanupSubject(t, s, subject, checks)
	ref := &refStore{states: map[string]*algo.State{}}
	now := int64(1_790_000_000_000_000) + rng.Int64N(1_000_000_000)
	want := make([]algo.Decision, len(checks))
	got := make([]algo.Decision, len(checks))
	for step := range steps {
		switch r := rng.IntN(20); {
		case r == 0:
			now -= rng.Int64N(maxW/2 + 1) // the clock steps back
		case r < 4:
			// same µs
		default:
			now += rng.Int64N(maxW/3 + 1)
		}
		if reloads && rng.IntN(25) == 0 {
			i := rng.IntN(len(checks))
			checks[i].Params = randomParams(rng, checks[i].Params.Kind)
		}
		for i := range checks {
			checks[i].Cost = rng.Int64N(maxCost)
		}
		if rng.IntN(12) == 0 {
			ref.refund(checks, now)
			if _, err := s.exec(ctx, opRefund, subject, checks, nil, nil, nil, now); err != nil {
				t.Fatalf("seed %d step %d: refund: %v", seed, step, err)
			}
			continue
		}
		ref.decide(checks, now, want)
		used, err := s.exec(ctx, opDecide, subject, checks, nil, got, nil, now)
		if err != nil {
			t.Fatalf("seed %d step %d: %v", seed, step, err)
		}
		if used != now {
			t.Fatalf("script used now %d, passed %d", used, now)
		}
		for i := range checks {
			if got[i] != want[i] {
				t.Fatalf("seed %d step %d now %d policy %s %+v cost %d:\n lua %+v\n  go %+v\nstate %+v",
					seed, step, now, checks[i].Policy, checks[i].Params, checks[i].Cost, got[i], want[i], ref.states[checks[i].Policy])
			}
		}
	}
}

// TestDifferentialExtremes holds the script to algo.Step at the edges of
// algo.Validate: limits up to 2^40, windows up to 2^45 µs, bucket capacity
// 2^50 µs, a 1 µs emission interval, max_delay 2^50, costs up to the
// limit's scale, and everyday small limits (1/min, 3/s, 10^9/day), where
// Lua's doubles and Go's int64 must still agree to the µs.
func TestDifferentialExtremes(t *testing.T) {
	s := newTestStore(t, sharedRedisAddr(t))
	tests := []struct {
		name    string
		p       algo.Params
		maxCost int64
	}{
		{"1 per minute", fixed(1, time.Minute), 3},
		{"3 per second bucket", algo.Params{Kind: algo.TokenBucket, Limit: 3, Window: 333_334}, 4},
		{"1e9 per day", fixed(1_000_000_000, 24*time.Hour), 1_000_000},
		{"1e9 per day counter", algo.Params{Kind: algo.SlidingWindowCounter, Limit: 1_000_000_000, Window: 86_400_000_000}, 1 << 28},
		{"max limit and window", algo.Params{Kind: algo.SlidingWindowCounter, Limit: algo.MaxLimit, Window: algo.MaxWindow}, 1 << 40},
		{"max fixed", algo.Params{Kind: algo.FixedWindow, Limit: algo.MaxLimit, Window: algo.MaxWindow}, 1 << 40},
		{"1 µs emission", algo.Params{Kind: algo.TokenBucket, Limit: 1_000_000, Window: 1}, 500_000},
		{"max bucket capacity", algo.Params{Kind: algo.TokenBucket, Limit: 1 << 25, Window: 1 << 25}, 1 << 24},
		{"leaky max delay", algo.Params{Kind: algo.LeakyBucket, Limit: 1, Window: 1 << 30, MaxDelay: algo.MaxProduct}, 3},
		{"log at max limit", algo.Params{Kind: algo.SlidingWindowLog, Limit: algo.MaxLogLimit, Window: 10_000_000}, 40},
	}
	for ti, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.p.Validate(); err != nil {
				t.Fatalf("params: %v", err)
			}
			for seq := range 3 {
				seed := uint64(1000+ti)<<32 | uint64(seq)
				rng := rand.New(rand.NewPCG(seed, 0xed9e))
				checks := []ratelimit.Check{{Policy: "x", Params: tc.p}}
				capacity := tc.p.Window
				if tc.p.Kind.Bucket() {
					capacity = tc.p.Limit * tc.p.Window
				}
				// Steps of up to a sixth of the window: limits are reached
				// and windows roll within a sequence.
				maxW := max(capacity/2, 3)
				diffSequence(t, s, rng, seed, checks, 60, maxW, tc.maxCost+1, false)
			}
		})
	}
}

// cleanupSubject deletes a test subject's keys (test-clock keys live an
// hour).
func cleanupSubject(t testing.TB, s *Store, subject string, checks []ratelimit.Check) {
	t.Helper()
	keys := []string{subjectKey(subject)}
	for _, c := range checks {
		if c.Params.Kind == algo.SlidingWindowLog {
			keys = append(keys, subjectKey(subject)+":log:"+c.Policy)
		}
	}
	if err := s.client.Do(context.Background(), s.client.B().Del().Key(keys...).Build()).Error(); err != nil {
		t.Errorf("cleanup: %v", err)
	}
}
