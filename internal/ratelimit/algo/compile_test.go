package algo

import (
	"strings"
	"testing"
	"time"

	"github.com/portico-gw/portico/internal/config"
)

func dur(d time.Duration) config.Duration { return config.Duration(d) }

func TestCompile(t *testing.T) {
	cases := []struct {
		name     string
		policy   config.Policy
		override *config.PolicyOverride
		want     Params
		err      string
	}{
		{"fixed", config.Policy{Algorithm: "fixed_window", Limit: 100, Window: dur(time.Minute)}, nil,
			Params{Kind: FixedWindow, Limit: 100, Window: 60_000_000}, ""},
		{"fixed override", config.Policy{Algorithm: "fixed_window", Limit: 100, Window: dur(time.Minute)},
			&config.PolicyOverride{Limit: 1000}, Params{Kind: FixedWindow, Limit: 1000, Window: 60_000_000}, ""},
		{"counter window override", config.Policy{Algorithm: "sliding_window_counter", Limit: 100, Window: dur(time.Minute)},
			&config.PolicyOverride{Window: dur(time.Hour)}, Params{Kind: SlidingWindowCounter, Limit: 100, Window: 3_600_000_000}, ""},
		{"token bucket burst default rate", config.Policy{Algorithm: "token_bucket", Rate: 50, Per: dur(time.Second)}, nil,
			Params{Kind: TokenBucket, Limit: 50, Window: 20_000}, ""},
		{"token bucket per default 1s", config.Policy{Algorithm: "token_bucket", Rate: 4, Burst: 10}, nil,
			Params{Kind: TokenBucket, Limit: 10, Window: 250_000}, ""},
		{"token bucket rate override moves default burst", config.Policy{Algorithm: "token_bucket", Rate: 50, Per: dur(time.Second), Burst: 50},
			&config.PolicyOverride{Rate: 500}, Params{Kind: TokenBucket, Limit: 500, Window: 2_000}, ""},
		{"token bucket override limit is burst", config.Policy{Algorithm: "token_bucket", Rate: 50, Per: dur(time.Second), Burst: 100},
			&config.PolicyOverride{Limit: 7}, Params{Kind: TokenBucket, Limit: 7, Window: 20_000}, ""},
		{"interval rounds up", config.Policy{Algorithm: "token_bucket", Rate: 3, Per: dur(time.Second)}, nil,
			Params{Kind: TokenBucket, Limit: 3, Window: 333_334}, ""},
		{"1e9 per day", config.Policy{Algorithm: "token_bucket", Rate: 1e9, Per: dur(24 * time.Hour)}, nil,
			Params{Kind: TokenBucket, Limit: 1e9, Window: 87}, ""},
		{"leaky defaults", config.Policy{Algorithm: "leaky_bucket", Rate: 10, Per: dur(time.Second), MaxDelay: dur(500 * time.Millisecond)}, nil,
			Params{Kind: LeakyBucket, Limit: 1, Window: 100_000, MaxDelay: 500_000}, ""},
		{"unknown", config.Policy{Algorithm: "magic"}, nil, Params{}, "unknown algorithm"},
		{"log too big", config.Policy{Algorithm: "sliding_window_log", Limit: 5000, Window: dur(time.Second)}, nil, Params{}, "above 1000"},
		{"zero limit", config.Policy{Algorithm: "fixed_window", Window: dur(time.Second)}, nil, Params{}, "limit 0"},
		{"zero window", config.Policy{Algorithm: "fixed_window", Limit: 3}, nil, Params{}, "window 0"},
		{"zero rate", config.Policy{Algorithm: "token_bucket", Per: dur(time.Second)}, nil, Params{}, "rate"},
		{"burst overflow", config.Policy{Algorithm: "token_bucket", Rate: 1, Per: dur(24 * time.Hour), Burst: 1 << 40}, nil, Params{}, "exceeds"},
		{"max_delay on token bucket", config.Policy{Algorithm: "token_bucket", Rate: 1, Per: dur(time.Second), MaxDelay: dur(time.Second)}, nil, Params{}, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := Compile(&c.policy, c.override)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("error %v, want one containing %q", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.name == "max_delay on token bucket" {
				if got.MaxDelay != 0 {
					t.Fatalf("token bucket kept max_delay %d", got.MaxDelay)
				}
				return
			}
			if got != c.want {
				t.Fatalf("got %+v, want %+v", got, c.want)
			}
		})
	}
}
