package admin

import (
	"encoding/json"
	"github.com/portico-gw/portico/internal/reqctx"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

// TestProblemsCarryRequestID: every admin answer has an X-Request-Id (the
// client's when valid, else generated), and every problem the admin API
// answers carries it as request_id, as DESIGN.md requires of every error
// body the gateway produces.
func TestProblemsCarryRequestID(t *testing.T) {
	var ready atomic.Bool
	ready.Store(true)
	var reloadErr atomic.Pointer[error]
	srv := httptest.NewServer(New(testDeps(&ready, &reloadErr)))
	defer srv.Close()
	long := strings.Repeat("a", 129)
	for _, c := range []struct {
		method, path, auth, inID string
		want                     int
		keep                     bool // the inbound id is returned
	}{
		{"GET", "/nope", "", "", 404, false},
		{"POST", "/admin/stats", "Bearer s3cret", "", 405, false},
		{"GET", "/admin/routes", "", "", 401, false},
		{"GET", "/admin/routes", "", "abc.DEF_1-2", 401, true},
		{"GET", "/nope", "", "bad id!", 404, false},
		{"GET", "/nope", "", long, 404, false},
		{"GET", "/healthz", "", "probe-7", 200, true},
	} {
		t.Run(c.method+" "+c.path+" "+c.inID, func(t *testing.T) {
			req, _ := http.NewRequest(c.method, srv.URL+c.path, nil)
			if c.auth != "" {
				req.Header.Set("Authorization", c.auth)
			}
			if c.inID != "" {
				req.Header.Set("X-Request-Id", c.inID)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != c.want {
				t.Fatalf("status %d, want %d", resp.StatusCode, c.want)
			}
			id := resp.Header.Get("X-Request-Id")
			if id == "" || !reqctx.ValidRequestID(id) {
				t.Fatalf("X-Request-Id %q", id)
			}
			if c.keep != (id == c.inID) {
				t.Errorf("X-Request-Id %q for inbound %q (keep %v)", id, c.inID, c.keep)
			}
			if c.want < 400 {
				return
			}
			var p struct {
				RequestID string `json:"request_id"`
			}
			if err := json.NewDecoder(resp.Body).Decode(&p); err != nil {
				t.Fatal(err)
			}
			if p.RequestID != id {
				t.Errorf("problem request_id %q, X-Request-Id %q", p.RequestID, id)
			}
		})
	}
}
