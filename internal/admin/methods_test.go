package admin

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
)

// TestWrongMethodAndUnknownPathAreProblems checks that a request the admin
// API has no handler for is answered like every other admin error, as RFC
// 9457 problem+json: 405 with Allow for a known path and another method, 404
// for an unknown path whatever the method.
func TestWrongMethodAndUnknownPathAreProblems(t *testing.T) {
	var ready atomic.Bool
	ready.Store(true)
	var reloadErr atomic.Pointer[error]
	srv := httptest.NewServer(New(testDeps(&ready, &reloadErr)))
	defer srv.Close()
	for _, c := range []struct {
		method, path string
		want         int
		allow        string
	}{
		{"POST", "/admin/stats", 405, "GET, HEAD"},
		{"DELETE", "/admin/routes", 405, "GET, HEAD"},
		{"PUT", "/healthz", 405, "GET, HEAD"},
		{"POST", "/metrics", 405, "GET, HEAD"},
		{"GET", "/admin/reload", 405, "POST"},
		{"POST", "/nope", 404, ""},
		{"DELETE", "/admin/nope", 404, ""},
	} {
		t.Run(c.method+" "+c.path, func(t *testing.T) {
			req, _ := http.NewRequest(c.method, srv.URL+c.path, nil)
			req.Header.Set("Authorization", "Bearer s3cret")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var p struct {
				Status int    `json:"status"`
				Title  string `json:"title"`
			}
			if err := json.NewDecoder(resp.Body).Decode(&p); err != nil {
				t.Fatalf("body is not JSON: %v", err)
			}
			if resp.StatusCode != c.want || p.Status != c.want {
				t.Errorf("status %d (problem %d), want %d", resp.StatusCode, p.Status, c.want)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/problem+json" {
				t.Errorf("content type %q", ct)
			}
			if got := resp.Header.Get("Allow"); got != c.allow {
				t.Errorf("Allow %q, want %q", got, c.allow)
			}
		})
	}
}
