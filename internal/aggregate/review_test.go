package aggregate

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/portico-gw/portico/internal/config"
)

// TestTemplateLiteralsKeepValuesEscaped: a path literal with a byte that
// is never sent raw in a request target (non-ASCII, '|', a space) must
// not undo the escaping of the values beside it. Before, such a byte made
// the rendered path an invalid escaped form, the URL fell back to
// escaping its decoded path, and a value's "%2F" went out as "/": a
// client value "../admin" walked the backend's path.
func TestTemplateLiteralsKeepValuesEscaped(t *testing.T) {
	bothModes(t, func(t *testing.T, serve serveFunc) {
		got := make(chan string, 1)
		rts := serve(t, map[string]http.HandlerFunc{
			"echo": func(w http.ResponseWriter, r *http.Request) {
				got <- r.RequestURI
				jsonHandler(`{}`)(w, r)
			},
		})
		tests := []struct{ path, value, want string }{
			{"/géo/{query.v}", "../admin", "/g%C3%A9o/..%2Fadmin"},
			{"/a|b/{query.v}/x", "../../admin", "/a%7Cb/..%2F..%2Fadmin/x"},
			{"/a b/{query.v}", "x/y", "/a%20b/x%2Fy"},
			{"/q/{query.v}?tag=é|x&v={query.v}", "a/b", "/q/a%2Fb?tag=%C3%A9%7Cx&v=a%2Fb"},
			// What needs no escaping is sent as written.
			{"/a!b;c=d:e@f/{query.v}", "x/y", "/a!b;c=d:e@f/x%2Fy"},
			{"/pre%2Fencoded/{query.v}", "x", "/pre%2Fencoded/x"},
		}
		for _, tc := range tests {
			t.Run(tc.path, func(t *testing.T) {
				h := newEndpoint(t, &config.Endpoint{Name: "e", Timeout: config.Duration(5 * time.Second), Backends: []*config.Backend{
					{Upstream: "echo", Path: tc.path, Into: "x"},
				}}, rts)
				rec := do(h, gatewayRequest("GET", "/e?v="+strings.ReplaceAll(tc.value, "/", "%2F")))
				if rec.Code != http.StatusOK {
					t.Fatalf("status %d: %s", rec.Code, rec.Body)
				}
				if uri := <-got; uri != tc.want {
					t.Fatalf("backend request target %q, want %q", uri, tc.want)
				}
			})
		}
	})
}

// TestHostTemplate: {header.Host} reads the request's host. The server
// moves the Host field out of the header map, so it was always missing
// and every request failed with 400 missing_template_value.
func TestHostTemplate(t *testing.T) {
	bothModes(t, func(t *testing.T, serve serveFunc) {
		got := make(chan string, 1)
		rts := serve(t, map[string]http.HandlerFunc{
			"echo": func(w http.ResponseWriter, r *http.Request) {
				got <- r.RequestURI
				jsonHandler(`{}`)(w, r)
			},
		})
		h := newEndpoint(t, &config.Endpoint{Name: "e", Timeout: config.Duration(5 * time.Second), Backends: []*config.Backend{
			{Upstream: "echo", Path: "/tenants/{header.host}/config", Into: "x"},
		}}, rts)
		r := gatewayRequest("GET", "/e")
		r.Host = "acme.example.com:8443"
		if rec := do(h, r); rec.Code != http.StatusOK {
			t.Fatalf("status %d: %s", rec.Code, rec.Body)
		}
		if uri, want := <-got, "/tenants/acme.example.com%3A8443/config"; uri != want {
			t.Fatalf("backend request target %q, want %q", uri, want)
		}
		// Without a host (HTTP/1.0) the value is missing, as any header's.
		r = gatewayRequest("GET", "/e")
		r.Host = ""
		wantProblem(t, do(h, r), http.StatusBadRequest, "missing_template_value", "x")
	})
}

// manyKeys is an object with n members "k0".."k{n-1}", plus a repeat of
// the first key at the end.
func manyKeys(n int) string {
	var b strings.Builder
	b.WriteByte('{')
	for i := range n {
		fmt.Fprintf(&b, `"k%d":%d,`, i, i)
	}
	b.WriteString(`"k0":"dup"}`)
	return b.String()
}

