package slo

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/portico-gw/portico/internal/config"
)

// TestSnapshotBeforeFirstEvaluation checks that /admin/slo shows an SLO that
// no evaluation has reached yet (one a reload just added, or any before the
// engine's first evaluation) with the same JSON members and the same
// configured values as it will have once evaluated: only counts and rates
// change.
func TestSnapshotBeforeFirstEvaluation(t *testing.T) {
	clk := newClock()
	e := NewEngine(Deps{EvaluateEvery: -1, Now: clk.Now})
	defer e.Close()
	cfg := []*config.SLO{{Name: "feed", Route: "mobile/feed", Objective: 99.9,
		Window: config.Duration(7 * 24 * time.Hour), Latency: config.Duration(300 * time.Millisecond)}}
	if err := e.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	fields := func() map[string]any {
		t.Helper()
		b, err := json.Marshal(e.Snapshot())
		if err != nil {
			t.Fatal(err)
		}
		var v []map[string]any
		if err := json.Unmarshal(b, &v); err != nil || len(v) != 1 {
			t.Fatalf("snapshot %s: %v", b, err)
		}
		return v[0]
	}
	before := fields()
	e.Evaluate(clk.Now())
	after := fields()
	for k, v := range after {
		if k == "evaluated_at" {
			continue
		}
		if _, ok := before[k]; !ok {
			t.Errorf("before the first evaluation %q is missing (evaluated: %v)", k, v)
		}
	}
	for _, k := range []string{"name", "route", "objective", "window", "latency"} {
		if before[k] != after[k] {
			t.Errorf("%s = %v before the first evaluation, %v after", k, before[k], after[k])
		}
	}
}
