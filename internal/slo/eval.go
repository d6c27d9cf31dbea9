package slo

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strconv"
	"time"
)

// SLOStatus is one SLO's state as of the last evaluation, as served by
// /admin/slo.
type SLOStatus struct {
	Name      string  `json:"name"`
	Route     string  `json:"route"`
	Objective float64 `json:"objective"`
	Window    string  `json:"window"`
	Latency   string  `json:"latency,omitempty"`
	// Good and Bad count requests over the window.
	Good uint64 `json:"good"`
	Bad  uint64 `json:"bad"`
	// BudgetRemaining is 1 - (bad ratio / allowed bad ratio) over the window:
	// 1 untouched, 0 spent, negative overspent.
	BudgetRemaining float64 `json:"budget_remaining"`
	// BurnRates by window name (5m ... 3d): 1 spends the budget exactly over
	// the SLO window.
	BurnRates map[string]float64 `json:"burn_rates"`
	// Alerts by severity (page, ticket): true while firing.
	Alerts      map[string]bool `json:"alerts"`
	EvaluatedAt time.Time       `json:"evaluated_at"`
}

// Evaluate computes every SLO's budget, burn rates and alerts as of now,
// updates the gauges and sends a webhook for each alert that started or
// resolved. In fleet mode it first flushes this node's counts and reads the
// fleet's sums; only the lease holder sends webhooks.
func (e *Engine) Evaluate(now time.Time) {
	e.evalMu.Lock()
	defer e.evalMu.Unlock()
	e.mu.Lock()
	active := append([]*sloState(nil), e.active...)
	e.mu.Unlock()
	ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
	defer cancel()
	nowMin := minuteOf(now)
	leader := true
	if e.redis != nil {
		if err := e.flushLocked(ctx, nowMin); err != nil {
			e.logger.Warn("slo: flushing counts to redis", "err", err)
		}
		leader = e.holdLease(ctx)
	}
	for _, st := range active {
		cfg := st.cfg.Load()
		get := st.ring.Load().get
		if e.redis != nil {
			if err := e.refreshFleet(ctx, st, cfg, nowMin); err != nil {
				e.logger.Warn("slo: reading fleet counts; keeping the last evaluation", "slo", st.name, "err", err)
				continue
			}
			get = st.fleet.get
		}
		s := windowSums(get, nowMin, cfg.window)
		status := SLOStatus{
			Name: st.name, Route: cfg.route, Objective: cfg.objective, Window: fmtDuration(cfg.window),
			Good: s.budget[0], Bad: s.budget[1], BudgetRemaining: 1,
			BurnRates: make(map[string]float64, numWindows), Alerts: make(map[string]bool, 2),
			EvaluatedAt: now.UTC(),
		}
		if cfg.latency > 0 {
			status.Latency = fmtDuration(cfg.latency)
		}
		if total := s.budget[0] + s.budget[1]; total > 0 {
			status.BudgetRemaining = round6(1 - burn(s.budget[1], total, cfg.objective))
		}
		var rates [numWindows]float64
		for i := range windows {
			rates[i] = burn(s.win[i][1], s.win[i][0]+s.win[i][1], cfg.objective)
			status.BurnRates[windowNames[i]] = round6(rates[i])
			e.burnG.WithLabelValues(st.name, windowNames[i]).Set(rates[i])
		}
		e.budgetG.WithLabelValues(st.name).Set(status.BudgetRemaining)
		var firing [2]bool
		for _, a := range alertRules {
			if rates[a.Long] > a.Factor && rates[a.Short] > a.Factor {
				firing[severityIndex(a.Severity)] = true
			}
		}
		for si, sev := range severities {
			status.Alerts[sev] = firing[si]
			v := 0.0
			if firing[si] {
				v = 1
			}
			e.firingG.WithLabelValues(st.name, sev).Set(v)
			state := "resolved"
			if firing[si] {
				state = "firing"
			}
			if firing[si] != st.firing[si] {
				st.firing[si] = firing[si]
				e.logger.Warn("slo alert "+state, "slo", st.name, "severity", sev, "route", cfg.route,
					"burn_1h", rates[w1h], "burn_6h", rates[w6h], "burn_1d", rates[w1d], "budget_remaining", status.BudgetRemaining)
			}
			if to := st.firingTo[si]; to != "" && to != cfg.webhook && leader {
				// A reload moved the alerts elsewhere (or turned them off):
				// the old receiver would keep a page that never ends, and
				// the new one must get "firing" before any "resolved".
				e.withdraw(ctx, st, cfg, si, to, Notification{
					SLO: st.name, Route: cfg.route, Severity: sev, State: "resolved", Reason: "webhook_changed",
					Objective: cfg.objective, BudgetRemaining: status.BudgetRemaining, BurnRates: status.BurnRates,
					Time: now.UTC(), Node: e.nodeID,
				})
			}
			if cfg.webhook == "" || !leader {
				continue
			}
			e.announce(ctx, st, cfg, si, Notification{
				SLO: st.name, Route: cfg.route, Severity: sev, State: state, Objective: cfg.objective,
				BudgetRemaining: status.BudgetRemaining, BurnRates: status.BurnRates, Time: now.UTC(), Node: e.nodeID,
			})
		}
		st.status = status
	}
	// A reload that removed an SLO while it was being evaluated deleted its
	// series before the loop set them again: delete them once more, or they
	// would stay exported, frozen, until the process ends.
	e.mu.Lock()
	for _, st := range active {
		if !slices.Contains(e.active, st) {
			e.deleteSeries(st.name)
		}
	}
	e.mu.Unlock()
	e.resolveRetired(ctx, now, leader)
}

