package router

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/portico-gw/portico/internal/reqctx"
)

func e(name, host, path string, methods ...string) Entry[string] {
	return Entry[string]{Spec: Spec{Host: host, Path: path, Methods: methods}, Value: name}
}

// ps builds params from key, value pairs.
func ps(kv ...string) []reqctx.Param {
	var out []reqctx.Param
	for i := 0; i+1 < len(kv); i += 2 {
		out = append(out, reqctx.Param{Key: kv[i], Value: kv[i+1]})
	}
	return out
}

func mustRouter(t testing.TB, entries []Entry[string]) *Router[string] {
	t.Helper()
	rt, err := New(entries)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return rt
}

// match builds a request for target ("host/path?query") and matches it with
// the cleaned path, as the gateway does.
func match(t *testing.T, rt *Router[string], method, target string, hdr ...string) (string, []reqctx.Param, Result) {
	t.Helper()
	host, rest, _ := strings.Cut(target, "/")
	r := httptest.NewRequest(method, "http://"+host+"/"+rest, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Add(hdr[i], hdr[i+1])
	}
	_, esc, err := CleanPath(r.URL.EscapedPath())
	if err != nil {
		t.Fatalf("CleanPath(%q): %v", r.URL.EscapedPath(), err)
	}
	return rt.Match(r, esc, nil)
}

func TestPrecedence(t *testing.T) {
	rt := mustRouter(t, []Entry[string]{
		e("any-prefix", "", "/*"),
		e("api-prefix", "", "/api/*"),
		e("api-v1-prefix", "", "/api/v1/*"),
		e("user-param", "", "/api/v1/users/{id}"),
		e("user-exact", "", "/api/v1/users/me"),
		e("two-params", "", "/api/v1/{kind}/{id}"),
		e("lit-late", "", "/api/{a}/x/y"),
		e("lit-more", "", "/api/{a}/{b}/y"),
		e("host-exact", "api.example.com", "/api/*"),
		e("host-wild", "*.example.com", "/api/*"),
		e("host-wild-deep", "*.eu.example.com", "/api/*"),
		e("host-only-exact", "only.example.com", "/only"),
		e("root", "", "/"),
		e("slash", "", "/dir/"),
		e("noslash", "", "/dir"),
	})
	tests := []struct {
		target, want string
		params       []reqctx.Param
	}{
		{"x.test/api/v1/users/me", "user-exact", nil},
		{"x.test/api/v1/users/42", "user-param", ps("id", "42")},
		{"x.test/api/v1/posts/7", "two-params", ps("kind", "posts", "id", "7")},
		{"x.test/api/v1/users/42/more", "api-v1-prefix", ps("*", "users/42/more")},
		{"x.test/api/v2/x", "api-prefix", ps("*", "v2/x")},
		{"x.test/api", "api-prefix", ps("*", "")},
		{"x.test/api/", "api-prefix", ps("*", "")},
		{"x.test/apix", "any-prefix", ps("*", "apix")},
		{"x.test/api/q/x/y", "lit-late", ps("a", "q")},
		{"x.test/api/q/z/y", "lit-more", ps("a", "q", "b", "z")},
		{"api.example.com/api/x", "host-exact", ps("*", "x")},
		{"API.Example.COM:8443/api/x", "host-exact", ps("*", "x")},
		{"api.example.com./api/x", "host-exact", ps("*", "x")},
		{"web.example.com/api/x", "host-wild", ps("*", "x")},
		{"a.b.c.example.com/api/x", "host-wild", ps("*", "x")},
		{"a.eu.example.com/api/x", "host-wild-deep", ps("*", "x")},
		{"eu.example.com/api/x", "host-wild", ps("*", "x")},
		{"example.com/api/x", "api-prefix", ps("*", "x")}, // never the apex
		{"api.example.com/other", "any-prefix", ps("*", "other")},
		{"api.example.com/api/v1/users/me", "host-exact", ps("*", "v1/users/me")},
		{"only.example.com/only", "host-only-exact", nil},
		{"x.test/", "root", nil},
		{"x.test/dir/", "slash", nil},
		{"x.test/dir", "noslash", nil},
		{"x.test//api/./v1/users/../users/me", "user-exact", nil},
		{"x.test/api/v1/users/a%2Fb", "user-param", ps("id", "a/b")},
		{"x.test/api/v1/us%65rs/me", "user-exact", nil},
		{"x.test/api/a%2Fb/c", "api-prefix", ps("*", "a%2Fb/c")},
		{"x.test/api/v1/users/100%25", "user-param", ps("id", "100%")},
	}
	for _, tc := range tests {
		t.Run(tc.target, func(t *testing.T) {
			got, params, res := match(t, rt, http.MethodGet, tc.target)
			if res.Status != Found || got != tc.want {
				t.Fatalf("got %q (%v), want %q", got, res.Status, tc.want)
			}
			if !slices.Equal(params, tc.params) {
				t.Fatalf("params %v, want %v", params, tc.params)
			}
		})
	}
}

