package slo

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/portico-gw/portico/internal/config"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type clock struct{ ns atomic.Int64 }

func newClock() *clock {
	c := &clock{}
	c.ns.Store(time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	return c
}
func (c *clock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *clock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

// hook collects webhook notifications.
type hook struct {
	srv   *httptest.Server
	mu    sync.Mutex
	got   []Notification
	fails atomic.Int32 // answer 500 this many times first
	posts atomic.Int32
	ch    chan struct{}
}

func newHook() *hook {
	h := &hook{ch: make(chan struct{}, 100)}
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.posts.Add(1)
		if h.fails.Add(-1) >= 0 {
			w.WriteHeader(500)
			return
		}
		var n Notification
		if r.Method != "POST" || r.Header.Get("Content-Type") != "application/json" || json.NewDecoder(r.Body).Decode(&n) != nil {
			w.WriteHeader(400)
			return
		}
		h.mu.Lock()
		h.got = append(h.got, n)
		h.mu.Unlock()
		select { // never block the engine on a slow test reader
		case h.ch <- struct{}{}:
		default:
		}
	}))
	return h
}

// wait returns the notifications once n arrived, sorted by time.
func (h *hook) wait(t *testing.T, n int) []Notification {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		h.mu.Lock()
		if len(h.got) >= n {
			out := append([]Notification(nil), h.got...)
			h.mu.Unlock()
			sort.Slice(out, func(i, j int) bool { return out[i].Time.Before(out[j].Time) })
			return out
		}
		h.mu.Unlock()
		select {
		case <-h.ch:
		case <-timeout:
			t.Fatalf("got %d webhooks, want %d", len(h.got), n)
		}
	}
}

func TestIsBad(t *testing.T) {
	for _, tc := range []struct {
		status  int
		d, lat  time.Duration
		wantBad bool
	}{
		{200, time.Millisecond, 0, false},
		{500, time.Millisecond, 0, true},
		{502, 0, 0, true},
		{503, 0, 0, true},
		{504, 0, 0, true},
		{429, 0, 0, false},
		{404, 0, 0, false},
		{499, time.Hour, time.Second, false},
		{101, time.Hour, time.Second, false},
		{200, 301 * time.Millisecond, 300 * time.Millisecond, true},
		{200, 300 * time.Millisecond, 300 * time.Millisecond, false},
		{404, 2 * time.Second, time.Second, true},
	} {
		if got := IsBad(tc.status, tc.d, tc.lat); got != tc.wantBad {
			t.Errorf("IsBad(%d, %v, %v) = %v", tc.status, tc.d, tc.lat, got)
		}
	}
}

// phase is a stretch of simulated traffic: perMin requests a minute of
// which badPerMin are 5xx, evaluated every step minutes.
type phase struct {
	minutes, step     int
	perMin, badPerMin int
	// bulk adds the counts straight into the engines' rings instead of one
	// observer call per request: for long clean lead-ins, which would
	// otherwise dominate the run time under -race.
	bulk bool
}

// addN counts good and bad requests of minute m at once (tests only).
func (r *minuteRing) addN(m int64, good, bad uint64) {
	b := r.bucket(m)
	if b.minute.Load() != m && !r.claim(b, m) {
		return
	}
	b.good.Add(good)
	b.bad.Add(bad)
}

// transition is an alert change seen by engine 0, in minutes into the phase.
type transition struct {
	minute   int
	severity string
	firing   bool
}

