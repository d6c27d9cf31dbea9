package redisstore

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

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
	ctx := context.Background()
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
				subject := uniqueSubject(t, fmt.Sprint(seq))
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
					for i := range checks {
						checks[i].Cost = rng.Int64N(4)
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
				cleanupSubject(t, s, subject, checks)
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
