package aggregate

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/klauspost/compress/gzip"

	"github.com/portico-gw/portico/internal/config"
	"github.com/portico-gw/portico/internal/reqctx"
	"github.com/portico-gw/portico/internal/upstream"
)

// wantProblem checks that rec is the problem+json answer status with code,
// naming backend, and returns it.
func wantProblem(t *testing.T, rec *httptest.ResponseRecorder, status int, code, backend string) problemBody {
	t.Helper()
	var p problemBody
	if err := json.Unmarshal(rec.Body.Bytes(), &p); err != nil {
		t.Fatalf("status %d, problem body %q: %v", rec.Code, rec.Body, err)
	}
	if rec.Code != status || rec.Header().Get("Content-Type") != "application/problem+json" ||
		p.Type != "urn:portico:problem:"+code || p.Status != status || p.Backend != backend || p.RequestID != "req-1" {
		t.Fatalf("status %d %s, want %d %s naming backend %s", rec.Code, rec.Body, status, code, backend)
	}
	return p
}

// wantJSON checks that body is what every client can parse: UTF-8 (RFC
// 8259 section 8.1; encoding/json's Valid does not check it), valid JSON,
// an object without duplicate keys.
func wantJSON(t *testing.T, body []byte) {
	t.Helper()
	if !utf8.Valid(body) || !json.Valid(body) {
		t.Fatalf("response is not valid UTF-8 JSON: %q", body)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		t.Fatalf("response is not an object: %q", body)
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			t.Fatal(err)
		}
		if k := tok.(string); seen[k] {
			t.Fatalf("response has the key %q twice: %s", k, body)
		} else {
			seen[k] = true
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			t.Fatal(err)
		}
	}
}

