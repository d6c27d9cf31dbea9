package upstream

import (
	"bufio"
	"bytes"
	"net/http"
	"net/url"
	"testing"

	"github.com/portico-gw/portico/internal/config"
)

// FuzzConfigParsers feeds arbitrary target URLs and hash keys to the
// parsers Apply relies on: they must reject or accept, never panic, and an
// accepted target must be usable by the balancers.
func FuzzConfigParsers(f *testing.F) {
	f.Add("http://127.0.0.1:8080", "header:X-User-Id")
	f.Add("h2c://[::1]:9000", "ip")
	f.Add("HTTPS://api.example.com", "claim:sub")
	f.Add("http://", "header:")
	f.Fuzz(func(t *testing.T, rawURL, key string) {
		pt, err := parseTarget(config.Target{URL: rawURL, Weight: 1})
		if err == nil && (pt.host == "" || (pt.scheme != "http" && pt.scheme != "https")) {
			t.Fatalf("accepted %q as %+v", rawURL, pt)
		}
		hk, err := parseHashKey(key)
		if err != nil {
			return
		}
		r := newRingHash([]int{1, 2}, []string{"a", "b"}, hk)
		req, _ := http.NewRequest(http.MethodGet, "http://x/", nil)
		req.Header.Set("X-User-Id", key)
		ts := testTargets(2)
		if i := r.pick(req, pickCtx{targets: ts}); i < 0 || i > 1 {
			t.Fatalf("pick %d", i)
		}
	})
}

// FuzzWriteRequest: for any request the lean client accepts, writeRequest
// writes what Request.Write writes, but for the order of header fields;
// what checkRequest refuses for its URL, Request.Write refuses too.
func FuzzWriteRequest(f *testing.F) {
	f.Add(uint8(0), "", "/a/b", "", "x=1", "X-A", " v ", "curl/8", false)
	f.Add(uint8(1), "[fe80::1%en0]:80", "/a%2Fb", "", "", "User-Agent", "", "", true)
	f.Add(uint8(2), "bücher.example", "*", "", "", "Connection", "close", "\x00", true)
	f.Add(uint8(0), "a b", "", "//h/p", "q", "x-lower", "\t", "  ", false)
	f.Fuzz(func(t *testing.T, method uint8, host, path, opaque, query, key, value, ua string, close bool) {
		u := &url.URL{Scheme: "http", Host: "127.0.0.1:1", Path: path, Opaque: opaque, RawQuery: query}
		req := &http.Request{
			Method: []string{http.MethodGet, http.MethodHead, http.MethodOptions}[method%3],
			URL:    u, Host: host, Close: close,
			Header: http.Header{key: {value, value + "2"}},
		}
		if ua != "\x00" {
			req.Header["User-Agent"] = []string{ua}
		}
		if !fastPath(req) {
			return
		}
		var want, got bytes.Buffer
		bw := bufio.NewWriter(&want)
		werr := req.Write(bw)
		_ = bw.Flush()
		if err := checkRequest(req); err != nil {
			if err == errCTLInURL && werr == nil {
				t.Fatalf("checkRequest refused what Request.Write wrote: %q", want.String())
			}
			return
		}
		if werr != nil {
			t.Fatalf("Request.Write refused what checkRequest passed: %v", werr)
		}
		bw = bufio.NewWriter(&got)
		if err := writeRequest(bw, req); err != nil {
			t.Fatal(err)
		}
		_ = bw.Flush()
		if g, w := normalizeHead(got.String()), normalizeHead(want.String()); g != w {
			t.Fatalf("writeRequest wrote\n%q\nRequest.Write wrote\n%q", g, w)
		}
	})
}
