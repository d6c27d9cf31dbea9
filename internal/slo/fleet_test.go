package slo

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"reflect"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/rueidis"

	"github.com/portico-gw/portico/internal/config"
)

// redisClient connects to REDIS_ADDR or skips (fails with
// PORTICO_REQUIRE_REDIS=1).
func redisClient(t *testing.T) rueidis.Client {
	t.Helper()
	addr := os.Getenv("REDIS_ADDR")
	if addr == "" {
		addr = "127.0.0.1:6379"
	}
	unavailable := func(err error) {
		if os.Getenv("PORTICO_REQUIRE_REDIS") == "1" {
			t.Fatalf("redis at %s required: %v", addr, err)
		}
		t.Skipf("redis at %s unreachable (%v); set REDIS_ADDR or start redis-server", addr, err)
	}
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		unavailable(err)
	}
	conn.Close()
	c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{addr}, DisableCache: true})
	if err != nil {
		unavailable(err)
	}
	t.Cleanup(c.Close)
	return c
}

func cleanKeys(t *testing.T, c rueidis.Client, prefix string) {
	ctx := context.Background()
	var cursor uint64
	for {
		e, err := c.Do(ctx, c.B().Scan().Cursor(cursor).Match(prefix+"*").Count(1000).Build()).AsScanEntry()
		if err != nil {
			t.Logf("cleanup: %v", err)
			return
		}
		for _, k := range e.Elements {
			c.Do(ctx, c.B().Del().Key(k).Build())
		}
		if cursor = e.Cursor; cursor == 0 {
			return
		}
	}
}

// TestFleetSharesCountsAndSendsOneWebhook runs three engines (three nodes) on
// one Redis. Node 0 takes all the errors: alone it would burn at 60x, the
// fleet burns at 20x, and every node must see the fleet's numbers. One
// webhook per transition arrives, from the lease holder.
func TestFleetSharesCountsAndSendsOneWebhook(t *testing.T) {
	rc := redisClient(t)
	prefix := fmt.Sprintf("portico-test:slo:%d:", rand.Uint64())
	defer cleanKeys(t, rc, prefix)
	clk := newClock()
	h := newHook()
	defer h.srv.Close()
	slos := []*config.SLO{{Name: "feed", Route: "mobile/feed", Objective: 99,
		Window: config.Duration(3 * 24 * time.Hour), AlertWebhook: h.srv.URL}}
	newNode := func(i int) *Engine {
		e := NewEngine(Deps{EvaluateEvery: -1, Now: clk.Now, Registerer: prometheus.NewRegistry(), Redis: rc,
			NodeID: fmt.Sprintf("node-%d", i), KeyPrefix: prefix})
		if err := e.Apply(slos); err != nil {
			t.Fatal(err)
		}
		return e
	}
	var engines []*Engine
	for i := 0; i < 3; i++ {
		e := newNode(i)
		defer e.Close()
		engines = append(engines, e)
	}
	// Good traffic split evenly; node 0 serves every error.
	shares := [][2]float64{{1.0 / 3, 1}, {1.0 / 3, 0}, {1.0 / 3, 0}}
	// An hour and a half of clean traffic (200/min across the fleet) covers
	// the page windows; then 20x for 60 minutes, then clean again.
	// (The short history lets the ticket fire too and stay firing.)
	if tr := simulate(t, clk, engines, shares, "mobile/feed", []phase{{minutes: 90, step: 90, perMin: 190}}); len(tr) != 0 {
		t.Fatalf("alerts during clean traffic: %v", tr)
	}
	tr := simulate(t, clk, engines, shares, "mobile/feed", []phase{{minutes: 50, step: 1, perMin: 190, badPerMin: 40}})
	var fired bool
	for _, x := range tr {
		fired = fired || (x.severity == "page" && x.firing)
	}
	if !fired {
		t.Fatalf("page did not fire: %v", tr)
	}
	statuses := func() []SLOStatus {
		var out []SLOStatus
		for _, e := range engines {
			out = append(out, e.Snapshot()[0])
		}
		return out
	}
	st := statuses()
	for i := 1; i < 3; i++ {
		if !reflect.DeepEqual(st[i].BurnRates, st[0].BurnRates) || st[i].Good != st[0].Good || st[i].Bad != st[0].Bad || !reflect.DeepEqual(st[i].Alerts, st[0].Alerts) {
			t.Errorf("node %d sees %+v, node 0 %+v", i, st[i], st[0])
		}
	}
	// Fleet ratio over 5m: 40 bad out of 190 a minute, burn 21.05 (node 0
	// alone serves 40 bad of 90: burn 44).
	if b, want := st[0].BurnRates["5m"], round6((40.0/190)/0.01); b != want {
		t.Errorf("fleet 5m burn = %v, want %v", b, want)
	}
	tr = append(tr, simulate(t, clk, engines, shares, "mobile/feed", []phase{{minutes: 60, step: 1, perMin: 190}})...)
	got := h.wait(t, len(tr))
	// Close waits for every delivery in flight, so a duplicate from another
	// node would be in by now.
	for _, e := range engines {
		e.Close()
	}
	h.mu.Lock()
	n := len(h.got)
	h.mu.Unlock()
	if n != len(tr) {
		t.Errorf("%d webhooks for %d transitions %v: %+v", n, len(tr), tr, got)
	}
	for i := range got {
		if i < len(tr) && (got[i].Severity != tr[i].severity || (got[i].State == "firing") != tr[i].firing || got[i].Node != got[0].Node) {
			t.Errorf("webhook %d = %+v, transition %+v", i, got[i], tr[i])
		}
	}
	// Node 0 restarts (same node id, so it still holds the lease) while the
	// ticket fires: it must not announce the ticket again.
	again := newNode(0)
	again.Evaluate(clk.Now())
	if st := again.Snapshot()[0]; !st.Alerts["ticket"] {
		t.Errorf("restarted node does not see the ticket firing: %+v", st)
	}
	again.Close()
	h.mu.Lock()
	if len(h.got) != n {
		t.Errorf("a restarted node announced again: %+v", h.got[n:])
	}
	h.mu.Unlock()

	// A restarted node reads the budget back from Redis.
	fresh := newNode(3)
	defer fresh.Close()
	fresh.Evaluate(clk.Now())
	b := engines[0].Snapshot()[0]
	a := fresh.Snapshot()[0]
	if a.Good != b.Good || a.Bad != b.Bad || a.BudgetRemaining != b.BudgetRemaining || !reflect.DeepEqual(a.BurnRates, b.BurnRates) {
		t.Errorf("restarted node sees %+v, running node %+v", a, b)
	}
	// Clean minutes: 190 good, 63 per node; incident minutes 50 per node.
	if wantGood := uint64(3 * (150*63 + 50*50)); a.Bad != 50*40 || a.Good != wantGood {
		t.Errorf("fleet counts good %d bad %d, want %d and %d", a.Good, a.Bad, wantGood, 50*40)
	}
}