func gzipBytes(t *testing.T, level int, body string) []byte {
	t.Helper()
	var b bytes.Buffer
	zw, err := gzip.NewWriterLevel(&b, level)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.WriteString(zw, body)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// TestBackendBodies: what a backend answers that is not the plain JSON
// object the happy path sees. The gateway either places the value as
// docs/bff.md says or fails that backend with the documented problem; the
// response is valid UTF-8 JSON either way.
func TestBackendBodies(t *testing.T) {
	const maxBody = 1000
	// atCap and overCap decode to the cap and to one byte past it.
	atCap := `{"a":"` + strings.Repeat("x", maxBody-8) + `"}`
	overCap := `{"a":"` + strings.Repeat("x", maxBody-7) + `"}`
	numbers := `{"big":123456789012345678901234567890,"exp":1e400,"tiny":-1.000000000000000000001e-400,"neg0":-0,"id":1180591620717411303}`
	bothModes(t, func(t *testing.T, serve serveFunc) {
		badSum := gzipBytes(t, gzip.DefaultCompression, `{"a":1}`)
		badSum[len(badSum)-8] ^= 0xff // the CRC-32 in the trailer
		small := gzipBytes(t, gzip.DefaultCompression, `{"a":"`+strings.Repeat("y", 500)+`"}`)
		stored := gzipBytes(t, gzip.NoCompression, atCap)
		if len(stored) <= maxBody {
			t.Fatalf("stored gzip is %d bytes; it must be sent larger than the cap", len(stored))
		}
		gz := func(b []byte) http.HandlerFunc {
			return func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				w.Header().Set("Content-Encoding", "gzip")
				_, _ = w.Write(b)
			}
		}
		chunked := func(body string) http.HandlerFunc {
			return func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				_, _ = io.WriteString(w, body[:1])
				w.(http.Flusher).Flush() // no Content-Length
				_, _ = io.WriteString(w, body[1:])
			}
		}
		rts := serve(t, map[string]http.HandlerFunc{
			"bom":      jsonHandler("\ufeff{\"a\":1}"),
			"badvalue": jsonHandler("{\"a\":\"ok \xff\"}"),
			"badkey":   jsonHandler("{\"\xc3\":1,\"b\":2}"),
			"utf8":     jsonHandler(`{"a":"é ✓ 😀","b":"\u00e9"}`),
			"numbers":  jsonHandler(numbers),
			"array":    jsonHandler(`[{"a":1,"secret":2}]`),
			"scalar":   jsonHandler(`"just a string"`),
			"empty":    func(w http.ResponseWriter, r *http.Request) { w.Header().Set("Content-Type", "application/json") },
			"204":      func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) },
			"302":      func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/elsewhere", http.StatusFound) },
			"badsum":   gz(badSum),
			// A valid gzip header, then a deflate block of the reserved
			// type 3.
			"corrupt":   gz([]byte("\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff\x07\x00\x00\x00")),
			"truncated": gz(small[:len(small)-4]),
			"stored":    gz(stored),
			"gzover":    gz(gzipBytes(t, gzip.DefaultCompression, overCap)),
			"chunkcap":  chunked(atCap),
			"chunkover": chunked(overCap),
			"head": func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				w.Header().Set("Content-Length", "10000000")
			},
			"dup": jsonHandler(`{"a":1,"a":2,"b":3}`),
			"gzempty": func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Encoding", "gzip")
				w.WriteHeader(http.StatusNoContent)
			},
		})
		tests := []struct {
			name    string
			backend config.Backend
			status  int
			code    string // for an error
			body    string // for a 200
			partial string
		}{
			// RFC 8259 section 8.1 lets a parser ignore a BOM or reject it;
			// encoding/json rejects it, and so does the gateway.
			{"byte order mark", config.Backend{Upstream: "bom", Into: "x"}, 502, "backend_bad_body", "", ""},
			// JSON between systems is UTF-8 (RFC 8259 section 8.1): passed
			// on, a stray byte makes the whole response unparsable to
			// strict clients (Swift's JSONDecoder), not just this backend's
			// part. It becomes U+FFFD, shaped or not.
			{"invalid UTF-8 in a string", config.Backend{Upstream: "badvalue", Into: "x"}, 200, "", "{\"x\":{\"a\":\"ok \uFFFD\"}}", ""},
			{"invalid UTF-8 in a key fields leave out", config.Backend{Upstream: "badkey", Into: "x", Fields: []string{"b"}}, 200, "", `{"x":{"b":2}}`, ""},
			{"invalid UTF-8 in a key merged", config.Backend{Upstream: "badkey"}, 200, "", "{\"\uFFFD\":1,\"b\":2}", ""},
			{"valid UTF-8 kept as sent", config.Backend{Upstream: "utf8", Into: "x"}, 200, "", `{"x":{"a":"é ✓ 😀","b":"\u00e9"}}`, ""},
			{"numbers kept merged", config.Backend{Upstream: "numbers"}, 200, "", numbers, ""},
			{"numbers kept shaped", config.Backend{Upstream: "numbers", Into: "x", Fields: []string{"big", "exp", "tiny", "neg0", "id"}}, 200, "", `{"x":` + numbers + `}`, ""},
			{"number picked", config.Backend{Upstream: "numbers", Into: "x", Pick: "big"}, 200, "", `{"x":123456789012345678901234567890}`, ""},
			{"allow-list on an array is null", config.Backend{Upstream: "array", Into: "x", Fields: []string{"a"}}, 200, "", `{"x":null}`, ""},
			{"array without into", config.Backend{Upstream: "array", Fields: []string{"[].a"}}, 502, "backend_bad_body", "", ""},
			{"pick on a scalar is null", config.Backend{Upstream: "scalar", Into: "x", Pick: "a"}, 200, "", `{"x":null}`, ""},
			{"empty 200 with into is null", config.Backend{Upstream: "empty", Into: "x"}, 200, "", `{"x":null}`, ""},
			// Without into the value must be an object; an empty body is
			// null, not an object with no members: dropped silently, a
			// required backend's data would vanish from a 200 that caches
			// may keep.
			{"empty 200 without into", config.Backend{Upstream: "empty"}, 502, "backend_bad_body", "", ""},
			{"204 with into is null", config.Backend{Upstream: "204", Into: "x"}, 200, "", `{"x":null}`, ""},
			{"204 without into", config.Backend{Upstream: "204"}, 502, "backend_bad_body", "", ""},
			{"204 without into optional", config.Backend{Upstream: "204", Optional: true}, 200, "", `{}`, "204"},
			// An empty body has nothing to decode, whatever its header says.
			{"204 labelled gzip", config.Backend{Upstream: "gzempty", Into: "x"}, 200, "", `{"x":null}`, ""},
			// A redirect is not followed, and its Location (the backend's)
			// never reaches the client.
			{"redirect", config.Backend{Upstream: "302", Into: "x"}, 502, "backend_error", "", ""},
			{"gzip checksum mismatch", config.Backend{Upstream: "badsum", Into: "x"}, 502, "backend_bad_body", "", ""},
			{"corrupt deflate data", config.Backend{Upstream: "corrupt", Into: "x"}, 502, "backend_bad_body", "", ""},
			// A body that ends early cannot be told from a connection cut
			// mid-answer: the upstream failed to answer.
			{"truncated gzip", config.Backend{Upstream: "truncated", Into: "x"}, 502, "backend_error", "", ""},
			// The cap counts decoded bytes: a gzip body sent larger than
			// the cap that decodes to it passes.
			{"gzip decoding to the cap", config.Backend{Upstream: "stored", Into: "x", Pick: "b"}, 200, "", `{"x":null}`, ""},
			{"gzip decoding past the cap", config.Backend{Upstream: "gzover", Into: "x", Pick: "b"}, 502, "backend_bad_body", "", ""},
			{"chunked at the cap", config.Backend{Upstream: "chunkcap", Into: "x", Pick: "b"}, 200, "", `{"x":null}`, ""},
			{"chunked past the cap", config.Backend{Upstream: "chunkover", Into: "x", Pick: "b"}, 502, "backend_bad_body", "", ""},
			// A HEAD answer's Content-Length is the resource's, not a body.
			{"HEAD of a large resource", config.Backend{Upstream: "head", Method: http.MethodHead, Into: "x"}, 200, "", `{"x":null}`, ""},
			{"duplicate keys merged first wins", config.Backend{Upstream: "dup"}, 200, "", `{"a":1,"b":3}`, ""},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				b := tc.backend
				b.Path = "/x"
				h, err := NewEndpoint(&config.BFF{Name: "mobile", MaxBackendBodyBytes: maxBody},
					&config.Endpoint{Name: "e", Timeout: config.Duration(5 * time.Second), Backends: []*config.Backend{&b}}, Deps{Upstreams: rts})
				if err != nil {
					t.Fatal(err)
				}
				rec := do(h, gatewayRequest("GET", "/e"))
				if tc.status != http.StatusOK {
					wantProblem(t, rec, tc.status, tc.code, nameOf(&b, 0))
					if loc := rec.Header().Get("Location"); loc != "" {
						t.Fatalf("the backend's Location %q reached the client", loc)
					}
					return
				}
				if rec.Code != http.StatusOK || rec.Body.String() != tc.body || rec.Header().Get("Portico-Partial") != tc.partial {
					t.Fatalf("status %d partial %q body %s\nwant 200 partial %q body %s", rec.Code, rec.Header().Get("Portico-Partial"), rec.Body, tc.partial, tc.body)
				}
				wantJSON(t, rec.Body.Bytes())
			})
		}
	})
}

