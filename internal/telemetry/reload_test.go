package telemetry

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/portico-gw/portico/internal/reqctx"
)

// swapGateway serves the current "runtime" (a path -> chain table) the way
// the gateway does: a reload compiles a new table, calling Middleware for
// each route, swaps it in atomically, then tells RetainRoutes which routes
// it has. Requests that loaded the old table finish on it.
type swapGateway struct {
	tel     *Telemetry
	current atomic.Pointer[map[string]http.Handler]
	handler func(route string) http.Handler
}

func newSwapGateway(tel *Telemetry, handler func(route string) http.Handler, routes ...string) *swapGateway {
	g := &swapGateway{tel: tel, handler: handler}
	g.reload(routes...)
	return g
}

func (g *swapGateway) reload(routes ...string) {
	rt := map[string]http.Handler{}
	for _, r := range routes {
		rt["/"+r] = g.tel.Middleware(r)(g.handler(r))
	}
	rt[""] = g.tel.Middleware(UnmatchedRoute)(http.NotFoundHandler())
	g.current.Store(&rt)
	g.tel.RetainRoutes(routes)
}

func (g *swapGateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rt := *g.current.Load()
	info := &reqctx.Info{Start: time.Now(), ClientIP: netip.MustParseAddr("192.0.2.7")}
	r = r.WithContext(reqctx.With(r.Context(), info))
	h, ok := rt[r.URL.Path]
	if !ok {
		h = rt[""]
	}
	h.ServeHTTP(w, r)
}

func get(t *testing.T, url string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
}

func statsByRoute(tel *Telemetry) map[string]RouteStats {
	out := map[string]RouteStats{}
	for _, r := range tel.Stats().Routes {
		out[r.Route] = r
	}
	return out
}

// routeSeries lists the metric series that carry route="name".
func routeSeries(t *testing.T, tel *Telemetry, name string) []string {
	t.Helper()
	got, _ := scrape(t, tel)
	var out []string
	for k := range got {
		if strings.Contains(k, `route="`+name+`"`) {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// sloRoutes records which routes the middleware asked the SLO engine for,
// and which it told the engine to forget.
type sloRoutes struct {
	mu        sync.Mutex
	routes    []string
	forgotten []string
}

func (s *sloRoutes) ForgetRoute(route string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.forgotten = append(s.forgotten, route)
}

func (s *sloRoutes) Observer(route string) func(int, time.Duration, time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.routes = append(s.routes, route)
	return func(int, time.Duration, time.Time) {}
}

// TestReloadDropsRemovedRoutes: after a reload that renames "old" to "new"
// and keeps "kept", /admin/stats lists kept, new and unmatched; kept's counts
// carried over; old's series are gone from /metrics; the SLO engine is no
// longer offered old.
func TestReloadDropsRemovedRoutes(t *testing.T) {
	tel := New(Deps{AccessLog: io.Discard})
	defer tel.Close()
	g := newSwapGateway(tel, func(string) http.Handler { return statusHandler() }, "kept", "old")
	srv := httptest.NewServer(g)
	defer srv.Close()
	for _, p := range []string{"/kept", "/kept", "/old", "/old?status=503", "/nowhere"} {
		get(t, srv.URL+p)
	}
	if len(routeSeries(t, tel, "old")) == 0 {
		t.Fatal("no series for old before the reload")
	}

	g.reload("kept", "new")
	get(t, srv.URL+"/kept")
	get(t, srv.URL+"/new")

	st := statsByRoute(tel)
	var names []string
	for n := range st {
		names = append(names, n)
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"kept", "new", "unmatched"}) {
		t.Errorf("stats list %v, want [kept new unmatched]", names)
	}
	if n := st["kept"].Last1m.Requests; n != 3 {
		t.Errorf("kept has %d requests, want 3 (2 before the reload, 1 after)", n)
	}
	if n := st["unmatched"].Last1m.Requests; n != 1 {
		t.Errorf("unmatched has %d requests", n)
	}
	if s := routeSeries(t, tel, "old"); len(s) != 0 {
		t.Errorf("series of the removed route remain: %v", s)
	}
	got, _ := scrape(t, tel)
	if got[`portico_requests_total{code="200",method="GET",route="kept"}`] != 3 ||
		got[`portico_requests_total{code="200",method="GET",route="new"}`] != 1 ||
		got[`portico_request_duration_seconds_count{route="kept"}`] != 3 {
		t.Errorf("kept/new series: %v", routeSeries(t, tel, "kept"))
	}

	var slo sloRoutes
	tel.SetSLO(&slo)
	slices.Sort(slo.routes)
	if !slices.Equal(slo.routes, []string{"kept", "new", "unmatched"}) {
		t.Errorf("SLO hooks requested for %v", slo.routes)
	}

	g.reload("kept")
	if !slices.Equal(slo.forgotten, []string{"new"}) {
		t.Errorf("SLO engine told to forget %v, want [new]", slo.forgotten)
	}

	// A route that comes back starts afresh.
	g.reload("kept", "new", "old")
	if n := statsByRoute(tel)["old"].Last5m.Requests; n != 0 {
		t.Errorf("old came back with %d requests", n)
	}
	get(t, srv.URL+"/old")
	got, _ = scrape(t, tel)
	if v := got[`portico_requests_total{code="200",method="GET",route="old"}`]; v != 1 {
		t.Errorf("old after its return counted %v, want 1", v)
	}
	if v := got[`portico_requests_total{code="503",method="GET",route="old"}`]; v != 0 {
		t.Errorf("old's 503 from before it was removed is back: %v", v)
	}
}

// slowRig is a swap gateway whose first request on "slow" waits until
// finish; parkSlow returns it with that request already in flight.
type slowRig struct {
	g       *swapGateway
	srv     *httptest.Server
	served  sync.WaitGroup // requests the server has finished
	release chan struct{}
	done    chan struct{} // the parked request's client got its answer
}

func parkSlow(t *testing.T, tel *Telemetry, routes ...string) *slowRig {
	t.Helper()
	r := &slowRig{release: make(chan struct{}), done: make(chan struct{})}
	entered := make(chan struct{})
	var first atomic.Bool
	r.g = newSwapGateway(tel, func(route string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			if route == "slow" && first.CompareAndSwap(false, true) {
				close(entered)
				<-r.release
			}
			_, _ = io.WriteString(w, "ok")
		})
	}, routes...)
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		defer r.served.Done()
		r.g.ServeHTTP(w, req)
	}))
	t.Cleanup(r.srv.Close)
	r.served.Add(1)
	go func() {
		defer close(r.done)
		get(t, r.srv.URL+"/slow")
	}()
	<-entered
	return r
}

