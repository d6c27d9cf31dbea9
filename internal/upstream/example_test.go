package upstream_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/portico-gw/portico/internal/config"
	"github.com/portico-gw/portico/internal/upstream"
)

// A Registry lives as long as the process; each config load calls Apply (or
// Prepare and Commit, see Registry.Prepare) and hands the returned pools to
// the proxies, as their Transport.
func Example() {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s", r.URL.Path)
	}))
	defer backend.Close()

	reg := upstream.NewRegistry(upstream.Deps{Registerer: prometheus.NewRegistry()})
	defer reg.Close()
	retries := 1
	pools, err := reg.Apply(map[string]*config.Upstream{
		"posts": {Targets: []config.Target{{URL: backend.URL, Weight: 1}}, Retries: &retries},
	})
	if err != nil {
		fmt.Println(err)
		return
	}

	target, _ := url.Parse(backend.URL)
	proxy := &httputil.ReverseProxy{
		Rewrite:   func(pr *httputil.ProxyRequest) { pr.SetURL(target) },
		Transport: pools["posts"], // picks the target, retries, sheds, breaks
	}
	front := httptest.NewServer(proxy)
	defer front.Close()

	res, err := http.Get(front.URL + "/posts/1")
	if err != nil {
		fmt.Println(err)
		return
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	fmt.Println(res.StatusCode, string(body))
	fmt.Println(reg.Snapshot()[0].Targets[0].Requests)
	// Output:
	// 200 hello from /posts/1
	// 1
}

// A reload in two phases: Prepare builds the new pools without touching the
// running config, the rest of the config is compiled against them, and only
// when all of it succeeded does Commit put them in force. A refused reload
// just drops the plan.
func ExampleRegistry_Prepare() {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer backend.Close()
	reg := upstream.NewRegistry(upstream.Deps{Registerer: prometheus.NewRegistry()})
	defer reg.Close()
	targets := []config.Target{{URL: backend.URL, Weight: 1}}
	if _, err := reg.Apply(map[string]*config.Upstream{"posts": {Targets: targets}}); err != nil {
		fmt.Println(err)
		return
	}

	reload := func(ups map[string]*config.Upstream, compileRest func(map[string]*upstream.Pool) error) error {
		plan, err := reg.Prepare(ups)
		if err != nil {
			return err
		}
		if err := compileRest(plan.Pools()); err != nil {
			return err // the plan is dropped: nothing changed
		}
		return plan.Commit() // then swap in the runtime built on plan.Pools()
	}

	next := map[string]*config.Upstream{"users": {Targets: targets}}
	err := reload(next, func(map[string]*upstream.Pool) error { return fmt.Errorf("routes[0]: bad path") })
	fmt.Println(err, reg.Snapshot()[0].Name)
	err = reload(next, func(map[string]*upstream.Pool) error { return nil })
	fmt.Println(err, reg.Snapshot()[0].Name)
	// Output:
	// routes[0]: bad path posts
	// <nil> users
}
