package router_test

import (
	"fmt"
	"net/http/httptest"

	"github.com/portico-gw/portico/internal/reqctx"
	"github.com/portico-gw/portico/internal/router"
)

// The gateway's per-request steps: clean the path, store it in the URL,
// match with a reused parameter slice.
func Example() {
	rt, err := router.New([]router.Entry[string]{
		{Spec: router.Spec{Path: "/api/posts/{id}", Methods: []string{"GET"}}, Value: "posts"},
		{Spec: router.Spec{Host: "*.example.com", Path: "/static/*"}, Value: "static"},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	params := make([]reqctx.Param, 0, 4)
	for _, target := range []string{
		"http://gw.test/api//posts/./42",
		"http://cdn.example.com/static/css/app%2Fv2.css",
		"http://gw.test/api/posts/a%2Fb",
	} {
		r := httptest.NewRequest("GET", target, nil)
		decoded, escaped, err := router.CleanPath(r.URL.EscapedPath())
		if err != nil {
			fmt.Println(err)
			continue
		}
		router.SetPath(r.URL, decoded, escaped)
		var v string
		var res router.Result
		v, params, res = rt.Match(r, escaped, params[:0])
		fmt.Println(res.Status, v, params)
	}
	r := httptest.NewRequest("DELETE", "http://gw.test/api/posts/42", nil)
	_, _, res := rt.Match(r, r.URL.EscapedPath(), nil)
	fmt.Println(res.Status, "Allow:", res.Allow)
	// Output:
	// found posts [{id 42}]
	// found static [{* css/app%2Fv2.css}]
	// found posts [{id a/b}]
	// method not allowed Allow: GET, HEAD
}