// resolveRetired ends the alerts of SLOs removed from the config: a
// "resolved" notification (Reason says why) for each severity last
// announced as firing. An SLO whose state could not be read or stored
// (Redis) is tried again at the next evaluation; one the lease holder is
// left to resolve is dropped here.
func (e *Engine) resolveRetired(ctx context.Context, now time.Time, leader bool) {
	e.mu.Lock()
	retired := e.retired
	e.retired = nil
	e.mu.Unlock()
	var again []*sloState
	for _, st := range retired {
		cfg := st.cfg.Load()
		ok := true
		for si, sev := range severities {
			if st.firing[si] {
				st.firing[si] = false
				e.logger.Warn("slo alert resolved: the SLO was removed from the config", "slo", st.name, "severity", sev, "route", cfg.route)
			}
			if cfg.webhook == "" || !leader {
				continue
			}
			ok = e.announce(ctx, st, cfg, si, Notification{
				SLO: st.name, Route: cfg.route, Severity: sev, State: "resolved", Reason: "slo_removed",
				Objective: cfg.objective, BudgetRemaining: st.status.BudgetRemaining, BurnRates: st.status.BurnRates,
				Time: now.UTC(), Node: e.nodeID,
			}) && ok
		}
		if !ok {
			again = append(again, st)
		}
	}
	if len(again) > 0 {
		e.mu.Lock()
		e.retired = append(e.retired, again...)
		e.mu.Unlock()
	}
}

// announce sends n, a severity's start ("firing") or end, to the webhook
// unless that is what was last announced. What the fleet last announced
// decides in fleet mode, so a restarted node or a new lease holder does not
// repeat it; per process, it is this node's own last state. It reports
// false when Redis could not be read or written (nothing was sent).
func (e *Engine) announce(ctx context.Context, st *sloState, cfg *sloConfig, si int, n Notification) bool {
	firing := n.State == "firing"
	announced := st.announced[si]
	if e.redis != nil {
		v, err := e.fleetAlert(ctx, st.name, n.Severity)
		if err != nil {
			e.logger.Warn("slo: reading alert state from redis", "slo", st.name, "err", err)
			return false
		}
		announced = v
	}
	if firing == announced {
		return true
	}
	if e.redis != nil {
		if err := e.setFleetAlert(ctx, st.name, n.Severity, firing, cfg.window); err != nil {
			e.logger.Warn("slo: storing alert state in redis", "slo", st.name, "err", err)
			return false
		}
	}
	st.announced[si] = firing
	st.firingTo[si] = ""
	if firing {
		st.firingTo[si] = cfg.webhook
	}
	e.send(cfg.webhook, n)
	return true
}

