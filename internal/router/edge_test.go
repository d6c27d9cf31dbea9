package router

import (
	"net/http"
	"slices"
	"strings"
	"testing"
)

// TestManyCandidatesKeepLowestRanked: a path that many patterns match must
// still reach the lowest-ranked one (a catch-all) when every better
// candidate fails on its method.
func TestManyCandidatesKeepLowestRanked(t *testing.T) {
	entries := []Entry[string]{e("catch-all", "", "/*", "GET")}
	for d := 1; d <= maxCandidates+2; d++ {
		entries = append(entries, e("post", "", strings.Repeat("/a", d)+"/*", "POST"))
	}
	rt := mustRouter(t, entries)
	target := "h" + strings.Repeat("/a", maxCandidates+2)
	if got, params, res := match(t, rt, http.MethodGet, target); got != "catch-all" || res.Status != Found ||
		!slices.Equal(params, ps("*", strings.TrimPrefix(target, "h/"))) {
		t.Fatalf("GET %s: got %q %v %v, want catch-all", target, got, params, res)
	}
	if got, _, res := match(t, rt, http.MethodDelete, target); got != "" || res.Status != MethodNotAllowed || res.Allow != "GET, HEAD, POST" {
		t.Fatalf("DELETE %s: got %q %v allow %q, want 405 with GET, HEAD, POST", target, got, res.Status, res.Allow)
	}
}