// TestFleetRemovedSLOResolvesOnce: with the SLO removed on every node, the
// lease holder resolves its firing alert once, and the fleet's announced
// state is cleared, so the SLO coming back does not count as resolved.
func TestFleetRemovedSLOResolvesOnce(t *testing.T) {
	rc := redisClient(t)
	prefix := fmt.Sprintf("portico-test:slo:%d:", rand.Uint64())
	defer cleanKeys(t, rc, prefix)
	clk := newClock()
	h := newHook()
	defer h.srv.Close()
	slos := []*config.SLO{{Name: "feed", Route: "mobile/feed", Objective: 99, AlertWebhook: h.srv.URL}}
	var engines []*Engine
	for i := 0; i < 2; i++ {
		e := NewEngine(Deps{EvaluateEvery: -1, Now: clk.Now, Registerer: prometheus.NewRegistry(), Redis: rc,
			NodeID: fmt.Sprintf("node-%d", i), KeyPrefix: prefix})
		defer e.Close()
		if err := e.Apply(slos); err != nil {
			t.Fatal(err)
		}
		engines = append(engines, e)
	}
	obs := engines[0].Observer("mobile/feed")
	for i := 0; i < 100; i++ {
		obs(503, 0, clk.Now())
	}
	for _, e := range engines {
		e.Evaluate(clk.Now())
	}
	firing := h.wait(t, 2)
	for _, e := range engines {
		if err := e.Apply(nil); err != nil {
			t.Fatal(err)
		}
		e.Evaluate(clk.Now())
	}
	got := h.wait(t, 4)
	for _, n := range got[2:] {
		if n.State != "resolved" || n.Reason != "slo_removed" || n.Node != firing[0].Node {
			t.Errorf("after removal: %+v (firing came from %s)", n, firing[0].Node)
		}
	}
	for _, sev := range severities {
		if v, err := engines[0].fleetAlert(context.Background(), "feed", sev); err != nil || v {
			t.Errorf("fleet alert state of %s after removal: %v %v, want not firing", sev, v, err)
		}
	}
	for _, e := range engines {
		e.Close()
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.got) != 4 {
		t.Errorf("%d webhooks, want 2 firing and 2 resolved: %+v", len(h.got), h.got)
	}
}

// TestFleetReloadWidensWindow: a reload that lengthens an SLO's window
// (past the 3 days every SLO keeps anyway) must count the fleet's older
// minutes, which the cache had never read.
func TestFleetReloadWidensWindow(t *testing.T) {
	rc := redisClient(t)
	prefix := fmt.Sprintf("portico-test:slo:%d:", rand.Uint64())
	defer cleanKeys(t, rc, prefix)
	clk := newClock()
	e := NewEngine(Deps{EvaluateEvery: -1, Now: clk.Now, Registerer: prometheus.NewRegistry(), Redis: rc,
		NodeID: "node-0", KeyPrefix: prefix})
	defer e.Close()
	slo := func(window time.Duration) []*config.SLO {
		return []*config.SLO{{Name: "feed", Route: "mobile/feed", Objective: 99, Window: config.Duration(window)}}
	}
	if err := e.Apply(slo(7 * 24 * time.Hour)); err != nil {
		t.Fatal(err)
	}
	obs := e.Observer("mobile/feed")
	for i := 0; i < 10; i++ {
		obs(503, 0, clk.Now()) // five days before the reload
	}
	for i := 0; i < 90; i++ {
		obs(200, 0, clk.Now())
	}
	if err := e.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	clk.Advance(5 * 24 * time.Hour)
	if err := e.Apply(slo(3 * 24 * time.Hour)); err != nil {
		t.Fatal(err)
	}
	e.Evaluate(clk.Now())
	if st := e.Snapshot()[0]; st.Good+st.Bad != 0 {
		t.Fatalf("3d window counts %+v from five days ago", st)
	}
	clk.Advance(time.Minute)
	if err := e.Apply(slo(7 * 24 * time.Hour)); err != nil {
		t.Fatal(err)
	}
	e.Evaluate(clk.Now())
	if st := e.Snapshot()[0]; st.Good != 90 || st.Bad != 10 {
		t.Errorf("after widening the window to 7d: good %d bad %d, want 90 and 10 from Redis", st.Good, st.Bad)
	}
}