// TestManyKeysDedupeLinear: the duplicate-key checks (a body merged
// without into; an object with a renamed key) compared each key with every
// key before it. A 1.5 MB dictionary-shaped body (an i18n bundle, a map
// by id), well under max_backend_body_bytes, cost tens of seconds of CPU
// per request, past any endpoint timeout. The bound is far from both the
// quadratic and the linear cost, race detector included.
func TestManyKeysDedupeLinear(t *testing.T) {
	const n = 100_000
	body := manyKeys(n)
	rts := serve(t, map[string]http.HandlerFunc{"big": jsonHandler(body)})
	tests := []struct {
		name    string
		backend config.Backend
	}{
		{"merged", config.Backend{Upstream: "big", Path: "/"}},
		{"renamed", config.Backend{Upstream: "big", Path: "/", Into: "x", Rename: map[string]string{"k1": "one"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := tc.backend
			h := newEndpoint(t, &config.Endpoint{Name: "e", Timeout: config.Duration(30 * time.Second), Backends: []*config.Backend{&b}}, rts)
			start := time.Now()
			rec := do(h, gatewayRequest("GET", "/e"))
			took := time.Since(start)
			if rec.Code != http.StatusOK {
				t.Fatalf("status %d: %.200s", rec.Code, rec.Body)
			}
			if took > 5*time.Second {
				t.Fatalf("%d keys took %v", n, took)
			}
			out := rec.Body.Bytes()
			if b.Into != "" {
				var v map[string]json.RawMessage
				if err := json.Unmarshal(out, &v); err != nil {
					t.Fatal(err)
				}
				out = v["x"]
			}
			var m map[string]json.RawMessage
			if err := json.Unmarshal(out, &m); err != nil {
				t.Fatal(err)
			}
			if len(m) != n || string(m["k0"]) != "0" {
				t.Fatalf("%d keys, k0 %s: want %d keys, the first k0 kept", len(m), m["k0"], n)
			}
			if b.Into == "" {
				wantJSON(t, out)
			}
		})
	}
}

// TestRenameDedupeNested: past the names compared one by one, the
// duplicate check of an object and of the objects inside it stay apart:
// each keeps the first of its own keys only.
func TestRenameDedupeNested(t *testing.T) {
	obj := func(n int, inner string) string {
		var b strings.Builder
		b.WriteString(`{"a":"A","b":"B"`)
		for i := range n {
			fmt.Fprintf(&b, `,"k%d":%d`, i, i)
			if i == n/2 && inner != "" {
				b.WriteString(`,"in":` + inner)
			}
		}
		b.WriteString(`,"k1":"dup","b":"dup"`)
		if inner != "" {
			b.WriteString(`,"in":"dup"`)
		}
		b.WriteString(`}`)
		return b.String()
	}
	want := func(n int, inner string) string {
		var b strings.Builder
		b.WriteString(`{"b":"A"`)
		for i := range n {
			fmt.Fprintf(&b, `,"k%d":%d`, i, i)
			if i == n/2 && inner != "" {
				b.WriteString(`,"in":` + inner)
			}
		}
		b.WriteString(`}`)
		return b.String()
	}
	for _, n := range []int{3, maxScannedNames - 3, maxScannedNames - 2, maxScannedNames, 3 * maxScannedNames} {
		for _, m := range []int{3, maxScannedNames, 2 * maxScannedNames} {
			in := obj(n, obj(m, ""))
			got, err := shapeString(t, shapeSpec{Rename: map[string]string{"a": "b", "in.a": "b"}}, in)
			if err != nil {
				t.Fatal(err)
			}
			if w := want(n, want(m, "")); got != w {
				t.Fatalf("outer %d inner %d keys:\ngot  %s\nwant %s", n, m, got, w)
			}
		}
	}
}

// TestLoneSurrogateEscapes: a string escape of half a UTF-16 surrogate
// pair ("\ud83d" alone, as a service writes that cut a text in the middle
// of an emoji) encodes no character. Strict clients' parsers refuse the
// whole document for it, so passed on, one backend's cut text
// made the whole merged response unreadable to them, as a stray byte
// would. It becomes U+FFFD, shaped or not; pairs and an escaped
// backslash before "u" are kept.
func TestLoneSurrogateEscapes(t *testing.T) {
	const body = `{"cut":"abc \ud83d","pair":"\ud83d\ude00","low":"\uDE00x","two":"\ud83d\ud83d\ude00","end":"\ud800",` +
		`"esc":"\\ud800","k\udc00":1}`
	const want = `{"cut":"abc \ufffd","pair":"\ud83d\ude00","low":"\ufffdx","two":"\ufffd\ud83d\ude00","end":"\ufffd",` +
		`"esc":"\\ud800","k\ufffd":1}`
	bothModes(t, func(t *testing.T, serve serveFunc) {
		rts := serve(t, map[string]http.HandlerFunc{"svc": jsonHandler(body)})
		tests := []struct {
			name    string
			backend config.Backend
			want    string
		}{
			{"unshaped", config.Backend{Upstream: "svc", Path: "/", Into: "x"}, `{"x":` + want + `}`},
			{"merged", config.Backend{Upstream: "svc", Path: "/"}, want},
			{"fields", config.Backend{Upstream: "svc", Path: "/", Into: "x", Fields: []string{"cut", "pair"}}, `{"x":{"cut":"abc \ufffd","pair":"\ud83d\ude00"}}`},
			{"pick", config.Backend{Upstream: "svc", Path: "/", Into: "x", Pick: "low"}, `{"x":"\ufffdx"}`},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				b := tc.backend
				h := newEndpoint(t, &config.Endpoint{Name: "e", Timeout: config.Duration(5 * time.Second), Backends: []*config.Backend{&b}}, rts)
				rec := do(h, gatewayRequest("GET", "/e"))
				if rec.Code != http.StatusOK || rec.Body.String() != tc.want {
					t.Fatalf("status %d body %s\nwant %s", rec.Code, rec.Body, tc.want)
				}
			})
		}
	})
}

