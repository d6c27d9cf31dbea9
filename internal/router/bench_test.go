package router

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/portico-gw/portico/internal/reqctx"
)

// thousandRoutes is a mix of exact paths, parameter patterns and prefixes,
// spread over exact hosts, wildcard hosts and no host.
func thousandRoutes() []Entry[int] {
	var es []Entry[int]
	add := func(host, path string, methods ...string) {
		es = append(es, Entry[int]{Spec: Spec{Host: host, Path: path, Methods: methods}, Value: len(es)})
	}
	for i := 0; len(es) < 1000; i++ {
		svc := fmt.Sprintf("svc%d", i)
		add("", "/"+svc+"/v1/items", "GET", "POST")
		add("", "/"+svc+"/v1/items/{id}", "GET", "PUT", "DELETE")
		add("", "/"+svc+"/v1/items/{id}/comments/{cid}", "GET")
		add("", "/"+svc+"/v1/*")
		add(svc+".example.com", "/api/{id}")
		add("*."+svc+".example.org", "/static/*", "GET")
		add("", "/"+svc+"/health")
		add("", "/"+svc+"/v2/{a}/{b}/{c}")
	}
	return es[:1000]
}

func BenchmarkMatch(b *testing.B) {
	rt, err := New(thousandRoutes())
	if err != nil {
		b.Fatal(err)
	}
	cases := []struct{ method, host, path string }{
		{"GET", "gw.test", "/svc57/v1/items"},
		{"GET", "gw.test", "/svc101/v1/items/42"},
		{"GET", "gw.test", "/svc7/v1/items/42/comments/9"},
		{"GET", "gw.test", "/svc99/v1/other/deep/path"},
		{"GET", "svc12.example.com", "/api/77"},
		{"GET", "a.b.svc40.example.org", "/static/app.js"},
		{"GET", "gw.test", "/svc3/v2/x/y/z"},
		{"GET", "gw.test", "/nothing/here"},
	}
	reqs := make([]*http.Request, len(cases))
	for i, c := range cases {
		reqs[i] = httptest.NewRequest(c.method, "http://"+c.host+c.path, nil)
		if _, _, res := rt.Match(reqs[i], c.path, nil); (res.Status == Found) == (i == len(cases)-1) {
			b.Fatalf("case %d (%s%s): %v", i, c.host, c.path, res.Status)
		}
	}
	params := make([]reqctx.Param, 0, 8)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		k := i % len(cases)
		_, params, _ = rt.Match(reqs[k], cases[k].path, params[:0])
	}
}

func BenchmarkCleanPath(b *testing.B) {
	for _, p := range []string{"/api/v1/users/42/posts", "/api//v1/./users/../users/42", "/api/a%2Fb/%2e%2e/c"} {
		b.Run(strings.ReplaceAll(p, "/", "_"), func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				_, _, _ = CleanPath(p)
			}
		})
	}
}

func FuzzRouterPattern(f *testing.F) {
	f.Add("/api/{id}", "*.example.com", "GET", "/api/42", "a.example.com")
	f.Add("/api/*", "", "", "/api", "")
	f.Add("/{a}/{b}/*", "x", "PUT", "/1/2/3/4", "X:80")
	f.Add("/%/{x}", "", "", "/%25/a%2Fb", "")
	f.Add("/a/", "", "", "/a%/", "[::1]:8")
	f.Fuzz(func(t *testing.T, pattern, host, method, path, reqHost string) {
		rt, err := New([]Entry[int]{
			{Spec: Spec{Host: host, Path: pattern, Methods: []string{method}}, Value: 1},
			{Spec: Spec{Path: "/*"}, Value: 2},
		})
		if err != nil {
			return
		}
		r := httptest.NewRequest("GET", "/", nil)
		r.Host = reqHost
		r.Method = strings.ToUpper(method)
		// A literal pattern matches itself, as a client would escape it.
		if host == "" && !strings.ContainsAny(pattern, "{}*%") {
			if _, esc, err := CleanPath(pattern); err == nil {
				if v, _, res := rt.Match(r, esc, nil); res.Status != Found || v != 1 {
					t.Fatalf("pattern %q does not match its own path %q: %v %v", pattern, esc, v, res)
				}
			}
		}
		// Match must cope with any string, cleaned or not.
		_, _, _ = rt.Match(r, path, nil)
		if _, esc, err := CleanPath(path); err == nil {
			v, _, res := rt.Match(r, esc, nil)
			if res.Status != Found || (v != 1 && v != 2) {
				t.Fatalf("cleaned path %q did not reach the catch-all: %v %v", esc, v, res)
			}
		}
	})
}