// TestTemplateValues: values that would change what a backend's request
// names. An empty value, like "." and "..", cannot be a path's part: in
// "/users/{claims.sub}" it would make "/users/", the collection, so it
// fails as missing; a value from a dependency's answer fails as the
// dependency's fault (502), not the request's (400).
func TestTemplateValues(t *testing.T) {
	bothModes(t, func(t *testing.T, serve serveFunc) {
		got := make(chan string, 1)
		rts := serve(t, map[string]http.HandlerFunc{
			"echo": func(w http.ResponseWriter, r *http.Request) {
				got <- r.URL.RequestURI()
				jsonHandler(`{}`)(w, r)
			},
			"user": jsonHandler(`{"id":"u/1","empty":"","dots":"..","n":null}`),
		})
		tests := []struct {
			name     string
			path     string
			after    bool // the echo backend is after u
			optional bool
			uri      string // for a 200
			status   int
			code     string
		}{
			{"numeric claim", "/c/{claims.num}", false, false, "/c/42", 200, ""},
			{"fractional claim", "/c/{claims.frac}", false, false, "/c/1.5", 200, ""},
			{"array claim joined with spaces", "/c/{claims.roles}", false, false, "/c/admin%20a%2Fb", 200, ""},
			{"object claim", "/c/{claims.obj}", false, false, "", 400, "missing_template_value"},
			{"empty claim in the path", "/users/{claims.empty}", false, false, "", 400, "missing_template_value"},
			{"empty query value in the path", "/q/{query.e}/x", false, false, "", 400, "missing_template_value"},
			{"empty header in the path", "/h/{header.X-Empty}.json", false, false, "", 400, "missing_template_value"},
			{"empty query value in the query", "/q?e={query.e}&f=1", false, false, "/q?e=&f=1", 200, ""},
			{"header first field line commas escaped", "/h?t={header.X-Tenant}", false, false, "/h?t=a%2C%20b", 200, ""},
			{"query first value", "/q?v={query.v}", false, false, "/q?v=1", 200, ""},
			{"empty dependency field in the path", "/d/{u.empty}", true, false, "", 502, "backend_bad_body"},
			{"dot-dot dependency field", "/d/{u.dots}", true, false, "", 502, "backend_bad_body"},
			{"missing dependency field", "/d/{u.zz}", true, false, "", 502, "backend_bad_body"},
			{"null dependency field", "/d/{u.n}", true, false, "", 502, "backend_bad_body"},
			{"missing dependency field optional", "/d/{u.zz}", true, true, "", 200, ""},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				echo := &config.Backend{Name: "echo", Upstream: "echo", Path: tc.path, Into: "echo", Optional: tc.optional}
				backends := []*config.Backend{echo}
				if tc.after {
					echo.After = "u"
					backends = append(backends, &config.Backend{Name: "u", Upstream: "user", Path: "/u", Into: "u", Fields: []string{"id"}})
				}
				h := newEndpoint(t, &config.Endpoint{Name: "e", Timeout: config.Duration(5 * time.Second), Backends: backends}, rts)
				r := gatewayRequest("GET", "/e?e=&v=1&v=2")
				r.Header["X-Empty"] = []string{""}
				r.Header.Add("X-Tenant", "a, b")
				r.Header.Add("X-Tenant", "c")
				claims := reqctx.From(r.Context()).Identity.Claims
				claims["num"], claims["frac"], claims["empty"] = float64(42), 1.5, ""
				claims["roles"], claims["obj"] = []any{"admin", "a/b"}, map[string]any{"a": 1}
				rec := do(h, r)
				var uri string
				select {
				case uri = <-got:
				default:
				}
				switch {
				case tc.optional:
					if rec.Code != 200 || rec.Header().Get("Portico-Partial") != "echo" || rec.Body.String() != `{"u":{"id":"u/1"}}` || uri != "" {
						t.Fatalf("status %d partial %q body %s", rec.Code, rec.Header().Get("Portico-Partial"), rec.Body)
					}
				case tc.status == 200:
					if rec.Code != 200 || uri != tc.uri {
						t.Fatalf("status %d %s, backend called with %q, want %q", rec.Code, rec.Body, uri, tc.uri)
					}
				default:
					wantProblem(t, rec, tc.status, tc.code, "echo")
				}
				if tc.status != 200 && uri != "" {
					t.Fatalf("the backend was called with %q", uri)
				}
			})
		}
	})
}

