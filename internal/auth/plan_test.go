package auth

import (
	"context"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/portico-gw/portico/internal/auth/authtest"
	"github.com/portico-gw/portico/internal/config"
)

// refreshers counts the background refresher goroutines alive in the
// process. No test of the package runs in parallel and every test closes
// its Registry, so they are the current test's.
func refreshers() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return strings.Count(string(buf[:n]), "auth.(*keySource).run(")
		}
		buf = make([]byte, 2*len(buf))
	}
}

// waitRefreshers waits until exactly n refreshers are alive: a stopped
// refresher returns as soon as it is scheduled.
func waitRefreshers(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for refreshers() != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d refreshers alive, want %d", refreshers(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// fireRefresh ends the wait of the one refresher waiting on fire and
// waits until it has fetched and started its next wait.
func fireRefresh(t *testing.T, waits chan time.Duration, fire chan time.Time) {
	t.Helper()
	select {
	case fire <- time.Time{}:
	case <-time.After(5 * time.Second):
		t.Fatal("no refresher is waiting")
	}
	select {
	case <-waits:
	case <-time.After(5 * time.Second):
		t.Fatal("the refresher did not start its next wait")
	}
}

// TestPlanTouchesNothingUntilCommit: a prepared plan that drops the running
// provider's JWKS URL for another leaves the running key set refreshing (a
// key rotation at its IdP still reaches the running Set) and runs no
// refresher of its own, so a refused reload changes nothing. Commit then
// stops the old refresher and starts the new one.
func TestPlanTouchesNothingUntilCommit(t *testing.T) {
	e := newEnv(t)
	waits, fire := e.manualRefresh()
	idpA := authtest.NewJWKSServer(t, rsaKey1)
	running := e.apply(map[string]*config.AuthProvider{"users": jwtProviderCfg(idpA.URL(), nil)})
	<-waits // A's refresher waits
	srcA := running.providers["users"].(*jwtProvider).src
	runningH := e.chain(running, "running", []string{"users"}, nil, (&seen{}).handler())

	idpB := authtest.NewJWKSServer(t, ecKey1)
	before := goleak.IgnoreCurrent()
	plan, err := e.reg.Prepare(t.Context(), map[string]*config.AuthProvider{"users": jwtProviderCfg(idpB.URL(), nil)})
	if err != nil {
		t.Fatal(err)
	}
	if n := idpB.Requests(); n != 1 {
		t.Fatalf("new URL fetched %d times by Prepare, want 1", n)
	}
	// The plan's Set works before Commit, with the keys Prepare fetched.
	planH := e.chain(plan.Set(), "plan", []string{"users"}, nil, (&seen{}).handler())
	if rec := do(planH, bearer(authtest.Sign(t, ecKey1, e.claims(nil)))); rec.Code != http.StatusOK {
		t.Fatalf("plan's Set before Commit: %d", rec.Code)
	}

	// Nothing of the plan keeps running: no refresher of B, and the
	// first fetch left nothing behind but an idle connection.
	select {
	case <-srcA.stopCh:
		t.Fatal("Prepare stopped the running key set's refresher")
	default:
	}
	e.reg.client.CloseIdleConnections()
	if err := goleak.Find(before); err != nil {
		t.Fatalf("Prepare left goroutines running: %v", err)
	}

	// The IdP of the running config rotates its key: the running
	// refresher picks it up. The clock does not move, so the new kid
	// cannot trigger a refetch of its own: only the refresh brings it.
	idpA.SetKeys(rsaKey2)
	fireRefresh(t, waits, fire)
	if n := idpA.Requests(); n != 2 {
		t.Fatalf("running URL fetched %d times, want 2 (startup, refresh)", n)
	}
	if rec := do(runningH, bearer(authtest.Sign(t, rsaKey2, e.claims(nil)))); rec.Code != http.StatusOK {
		t.Fatalf("token of the rotated key through the running Set: %d", rec.Code)
	}
	if n := idpB.Requests(); n != 1 {
		t.Fatalf("new URL fetched %d times before Commit, want 1", n)
	}

	// Commit: A stops, B refreshes.
	if err := plan.Commit(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-srcA.stopCh:
	default:
		t.Fatal("Commit did not stop the dropped key set's refresher")
	}
	<-waits // B's refresher waits
	waitRefreshers(t, 1)
	idpB.SetKeys(ecKey1, edKey1)
	fireRefresh(t, waits, fire)
	if a, b := idpA.Requests(), idpB.Requests(); a != 2 || b != 2 {
		t.Fatalf("fetches after Commit A=%d B=%d, want 2 and 2", a, b)
	}
	if rec := do(planH, bearer(authtest.Sign(t, edKey1, e.claims(nil)))); rec.Code != http.StatusOK {
		t.Fatalf("token of B's new key after Commit: %d", rec.Code)
	}
	// The running Set keeps the keys it had.
	if rec := do(runningH, bearer(authtest.Sign(t, rsaKey2, e.claims(nil)))); rec.Code != http.StatusOK {
		t.Fatalf("old Set after Commit: %d", rec.Code)
	}
}

// TestDroppedPlanKeepsCaches: a plan that drops a provider and is never
// committed leaves its key set and verified-token cache with the Registry,
// so the next reload of the running config reuses both: no refetch, and
// tokens verified before are still cache hits.
func TestDroppedPlanKeepsCaches(t *testing.T) {
	e := newEnv(t)
	idp := authtest.NewJWKSServer(t, rsaKey1)
	cfg := func() map[string]*config.AuthProvider {
		return map[string]*config.AuthProvider{"users": jwtProviderCfg(idp.URL(), nil)}
	}
	p1 := e.apply(cfg()).providers["users"].(*jwtProvider)
	tok := authtest.Sign(t, rsaKey1, e.claims(nil))
	v1, f := p1.authenticate(t.Context(), tok)
	if f.reason != reasonNone {
		t.Fatal(f.reason)
	}

	if _, err := e.reg.Prepare(t.Context(), map[string]*config.AuthProvider{
		"keys": {Type: "api_key", Header: "X-Key", Keys: []config.APIKey{{ID: "a", SHA256: authtest.KeyHash("k")}}},
	}); err != nil {
		t.Fatal(err)
	}

	p2 := e.apply(cfg()).providers["users"].(*jwtProvider)
	if p2.src != p1.src || p2.cache != p1.cache {
		t.Fatal("a dropped plan cost the running provider its key set or cache")
	}
	if n := idp.Requests(); n != 1 {
		t.Fatalf("fetches %d, want 1", n)
	}
	if v2, _ := p2.authenticate(t.Context(), tok); v2 != v1 {
		t.Fatal("verified token not served from the kept cache")
	}
}

// TestCommitRefusals: a plan commits once, only if no other plan was
// committed since it was prepared (it may reuse key sets that commit
// stopped), and not after Close. A refused Commit changes nothing.
func TestCommitRefusals(t *testing.T) {
	e := newEnv(t)
	idpA := authtest.NewJWKSServer(t, rsaKey1)
	idpB := authtest.NewJWKSServer(t, ecKey1)
	cfgA := map[string]*config.AuthProvider{"a": jwtProviderCfg(idpA.URL(), nil)}
	cfgB := map[string]*config.AuthProvider{"b": jwtProviderCfg(idpB.URL(), nil)}

	stale, err := e.reg.Prepare(t.Context(), cfgA)
	if err != nil {
		t.Fatal(err)
	}
	fresh, err := e.reg.Prepare(t.Context(), cfgB)
	if err != nil {
		t.Fatal(err)
	}
	if err := fresh.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := fresh.Commit(); err == nil || !strings.Contains(err.Error(), "already committed") {
		t.Fatalf("second Commit: %v", err)
	}
	if err := stale.Commit(); err == nil || !strings.Contains(err.Error(), "stale") {
		t.Fatalf("Commit of a stale plan: %v", err)
	}
	waitRefreshers(t, 1) // B's only
	e.reg.mu.Lock()
	_, hasA := e.reg.caches["a\x00"+stale.Set().providers["a"].(*jwtProvider).fingerprint]
	nsrc := len(e.reg.sources)
	e.reg.mu.Unlock()
	if hasA || nsrc != 1 {
		t.Fatalf("a refused Commit changed the registry: cache of a kept %v, %d sources", hasA, nsrc)
	}

	late, err := e.reg.Prepare(t.Context(), cfgA)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.reg.Close(); err != nil {
		t.Fatal(err)
	}
	if err := late.Commit(); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Fatalf("Commit after Close: %v", err)
	}
	waitRefreshers(t, 0)
	if _, err := e.reg.Prepare(t.Context(), cfgA); err == nil {
		t.Fatal("Prepare after Close succeeded")
	}
}