func TestEncodedSlashIsOneSegment(t *testing.T) {
	rt := mustRouter(t, []Entry[string]{
		e("two", "", "/api/{x}/{y}"),
		e("lit", "", "/api/a/b"),
		e("one", "", "/api/{x}"),
	})
	got, params, res := match(t, rt, http.MethodGet, "h/api/a%2Fb")
	if res.Status != Found || got != "one" || !slices.Equal(params, ps("x", "a/b")) {
		t.Fatalf("got %q %v %v, want one [x=a/b]", got, params, res)
	}
	got, _, _ = match(t, rt, http.MethodGet, "h/api/a/b")
	if got != "lit" {
		t.Fatalf("got %q, want lit", got)
	}
}

func TestMethods(t *testing.T) {
	rt := mustRouter(t, []Entry[string]{
		e("get", "", "/items/{id}", "GET"),
		e("put", "", "/items/{id}", "put", "PATCH"),
		e("purge", "", "/items/{id}", "PURGE"),
		e("any", "", "/free"),
		e("get-only", "", "/mixed", "GET"),
		e("mixed-any", "", "/mixed"),
		e("trace", "", "/trace/*", "TRACE", "connect"),
		e("trace-any", "", "/trace/*"),
		e("post-prefix", "", "/items/*", "POST"),
		e("other-get", "", "/x/{id}", "GET"),
		e("other-del", "", "/x/*", "DELETE"),
	})
	tests := []struct {
		method, target, want string
		status               Status
		allow                string
		hdr                  []string
	}{
		{"GET", "h/items/1", "get", Found, "", nil},
		{"HEAD", "h/items/1", "get", Found, "", nil},
		{"PUT", "h/items/1", "put", Found, "", nil},
		{"PATCH", "h/items/1", "put", Found, "", nil},
		{"PURGE", "h/items/1", "purge", Found, "", nil},
		{"POST", "h/items/1", "post-prefix", Found, "", nil},
		{"DELETE", "h/items/1", "", MethodNotAllowed, "GET, HEAD, POST, PUT, PATCH, PURGE", nil},
		{"DELETE", "h/items/1/2", "", MethodNotAllowed, "POST", nil},
		{"GET", "h/nothing", "", NotFound, "", nil},
		{"BREW", "h/free", "any", Found, "", nil},
		{"DELETE", "h/free", "any", Found, "", nil},
		// CONNECT and TRACE only where a route lists them (CONNECT with a
		// path: the gateway's tests send it raw).
		{"TRACE", "h/free", "", MethodNotAllowed, "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS", nil},
		{"TRACE", "h/trace/x", "trace", Found, "", nil},
		{"GET", "h/trace/x", "trace-any", Found, "", nil},
		// A route listing no methods does not take HEAD from a GET route
		// at the same path that precedes it.
		{"HEAD", "h/mixed", "get-only", Found, "", nil},
		{"POST", "h/mixed", "mixed-any", Found, "", nil},
		{"POST", "h/x/1", "", MethodNotAllowed, "GET, HEAD, DELETE", nil},
		// A preflight is matched under the method it asks for.
		{"OPTIONS", "h/items/1", "put", Found, "", []string{"Origin", "https://a.test", "Access-Control-Request-Method", "PUT"}},
		{"OPTIONS", "h/items/1", "", MethodNotAllowed, "GET, HEAD, POST, PUT, PATCH, PURGE", []string{"Origin", "https://a.test", "Access-Control-Request-Method", "TRACE"}},
		{"OPTIONS", "h/items/1", "", MethodNotAllowed, "GET, HEAD, POST, PUT, PATCH, PURGE", nil},
	}
	for _, tc := range tests {
		t.Run(tc.method+" "+tc.target, func(t *testing.T) {
			got, _, res := match(t, rt, tc.method, tc.target, tc.hdr...)
			if got != tc.want || res.Status != tc.status || res.Allow != tc.allow {
				t.Fatalf("got %q %v allow %q; want %q %v allow %q", got, res.Status, res.Allow, tc.want, tc.status, tc.allow)
			}
		})
	}
}