// TestClientGoneCancelsEveryCall: a client that goes away mid fan-out
// ends every call at once, those on their way and a dependent's, starts
// none, and leaves no call counted in flight; the endpoint's own deadline
// is far off, so only the cancellation can end them.
func TestClientGoneCancelsEveryCall(t *testing.T) {
	for _, mode := range []string{"workers", "pools"} {
		t.Run(mode, func(t *testing.T) {
			const holders = 4 // a, b, c and dep
			arrived := make(chan struct{}, holders)
			ended := make(chan struct{}, holders)
			// Sends never block a handler: a failed run must not hang the
			// servers' Close.
			signal := func(ch chan struct{}) {
				select {
				case ch <- struct{}{}:
				default:
				}
			}
			hold := func(w http.ResponseWriter, r *http.Request) {
				signal(arrived)
				<-r.Context().Done() // the gateway closed the connection
				signal(ended)
			}
			var neverCalls atomic.Int32
			handlers := map[string]http.HandlerFunc{
				"a": hold, "b": hold, "c": hold, "dep": hold,
				"fast":  jsonHandler(`{"id":"1"}`),
				"never": func(w http.ResponseWriter, r *http.Request) { neverCalls.Add(1) },
			}
			var (
				rts map[string]http.RoundTripper
				reg *upstream.Registry
			)
			if mode == "pools" {
				rts, reg = servePoolsRegistry(t, handlers)
			} else {
				rts = serve(t, handlers)
			}
			h := newEndpoint(t, &config.Endpoint{Name: "e", Timeout: config.Duration(20 * time.Second), Backends: []*config.Backend{
				{Upstream: "fast", Path: "/", Into: "fast"},
				{Upstream: "dep", Path: "/{fast.id}", After: "fast", Into: "dep"},
				{Upstream: "a", Path: "/", Into: "a"},
				{Upstream: "b", Path: "/", Into: "b", Optional: true},
				{Upstream: "c", Path: "/", Into: "c"},
				{Upstream: "never", Path: "/", After: "a", Into: "never", Optional: true},
			}}, rts)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			r := gatewayRequest("GET", "/e")
			r = r.WithContext(reqctx.With(ctx, reqctx.From(r.Context())))
			done := make(chan *httptest.ResponseRecorder, 1)
			go func() { done <- do(h, r) }()
			waitN(t, arrived, holders, "calls to arrive")
			cancel()
			var rec *httptest.ResponseRecorder
			select {
			case rec = <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("the handler did not return after the client went away")
			}
			if rec.Code != 499 || rec.Body.Len() != 0 {
				t.Fatalf("status %d body %q, want 499 (logged only)", rec.Code, rec.Body)
			}
			waitN(t, ended, holders, "calls to be cancelled")
			if n := neverCalls.Load(); n != 0 {
				t.Fatalf("a dependent of a cancelled call was called %d times", n)
			}
			if reg != nil {
				for _, u := range reg.Snapshot() {
					if u.InFlight != 0 {
						t.Errorf("upstream %s: %d calls in flight after the handler returned", u.Name, u.InFlight)
					}
					for _, tg := range u.Targets {
						if tg.InFlight != 0 {
							t.Errorf("upstream %s target %s: %d in flight", u.Name, tg.URL, tg.InFlight)
						}
					}
				}
			}
		})
	}
}