// simulate feeds phases into the engines, each recording its share of the
// good and of the bad requests, and evaluates every step minutes.
func simulate(t *testing.T, clk *clock, engines []*Engine, shares [][2]float64, route string, phases []phase) []transition {
	t.Helper()
	obs := make([]func(int, time.Duration, time.Time), len(engines))
	for i, e := range engines {
		obs[i] = e.Observer(route)
	}
	prev := map[string]bool{}
	for _, a := range engines[0].Snapshot() {
		prev = a.Alerts
	}
	var out []transition
	for _, p := range phases {
		for m := 1; m <= p.minutes; m++ {
			for i := range engines {
				good := int(float64(p.perMin-p.badPerMin) * shares[i][0])
				bad := int(float64(p.badPerMin) * shares[i][1])
				if p.bulk {
					engines[i].mu.Lock()
					for _, st := range engines[i].active {
						st.ring.Load().addN(minuteOf(clk.Now()), uint64(good), uint64(bad))
					}
					engines[i].mu.Unlock()
					good, bad = 0, 0
				}
				for k := 0; k < good; k++ {
					obs[i](200, time.Millisecond, clk.Now())
				}
				for k := 0; k < bad; k++ {
					obs[i](503, time.Millisecond, clk.Now())
				}
				if engines[i].redis != nil {
					if err := engines[i].Flush(context.Background()); err != nil {
						t.Fatal(err)
					}
				}
			}
			clk.Advance(time.Minute)
			if m%p.step != 0 && m != p.minutes {
				continue
			}
			for _, e := range engines {
				e.Evaluate(clk.Now())
			}
			st := engines[0].Snapshot()[0]
			for _, sev := range severities {
				if st.Alerts[sev] != prev[sev] {
					out = append(out, transition{m, sev, st.Alerts[sev]})
				}
			}
			prev = st.Alerts
		}
	}
	return out
}

func TestBurnRateAlertsFireAndResolve(t *testing.T) {
	const day = 1440
	// Objective 99%: 1% of requests may fail; 100 requests a minute. A
	// window of N minutes holds the N-1 completed minutes and the current,
	// empty one, hence the 59, 359, ... below.
	lead := phase{minutes: 3 * day, step: 3 * day, perMin: 100, bulk: true}
	for _, tc := range []struct {
		name     string
		bad      phase // the incident
		clean    int   // minutes of clean traffic after it
		severity string
		fireAt   int // minutes into the incident
		resolve  int // minutes into the recovery
	}{
		// 20x: the 1h burn 20t/59 passes 14.4 at t=43; the 5m burn 20(4-c)/4 falls below at c=2.
		{"page 1h and 5m at 14.4x", phase{minutes: 60, step: 1, perMin: 100, badPerMin: 20}, 10, "page", 43, 2},
		// 8x: the 6h burn 8t/359 passes 6 at t=270; the 30m burn 8(29-c)/29 reaches 6 at c=8.
		{"page 6h and 30m at 6x", phase{minutes: 300, step: 1, perMin: 100, badPerMin: 8}, 15, "page", 270, 8},
		// 4x: the 1d burn 4t/1439 (and the 3d one) pass 3 (1) at t=1080; the 6h burn reaches 1 at c=270.
		{"ticket 1d and 2h at 3x", phase{minutes: 1200, step: 5, perMin: 100, badPerMin: 4}, 300, "ticket", 1080, 270},
		// 2x: the 3d burn 2t/4319 passes 1 at t=2160; the 6h burn 2(359-c)/359 reaches 1 at c=180.
		{"ticket 3d and 6h at 1x", phase{minutes: 2200, step: 10, perMin: 100, badPerMin: 2}, 200, "ticket", 2160, 180},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk := newClock()
			h := newHook()
			defer h.srv.Close()
			reg := prometheus.NewRegistry()
			e := NewEngine(Deps{EvaluateEvery: -1, Now: clk.Now, Registerer: reg})
			defer e.Close()
			err := e.Apply([]*config.SLO{{Name: "feed", Route: "mobile/feed", Objective: 99,
				Window: config.Duration(3 * 24 * time.Hour), AlertWebhook: h.srv.URL}})
			if err != nil {
				t.Fatal(err)
			}
			one := [][2]float64{{1, 1}}
			if tr := simulate(t, clk, []*Engine{e}, one, "mobile/feed", []phase{lead}); len(tr) != 0 {
				t.Fatalf("alerts during clean traffic: %v", tr)
			}
			tr := simulate(t, clk, []*Engine{e}, one, "mobile/feed", []phase{tc.bad})
			if len(tr) != 1 || tr[0] != (transition{tc.fireAt, tc.severity, true}) {
				t.Fatalf("incident transitions %v, want %s firing at minute %d", tr, tc.severity, tc.fireAt)
			}
			if v := testutil.ToFloat64(e.firingG.WithLabelValues("feed", tc.severity)); v != 1 {
				t.Errorf("portico_slo_alert_firing = %v while firing", v)
			}
			tr = simulate(t, clk, []*Engine{e}, one, "mobile/feed", []phase{{minutes: tc.clean, step: tc.bad.step, perMin: 100}})
			if len(tr) != 1 || tr[0] != (transition{tc.resolve, tc.severity, false}) {
				t.Fatalf("recovery transitions %v, want %s resolved at minute %d", tr, tc.severity, tc.resolve)
			}
			got := h.wait(t, 2)
			if len(got) != 2 || got[0].State != "firing" || got[1].State != "resolved" || got[0].Severity != tc.severity ||
				got[1].Severity != tc.severity || got[0].SLO != "feed" || got[0].Route != "mobile/feed" {
				t.Errorf("webhooks = %+v", got)
			}
			if got[0].BurnRates["3d"] <= 0 {
				t.Errorf("webhook burn rates = %v", got[0].BurnRates)
			}
			if st := e.Snapshot()[0]; st.BudgetRemaining >= 1 {
				t.Errorf("budget remaining = %v", st.BudgetRemaining)
			}
		})
	}
}

