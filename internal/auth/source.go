package auth

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// keySource holds one provider's keys: fetched from a JWKS URL and refreshed
// in the background, or fixed (jwks_file, secret).
//
// Fetch discipline, so the identity provider is never hammered:
//   - one fetch at a time (single flight): concurrent callers wait for it;
//   - unknown kids trigger at most one fetch per refetchInterval;
//   - background refreshes follow the document's Cache-Control max-age,
//     clamped to [minRefresh, maxRefresh], and back off after failures.
//
// Keys are replaced only by a successful fetch: while the URL fails, the
// last good keys stay in use.
type keySource struct {
	reg      *Registry
	provider string
	url      string // empty for a fixed key set
	logURL   string // url without its password, for log lines

	keys atomic.Pointer[keySet]

	mu          sync.Mutex
	inflight    chan struct{} // closed when the fetch under way ends
	lastAttempt time.Time
	lastErr     error
	ok          bool // the last attempt succeeded (fixed sets: always)
	failures    int  // consecutive failed attempts
	refresh     time.Duration
	stopOnce    sync.Once
	stopCh      chan struct{}
}

func newURLSource(r *Registry, provider, url string) *keySource {
	return &keySource{reg: r, provider: provider, url: url, logURL: redactURL(url), refresh: defaultRefresh, stopCh: make(chan struct{})}
}

// redactURL hides the password of a URL with userinfo (a JWKS behind basic
// auth), which would otherwise reach the log with every fetch line.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}

func newStaticSource(r *Registry, provider string, ks *keySet) *keySource {
	s := &keySource{reg: r, provider: provider, ok: true, stopCh: make(chan struct{})}
	ks.gen = 1
	s.keys.Store(ks)
	return s
}

// current returns the keys in force, nil before the first successful fetch.
func (s *keySource) current() *keySet { return s.keys.Load() }

// available reports whether the last fetch attempt succeeded: when it did,
// an unknown kid is the client's problem (401); when it did not, it may be
// the gateway's (503).
func (s *keySource) available() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ok
}

// retryAfter is the Retry-After value, in whole seconds (at least 1), for a
// 503 caused by an unavailable key set: the time until the next fetch an
// unknown kid may trigger.
func (s *keySource) retryAfter(now time.Time) int {
	s.mu.Lock()
	wait := s.lastAttempt.Add(refetchInterval).Sub(now)
	s.mu.Unlock()
	secs := int((wait + time.Second - 1) / time.Second)
	if secs < 1 {
		secs = 1
	}
	return secs
}

// refetchUnknown fetches the key set because a token named a kid that is not
// in it, unless a fetch started less than refetchInterval ago; a fetch under
// way is joined instead. It returns when the keys are as fresh as they will
// get for this request.
func (s *keySource) refetchUnknown(ctx context.Context) {
	if s.url == "" {
		return
	}
	_ = s.fetchIf(ctx, refetchInterval, false)
}

// fetch fetches now (or joins a fetch under way).
func (s *keySource) fetch(ctx context.Context) error { return s.fetchIf(ctx, 0, false) }

// fetchIf fetches unless the last attempt started less than minGap ago.
// With bound, a download this call starts also ends with ctx: for the
// startup fetch, whose caller (Prepare) is the only one waiting. Otherwise
// the download does not use ctx: followers share it, and one caller going
// away must not fail it for the others. The registry's context (cancelled
// by Close) and fetchTimeout bound it either way.
func (s *keySource) fetchIf(ctx context.Context, minGap time.Duration, bound bool) error {
	s.mu.Lock()
	if ch := s.inflight; ch != nil {
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
		s.mu.Lock()
		err := s.lastErr
		s.mu.Unlock()
		return err
	}
	now := s.reg.now()
	if minGap > 0 && !s.lastAttempt.IsZero() && now.Sub(s.lastAttempt) < minGap {
		err := s.lastErr
		s.mu.Unlock()
		return err
	}
	ch := make(chan struct{})
	s.inflight = ch
	s.lastAttempt = now
	hadKeys := s.keys.Load() != nil
	wasOK := s.ok
	s.mu.Unlock()

	dctx, cancel := context.WithTimeout(s.reg.baseCtx, fetchTimeout)
	if bound {
		stop := context.AfterFunc(ctx, cancel)
		defer stop()
	}
	ks, maxAge, err := s.download(dctx)
	cancel()

	changed := false
	s.mu.Lock()
	s.lastErr = err
	if err != nil {
		s.ok = false
		s.failures++
	} else {
		s.ok = true
		s.failures = 0
		s.refresh = clampRefresh(maxAge)
		old := s.keys.Load()
		if old == nil || old.fingerprint != ks.fingerprint {
			if old != nil {
				ks.gen = old.gen + 1
			} else {
				ks.gen = 1
			}
			s.keys.Store(ks)
			changed = true
		}
	}
	s.inflight = nil
	close(ch)
	s.mu.Unlock()

	log := s.reg.log
	switch {
	case err != nil && !hadKeys:
		log.Warn("auth: JWKS not available; tokens whose key id is unknown get 503 with Retry-After until the key set is fetched",
			"provider", s.provider, "jwks_url", s.logURL, "error", err)
	case err != nil:
		log.Warn("auth: JWKS refresh failed; cached keys stay in use, but tokens signed by keys not seen before get 503 until a fetch succeeds",
			"provider", s.provider, "jwks_url", s.logURL, "error", err)
	case changed:
		log.Info("auth: JWKS keys loaded; verified-token cache flushed",
			"provider", s.provider, "jwks_url", s.logURL, "keys", len(ks.all))
	case !wasOK:
		log.Info("auth: JWKS reachable again", "provider", s.provider, "jwks_url", s.logURL)
	}
	return err
}

