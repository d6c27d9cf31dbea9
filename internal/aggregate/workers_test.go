package aggregate

import (
	"fmt"
	"net/http"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/portico-gw/portico/internal/config"
)

func (p *workerPool) counts() (live, parked int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.live, len(p.parked)
}

// workerEndpoint is an endpoint of n in-memory backends whose fan-out runs
// on pool, or its own when pool is nil; rt, when set, serves every backend.
func workerEndpoint(t *testing.T, pool *workerPool, n int, rt http.RoundTripper) *endpoint {
	t.Helper()
	rts := map[string]http.RoundTripper{}
	var backends []*config.Backend
	for i := range n {
		name := fmt.Sprintf("svc%d", i)
		rts[name] = memRT{body: []byte(`{"ok":true}`)}
		if rt != nil {
			rts[name] = rt
		}
		backends = append(backends, &config.Backend{Upstream: name, Path: "/x", Into: name})
	}
	e := newEndpoint(t, &config.Endpoint{Name: "feed", Backends: backends}, rts).(*endpoint)
	if pool != nil {
		e.workers = pool
	}
	return e
}

// TestWorkersReuseAndExit: the backends that leave the request's goroutine
// run on the endpoint's workers, which park between requests, serve the
// next ones and exit once they idled through a whole sweep period. The
// endpoint is built in the bubble, and its workers stay there.
func TestWorkersReuseAndExit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// The backends answer only when all three run at once: with
		// instant answers a worker could park and take the next backend
		// of the same request, and one worker would serve both.
		e := workerEndpoint(t, nil, 3, &barrierRT{size: 3, all: make(chan struct{})})
		pool := e.workers
		for range 3 {
			rec := do(e, gatewayRequest("GET", "/feed"))
			if rec.Code != http.StatusOK || rec.Body.String() != `{"svc0":{"ok":true},"svc1":{"ok":true},"svc2":{"ok":true}}` {
				t.Fatalf("status %d: %s", rec.Code, rec.Body)
			}
			synctest.Wait() // the workers park
			if live, parked := pool.counts(); live != 2 || parked != 2 {
				t.Fatalf("%d workers, %d parked; want the same 2 for every request", live, parked)
			}
		}
		time.Sleep(workerSweep * 3 / 2)
		synctest.Wait()
		if live, parked := pool.counts(); live != 2 || parked != 2 {
			t.Fatalf("after one sweep: %d workers, %d parked; want 2 still", live, parked)
		}
		time.Sleep(workerSweep)
		synctest.Wait()
		if live, parked := pool.counts(); live != 0 || parked != 0 {
			t.Fatalf("after two sweeps: %d workers, %d parked; want none", live, parked)
		}
	})
}

// barrierRT answers once size calls have arrived, so a request's backends
// only finish when all of them run at the same time.
type barrierRT struct {
	mu   sync.Mutex
	size int
	n    int
	all  chan struct{}
}

func (b *barrierRT) RoundTrip(r *http.Request) (*http.Response, error) {
	b.mu.Lock()
	all := b.all
	if b.n++; b.n == b.size {
		close(all)
		b.n, b.all = 0, make(chan struct{})
	}
	b.mu.Unlock()
	<-all
	return memRT{body: []byte(`{"ok":true}`)}.RoundTrip(r)
}

// TestWorkersBounded: past the bound a backend gets a goroutine of its
// own, so the fan-out stays parallel.
func TestWorkersBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		pool := &workerPool{max: 1, sweepEvery: workerSweep}
		e := workerEndpoint(t, pool, 5, &barrierRT{size: 5, all: make(chan struct{})})
		for range 2 {
			if rec := do(e, gatewayRequest("GET", "/feed")); rec.Code != http.StatusOK {
				t.Fatalf("status %d: %s", rec.Code, rec.Body)
			}
			synctest.Wait()
			if live, parked := pool.counts(); live != 1 || parked != 1 {
				t.Fatalf("%d workers, %d parked; want the bound, 1", live, parked)
			}
		}
		time.Sleep(3 * workerSweep)
		synctest.Wait()
		if live, _ := pool.counts(); live != 0 {
			t.Fatalf("%d workers left after idling", live)
		}
	})
}
