package ratelimit_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"time"

	"github.com/portico-gw/portico/internal/config"
	"github.com/portico-gw/portico/internal/ratelimit"
	"github.com/portico-gw/portico/internal/reqctx"
)

// A route limited to 2 requests a minute per client IP: the third gets a
// 429 with the IETF fields and Retry-After.
func ExampleService_Middleware() {
	fixed := time.Date(2026, 11, 28, 12, 0, 30, 0, time.UTC)
	svc, err := ratelimit.NewService(config.RateLimits{Policies: map[string]*config.Policy{
		"per-ip": {Algorithm: "fixed_window", Limit: 2, Window: config.Duration(time.Minute), Key: "ip"},
	}}, ratelimit.Deps{Now: func() time.Time { return fixed }})
	if err != nil {
		panic(err)
	}
	mw, err := svc.Middleware("posts", []string{"per-ip"}, ratelimit.PreAuth)
	if err != nil {
		panic(err)
	}
	h := mw(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "ok") }))
	for range 3 {
		r := httptest.NewRequest(http.MethodGet, "/posts/1", nil)
		r = r.WithContext(reqctx.With(r.Context(), &reqctx.Info{ClientIP: netip.MustParseAddr("192.0.2.7")}))
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		fmt.Println(w.Code, w.Header().Get("RateLimit-Policy"), w.Header().Get("RateLimit"))
		if ra := w.Header().Get("Retry-After"); ra != "" {
			fmt.Println("Retry-After:", ra)
		}
	}
	// Output:
	// 200 "per-ip";q=2;w=60 "per-ip";r=1;t=30
	// 200 "per-ip";q=2;w=60 "per-ip";r=0;t=30
	// 429 "per-ip";q=2;w=60 "per-ip";r=0;t=30
	// Retry-After: 30
}