func TestBudgetAndBurnRatesExact(t *testing.T) {
	clk := newClock()
	reg := prometheus.NewRegistry()
	e := NewEngine(Deps{EvaluateEvery: -1, Now: clk.Now, Registerer: reg})
	defer e.Close()
	if err := e.Apply([]*config.SLO{{Name: "a", Route: "r", Objective: 99.9, Window: config.Duration(7 * 24 * time.Hour), Latency: config.Duration(300 * time.Millisecond)}}); err != nil {
		t.Fatal(err)
	}
	obs := e.Observer("r")
	// 10 minutes ago: 1000 good; now: 990 good, 5 x 500, 3 slow, 2 x 499 (slow, still good).
	for i := 0; i < 1000; i++ {
		obs(200, time.Millisecond, clk.Now())
	}
	clk.Advance(10 * time.Minute)
	for i := 0; i < 990; i++ {
		obs(200, 10*time.Millisecond, clk.Now())
	}
	for i := 0; i < 5; i++ {
		obs(500, time.Millisecond, clk.Now())
	}
	for i := 0; i < 3; i++ {
		obs(200, time.Second, clk.Now())
	}
	obs(499, time.Hour, clk.Now())
	obs(499, time.Hour, clk.Now())
	e.Evaluate(clk.Now())
	st := e.Snapshot()[0]
	// 5m: 8 bad of 1000 -> ratio 0.008 / 0.001 = 8; 30m: 8 of 2000 = 4.
	if math.Abs(st.BurnRates["5m"]-8) > 1e-6 || math.Abs(st.BurnRates["30m"]-4) > 1e-6 || math.Abs(st.BurnRates["3d"]-4) > 1e-6 {
		t.Errorf("burn rates = %v", st.BurnRates)
	}
	if math.Abs(st.BudgetRemaining-(-3)) > 1e-6 || st.Good != 1992 || st.Bad != 8 {
		t.Errorf("budget %v good %d bad %d", st.BudgetRemaining, st.Good, st.Bad)
	}
	if v := testutil.ToFloat64(e.burnG.WithLabelValues("a", "5m")); math.Abs(v-8) > 1e-9 {
		t.Errorf("gauge burn 5m = %v", v)
	}
	if v := testutil.ToFloat64(e.budgetG.WithLabelValues("a")); math.Abs(v+3) > 1e-9 {
		t.Errorf("gauge budget = %v", v)
	}
	// Requests of other routes are not counted.
	e.Observer("other")(500, 0, clk.Now())
	e.Evaluate(clk.Now())
	if e.Snapshot()[0].Bad != 8 {
		t.Errorf("another route's error counted")
	}
}