// withdraw sends n, a "resolved", to the webhook that was last sent the
// severity's "firing" and is no longer the SLO's, and records the severity
// as not announced, so the current webhook (if any) is told afresh. In
// fleet mode only the node that sent "firing" knows the old webhook.
func (e *Engine) withdraw(ctx context.Context, st *sloState, cfg *sloConfig, si int, to string, n Notification) {
	if e.redis != nil {
		if err := e.setFleetAlert(ctx, st.name, n.Severity, false, cfg.window); err != nil {
			e.logger.Warn("slo: storing alert state in redis", "slo", st.name, "err", err)
			return // tried again at the next evaluation
		}
	}
	st.announced[si] = false
	st.firingTo[si] = ""
	e.send(to, n)
}

func severityIndex(s string) int {
	if s == "page" {
		return 0
	}
	return 1
}

// Snapshot returns the state of the configured SLOs as of the last
// evaluation, in config order. An SLO not evaluated yet shows a full budget.
func (e *Engine) Snapshot() []SLOStatus {
	e.mu.Lock()
	active := append([]*sloState(nil), e.active...)
	e.mu.Unlock()
	e.evalMu.Lock()
	defer e.evalMu.Unlock()
	out := make([]SLOStatus, 0, len(active))
	for _, st := range active {
		s := st.status
		if s.Name == "" {
			cfg := st.cfg.Load()
			s = SLOStatus{Name: st.name, Route: cfg.route, Objective: cfg.objective, Window: fmtDuration(cfg.window),
				BudgetRemaining: 1, BurnRates: map[string]float64{}, Alerts: map[string]bool{"page": false, "ticket": false}}
			for _, w := range windowNames {
				s.BurnRates[w] = 0
			}
			// As Evaluate shows it, so the view's shape does not change
			// with the first evaluation.
			if cfg.latency > 0 {
				s.Latency = fmtDuration(cfg.latency)
			}
		}
		out = append(out, s)
	}
	return out
}

// Notification is the JSON body POSTed to alert_webhook when an alert starts
// ("firing") or ends ("resolved"). Deliveries of one SLO are independent
// requests; use Time to order them.
type Notification struct {
	SLO      string `json:"slo"`
	Route    string `json:"route"`
	Severity string `json:"severity"`
	State    string `json:"state"`
	// Reason is set on a "resolved" that did not come from the burn rate:
	// "slo_removed" when a reload removed the SLO.
	Reason          string             `json:"reason,omitempty"`
	Objective       float64            `json:"objective"`
	BudgetRemaining float64            `json:"budget_remaining"`
	BurnRates       map[string]float64 `json:"burn_rates"`
	Time            time.Time          `json:"time"`
	Node            string             `json:"node"`
}

// webhookAttempts bounds deliveries: 4 tries, 0.5 s, 1 s, 2 s apart.
const webhookAttempts = 4

func (e *Engine) send(url string, n Notification) {
	body, err := json.Marshal(n)
	if err != nil {
		return
	}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		backoff := 500 * time.Millisecond
		for attempt := 1; ; attempt++ {
			err := e.post(url, body)
			if err == nil {
				return
			}
			if attempt == webhookAttempts {
				e.logger.Error("slo: alert webhook failed", "slo", n.SLO, "severity", n.Severity, "state", n.State, "attempts", attempt, "err", err)
				return
			}
			select {
			case <-e.ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff *= 2
		}
	}()
}

type statusError int

func (s statusError) Error() string { return "webhook answered " + http.StatusText(int(s)) }

func (e *Engine) post(url string, body []byte) error {
	req, err := http.NewRequestWithContext(e.ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := e.client.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return statusError(resp.StatusCode)
	}
	return nil
}

// fmtDuration prints whole days as "28d" and the rest as Go does.
func fmtDuration(d time.Duration) string {
	if d >= 24*time.Hour && d%(24*time.Hour) == 0 {
		return strconv.FormatInt(int64(d/(24*time.Hour)), 10) + "d"
	}
	return d.String()
}
