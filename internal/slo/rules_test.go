package slo

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
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