func waitN(t *testing.T, ch <-chan struct{}, n int, what string) {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for i := range n {
		select {
		case <-ch:
		case <-timeout:
			t.Fatalf("waited 5s for %s: %d of %d", what, i, n)
		}
	}
}

// TestClientGoneAfterRequiredAnswered: the client leaves while only an
// optional call is still out. The answer is still 499 (docs/bff.md: the
// access log records 499), not a 200 partial response to nobody, which
// would count as a success with the optional backend at fault.
func TestClientGoneAfterRequiredAnswered(t *testing.T) {
	bothModes(t, func(t *testing.T, serve serveFunc) {
		arrived := make(chan struct{}, 1)
		rts := serve(t, map[string]http.HandlerFunc{
			"ok": jsonHandler(`{"id":"1"}`),
			"slow": func(w http.ResponseWriter, r *http.Request) {
				arrived <- struct{}{}
				<-r.Context().Done()
			},
		})
		// slow starts after ok has answered, so ok is never the one the
		// client's leaving cuts.
		h := newEndpoint(t, &config.Endpoint{Name: "e", Timeout: config.Duration(20 * time.Second), Backends: []*config.Backend{
			{Upstream: "ok", Path: "/", Into: "ok"},
			{Upstream: "slow", Path: "/{ok.id}", After: "ok", Into: "slow", Optional: true},
		}}, rts)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		r := gatewayRequest("GET", "/e")
		r = r.WithContext(reqctx.With(ctx, reqctx.From(r.Context())))
		go func() {
			<-arrived
			cancel()
		}()
		if rec := do(h, r); rec.Code != 499 {
			t.Fatalf("status %d partial %q body %s, want 499", rec.Code, rec.Header().Get("Portico-Partial"), rec.Body)
		}
	})
}

