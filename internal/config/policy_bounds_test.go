package config_test

import (
	"fmt"
	"testing"

	"github.com/portico-gw/portico/internal/config"
	"github.com/portico-gw/portico/internal/ratelimit/algo"
)

// TestPolicyBoundsMatchRateLimiter: at the edges of the rate limiter's
// bounds, a policy validates exactly when the limiter compiles it. Before,
// `portico validate` said ok to policies that `portico run` then refused.
// Rates above 2^40 are refused by validation alone: the limiter holds them
// to 10^6/s anyway, and near 2^63 its interval arithmetic overflows.
func TestPolicyBoundsMatchRateLimiter(t *testing.T) {
	const maxLimit = int64(1) << 40
	dur := func(s string) config.Duration {
		d, err := config.ParseDuration(s)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	type tc struct {
		yaml    string
		pol     config.Policy
		over    *config.PolicyOverride
		bigRate bool
	}
	var cases []tc
	for _, lim := range []int64{1, maxLimit, maxLimit + 1} {
		for _, win := range []string{"1ms", "0.0001ms", "0.001ms", "407d", "408d", "2w"} {
			cases = append(cases,
				tc{yaml: fmt.Sprintf("{algorithm: fixed_window, limit: %d, window: %s, key: ip}", lim, win),
					pol: config.Policy{Algorithm: "fixed_window", Limit: lim, Window: dur(win)}},
				tc{yaml: fmt.Sprintf("{algorithm: sliding_window_counter, limit: 1, window: 1s, key: consumer, overrides: {o: {limit: %d, window: %s}}}", lim, win),
					pol:  config.Policy{Algorithm: "sliding_window_counter", Limit: 1, Window: dur("1s")},
					over: &config.PolicyOverride{Limit: lim, Window: dur(win)}})
		}
	}
	for _, alg := range []string{"token_bucket", "leaky_bucket"} {
		def := func(rate, burst int64) int64 {
			switch {
			case burst > 0:
				return burst
			case alg == "token_bucket":
				return rate
			}
			return 1
		}
		for _, rate := range []int64{1, 3, 7, maxLimit, maxLimit + 1} {
			for _, per := range []string{"1s", "0.0001ms", "0.001ms", "1d", "407d", "408d"} {
				for _, burst := range []int64{0, 1, 20000, 1 << 30, maxLimit, maxLimit + 1} {
					b := ""
					if burst > 0 {
						b = fmt.Sprintf(", burst: %d", burst)
					}
					cases = append(cases,
						tc{yaml: fmt.Sprintf("{algorithm: %s, rate: %d, per: %s%s, key: ip}", alg, rate, per, b),
							pol:     config.Policy{Algorithm: alg, Rate: rate, Per: dur(per), Burst: def(rate, burst)},
							bigRate: rate > maxLimit},
						tc{yaml: fmt.Sprintf("{algorithm: %s, rate: 10, per: 1s, key: consumer, overrides: {o: {rate: %d, per: %s%s}}}", alg, rate, per, b),
							pol:     config.Policy{Algorithm: alg, Rate: 10, Per: dur("1s"), Burst: def(10, 0)},
							over:    &config.PolicyOverride{Rate: rate, Per: dur(per), Burst: burst},
							bigRate: rate > maxLimit})
				}
			}
		}
	}
	for _, c := range cases {
		_, err := config.LoadBytes("p.yaml", []byte("version: 1\nrate_limits:\n  policies:\n    p: "+c.yaml+"\n"))
		_, cerr := algo.Compile(&c.pol, nil)
		if cerr == nil && c.over != nil {
			_, cerr = algo.Compile(&c.pol, c.over)
		}
		switch {
		case err == nil && cerr != nil:
			t.Errorf("%s validates, but the rate limiter refuses it: %v", c.yaml, cerr)
		case err != nil && cerr == nil && !c.bigRate:
			t.Errorf("%s: the rate limiter takes it, validation refuses it:\n%v", c.yaml, err)
		}
	}
}