func TestApplyKeepsStateAndValidates(t *testing.T) {
	clk := newClock()
	reg := prometheus.NewRegistry()
	e := NewEngine(Deps{EvaluateEvery: -1, Now: clk.Now, Registerer: reg})
	defer e.Close()
	slos := []*config.SLO{
		{Name: "a", Route: "r", Objective: 99},
		{Name: "b", Route: "r", Objective: 99.5},
	}
	if err := e.Apply(slos); err != nil {
		t.Fatal(err)
	}
	obs := e.Observer("r") // resolved once, as at compile time
	obs(500, 0, clk.Now())
	obs(200, 0, clk.Now())
	// Reload: a changes objective, b is removed, c is new on the same route.
	if err := e.Apply([]*config.SLO{{Name: "a", Route: "r", Objective: 90}, {Name: "c", Route: "r", Objective: 99}}); err != nil {
		t.Fatal(err)
	}
	obs(200, 0, clk.Now())
	e.Evaluate(clk.Now())
	snap := e.Snapshot()
	if len(snap) != 2 || snap[0].Name != "a" || snap[0].Good != 2 || snap[0].Bad != 1 || snap[1].Name != "c" || snap[1].Good != 1 {
		t.Errorf("after reload: %+v", snap)
	}
	if n := testutil.CollectAndCount(e.budgetG); n != 2 {
		t.Errorf("budget series = %d, want 2 (b removed)", n)
	}
	for _, bad := range [][]*config.SLO{
		{{Name: "", Route: "r", Objective: 99}},
		{{Name: "x", Route: "", Objective: 99}},
		{{Name: "x", Route: "r", Objective: 100}},
		{{Name: "x", Route: "r", Objective: 0}},
		{{Name: "x", Route: "r", Objective: 99, AlertWebhook: "not a url"}},
		{{Name: "x", Route: "r", Objective: 99}, {Name: "x", Route: "r", Objective: 99}},
	} {
		if err := e.Apply(bad); err == nil {
			t.Errorf("accepted %+v", bad[0])
		}
	}
	if len(e.Snapshot()) != 2 {
		t.Errorf("a failed Apply changed the SLOs")
	}
}

// TestPreparedPlanChangesNothingUntilCommit: a plan dropped uncommitted (a
// reload refused later in the compile) leaves the objectives, the SLO set
// and their series as they were.
func TestPreparedPlanChangesNothingUntilCommit(t *testing.T) {
	clk := newClock()
	e := NewEngine(Deps{EvaluateEvery: -1, Now: clk.Now, Registerer: prometheus.NewRegistry()})
	defer e.Close()
	if err := e.Apply([]*config.SLO{{Name: "a", Route: "r", Objective: 99}, {Name: "b", Route: "r", Objective: 99.5}}); err != nil {
		t.Fatal(err)
	}
	plan, err := e.Prepare([]*config.SLO{{Name: "a", Route: "r", Objective: 90}, {Name: "c", Route: "r", Objective: 99}})
	if err != nil {
		t.Fatal(err)
	}
	e.Evaluate(clk.Now())
	snap := e.Snapshot()
	if len(snap) != 2 || snap[0].Name != "a" || snap[0].Objective != 99 || snap[1].Name != "b" {
		t.Fatalf("an uncommitted plan changed the SLOs: %+v", snap)
	}
	if n := testutil.CollectAndCount(e.budgetG); n != 2 {
		t.Errorf("budget series = %d, want a's and b's", n)
	}
	plan.Commit()
	e.Evaluate(clk.Now())
	snap = e.Snapshot()
	if len(snap) != 2 || snap[0].Name != "a" || snap[0].Objective != 90 || snap[1].Name != "c" {
		t.Fatalf("after Commit: %+v", snap)
	}
}

func TestWebhookRetries(t *testing.T) {
	clk := newClock()
	h := newHook()
	defer h.srv.Close()
	h.fails.Store(2)
	e := NewEngine(Deps{EvaluateEvery: -1, Now: clk.Now})
	defer e.Close()
	if err := e.Apply([]*config.SLO{{Name: "a", Route: "r", Objective: 99, AlertWebhook: h.srv.URL}}); err != nil {
		t.Fatal(err)
	}
	obs := e.Observer("r")
	for i := 0; i < 100; i++ {
		obs(503, 0, clk.Now()) // everything fails: both pages and tickets fire
	}
	e.Evaluate(clk.Now())
	got := h.wait(t, 2)
	if len(got) != 2 || h.posts.Load() != 4 {
		t.Errorf("got %d notifications after %d posts, want 2 after 4 (2 failures retried)", len(got), h.posts.Load())
	}
}