func TestHeaderAndQueryShadowing(t *testing.T) {
	rt := mustRouter(t, []Entry[string]{
		{Spec: Spec{Path: "/api/{id}", Headers: map[string]string{"x-version": "2"}}, Value: "v2"},
		{Spec: Spec{Path: "/api/{id}", Query: map[string]string{"beta": "1", "q": "a b"}}, Value: "beta"},
		{Spec: Spec{Path: "/api/{id}"}, Value: "general"},
		{Spec: Spec{Path: "/only", Headers: map[string]string{"X-Version": "2"}}, Value: "only-v2"},
	})
	tests := []struct {
		target, want string
		hdr          []string
	}{
		{"h/api/1", "general", nil},
		{"h/api/1", "v2", []string{"X-Version", "2"}},
		{"h/api/1", "v2", []string{"X-Version", "3", "X-Version", "2"}},
		{"h/api/1", "general", []string{"X-Version", "3"}},
		{"h/api/1?beta=1&q=a+b", "beta", nil},
		{"h/api/1?q=a%20b&beta=1", "beta", nil},
		{"h/api/1?beta=1", "general", nil},
		{"h/api/1?beta=2&q=a+b", "general", nil},
		{"h/api/1?beta=1&q=a+b", "v2", []string{"X-Version", "2"}},
		{"h/only", "", nil},
	}
	for _, tc := range tests {
		t.Run(tc.target+fmt.Sprint(tc.hdr), func(t *testing.T) {
			got, _, res := match(t, rt, http.MethodGet, tc.target, tc.hdr...)
			if got != tc.want {
				t.Fatalf("got %q (%v), want %q", got, res.Status, tc.want)
			}
			if tc.want == "" && res.Status != NotFound {
				t.Fatalf("status %v, want not found", res.Status)
			}
		})
	}
}

func TestHostTierFallsThrough(t *testing.T) {
	rt := mustRouter(t, []Entry[string]{
		e("exact-get", "a.example.com", "/x", "GET"),
		e("wild-post", "*.example.com", "/x", "POST"),
		e("any-put", "", "/x", "PUT"),
	})
	for _, tc := range []struct{ method, want string }{{"GET", "exact-get"}, {"POST", "wild-post"}, {"PUT", "any-put"}} {
		got, _, res := match(t, rt, tc.method, "a.example.com/x")
		if got != tc.want {
			t.Fatalf("%s: got %q (%v), want %q", tc.method, got, res.Status, tc.want)
		}
	}
	_, _, res := match(t, rt, "DELETE", "a.example.com/x")
	if res.Status != MethodNotAllowed || res.Allow != "GET, HEAD, POST, PUT" {
		t.Fatalf("DELETE: %v %q", res.Status, res.Allow)
	}
	_, _, res = match(t, rt, "DELETE", "other.test/x")
	if res.Status != MethodNotAllowed || res.Allow != "PUT" {
		t.Fatalf("DELETE other host: %v %q", res.Status, res.Allow)
	}
}