// download performs one GET of the JWKS document.
func (s *keySource) download(ctx context.Context) (*keySet, time.Duration, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.url, nil)
	if err != nil {
		return nil, 0, err
	}
	req.Header.Set("Accept", "application/jwk-set+json, application/json")
	resp, err := s.reg.client.Do(req)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
		return nil, 0, fmt.Errorf("JWKS answered %d", resp.StatusCode)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes+1))
	if err != nil {
		return nil, 0, err
	}
	if len(b) > maxJWKSBytes {
		return nil, 0, errors.New("JWKS document larger than 1 MiB")
	}
	ks, err := parseKeySet(b, s.reg.log, s.provider)
	if err != nil {
		return nil, 0, err
	}
	return ks, maxAge(resp.Header.Get("Cache-Control")), nil
}

// maxAge reads max-age from a Cache-Control value (RFC 9111 section 5.2.2.1);
// no-store and no-cache count as 0 (then clamped to minRefresh), absence as
// -1 (the default interval).
func maxAge(cc string) time.Duration {
	age := time.Duration(-1)
	for part := range strings.SplitSeq(cc, ",") {
		part = strings.TrimSpace(part)
		name, val, _ := strings.Cut(part, "=")
		switch strings.ToLower(strings.TrimSpace(name)) {
		case "no-store", "no-cache":
			return 0
		case "max-age":
			n, err := strconv.ParseInt(strings.Trim(strings.TrimSpace(val), `"`), 10, 64)
			if err == nil && n >= 0 {
				if n > int64(maxRefresh/time.Second) {
					n = int64(maxRefresh / time.Second)
				}
				age = time.Duration(n) * time.Second
			}
		}
	}
	return age
}

// clampRefresh turns a max-age into the background refresh interval.
func clampRefresh(age time.Duration) time.Duration {
	switch {
	case age < 0:
		return defaultRefresh
	case age < minRefresh:
		return minRefresh
	case age > maxRefresh:
		return maxRefresh
	}
	return age
}

// nextWait is how long the background refresher sleeps before its next
// fetch: the refresh interval after the last attempt (an on-demand refetch
// counts), or after failures an exponential backoff from 1 s up to the
// refresh interval and never above 5 minutes.
func (s *keySource) nextWait(now time.Time) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lastAttempt.IsZero() {
		return 0
	}
	interval := s.refresh
	if !s.ok {
		backoff := time.Second << min(s.failures-1, 9)
		interval = min(backoff, s.refresh, 5*time.Minute)
	}
	return max(interval-now.Sub(s.lastAttempt), 0)
}

// run refreshes the key set in the background until stop.
func (s *keySource) run(wg *sync.WaitGroup) {
	defer wg.Done()
	for {
		d := s.nextWait(s.reg.now())
		select {
		case <-s.stopCh:
			return
		case <-s.reg.after(d):
		}
		select {
		case <-s.stopCh:
			return
		default:
		}
		_ = s.fetch(s.reg.baseCtx)
	}
}

// stop ends the background refresher; the keys stay usable.
func (s *keySource) stop() { s.stopOnce.Do(func() { close(s.stopCh) }) }