// TestForgetRoute: routes the config dropped leave the engine, so renames
// over many reloads do not pile up; a hook handed out before still counts
// its in-flight requests, and a route that comes back counts again.
// TestRemovedSLOResolvesItsAlerts: a reload that removes an SLO whose
// alerts fire sends "resolved" (reason slo_removed) for each of them at the
// next evaluation, once; one removed and back before that evaluation keeps
// firing and sends nothing.
func TestRemovedSLOResolvesItsAlerts(t *testing.T) {
	clk := newClock()
	h := newHook()
	defer h.srv.Close()
	e := NewEngine(Deps{EvaluateEvery: -1, Now: clk.Now})
	defer e.Close()
	slos := []*config.SLO{{Name: "a", Route: "r", Objective: 99, AlertWebhook: h.srv.URL}}
	if err := e.Apply(slos); err != nil {
		t.Fatal(err)
	}
	obs := e.Observer("r")
	for i := 0; i < 100; i++ {
		obs(503, 0, clk.Now()) // both severities fire
	}
	e.Evaluate(clk.Now())
	h.wait(t, 2)
	// Removed and back before an evaluation: still firing, nothing sent.
	if err := e.Apply(nil); err != nil {
		t.Fatal(err)
	}
	if err := e.Apply(slos); err != nil {
		t.Fatal(err)
	}
	e.Evaluate(clk.Now())
	clk.Advance(time.Minute)
	removedAt := clk.Now().UTC()
	if err := e.Apply(nil); err != nil {
		t.Fatal(err)
	}
	e.Evaluate(clk.Now())
	e.Evaluate(clk.Now())
	got := h.wait(t, 4)
	e.Close() // waits for deliveries in flight: a duplicate would be in
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.got) != 4 {
		t.Fatalf("%d webhooks, want 2 firing and 2 resolved: %+v", len(h.got), h.got)
	}
	resolved := map[string]bool{}
	for _, n := range got[2:] {
		if n.State != "resolved" || n.Reason != "slo_removed" || n.SLO != "a" || !n.Time.Equal(removedAt) {
			t.Errorf("after removal at %v: %+v", removedAt, n)
		}
		resolved[n.Severity] = true
	}
	if !resolved["page"] || !resolved["ticket"] {
		t.Errorf("resolved severities %v, want page and ticket", resolved)
	}
}

func TestForgetRoute(t *testing.T) {
	clk := newClock()
	e := NewEngine(Deps{EvaluateEvery: -1, Now: clk.Now})
	defer e.Close()
	if err := e.Apply([]*config.SLO{{Name: "a", Route: "r", Objective: 99}}); err != nil {
		t.Fatal(err)
	}
	old := e.Observer("r")
	for i := range 1000 {
		e.Observer(fmt.Sprintf("renamed-%d", i))
		e.ForgetRoute(fmt.Sprintf("renamed-%d", i))
	}
	e.ForgetRoute("r")
	e.mu.Lock()
	n := len(e.routes)
	e.mu.Unlock()
	if n != 0 {
		t.Errorf("engine keeps %d routes after they were all forgotten", n)
	}
	old(500, 0, clk.Now()) // a request in flight across the reload
	e.Observer("r")(200, 0, clk.Now())
	e.Evaluate(clk.Now())
	if snap := e.Snapshot(); len(snap) != 1 || snap[0].Bad != 1 || snap[0].Good != 1 {
		t.Errorf("after forget and return: %+v", snap)
	}
}

func TestObserverDoesNotAllocate(t *testing.T) {
	e := NewEngine(Deps{EvaluateEvery: -1})
	defer e.Close()
	if err := e.Apply([]*config.SLO{{Name: "a", Route: "r", Objective: 99, Latency: config.Duration(time.Second)}}); err != nil {
		t.Fatal(err)
	}
	obs := e.Observer("r")
	now := time.Now()
	obs(200, 0, now)
	if n := testing.AllocsPerRun(1000, func() { obs(503, time.Millisecond, now) }); n != 0 {
		t.Errorf("observer allocates %v per call", n)
	}
}

func BenchmarkObserver(b *testing.B) {
	e := NewEngine(Deps{EvaluateEvery: -1})
	defer e.Close()
	if err := e.Apply([]*config.SLO{{Name: "a", Route: "r", Objective: 99, Latency: config.Duration(time.Second)}}); err != nil {
		b.Fatal(err)
	}
	obs := e.Observer("r")
	now := time.Now()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			obs(200, time.Millisecond, now)
		}
	})
}