// TestBackend499: a required backend's 4xx is the endpoint's status, but
// 499 is the gateway's own mark for a client that went away: written
// with it, the client got an empty body instead of the problem document,
// the failure was not logged, and the request counted as the client's
// doing rather than a failed backend. It is a 502 backend_error.
func TestBackend499(t *testing.T) {
	bothModes(t, func(t *testing.T, serve serveFunc) {
		rts := serve(t, map[string]http.HandlerFunc{
			"svc": func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(499) },
		})
		h := newEndpoint(t, &config.Endpoint{Name: "e", Timeout: config.Duration(5 * time.Second), Backends: []*config.Backend{
			{Upstream: "svc", Path: "/", Into: "x"},
		}}, rts)
		p := wantProblem(t, do(h, gatewayRequest("GET", "/e")), http.StatusBadGateway, "backend_error", "x")
		if !strings.Contains(p.Detail, "backend x answered 499") {
			t.Fatalf("detail %q", p.Detail)
		}
	})
}

// TestPreserveHost: an upstream with preserve_host: true gets the client's
// Host on a backend call, as it does on a route. The call carried the
// upstream's name as its Host, which such a pool keeps: a virtual-hosted
// service got "Host: users", neither the client's host nor its own.
// Without preserve_host the target's host is sent.
func TestPreserveHost(t *testing.T) {
	got := make(chan string, 2)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.Host
		jsonHandler(`{}`)(w, r)
	}))
	t.Cleanup(srv.Close)
	pools := applyPools(t, map[string]*config.Upstream{
		"kept":   {Targets: []config.Target{{URL: srv.URL}}, PreserveHost: true},
		"target": {Targets: []config.Target{{URL: srv.URL}}},
	})
	target := strings.TrimPrefix(srv.URL, "http://")
	for _, mode := range []string{"sent", "workers"} {
		t.Run(mode, func(t *testing.T) {
			rts := pools
			if mode == "workers" {
				rts = map[string]http.RoundTripper{}
				for name, rt := range pools {
					rts[name] = roundTripOnly{rt}
				}
			}
			h := newEndpoint(t, &config.Endpoint{Name: "e", Timeout: config.Duration(5 * time.Second), Backends: []*config.Backend{
				{Upstream: "kept", Path: "/", Into: "a"},
				{Upstream: "target", Path: "/", Into: "b"},
			}}, rts)
			r := gatewayRequest("GET", "/e")
			r.Host = "api.example.com"
			if rec := do(h, r); rec.Code != http.StatusOK {
				t.Fatalf("status %d: %s", rec.Code, rec.Body)
			}
			hosts := map[string]bool{<-got: true, <-got: true}
			if !hosts["api.example.com"] || !hosts[target] {
				t.Fatalf("backends saw the hosts %v, want api.example.com (preserve_host) and %s", hosts, target)
			}
		})
	}
}