// TestPrepareDoesNotHoldTheRegistry: while a new IdP is slow to answer the
// first fetch, the Registry is not locked and running Sets keep verifying
// tokens (cached, new, and of an unknown kid), which -race checks against
// the preparation.
func TestPrepareDoesNotHoldTheRegistry(t *testing.T) {
	e := newEnv(t)
	idpA := authtest.NewJWKSServer(t, rsaKey1)
	running := e.apply(map[string]*config.AuthProvider{"users": jwtProviderCfg(idpA.URL(), nil)})
	runningH := e.chain(running, "running", []string{"users"}, nil, (&seen{}).handler())

	got, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		once.Do(func() { close(got) })
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		_, _ = w.Write(authtest.JWKS(ecKey1))
	}))
	t.Cleanup(slow.Close)
	var releaseOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(unblock)

	type result struct {
		plan *Plan
		err  error
	}
	done := make(chan result, 1)
	go func() {
		p, err := e.reg.Prepare(context.Background(), map[string]*config.AuthProvider{
			"users":   jwtProviderCfg(idpA.URL(), nil),
			"partner": jwtProviderCfg(slow.URL, func(p *config.AuthProvider) { p.Issuer = "https://partner.example.com" }),
		})
		done <- result{p, err}
	}()
	<-got
	if !e.reg.mu.TryLock() {
		t.Fatal("the registry is locked during the first fetch of a new JWKS URL")
	}
	e.reg.mu.Unlock()

	toks := []string{
		authtest.Sign(t, rsaKey1, e.claims(nil)),
		authtest.Sign(t, rsaKey1, e.claims(map[string]any{"sub": "other"})),
		authtest.Sign(t, rsaKey2, e.claims(nil)),
	}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20 {
				want := http.StatusOK
				if (g+i)%len(toks) == 2 {
					want = http.StatusUnauthorized
				}
				if rec := do(runningH, bearer(toks[(g+i)%len(toks)])); rec.Code != want {
					t.Errorf("running Set during Prepare: %d, want %d", rec.Code, want)
					return
				}
			}
		}()
	}
	wg.Wait()
	unblock()
	res := <-done
	if res.err != nil {
		t.Fatal(res.err)
	}
	if res.plan.Set().providers["users"].(*jwtProvider).src != running.providers["users"].(*jwtProvider).src {
		t.Fatal("unchanged provider got a new key set")
	}
	if err := res.plan.Commit(); err != nil {
		t.Fatal(err)
	}
	h := e.chain(res.plan.Set(), "partner", []string{"partner"}, nil, (&seen{}).handler())
	tok := authtest.Sign(t, ecKey1, e.claims(map[string]any{"iss": "https://partner.example.com"}))
	if rec := do(h, bearer(tok)); rec.Code != http.StatusOK {
		t.Fatalf("partner token after Commit: %d", rec.Code)
	}
}