// TestEndpointDeadlineCapsBackendTimeout: a backend's own timeout longer
// than the endpoint's does not outlive the endpoint: the optional one is
// left out and the required one fails with 504, both by the endpoint's
// deadline.
func TestEndpointDeadlineCapsBackendTimeout(t *testing.T) {
	bothModes(t, func(t *testing.T, serve serveFunc) {
		rts := serve(t, map[string]http.HandlerFunc{
			"ok":   jsonHandler(`{"v":1}`),
			"slow": func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() },
		})
		for _, optional := range []bool{true, false} {
			t.Run(fmt.Sprintf("optional=%v", optional), func(t *testing.T) {
				h := newEndpoint(t, &config.Endpoint{Name: "e", Timeout: config.Duration(300 * time.Millisecond), Backends: []*config.Backend{
					{Upstream: "ok", Path: "/", Into: "ok"},
					{Upstream: "slow", Path: "/", Into: "slow", Optional: optional, Timeout: config.Duration(20 * time.Second)},
				}}, rts)
				start := time.Now()
				rec := do(h, gatewayRequest("GET", "/e"))
				// 300ms, with slack for a loaded machine; the backend's own
				// 20s would be far past it.
				if took := time.Since(start); took > 5*time.Second {
					t.Fatalf("took %v: the backend's own timeout outlived the endpoint's", took)
				}
				if optional {
					if rec.Code != 200 || rec.Body.String() != `{"ok":{"v":1}}` || rec.Header().Get("Portico-Partial") != "slow" {
						t.Fatalf("status %d partial %q body %s", rec.Code, rec.Header().Get("Portico-Partial"), rec.Body)
					}
					return
				}
				wantProblem(t, rec, 504, "backend_timeout", "slow")
			})
		}
	})
}

