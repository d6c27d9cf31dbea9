package proxy

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/portico-gw/portico/internal/reqctx"
)

// exchangeView is what the upstream received and what the client got back,
// without what differs between HTTP/1.1 and HTTP/2 by protocol alone.
type exchangeView struct {
	Method, URI     string
	UpstreamHeader  http.Header
	UpstreamBody    string
	Status          int
	Header, Trailer http.Header
	Body            string
}

// TestForwardAgreesWithReverseProxy sends the same requests over HTTP/1.1
// (served by forward) and HTTP/2 (served by ReverseProxy) and requires the
// upstream and the client to see the same exchange.
func TestForwardAgreesWithReverseProxy(t *testing.T) {
	var mu sync.Mutex
	var up exchangeView
	be := upstream(t, "u", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		up = exchangeView{Method: r.Method, URI: r.RequestURI, UpstreamHeader: r.Header.Clone(), UpstreamBody: string(b)}
		mu.Unlock()
		h := w.Header()
		h.Set("Connection", "X-Up-Hop")
		h.Set("X-Up-Hop", "dropped")
		h.Set("Keep-Alive", "timeout=5")
		h.Set("X-Up", "kept")
		h.Set("X-Pre", "upstream")
		h.Set("Trailer", "X-Sum")
		w.WriteHeader(201)
		_, _ = io.WriteString(w, "answer:"+string(b))
		h.Set("X-Sum", "42")
		h.Set(http.TrailerPrefix+"X-Late", "unannounced")
	})
	srv, h1, h2 := bothProtocols(t, Config{Backends: []Backend{be}})

	for _, tc := range []struct {
		name, method, target, body string
		hdr                        []string
		h1Only                     []string // connection headers, which HTTP/2 cannot carry
	}{
		{"plain", "GET", "/a/b?x=1&y=2", "", []string{"User-Agent", "ua"}, nil},
		{"hop-by-hop and forwarding headers", "GET", "/h", "", []string{
			"Proxy-Authorization", "Basic abc", "X-Forwarded-For", "6.6.6.6", "X-Forwarded-Host", "evil",
			"Forwarded", "for=6.6.6.6", "X-End", "kept", "User-Agent", "ua"},
			[]string{"Connection", "X-Client-Hop", "X-Client-Hop", "dropped", "Keep-Alive", "timeout=5"}},
		{"te trailers", "GET", "/te", "", []string{"Te", "trailers", "User-Agent", "ua"}, nil},
		{"no user agent", "GET", "/ua", "", []string{"User-Agent", ""}, nil},
		{"smuggled query", "GET", "/q?c=3&a=1;b=2&d=%zz&e=5", "", []string{"User-Agent", "ua"}, nil},
		{"body", "POST", "/post", "payload", []string{"Content-Type", "text/plain", "User-Agent", "ua"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var views [2]exchangeView
			for i, c := range []*http.Client{h1, h2} {
				var body io.Reader
				if tc.body != "" {
					body = strings.NewReader(tc.body)
				}
				req, err := http.NewRequest(tc.method, srv.URL+tc.target, body)
				if err != nil {
					t.Fatal(err)
				}
				hdr := tc.hdr
				if i == 0 {
					hdr = append(hdr[:len(hdr):len(hdr)], tc.h1Only...)
				}
				for j := 0; j+1 < len(hdr); j += 2 {
					if hdr[j+1] == "" {
						req.Header[hdr[j]] = []string{""} // present but empty: the client sends none
						continue
					}
					req.Header.Add(hdr[j], hdr[j+1])
				}
				resp, err := c.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if want := []int{1, 2}[i]; resp.ProtoMajor != want {
					t.Fatalf("client %d spoke HTTP/%d", i, resp.ProtoMajor)
				}
				mu.Lock()
				v := up
				mu.Unlock()
				v.Status, v.Body, v.Trailer = resp.StatusCode, string(b), resp.Trailer
				v.Header = resp.Header.Clone()
				v.Header.Del("Date")
				views[i] = v
			}
			if !reflect.DeepEqual(views[0], views[1]) {
				t.Fatalf("HTTP/1.1 (forward) and HTTP/2 (ReverseProxy) differ:\n h1 %+v\n h2 %+v", views[0], views[1])
			}
			v := views[0]
			for _, k := range []string{"X-Client-Hop", "Proxy-Authorization", "Forwarded", "Connection", "Keep-Alive"} {
				if _, ok := v.UpstreamHeader[k]; ok {
					t.Errorf("upstream got %s", k)
				}
			}
			for _, k := range []string{"X-Up-Hop", "Keep-Alive", "Connection"} {
				if _, ok := v.Header[k]; ok {
					t.Errorf("client got %s", k)
				}
			}
			if got := v.UpstreamHeader.Get("X-Forwarded-For"); got != "127.0.0.1" {
				t.Errorf("X-Forwarded-For %q: a client's own must not pass", got)
			}
			if got := v.Header["X-Pre"]; !reflect.DeepEqual(got, []string{"gateway", "upstream"}) {
				t.Errorf("X-Pre %q: the gateway's value and the upstream's are both kept", got)
			}
			if v.Status != 201 || v.Body != "answer:"+tc.body || v.Trailer.Get("X-Sum") != "42" || v.Trailer.Get("X-Late") != "unannounced" {
				t.Errorf("status %d body %q trailer %v", v.Status, v.Body, v.Trailer)
			}
			switch tc.name {
			case "te trailers":
				if got := v.UpstreamHeader.Get("Te"); got != "trailers" {
					t.Errorf("Te %q, want trailers", got)
				}
			case "no user agent":
				if ua, ok := v.UpstreamHeader["User-Agent"]; ok {
					t.Errorf("User-Agent %q: none was sent, none is added", ua)
				}
			case "smuggled query":
				// The pairs that parse differently across servers are
				// dropped; what is left is re-encoded.
				if v.URI != "/q?c=3&e=5" {
					t.Errorf("upstream URI %q", v.URI)
				}
			case "plain":
				if v.URI != "/a/b?x=1&y=2" {
					t.Errorf("upstream URI %q: a clean query passes as it is", v.URI)
				}
			}
		})
	}
}

