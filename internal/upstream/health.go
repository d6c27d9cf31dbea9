package upstream

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"time"

	"github.com/portico-gw/portico/internal/config"
)

// healthCheck is a health_check block with defaults filled in.
type healthCheck struct {
	path               string
	interval, timeout  time.Duration
	expect             int
	unhealthy, healthy int
	ignoreAllDown      bool
}

func normaliseHealthCheck(hc *config.HealthCheck) *healthCheck {
	if hc == nil {
		return nil
	}
	n := &healthCheck{
		path: hc.Path, interval: hc.Interval.D(), timeout: hc.Timeout.D(), expect: hc.ExpectStatus,
		unhealthy: hc.UnhealthyThreshold, healthy: hc.HealthyThreshold,
		ignoreAllDown: hc.AllUnhealthy == "ignore",
	}
	if n.path == "" {
		n.path = "/healthz"
	}
	if n.interval <= 0 {
		n.interval = 5 * time.Second
	}
	if n.timeout <= 0 {
		n.timeout = time.Second
	}
	if n.timeout > n.interval {
		n.timeout = n.interval
	}
	if n.expect == 0 {
		n.expect = http.StatusOK
	}
	if n.unhealthy <= 0 {
		n.unhealthy = 3
	}
	if n.healthy <= 0 {
		n.healthy = 2
	}
	return n
}

// syncChecker makes t's checker match hc and the upstream's transport:
// unchanged settings keep the running goroutine (and its counts); changed
// ones restart it; no health_check stops it and marks t healthy, since
// nothing would ever mark it up again. r.mu is held.
func (r *Registry) syncChecker(u *upstream, t *target, hc *healthCheck) {
	key := ""
	if hc != nil {
		key = fmt.Sprintf("%+v|%s|%s://%s|%t", *hc, u.trKey, t.scheme, t.host, t.h2c)
	}
	if key == t.checkKey && (hc == nil || t.checkStop != nil) {
		return
	}
	if t.checkStop != nil {
		t.checkStop()
		t.checkStop = nil
	}
	t.checkKey = key
	if hc == nil {
		t.healthy.Store(true)
		t.healthyGauge.Set(1)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.checkStop = cancel
	rt := u.tr.forTarget(t)
	checkURL := t.scheme + "://" + t.host + hc.path
	r.checkers.Add(1)
	go func() {
		defer r.checkers.Done()
		r.runChecker(ctx, u.name, t, *hc, rt, checkURL)
	}()
}

// jitter spreads d by ±10% so that many gateways (and many targets) do not
// probe in lockstep.
func jitter(d time.Duration) time.Duration {
	span := int64(d) / 5
	if span <= 0 {
		return d
	}
	return d - time.Duration(span/2) + time.Duration(rand.Int64N(span))
}

func (r *Registry) runChecker(ctx context.Context, upName string, t *target, hc healthCheck, rt http.RoundTripper, checkURL string) {
	// The first check comes soon (within a tenth of the interval) so a
	// target that is down at startup leaves rotation quickly.
	first := time.Duration(rand.Int64N(int64(hc.interval)/10 + 1))
	timer := time.NewTimer(first)
	defer timer.Stop()
	fails, oks := 0, 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		err := probe(ctx, rt, checkURL, hc)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			fails, oks = fails+1, 0
			if fails >= hc.unhealthy && t.healthy.Load() {
				t.healthy.Store(false)
				t.healthyGauge.Set(0)
				r.log.Warn("upstream target unhealthy", "upstream", upName, "target", t.url, "err", err)
			}
		} else {
			oks, fails = oks+1, 0
			if oks >= hc.healthy && !t.healthy.Load() {
				t.healthy.Store(true)
				t.healthyGauge.Set(1)
				r.log.Info("upstream target healthy", "upstream", upName, "target", t.url)
			}
		}
		timer.Reset(jitter(hc.interval))
	}
}

func probe(ctx context.Context, rt http.RoundTripper, checkURL string, hc healthCheck) error {
	ctx, cancel := context.WithTimeout(ctx, hc.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, checkURL, nil)
	if err != nil {
		return err
	}
	req.Header.Set("User-Agent", "portico-health-check")
	resp, err := rt.RoundTrip(req)
	if err != nil {
		return err
	}
	_, _ = io.CopyN(io.Discard, resp.Body, 64<<10)
	_ = resp.Body.Close()
	if resp.StatusCode != hc.expect {
		return fmt.Errorf("health check %s: status %d, want %d", checkURL, resp.StatusCode, hc.expect)
	}
	return nil
}