// TestFailureReporting: when every backend is optional and each fails its
// own way, the endpoint still answers 200 with an empty object, every
// backend named in Portico-Partial in config order (not sorted) and the
// answer kept from caches; a required backend skipped because its optional
// dependency was rejected reports the dependency's 4xx and names both.
func TestFailureReporting(t *testing.T) {
	bothModes(t, func(t *testing.T, serve serveFunc) {
		rts := serve(t, map[string]http.HandlerFunc{
			"500":  func(w http.ResponseWriter, r *http.Request) { http.Error(w, "boom", 500) },
			"404":  func(w http.ResponseWriter, r *http.Request) { http.Error(w, "no", 404) },
			"bad":  jsonHandler(`{"a":`),
			"slow": func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() },
			"ok":   jsonHandler(`{"v":1}`),
		})
		h := newEndpoint(t, &config.Endpoint{Name: "e", Timeout: config.Duration(5 * time.Second), Backends: []*config.Backend{
			{Name: "users", Upstream: "500", Path: "/", Into: "u", Optional: true},
			{Name: "posts", Upstream: "404", Path: "/", Into: "p", Optional: true},
			{Name: "ads", Upstream: "bad", Path: "/", Into: "a", Optional: true},
			{Name: "feed", Upstream: "slow", Path: "/", Into: "f", Optional: true, Timeout: config.Duration(50 * time.Millisecond)},
			{Name: "badge", Upstream: "ok", Path: "/{users.id}", After: "users", Into: "b", Optional: true},
		}}, rts)
		rec := do(h, gatewayRequest("GET", "/e"))
		if rec.Code != 200 || rec.Body.String() != `{}` || rec.Header().Get("Content-Type") != "application/json" {
			t.Fatalf("status %d body %s", rec.Code, rec.Body)
		}
		if p := rec.Header().Get("Portico-Partial"); p != "users, posts, ads, feed, badge" {
			t.Fatalf("Portico-Partial %q", p)
		}
		if cc := rec.Header().Get("Cache-Control"); cc != "no-store" {
			t.Fatalf("Cache-Control %q", cc)
		}

		h = newEndpoint(t, &config.Endpoint{Name: "e", Timeout: config.Duration(5 * time.Second), Backends: []*config.Backend{
			{Name: "ok", Upstream: "ok", Path: "/", Into: "ok", Optional: true},
			{Name: "user", Upstream: "404", Path: "/", Into: "u", Optional: true},
			{Name: "badge", Upstream: "ok", Path: "/{user.id}", After: "user", Into: "b"},
		}}, rts)
		p := wantProblem(t, do(h, gatewayRequest("GET", "/e")), 404, "backend_rejected", "badge")
		if !strings.Contains(p.Detail, "backend badge was skipped because backend user failed: backend user answered 404") {
			t.Fatalf("detail %q", p.Detail)
		}
	})
}

// TestMergeKeysCompareDecoded: keys are compared as decoded, so a backend
// merged without into that spells an earlier key with escapes, or a later
// into that names a key an earlier backend merged with escapes, cannot add
// it twice: a client would keep either value, depending on its parser.
func TestMergeKeysCompareDecoded(t *testing.T) {
	bothModes(t, func(t *testing.T, serve serveFunc) {
		rts := serve(t, map[string]http.HandlerFunc{
			"user":  jsonHandler(`{"n":1}`),
			"extra": jsonHandler(`{"\u0075ser":"shadow","\u007a":2,"w":3}`),
			"z":     jsonHandler(`{"late":true}`),
		})
		h := newEndpoint(t, &config.Endpoint{Name: "e", Timeout: config.Duration(5 * time.Second), Backends: []*config.Backend{
			{Upstream: "user", Path: "/", Into: "user"},
			{Upstream: "extra", Path: "/"},
			{Upstream: "z", Path: "/", Into: "z"},
		}}, rts)
		rec := do(h, gatewayRequest("GET", "/e"))
		if want := `{"user":{"n":1},"\u007a":2,"w":3}`; rec.Code != 200 || rec.Body.String() != want {
			t.Fatalf("status %d body %s, want %s", rec.Code, rec.Body, want)
		}
		wantJSON(t, rec.Body.Bytes())
	})
}