// bothProtocols serves the proxy over TLS with HTTP/2 on, behind a stage
// that sets X-Pre on the response, and returns an HTTP/1.1 client (whose
// requests forward serves) and an HTTP/2 client (ReverseProxy's).
func bothProtocols(t *testing.T, cfg Config) (srv *httptest.Server, h1, h2 *http.Client) {
	t.Helper()
	h, err := New(cfg, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Pre", "gateway") // as a stage before the proxy would
		h.ServeHTTP(w, r.WithContext(reqctx.With(r.Context(), &reqctx.Info{RequestID: "rid-1"})))
	}))
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	h2 = srv.Client()
	t.Cleanup(h2.CloseIdleConnections)
	h1tr := srv.Client().Transport.(*http.Transport).Clone()
	h1tr.Protocols = new(http.Protocols)
	h1tr.Protocols.SetHTTP1(true)
	h1tr.TLSClientConfig.NextProtos = []string{"http/1.1"}
	t.Cleanup(h1tr.CloseIdleConnections)
	return srv, &http.Client{Transport: h1tr}, h2
}

// An informational answer carries the upstream's fields alone, and the
// final answer keeps what the gateway set (request id, CORS and rate-limit
// headers): over both paths.
func TestEarlyHintsKeepTheGatewaysHeaders(t *testing.T) {
	be := upstream(t, "u", earlyHints)
	srv, h1, h2 := bothProtocols(t, Config{Backends: []Backend{be}})
	for i, c := range []*http.Client{h1, h2} {
		resp, b, hints := getWith1xx(t, c, srv.URL+"/")
		if resp.ProtoMajor != i+1 || string(b) != "done" || len(hints) != 1 {
			t.Fatalf("HTTP/%d: body %q, 1xx %v", resp.ProtoMajor, b, hints)
		}
		if hints[0].Get("Link") != "</app.css>; rel=preload" || hints[0].Get("X-Pre") != "" {
			t.Errorf("HTTP/%d: 103 header %v, want the upstream's Link alone", resp.ProtoMajor, hints[0])
		}
		if resp.Header.Get("X-Pre") != "gateway" || resp.Header.Get("X-Request-Id") != "rid-1" || resp.Header.Get("Link") != "" {
			t.Errorf("HTTP/%d: final header %v, want the gateway's X-Pre and X-Request-Id", resp.ProtoMajor, resp.Header)
		}
	}
}

// getWith1xx GETs url with c and returns the final answer (its body read)
// and the headers of the informational answers before it.
func getWith1xx(t *testing.T, c *http.Client, url string) (*http.Response, []byte, []http.Header) {
	t.Helper()
	var hints []http.Header
	trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
		hints = append(hints, http.Header(h).Clone())
		return nil
	}}
	req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "GET", url, nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, b, hints
}

func TestUnaskedUpgradeIsBadGateway(t *testing.T) {
	be := upstream(t, "u", func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: other\r\nConnection: Upgrade\r\n\r\n")
		_ = brw.Flush()
		_, _ = bufio.NewReader(conn).ReadByte() // until the gateway lets go
	})
	srv, _ := front(t, Config{Backends: []Backend{be}}, nil)
	resp, body := do(t, client(t), "GET", srv.URL+"/", nil)
	wantProblem(t, resp, body, http.StatusBadGateway, "upstream_error")
}

func TestCleanQuery(t *testing.T) {
	many := strings.Repeat("a=1&", maxQueryParams) + "a=1"
	for _, tc := range []struct{ in, want string }{
		{"", ""},
		{"b=2&a=1", "b=2&a=1"},         // clean: untouched, order kept
		{"a=%41%2f", "a=%41%2f"},       // valid escapes: untouched
		{"a=1;b=2", ""},                // the pair with ';' is dropped
		{"c=3&a=1;b=2", "c=3"},         // the rest is kept
		{"x=%zz&y=2", "y=2"},           // a malformed escape
		{"x=%4", ""},                   // a cut escape
		{"y=2&x=%", "y=2"},             // at the very end
		{"k=v+w&j=%20", "k=v+w&j=%20"}, // re-encoding would sort and rewrite: only when needed
		{"k=v+w&j=%20;", "k=v+w"},
		{many, ""}, // past the parameter bound
	} {
		if got := cleanQuery(tc.in); got != tc.want {
			t.Errorf("cleanQuery(%.40q) = %.40q, want %.40q", tc.in, got, tc.want)
		}
	}
}

func TestRemoveHopByHop(t *testing.T) {
	h := http.Header{
		"Connection":        {"x-one, X-Two", " ,x-three "},
		"X-One":             {"1"},
		"X-Two":             {"2"},
		"X-Three":           {"3"},
		"Keep-Alive":        {"timeout=5"},
		"Transfer-Encoding": {"chunked"},
		"Te":                {"trailers"},
		"Upgrade":           {"websocket"},
		"X-Kept":            {"k"},
	}
	removeHopByHop(h)
	var keys []string
	for k := range h {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	if !reflect.DeepEqual(keys, []string{"X-Kept"}) {
		t.Fatalf("left %v, want only X-Kept", keys)
	}
}
