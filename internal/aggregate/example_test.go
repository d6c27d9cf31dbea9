package aggregate_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"

	"github.com/portico-gw/portico/internal/aggregate"
	"github.com/portico-gw/portico/internal/config"
	"github.com/portico-gw/portico/internal/identity"
	"github.com/portico-gw/portico/internal/reqctx"
)

// toServer stands in for the gateway's upstream pool: it sends every
// request to one test server.
type toServer struct{ addr string }

func (s toServer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.URL.Host, r.Host = s.addr, s.addr
	return http.DefaultTransport.RoundTrip(r)
}

func ExampleNewEndpoint() {
	users := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"id":"alice","name":"Alice","bio":"...","settings":{"theme":"dark"}}`)
	}))
	defer users.Close()
	posts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"items":[{"id":1180591620717411303,"text":"hello","likes":3}],"next_cursor":"c1"}`)
	}))
	defer posts.Close()
	defer http.DefaultTransport.(*http.Transport).CloseIdleConnections()

	bff := &config.BFF{Name: "mobile"}
	ep := &config.Endpoint{Name: "feed", Path: "/feed", Backends: []*config.Backend{
		{Upstream: "users", Path: "/users/{claims.sub}", Into: "user", Fields: []string{"name"}},
		{Upstream: "posts", Path: "/feed/{claims.sub}?limit=20", Into: "posts",
			Fields: []string{"items[].id", "items[].text"}, Rename: map[string]string{"items[].text": "body"}, Pick: "items"},
	}}
	h, err := aggregate.NewEndpoint(bff, ep, aggregate.Deps{Upstreams: map[string]http.RoundTripper{
		"users": toServer{users.Listener.Addr().String()},
		"posts": toServer{posts.Listener.Addr().String()},
	}})
	if err != nil {
		fmt.Println(err)
		return
	}
	// The gateway's auth stage puts the caller's identity here.
	r := httptest.NewRequest("GET", "/mobile/feed", nil)
	r = r.WithContext(reqctx.With(r.Context(), &reqctx.Info{Identity: &identity.Identity{Subject: "alice"}}))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, r)
	fmt.Println(rec.Code, rec.Body.String())
	// Output: 200 {"user":{"name":"Alice"},"posts":[{"id":1180591620717411303,"body":"hello"}]}
}