// TestFailedBackendLeavesNoStaleValue: a backend that answers on one
// request and fails on the next, on the same pooled request state, never
// shows the earlier answer; concurrent requests keep their own values.
func TestFailedBackendLeavesNoStaleValue(t *testing.T) {
	bothModes(t, func(t *testing.T, serve serveFunc) {
		rts := serve(t, map[string]http.HandlerFunc{
			"ok": jsonHandler(`{"v":1}`),
			"flaky": func(w http.ResponseWriter, r *http.Request) {
				mode, n, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/f/"), "/")
				if mode == "fail" {
					http.Error(w, "down", http.StatusServiceUnavailable)
					return
				}
				jsonHandler(`{"n":"`+n+`"}`)(w, r)
			},
		})
		h := newEndpoint(t, &config.Endpoint{Name: "e", Timeout: config.Duration(5 * time.Second), Backends: []*config.Backend{
			{Upstream: "ok", Path: "/", Into: "ok"},
			{Upstream: "flaky", Path: "/f/{query.mode}/{query.n}", Into: "flaky", Optional: true},
		}}, rts)
		var wg sync.WaitGroup
		for g := range 4 {
			wg.Go(func() {
				for i := range 20 {
					n := fmt.Sprintf("%d-%d", g, i)
					mode, want, partial := "ok", `{"ok":{"v":1},"flaky":{"n":"`+n+`"}}`, ""
					if i%2 == 1 {
						mode, want, partial = "fail", `{"ok":{"v":1}}`, "flaky"
					}
					rec := do(h, gatewayRequest("GET", "/e?mode="+mode+"&n="+n))
					if rec.Code != 200 || rec.Body.String() != want || rec.Header().Get("Portico-Partial") != partial {
						t.Errorf("status %d partial %q body %s, want %s", rec.Code, rec.Header().Get("Portico-Partial"), rec.Body, want)
						return
					}
				}
			})
		}
		wg.Wait()
	})
}

// TestStalledBackendBody: a backend that sends its head and part of its
// body, then goes silent, fails its call once the upstream's
// read_idle_timeout passes (long before the endpoint's timeout): a required
// one with 504 backend_timeout (the upstream was too slow, as nginx answers
// its proxy_read_timeout), an optional one as partial.
func TestStalledBackendBody(t *testing.T) {
	release := make(chan struct{})
	stall := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", "100")
		_, _ = io.WriteString(w, `{"v":`)
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(stall.Close)
	t.Cleanup(func() { close(release) })
	ok := httptest.NewServer(jsonHandler(`{"v":1}`))
	t.Cleanup(ok.Close)
	idle := config.Duration(time.Second)
	rts := applyPools(t, map[string]*config.Upstream{
		"stall": {Targets: []config.Target{{URL: stall.URL}}, ReadIdleTimeout: &idle},
		"ok":    {Targets: []config.Target{{URL: ok.URL}}},
	})
	for _, optional := range []bool{false, true} {
		t.Run(fmt.Sprintf("optional=%v", optional), func(t *testing.T) {
			h := newEndpoint(t, &config.Endpoint{Name: "e", Timeout: config.Duration(30 * time.Second), Backends: []*config.Backend{
				{Upstream: "ok", Path: "/", Into: "ok"},
				{Upstream: "stall", Path: "/", Into: "stall", Optional: optional},
			}}, rts)
			start := time.Now()
			rec := do(h, gatewayRequest("GET", "/e"))
			// 1 s of silence, cut by 1.25 s; the endpoint's 30 s is far.
			if took := time.Since(start); took > 10*time.Second {
				t.Fatalf("took %v: the stalled body was not cut by read_idle_timeout", took)
			}
			if optional {
				if rec.Code != 200 || rec.Body.String() != `{"ok":{"v":1}}` || rec.Header().Get("Portico-Partial") != "stall" {
					t.Fatalf("status %d partial %q body %s", rec.Code, rec.Header().Get("Portico-Partial"), rec.Body)
				}
				return
			}
			wantProblem(t, rec, 504, "backend_timeout", "stall")
		})
	}
}