func TestEntryOrderBreaksTies(t *testing.T) {
	rt := mustRouter(t, []Entry[string]{e("first", "", "/a/{x}"), e("second", "", "/a/{y}")})
	got, params, _ := match(t, rt, "GET", "h/a/1")
	if got != "first" || !slices.Equal(params, ps("x", "1")) {
		t.Fatalf("got %q %v", got, params)
	}
}

func TestNewRejects(t *testing.T) {
	for _, s := range []Spec{
		{Path: ""},
		{Path: "api"},
		{Path: "/a//b"},
		{Path: "/a/./b"},
		{Path: "/a/../b"},
		{Path: "/a*"},
		{Path: "/*/a"},
		{Path: "/a/*/*"},
		{Path: "/{}"},
		{Path: "/{a"},
		{Path: "/x{a}"},
		{Path: "/{a}/{a}"},
		{Path: "/{a/b}"},
		{Path: "/" + strings.Repeat("a/", maxSegments+1)},
		{Path: "/", Host: "*"},
		{Path: "/", Host: "a.*.com"},
		{Path: "/", Host: "example.com:8080"},
		{Path: "/", Host: "a b"},
		{Path: "/", Methods: []string{"GE T"}},
		{Path: "/", Headers: map[string]string{"bad name": "x"}},
		{Path: "/", Query: map[string]string{"": "x"}},
	} {
		t.Run(s.Host+s.Path, func(t *testing.T) {
			if _, err := New([]Entry[int]{{Spec: s}}); err == nil {
				t.Fatalf("New(%+v) succeeded, want an error", s)
			}
		})
	}
}

func TestDeepPathsStillMatchPrefixes(t *testing.T) {
	rt := mustRouter(t, []Entry[string]{e("p", "", "/a/*"), e("x", "", "/a/{b}/c")})
	deep := "h/a/" + strings.Repeat("s/", 100) + "end"
	got, params, _ := match(t, rt, "GET", deep)
	if got != "p" || params[0].Value != strings.Repeat("s/", 100)+"end" {
		t.Fatalf("got %q %v", got, params)
	}
}

func TestMatchAppendsToCallerSlice(t *testing.T) {
	rt := mustRouter(t, []Entry[string]{e("p", "", "/u/{id}")})
	buf := make([]reqctx.Param, 0, 4)
	buf = append(buf, reqctx.Param{Key: "pre", Value: "1"})
	r := httptest.NewRequest("GET", "/u/9", nil)
	allocs := testing.AllocsPerRun(100, func() {
		_, _, _ = rt.Match(r, "/u/9", buf[:1])
	})
	_, out, _ := rt.Match(r, "/u/9", buf[:1])
	if !slices.Equal(out, ps("pre", "1", "id", "9")) {
		t.Fatalf("out %v", out)
	}
	if allocs != 0 {
		t.Fatalf("Match allocates %v times per call", allocs)
	}
}

