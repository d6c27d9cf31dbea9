package slo

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/portico-gw/portico/internal/config"
)

// TestRulesFireInPromtool runs the exported rules in `promtool test rules`
// over the traffic of the in-process page test: 100 requests a minute, then
// 20% errors for an hour, then none. Like the engine, the rules page during
// the incident, ticket too (there is no earlier history) and stop paging
// once the short windows are clean.
func TestRulesFireInPromtool(t *testing.T) {
	path, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not installed (apt-get install prometheus); rules not run")
	}
	s := &config.SLO{Name: "avail", Route: "r", Objective: 99, Window: config.Duration(28 * 24 * time.Hour)}
	rules, err := Rules([]*config.SLO{s})
	if err != nil {
		t.Fatal(err)
	}
	c, _ := checkSLO(s)
	alert := func(sev string) string {
		sum, desc := annotations("avail", c, sev)
		return fmt.Sprintf("          - exp_labels: {severity: %s, slo: avail, route: r}\n            exp_annotations: {summary: %q, description: %q}\n", sev, sum, desc)
	}
	name := map[string]string{"page": "PorticoSLOBurnRatePage", "ticket": "PorticoSLOBurnRateTicket"}
	check := func(at, sev string, firing bool) string {
		out := fmt.Sprintf("      - eval_time: %s\n        alertname: %s\n        exp_alerts:", at, name[sev])
		if !firing {
			return out + " []\n"
		}
		return out + "\n" + alert(sev)
	}
	test := "rule_files: [rules.yml]\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n" +
		"      - series: 'portico_requests_total{route=\"r\",method=\"GET\",code=\"200\"}'\n        values: '0+80x300'\n" +
		"      - series: 'portico_requests_total{route=\"r\",method=\"GET\",code=\"503\"}'\n        values: '0x120 0+20x60 1200x120'\n" +
		"      - series: 'portico_requests_total{route=\"other\",method=\"GET\",code=\"503\"}'\n        values: '0+100x300'\n" +
		"    alert_rule_test:\n" +
		check("110m", "page", false) + check("110m", "ticket", false) +
		check("180m", "page", true) + check("180m", "ticket", true) +
		check("240m", "page", false)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "rules.yml"), rules, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "test.yml"), []byte(test), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(path, "test", "rules", "test.yml")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("promtool test rules: %v\n%s\n%s", err, out, test)
	}
}

// TestRulesLatencyBucketOnBothPrometheusVersions: the bucket at a latency
// threshold is found whether Prometheus stored its le as the exposition
// spelt it ("1", Prometheus 2) or in float form ("1.0", Prometheus 3), and
// no other bucket is; and (with promtool) slow requests count while the
// route has no 5xx series at all.
func TestRulesLatencyBucketOnBothPrometheusVersions(t *testing.T) {
	for _, tc := range []struct {
		latency      time.Duration
		match, other []string
	}{
		{time.Second, []string{"1", "1.0"}, []string{"10", "100", "1.5", "0.1"}},
		{2 * time.Second, []string{"2", "2.0"}, []string{"2.5", "20"}},
		{300 * time.Millisecond, []string{"0.3"}, []string{"0.35", "3"}},
	} {
		out, err := Rules([]*config.SLO{{Name: "a", Route: "r", Objective: 99, Latency: config.Duration(tc.latency)}})
		if err != nil {
			t.Fatal(err)
		}
		// The matcher as PromQL reads it, from the first recording rule.
		m := regexp.MustCompile(`_bucket\{route=\\"r\\",le(=~?)\\"([^\\]*)\\"\}`).FindStringSubmatch(string(out))
		if m == nil {
			t.Fatalf("%v: no le matcher in\n%s", tc.latency, out)
		}
		matches := func(v string) bool {
			if m[1] == "=" {
				return v == m[2]
			}
			return regexp.MustCompile("^(?:" + m[2] + ")$").MatchString(v)
		}
		for _, v := range tc.match {
			if !matches(v) {
				t.Errorf("%v: le%s%q does not select le=%q", tc.latency, m[1], m[2], v)
			}
		}
		for _, v := range tc.other {
			if matches(v) {
				t.Errorf("%v: le%s%q selects le=%q too", tc.latency, m[1], m[2], v)
			}
		}
	}
	path, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not installed (apt-get install prometheus); rules not run")
	}
	// Half the requests slower than 1s, and 10% 503s or none: the 5m error
	// ratio is 0.6 or 0.5 (a slow 503 counts twice), with the bucket stored
	// either way, and also while the route has no 5xx series at all.
	rules, err := Rules([]*config.SLO{{Name: "a", Route: "r", Objective: 99, Latency: config.Duration(time.Second)}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		le, want string
		with5xx  bool
	}{{"1", "0.6", true}, {"1.0", "0.6", true}, {"1", "0.5", false}, {"1.0", "0.5", false}} {
		requests := "      - series: 'portico_requests_total{route=\"r\",method=\"GET\",code=\"200\"}'\n        values: '0+100x60'\n"
		if tc.with5xx {
			requests = "      - series: 'portico_requests_total{route=\"r\",method=\"GET\",code=\"200\"}'\n        values: '0+90x60'\n" +
				"      - series: 'portico_requests_total{route=\"r\",method=\"GET\",code=\"503\"}'\n        values: '0+10x60'\n"
		}
		test := "rule_files: [rules.yml]\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n" + requests +
			"      - series: 'portico_request_duration_seconds_count{route=\"r\"}'\n        values: '0+100x60'\n" +
			"      - series: 'portico_request_duration_seconds_bucket{route=\"r\",le=\"" + tc.le + "\"}'\n        values: '0+50x60'\n" +
			"    promql_expr_test:\n      - expr: portico:slo_error_ratio:rate5m\n        eval_time: 30m\n" +
			"        exp_samples:\n          - labels: 'portico:slo_error_ratio:rate5m{slo=\"a\",route=\"r\"}'\n            value: " + tc.want + "\n"
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "rules.yml"), rules, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "test.yml"), []byte(test), 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(path, "test", "rules", "test.yml")
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("le=%q, 5xx series %v: promtool test rules: %v\n%s", tc.le, tc.with5xx, err, out)
		}
	}
}