// finish lets the parked request end and waits until it has.
func (r *slowRig) finish() {
	close(r.release)
	<-r.done
	r.served.Wait()
}

// TestReloadWithRequestInFlight: a request on a removed route finishes
// after the reload without harm; its route's series stay (the in-flight
// gauge says 1) until it ends, then go; /admin/stats never lists it again.
func TestReloadWithRequestInFlight(t *testing.T) {
	tel := New(Deps{AccessLog: io.Discard})
	defer tel.Close()
	r := parkSlow(t, tel, "slow", "fast")

	r.g.reload("fast")
	if _, ok := statsByRoute(tel)["slow"]; ok {
		t.Error("a removed route is listed while its last request is in flight")
	}
	got, _ := scrape(t, tel)
	if v := got[`portico_inflight_requests{route="slow"}`]; v != 1 {
		t.Errorf("in-flight gauge of the removed route = %v, want 1 until it ends", v)
	}
	r.finish()
	if s := routeSeries(t, tel, "slow"); len(s) != 0 {
		t.Errorf("series of the removed route after its last request: %v", s)
	}
	if _, ok := statsByRoute(tel)["slow"]; ok {
		t.Error("the removed route came back to the stats")
	}
}

// TestReloadRacesRequests reloads back and forth between configs with and
// without "flip" while clients hit it: nothing panics or races, no request
// is left in flight, and the series of "flip" exist exactly when the last
// config has it.
func TestReloadRacesRequests(t *testing.T) {
	tel := New(Deps{AccessLog: io.Discard})
	defer tel.Close()
	g := newSwapGateway(tel, func(string) http.Handler { return statusHandler() }, "stay", "flip")
	srv := httptest.NewServer(g)
	defer srv.Close()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &http.Client{}
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				path := "/flip"
				if i%2 == 0 {
					path = "/stay"
				}
				resp, err := c.Get(srv.URL + path)
				if err != nil {
					t.Error(err)
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}()
	}
	for i := 0; i < 200; i++ {
		if i%2 == 0 {
			g.reload("stay")
		} else {
			g.reload("stay", "flip")
		}
		_ = tel.Stats()
	}
	g.reload("stay") // the last config has no flip
	close(stop)
	wg.Wait()
	srv.Close() // every request has finished counting

	if s := routeSeries(t, tel, "flip"); len(s) != 0 {
		t.Errorf("flip's series after a config without it: %v", s)
	}
	got, _ := scrape(t, tel)
	if v := got[`portico_inflight_requests{route="stay"}`]; v != 0 {
		t.Errorf("stay in flight %v", v)
	}
	st := statsByRoute(tel)
	if _, ok := st["flip"]; ok {
		t.Error("flip listed")
	}
	if st["stay"].Inflight != 0 || st["stay"].Last1m.Requests == 0 {
		t.Errorf("stay %+v", st["stay"])
	}
	if v := got[`portico_requests_total{code="200",method="GET",route="stay"}`]; v != float64(st["stay"].Last5m.Requests) {
		t.Errorf("stay counted %v in Prometheus and %d in the stats", v, st["stay"].Last5m.Requests)
	}
}

// TestRouteBackWhileOldRequestInFlight: "slow" is removed while a request
// on it is in flight and comes back before that request ends. The old
// request's end must not take away the series the returned route uses.
func TestRouteBackWhileOldRequestInFlight(t *testing.T) {
	tel := New(Deps{AccessLog: io.Discard})
	defer tel.Close()
	r := parkSlow(t, tel, "slow")
	r.g.reload()       // slow removed, its request still in flight
	r.g.reload("slow") // and back
	r.finish()

	r.served.Add(2)
	get(t, r.srv.URL+"/slow")
	get(t, r.srv.URL+"/slow")
	got, _ := scrape(t, tel)
	// The old request counts too: it ended under the same route name.
	if v := got[`portico_requests_total{code="200",method="GET",route="slow"}`]; v < 2 {
		t.Errorf("slow counted %v after its return, want at least the 2 new requests", v)
	}
	if v := got[`portico_request_duration_seconds_count{route="slow"}`]; v < 2 {
		t.Errorf("slow's histogram count %v", v)
	}
	if n := statsByRoute(tel)["slow"].Last1m.Requests; n != 2 {
		t.Errorf("slow's stats after its return: %d requests, want the 2 new ones", n)
	}
}