// TestDocExamples keeps the example table of docs/routing.md true.
func TestDocExamples(t *testing.T) {
	rt := mustRouter(t, []Entry[string]{
		e("users-me", "", "/api/v1/users/me"),
		{Spec: Spec{Path: "/api/v1/users/{id}", Headers: map[string]string{"X-Version": "2"}}, Value: "user-v2"},
		e("user", "", "/api/v1/users/{id}", "GET", "PUT"),
		e("any-v1", "", "/api/v1/{kind}/{id}"),
		e("v1-rest", "", "/api/v1/*"),
		e("api-rest", "", "/api/*"),
		e("tenant-api", "*.example.com", "/api/*"),
		e("admin-api", "admin.example.com", "/api/*"),
	})
	tests := []struct {
		method, target string
		hdr            []string
		want           string
		params         []reqctx.Param
	}{
		{"GET", "gw.test/api/v1/users/me", nil, "users-me", nil},
		{"GET", "gw.test/api/v1/users/42", nil, "user", ps("id", "42")},
		{"GET", "gw.test/api/v1/users/42", []string{"X-Version", "2"}, "user-v2", ps("id", "42")},
		{"DELETE", "gw.test/api/v1/users/42", nil, "any-v1", ps("kind", "users", "id", "42")},
		{"POST", "gw.test/api/v1/users/me", nil, "users-me", nil},
		{"GET", "gw.test/api/v1/posts/7", nil, "any-v1", ps("kind", "posts", "id", "7")},
		{"GET", "gw.test/api/v1/users/42/avatar", nil, "v1-rest", ps("*", "users/42/avatar")},
		{"GET", "gw.test/api", nil, "api-rest", ps("*", "")},
		{"GET", "gw.test/api/", nil, "api-rest", ps("*", "")},
		{"GET", "gw.test/apix", nil, "", nil},
		{"GET", "t1.example.com/api/x", nil, "tenant-api", ps("*", "x")},
		{"GET", "a.b.example.com/api/x", nil, "tenant-api", ps("*", "x")},
		{"GET", "example.com/api/x", nil, "api-rest", ps("*", "x")},
		{"GET", "ADMIN.example.com:8443/api/x", nil, "admin-api", ps("*", "x")},
		{"GET", "gw.test/api/v1/users/a%2Fb", nil, "user", ps("id", "a/b")},
	}
	for _, tc := range tests {
		t.Run(tc.method+" "+tc.target+fmt.Sprint(tc.hdr), func(t *testing.T) {
			got, params, res := match(t, rt, tc.method, tc.target, tc.hdr...)
			if got != tc.want || !slices.Equal(params, tc.params) {
				t.Fatalf("got %q %v (%v), want %q %v", got, params, res.Status, tc.want, tc.params)
			}
		})
	}
}

func TestConcurrentMatch(t *testing.T) {
	rt, err := New(thousandRoutes())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error)
	for g := 0; g < 4; g++ {
		go func() {
			var buf []reqctx.Param
			for i := 0; i < 500; i++ {
				path := fmt.Sprintf("/svc%d/v1/items/%d", i%100, i)
				r := httptest.NewRequest("GET", path, nil)
				v, params, res := rt.Match(r, path, buf[:0])
				if res.Status != Found || len(params) != 1 || params[0].Value != fmt.Sprint(i) || v%8 != 1 {
					done <- fmt.Errorf("%s: %v %v %v", path, v, params, res)
					return
				}
				buf = params
			}
			done <- nil
		}()
	}
	for g := 0; g < 4; g++ {
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
}

func TestMatchAllocationsWithEscapes(t *testing.T) {
	rt := mustRouter(t, []Entry[string]{e("p", "", "/files/{name}/raw")})
	r := httptest.NewRequest("GET", "/", nil)
	buf := make([]reqctx.Param, 0, 2)
	// One canonical copy of the path and one decoded parameter value.
	allocs := testing.AllocsPerRun(100, func() { _, _, _ = rt.Match(r, "/files/a%2Fb/raw", buf[:0]) })
	if allocs > 2 {
		t.Fatalf("Match allocates %v times for an escaped path, want at most 2", allocs)
	}
}

func TestExplicitHeadRouteWins(t *testing.T) {
	rt := mustRouter(t, []Entry[string]{
		e("get", "", "/x", "GET"),
		e("head", "", "/x", "HEAD"),
		e("get-only", "", "/y", "GET"),
	})
	for _, tc := range []struct{ method, target, want string }{
		{"GET", "h/x", "get"}, {"HEAD", "h/x", "head"}, {"HEAD", "h/y", "get-only"},
	} {
		if got, _, res := match(t, rt, tc.method, tc.target); got != tc.want {
			t.Errorf("%s %s: got %q (%v), want %q", tc.method, tc.target, got, res.Status, tc.want)
		}
	}
}
