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

// A Registry lives as long as the process; each config load calls Apply and
// hands the returned pools to the proxies, as their Transport.
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