func TestRulesPromtool(t *testing.T) {
	slos := []*config.SLO{
		{Name: "mobile-feed-availability", Route: "mobile/feed", Objective: 99.9, Window: config.Duration(28 * 24 * time.Hour), Latency: config.Duration(300 * time.Millisecond)},
		{Name: "posts", Route: `posts-"api"`, Objective: 99.5, Window: config.Duration(36 * time.Hour)},
		{Name: "users-latency", Route: "users", Objective: 99, Latency: config.Duration(time.Second)}, // le matched as "1" or "1.0"
	}
	out, err := Rules(slos)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`le=\"0.3\"`, "portico:slo_error_ratio:rate5m", "portico:slo_error_ratio:rate3d", "PorticoSLOBurnRatePage",
		"PorticoSLOBurnRateTicket", "14.4 * 0.001", "[28d]", "[36h]", `code=~\"5..\"`, `le=~\"1([.]0)?\"`,
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("rules lack %q", want)
		}
	}
	if _, err := Rules([]*config.SLO{{Name: "x", Route: "r", Objective: 101}}); err == nil {
		t.Error("invalid SLO accepted")
	}
	path, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not installed (apt-get install prometheus); rules not checked")
	}
	f := filepath.Join(t.TempDir(), "rules.yml")
	if err := os.WriteFile(f, out, 0o644); err != nil {
		t.Fatal(err)
	}
	if res, err := exec.Command(path, "check", "rules", f).CombinedOutput(); err != nil {
		t.Fatalf("promtool check rules: %v\n%s\n%s", err, res, out)
	}
}

var _ = io.Discard

func TestLoopEvaluatesAndStops(t *testing.T) {
	clk := newClock()
	e := NewEngine(Deps{Now: clk.Now, EvaluateEvery: time.Millisecond})
	if err := e.Apply([]*config.SLO{{Name: "a", Route: "r", Objective: 99}}); err != nil {
		t.Fatal(err)
	}
	e.Observer("r")(500, 0, clk.Now())
	deadline := time.Now().Add(5 * time.Second)
	for e.Snapshot()[0].Bad == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the loop did not evaluate")
		}
		time.Sleep(time.Millisecond)
	}
	if st := e.Snapshot()[0]; st.Bad != 1 || !st.Alerts["page"] {
		t.Errorf("after the loop ran: %+v", st)
	}
	e.Close() // goleak in TestMain checks the loop is gone
}

// TestReloadChangingWebhookMovesFiringAlerts: a reload that points a firing
// SLO at another receiver resolves the alerts at the old one (reason
// webhook_changed) and announces them to the new one; turning the webhook
// off resolves them where they were announced.
func TestReloadChangingWebhookMovesFiringAlerts(t *testing.T) {
	clk := newClock()
	a, b := newHook(), newHook()
	defer a.srv.Close()
	defer b.srv.Close()
	e := NewEngine(Deps{EvaluateEvery: -1, Now: clk.Now})
	defer e.Close()
	apply := func(webhook string) {
		t.Helper()
		if err := e.Apply([]*config.SLO{{Name: "s", Route: "r", Objective: 99, AlertWebhook: webhook}}); err != nil {
			t.Fatal(err)
		}
	}
	apply(a.srv.URL)
	obs := e.Observer("r")
	for i := 0; i < 100; i++ {
		obs(503, 0, clk.Now()) // both severities fire
	}
	e.Evaluate(clk.Now())
	a.wait(t, 2)
	apply(b.srv.URL)
	clk.Advance(10 * time.Second)
	e.Evaluate(clk.Now())
	e.Evaluate(clk.Now())
	b.wait(t, 2)
	apply("")
	clk.Advance(10 * time.Second)
	e.Evaluate(clk.Now())
	a.wait(t, 4)
	b.wait(t, 4)
	e.Close() // a duplicate in flight would be in by now
	check := func(name string, got []Notification) {
		t.Helper()
		if len(got) != 4 {
			t.Fatalf("%s got %d webhooks, want 4: %+v", name, len(got), got)
		}
		for i, n := range got {
			want, reason := "firing", ""
			if i >= 2 {
				want, reason = "resolved", "webhook_changed"
			}
			if n.State != want || n.Reason != reason {
				t.Errorf("%s webhook %d = %+v, want %s %q", name, i, n, want, reason)
			}
		}
	}
	all := func(h *hook) []Notification {
		h.mu.Lock()
		defer h.mu.Unlock()
		ns := append([]Notification(nil), h.got...)
		sort.SliceStable(ns, func(i, j int) bool { return ns[i].Time.Before(ns[j].Time) })
		return ns
	}
	check("old receiver", all(a))
	check("new receiver", all(b))
}

