package upstream

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
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
// what scanRequest refuses for its URL, Request.Write refuses too.
func FuzzWriteRequest(f *testing.F) {
	f.Add(uint8(0), "", "/a/b", "", "x=1", "X-A", " v ", "curl/8", false, uint8(0))
	f.Add(uint8(1), "[fe80::1%en0]:80", "/a%2Fb", "", "", "User-Agent", "", "", true, uint8(3))
	f.Add(uint8(2), "bücher.example", "*", "", "", "Connection", "close", "\x00", true, uint8(20))
	f.Add(uint8(0), "a b", "", "//h/p", "q", "x-lower", "\t", "  ", false, uint8(16))
	f.Fuzz(func(t *testing.T, method uint8, host, path, opaque, query, key, value, ua string, close bool, extra uint8) {
		u := &url.URL{Scheme: "http", Host: "127.0.0.1:1", Path: path, Opaque: opaque, RawQuery: query}
		req := &http.Request{
			Method: []string{http.MethodGet, http.MethodHead, http.MethodOptions}[method%3],
			URL:    u, Host: host, Close: close,
			Header: http.Header{key: {value, value + "2"}},
		}
		if ua != "\x00" {
			req.Header["User-Agent"] = []string{ua}
		}
		for i := range int(extra % 24) { // past the fields scanRequest lists
			req.Header[fmt.Sprintf("X-Extra-%d", i)] = []string{"v"}
		}
		var fields headFields
		lean, err := scanRequest(req, &fields)
		if !lean {
			return
		}
		var want, got bytes.Buffer
		bw := bufio.NewWriter(&want)
		werr := req.Write(bw)
		_ = bw.Flush()
		if err != nil {
			if err == errCTLInURL && werr == nil {
				t.Fatalf("scanRequest refused what Request.Write wrote: %q", want.String())
			}
			return
		}
		if werr != nil {
			t.Fatalf("Request.Write refused what scanRequest passed: %v", werr)
		}
		bw = bufio.NewWriter(&got)
		if err := writeRequest(bw, req, &fields); err != nil {
			t.Fatal(err)
		}
		_ = bw.Flush()
		if g, w := normalizeHead(got.String()), normalizeHead(want.String()); g != w {
			t.Fatalf("writeRequest wrote\n%q\nRequest.Write wrote\n%q", g, w)
		}
	})
}

// chunkReader hands out data at most size bytes per Read, as a socket
// may.
type chunkReader struct {
	data []byte
	size int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), c.size)], c.data)
	c.data = c.data[n:]
	return n, nil
}

// readAnswer reads one answer from raw with read (delivered size bytes
// at a time, the body read step bytes at a time) and describes all a
// caller can see: the error, or status, framing, fields and each body
// read; then what is left for the next answer.
func readAnswer(raw []byte, size, step int, read func(*bufio.Reader) (*http.Response, error)) string {
	br := bufio.NewReaderSize(&chunkReader{data: raw, size: size}, 4<<10)
	_, _ = br.Peek(1) // as exchange does before reading an answer
	var sb strings.Builder
	res, err := read(br)
	if err != nil {
		fmt.Fprintf(&sb, "error: %v\n", err)
	} else {
		fmt.Fprintf(&sb, "%d %q %s %d.%d length=%d close=%t te=%q trailer=%v uncompressed=%t nobody=%t\n",
			res.StatusCode, res.Status, res.Proto, res.ProtoMajor, res.ProtoMinor, res.ContentLength,
			res.Close, res.TransferEncoding, res.Trailer, res.Uncompressed, res.Body == http.NoBody)
		for _, k := range slices.Sorted(maps.Keys(res.Header)) {
			fmt.Fprintf(&sb, "%q: %q\n", k, res.Header[k])
		}
		p := make([]byte, step)
		for range 1000 {
			n, err := res.Body.Read(p)
			fmt.Fprintf(&sb, "read %q %v\n", p[:n], err)
			if err != nil {
				break
			}
		}
	}
	rest, err := io.ReadAll(br)
	fmt.Fprintf(&sb, "left %q %v", rest, err)
	return sb.String()
}

// FuzzReadResponse: the lean client's reading of an answer (parseResponse,
// else http.ReadResponse) and http.ReadResponse's alone see the same
// status, fields, framing, body, errors and remaining bytes, for any bytes
// delivered in any slices.
func FuzzReadResponse(f *testing.F) {
	for _, raw := range []string{
		"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\nhelloNEXT",
		"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nX-A: 1\r\nx-a:  2 \t\r\nConnection: keep-alive, close\r\n\r\nabc",
		"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nPragma: no-cache\r\nTrailer: X-T\r\n\r\n",
		"HTTP/1.1 200 OK\r\nETag: \"x\"\r\nX-REQUEST-ID: 1\r\nWWW-Authenticate: Basic\r\nCONTENT-LENGTH: 0\r\n\r\n",
		"HTTP/1.1 200\r\nContent-Length: 007\r\n\r\n1234567",
		"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 1\r\n\r\nx",
		"HTTP/1.1 200 OK\r\nBad Key: 1\r\nContent-Length: 1\r\n\r\nx",
		"HTTP/1.1 200 OK\nContent-Length: 1\n\nx",
		"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\nx\r\n\r\n",
		"HTTP/1.1 200 O\rK\r\nContent-Length: 1\r\n\r\nx",
		"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
		"HTTP/1.1 204 No Content\r\nContent-Length: 4\r\n\r\n",
		"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
		"HTTP/1.1 600 Odd\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nX-Obs: caf\xc3\xa9\xff\r\nX-Nul: a\x00b\r\nContent-Length: 0\r\n\r\n",
	} {
		f.Add([]byte(raw), uint8(0), uint16(4096), uint8(7))
	}
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"), uint8(1), uint16(3), uint8(1))
	f.Fuzz(func(t *testing.T, raw []byte, method uint8, size uint16, step uint8) {
		req := &http.Request{Method: []string{http.MethodGet, http.MethodHead, http.MethodOptions}[method%3],
			URL: &url.URL{Scheme: "http", Host: "h", Path: "/"}}
		n, s := int(size)%8192+1, int(step)%64+1
		want := readAnswer(raw, n, s, func(br *bufio.Reader) (*http.Response, error) { return http.ReadResponse(br, req) })
		got := readAnswer(raw, n, s, func(br *bufio.Reader) (*http.Response, error) {
			a := parseResponse(br, req)
			if a == nil {
				return http.ReadResponse(br, req)
			}
			res := &a.resp
			if res.Body == nil {
				res.Body = io.NopCloser(&fixedBody{br: br, remain: res.ContentLength})
			}
			return res, nil
		})
		if got != want {
			t.Fatalf("the lean client read\n%s\nhttp.ReadResponse read\n%s", got, want)
		}
	})
}