// reloadOnLog runs f when the engine logs msg the first time: a reload
// arriving in the middle of an evaluation, at a known point.
type reloadOnLog struct {
	slog.Handler
	msg  string
	once sync.Once
	f    func()
}

func (h *reloadOnLog) Enabled(context.Context, slog.Level) bool { return true }
func (h *reloadOnLog) Handle(_ context.Context, r slog.Record) error {
	if r.Message == h.msg {
		h.once.Do(h.f)
	}
	return nil
}

// TestReloadDuringEvaluationLeavesNoSeries: an SLO removed while an
// evaluation is under way loses all its portico_slo_* series, not only
// those the evaluation had not set yet.
func TestReloadDuringEvaluationLeavesNoSeries(t *testing.T) {
	clk := newClock()
	h := &reloadOnLog{Handler: slog.DiscardHandler, msg: "slo alert firing"}
	e := NewEngine(Deps{EvaluateEvery: -1, Now: clk.Now, Logger: slog.New(h)})
	defer e.Close()
	h.f = func() {
		if err := e.Apply(nil); err != nil {
			t.Error(err)
		}
	}
	if err := e.Apply([]*config.SLO{{Name: "gone", Route: "r", Objective: 99}}); err != nil {
		t.Fatal(err)
	}
	obs := e.Observer("r")
	for i := 0; i < 100; i++ {
		obs(503, 0, clk.Now())
	}
	e.Evaluate(clk.Now()) // logs the page firing, and the reload removes the SLO
	for name, g := range map[string]*prometheus.GaugeVec{"budget": e.budgetG, "burn": e.burnG, "firing": e.firingG} {
		if n := testutil.CollectAndCount(g); n != 0 {
			t.Errorf("%d %s series left for the removed SLO", n, name)
		}
	}
}

// TestWebhookRedirects: a redirect that keeps the POST (307, 308) is
// followed; one that would turn it into a bodiless GET (301, 302, 303) is
// a failed delivery, not a GET whose 200 passes for one.
func TestWebhookRedirects(t *testing.T) {
	for _, code := range []int{301, 302, 303, 307, 308} {
		t.Run(strconv.Itoa(code), func(t *testing.T) {
			var mu sync.Mutex
			var atNew []string
			old, arrived := make(chan struct{}, 10), make(chan struct{}, 10)
			mux := http.NewServeMux()
			mux.HandleFunc("/old", func(w http.ResponseWriter, r *http.Request) {
				old <- struct{}{}
				http.Redirect(w, r, "/new", code)
			})
			mux.HandleFunc("/new", func(w http.ResponseWriter, r *http.Request) {
				body, _ := io.ReadAll(r.Body)
				mu.Lock()
				atNew = append(atNew, r.Method+" "+strconv.FormatBool(json.Valid(body)))
				mu.Unlock()
				arrived <- struct{}{}
			})
			srv := httptest.NewServer(mux)
			defer srv.Close()
			clk := newClock()
			e := NewEngine(Deps{EvaluateEvery: -1, Now: clk.Now})
			defer e.Close()
			if err := e.Apply([]*config.SLO{{Name: "a", Route: "r", Objective: 99, AlertWebhook: srv.URL + "/old"}}); err != nil {
				t.Fatal(err)
			}
			obs := e.Observer("r")
			for i := 0; i < 100; i++ {
				obs(503, 0, clk.Now())
			}
			e.Evaluate(clk.Now())
			follows := code == 307 || code == 308
			// Each severity's first attempt, then (when not followed) the
			// first retry, which proves the first attempt is over.
			want := 2
			if !follows {
				want = 3
			}
			for range want {
				select {
				case <-old:
				case <-time.After(10 * time.Second):
					t.Fatal("the webhook was not tried")
				}
			}
			for i := 0; follows && i < 2; i++ {
				select {
				case <-arrived:
				case <-time.After(10 * time.Second):
					t.Fatal("the redirect was not followed")
				}
			}
			e.Close()
			mu.Lock()
			defer mu.Unlock()
			if follows && (len(atNew) != 2 || atNew[0] != "POST true" || atNew[1] != "POST true") {
				t.Errorf("after a %d: %q, want the two notifications POSTed on", code, atNew)
			}
			if !follows && len(atNew) != 0 {
				t.Errorf("after a %d: %q reached the redirect's target", code, atNew)
			}
		})
	}
}
