package proxy

import (
	"bufio"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

// The tests in this file hold forward (HTTP/1.1 clients) to what
// ReverseProxy does (HTTP/2 clients, through bothProtocols) where the two
// must agree, and to the HTTP/1.1 wire (raw connections) where only
// forward can be watched: framing, connection headers, bodiless answers.

// paths names the two clients bothProtocols returns, in order.
var paths = [2]string{"HTTP/1.1 (forward)", "HTTP/2 (ReverseProxy)"}

// hijacked answers with raw bytes on the upstream's connection and closes
// it: answers no well-behaved server would give.
func hijacked(raw string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		_, _ = brw.WriteString(raw)
		_ = brw.Flush()
	}
}

// dialRaw opens a plain connection to srv, for what a Go client hides or
// refuses to send. The deadline only keeps a broken test from hanging.
func dialRaw(t *testing.T, srv *httptest.Server) (net.Conn, *bufio.Reader) {
	t.Helper()
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	return conn, bufio.NewReader(conn)
}

// readHead reads a status line and header block as they are on the wire
// (http.ReadResponse moves Transfer-Encoding out of the header).
func readHead(t *testing.T, br *bufio.Reader) (string, textproto.MIMEHeader) {
	t.Helper()
	tp := textproto.NewReader(br)
	line, err := tp.ReadLine()
	if err != nil {
		t.Fatalf("status line: %v", err)
	}
	h, err := tp.ReadMIMEHeader()
	if err != nil {
		t.Fatalf("header after %q: %v", line, err)
	}
	return line, h
}

// A HEAD answer keeps its Content-Length and has no body; 204 and 304 have
// no body and are not chunked: the next answer on the connection follows
// at once.
func TestForwardBodilessAnswers(t *testing.T) {
	be := upstream(t, "u", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Etag", `"v1"`)
		switch r.URL.Path {
		case "/head":
			w.Header().Set("Content-Length", "1234")
		case "/204":
			w.WriteHeader(http.StatusNoContent)
		case "/304":
			w.WriteHeader(http.StatusNotModified)
		default:
			_, _ = io.WriteString(w, "after")
		}
	})
	cases := []struct {
		method, path string
		status       int
		length       int64
	}{
		{"HEAD", "/head", 200, 1234},
		{"GET", "/204", 204, 0},
		{"GET", "/304", 304, 0},
	}

	t.Run("both paths", func(t *testing.T) {
		srv, h1, h2 := bothProtocols(t, Config{Backends: []Backend{be}})
		for _, tc := range cases {
			for i, c := range []*http.Client{h1, h2} {
				req, _ := http.NewRequest(tc.method, srv.URL+tc.path, nil)
				resp, err := c.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				got := fmt.Sprintf("%d length %d %q etag %s body %q %v", resp.StatusCode, resp.ContentLength,
					resp.Header["Content-Length"], resp.Header.Get("Etag"), b, err)
				var cl []string // the server sends none on 204 and 304
				if tc.method == "HEAD" {
					cl = []string{"1234"}
				}
				want := fmt.Sprintf("%d length %d %q etag %s body %q %v", tc.status, tc.length, cl, `"v1"`, "", nil)
				if got != want {
					t.Errorf("%s %s over %s: %s, want %s", tc.method, tc.path, paths[i], got, want)
				}
			}
		}
	})

	t.Run("wire", func(t *testing.T) {
		srv, _ := front(t, Config{Backends: []Backend{be}}, nil)
		conn, br := dialRaw(t, srv)
		for _, tc := range cases {
			_, _ = fmt.Fprintf(conn, "%s %s HTTP/1.1\r\nHost: gw.test\r\n\r\n", tc.method, tc.path)
			line, h := readHead(t, br)
			if want := fmt.Sprintf("HTTP/1.1 %d %s", tc.status, http.StatusText(tc.status)); line != want {
				t.Fatalf("%s %s: %q, want %q", tc.method, tc.path, line, want)
			}
			if te := h.Values("Transfer-Encoding"); te != nil {
				t.Errorf("%s %s: Transfer-Encoding %q on an answer without a body", tc.method, tc.path, te)
			}
			if cl := h.Get("Content-Length"); tc.method == "HEAD" && cl != "1234" {
				t.Errorf("HEAD: Content-Length %q, want the upstream's 1234", cl)
			}
		}
		// Any byte the bodiless answers left on the wire would be read
		// here in place of the next status line.
		_, _ = io.WriteString(conn, "GET /after HTTP/1.1\r\nHost: gw.test\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("the answer after the bodiless ones: %v", err)
		}
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || string(b) != "after" {
			t.Fatalf("the answer after the bodiless ones: %d %q", resp.StatusCode, b)
		}
	})
}

// An answer the upstream cuts short reaches the client as a failed read,
// never as a whole body: the client's connection or stream is aborted.
// An answer framed by the end of the connection is whole.
func TestForwardTruncatedAnswers(t *testing.T) {
	for _, tc := range []struct {
		name, raw string
		whole     string // the body when the answer is whole; "" when cut
	}{
		{"short content-length", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello", ""},
		{"no body after the header", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", ""},
		{"cut chunked body", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", ""},
		{"cut in the trailer section", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n5\r\nhello\r\n0\r\nX-Sum: 4", ""},
		{"read until close", "HTTP/1.1 200 OK\r\n\r\nhello world", "hello world"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			be := upstream(t, "u", hijacked(tc.raw))
			srv, h1, h2 := bothProtocols(t, Config{Backends: []Backend{be}})
			for i, c := range []*http.Client{h1, h2} {
				// A cut answer may fail before its header reaches the
				// client (still in the server's buffer when the
				// connection is aborted) or while its body is read.
				var b []byte
				resp, err := c.Get(srv.URL + "/")
				if err == nil {
					b, err = io.ReadAll(resp.Body)
					resp.Body.Close()
				}
				switch {
				case tc.whole != "" && (err != nil || string(b) != tc.whole):
					t.Errorf("%s: read %q, %v; want %q whole", paths[i], b, err, tc.whole)
				case tc.whole == "" && err == nil:
					t.Errorf("%s: read %q and a clean end; want a failed read", paths[i], b)
				}
			}
		})
	}
}

// Connection and the headers it names are the upstream's connection's
// business alone, both ways: the upstream's "Connection: close" does not
// close the client's connection, and the client's does not close the
// upstream's.
//
// (The names are given in a Connection header without "close": net/http's
// transport deletes a Connection header that carries "close", names and
// all, before either path sees the answer.)
func TestForwardConnectionClose(t *testing.T) {
	t.Run("from the upstream", func(t *testing.T) {
		be := upstream(t, "u", func(w http.ResponseWriter, r *http.Request) {
			h := w.Header()
			if r.URL.Path == "/close" {
				h.Set("Connection", "close")
			} else {
				h.Set("Connection", "X-Named")
				h.Set("X-Named", "hop")
			}
			h.Set("Keep-Alive", "timeout=5")
			h.Set("Proxy-Connection", "keep-alive")
			h.Set("Proxy-Authenticate", "Basic")
			h.Set("Upgrade", "foo")
			h.Set("Te", "trailers")
			h.Set("Trailer", "X-Sum")
			h.Set("X-End", "kept")
			_, _ = io.WriteString(w, "hello")
			_ = http.NewResponseController(w).Flush() // chunked, for the trailer
			h.Set("X-Sum", "42")
		})
		srv, _ := front(t, Config{Backends: []Backend{be}}, nil)
		conn, br := dialRaw(t, srv)
		for i, path := range []string{"/close", "/named", "/close"} {
			_, _ = fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: gw.test\r\n\r\n", path)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("answer %d on one connection: %v", i+1, err)
			}
			b, err := io.ReadAll(resp.Body)
			if err != nil || string(b) != "hello" || resp.Trailer.Get("X-Sum") != "42" {
				t.Fatalf("answer %d: body %q, %v, trailer %v", i+1, b, err, resp.Trailer)
			}
			for _, k := range []string{"Connection", "X-Named", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate", "Upgrade", "Te"} {
				if v, ok := resp.Header[k]; ok {
					t.Errorf("answer %d: the client got %s %q", i+1, k, v)
				}
			}
			if resp.Close || !reflect.DeepEqual(resp.TransferEncoding, []string{"chunked"}) || resp.Header.Get("X-End") != "kept" {
				t.Errorf("answer %d: close %v, transfer encoding %q, header %v", i+1, resp.Close, resp.TransferEncoding, resp.Header)
			}
		}
	})

	t.Run("from the client", func(t *testing.T) {
		var mu sync.Mutex
		var peers []string
		be := upstream(t, "u", func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			peers = append(peers, fmt.Sprintf("%s %q", r.RemoteAddr, r.Header["Connection"]))
			mu.Unlock()
			_, _ = io.WriteString(w, "ok")
		})
		srv, _ := front(t, Config{Backends: []Backend{be}}, nil)
		for i := range 2 {
			conn, br := dialRaw(t, srv)
			_, _ = io.WriteString(conn, "GET / HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n")
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			if string(b) != "ok" || !resp.Close {
				t.Fatalf("client %d: body %q, close %v; want ok and the connection closed", i+1, b, resp.Close)
			}
			if n, err := br.Read(make([]byte, 1)); n != 0 || err != io.EOF {
				t.Fatalf("client %d: %d bytes, %v after the answer; want the end of the connection", i+1, n, err)
			}
		}
		mu.Lock()
		defer mu.Unlock()
		if len(peers) != 2 || peers[0] != peers[1] || strings.Contains(peers[0], "close") {
			t.Fatalf("the upstream saw %q: want both requests on one kept-alive connection, no Connection header", peers)
		}
	})
}

// Request framing the server accepted reaches the upstream as one
// unambiguous length; what it refused never reaches the upstream.
func TestForwardRequestFraming(t *testing.T) {
	got := make(chan string, 4)
	be := upstream(t, "u", func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		got <- fmt.Sprintf("%d %q %q %q %v", r.ContentLength, r.TransferEncoding, r.Header["Content-Length"], b, err)
	})
	srv, _ := front(t, Config{Backends: []Backend{be}}, nil)
	for _, tc := range []struct {
		name, head, body string
		status           int
		upstream         string // what the upstream saw; "" for nothing
	}{
		{"repeated content-length", "Content-Length: 5\r\nContent-Length: 5", "hello", 200, `5 [] ["5"] "hello" <nil>`},
		{"differing content-lengths", "Content-Length: 5\r\nContent-Length: 6", "hello!", 400, ""},
		{"content-length and chunked", "Content-Length: 4\r\nTransfer-Encoding: chunked", "5\r\nhello\r\n0\r\n\r\n", 200, `-1 ["chunked"] [] "hello" <nil>`},
		{"chunked twice", "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked", "5\r\nhello\r\n0\r\n\r\n", 501, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, br := dialRaw(t, srv)
			_, _ = fmt.Fprintf(conn, "POST / HTTP/1.1\r\nHost: gw.test\r\n%s\r\n\r\n%s", tc.head, tc.body)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.status)
			}
			var seen string
			select {
			case seen = <-got: // the upstream answered before the gateway did
			default:
			}
			if seen != tc.upstream {
				t.Fatalf("the upstream saw %q, want %q", seen, tc.upstream)
			}
		})
	}
}

// The upstream sees the same request body, with the same framing, whichever
// path served the client.
func TestForwardRequestBodies(t *testing.T) {
	var mu sync.Mutex
	var seenBy string
	be := upstream(t, "u", func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		mu.Lock()
		seenBy = fmt.Sprintf("%s %d %q %q %v", r.Method, r.ContentLength, r.TransferEncoding, b, err)
		mu.Unlock()
	})
	srv, h1, h2 := bothProtocols(t, Config{Backends: []Backend{be}})
	for _, tc := range []struct {
		name, method string
		body         func() io.Reader
		want         string
	}{
		// MultiReader hides the length: the client sends it chunked.
		{"unknown length", "POST", func() io.Reader { return io.MultiReader(strings.NewReader("streamed")) },
			`POST -1 ["chunked"] "streamed" <nil>`},
		{"body on GET", "GET", func() io.Reader { return strings.NewReader("query") }, `GET 5 [] "query" <nil>`},
		{"empty body", "POST", func() io.Reader { return strings.NewReader("") }, `POST 0 [] "" <nil>`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for i, c := range []*http.Client{h1, h2} {
				mu.Lock()
				seenBy = "nothing"
				mu.Unlock()
				req, _ := http.NewRequest(tc.method, srv.URL+"/", tc.body())
				resp, err := c.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				mu.Lock()
				got := seenBy
				mu.Unlock()
				if resp.StatusCode != 200 || got != tc.want {
					t.Errorf("%s: status %d, the upstream saw %s, want %s", paths[i], resp.StatusCode, got, tc.want)
				}
			}
		})
	}
}

// A client that stops in the middle of its body leaves the upstream with a
// failed read, never with a shorter body that looks whole.
func TestForwardClientCutBody(t *testing.T) {
	got := make(chan string, 1)
	be := upstream(t, "u", func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		got <- fmt.Sprintf("%q %v", b, err != nil)
	})
	srv, _ := front(t, Config{Backends: []Backend{be}}, nil)
	for _, tc := range []struct{ name, head, sent string }{
		{"chunked", "Transfer-Encoding: chunked", "3\r\nhel\r\n"},
		{"content-length", "Content-Length: 10", "hel"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, _ := dialRaw(t, srv)
			_, _ = fmt.Fprintf(conn, "POST / HTTP/1.1\r\nHost: gw.test\r\n%s\r\n\r\n%s", tc.head, tc.sent)
			conn.Close()
			select {
			case seen := <-got:
				if !strings.HasSuffix(seen, " true") {
					t.Fatalf("the upstream read %s: a cut body passed for a whole one", seen)
				}
			case <-time.After(20 * time.Second):
				t.Fatal("the upstream never finished reading the body")
			}
		})
	}
}

// Request trailers the client announced reach the upstream with their
// values. (ReverseProxy does not pass them: it sends the upstream its own
// copy of the trailer map, taken before the body, so the values the server
// fills in at the end of the body are not in it.)
func TestForwardRequestTrailers(t *testing.T) {
	got := make(chan string, 1)
	be := upstream(t, "u", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- fmt.Sprintf("%s %v", b, r.Trailer)
	})
	srv, _ := front(t, Config{Backends: []Backend{be}}, nil)
	req, _ := http.NewRequest("POST", srv.URL+"/", io.MultiReader(strings.NewReader("payload")))
	req.Trailer = http.Header{"X-Sum": {"42"}}
	resp, err := client(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if seen := <-got; seen != "payload map[X-Sum:[42]]" {
		t.Fatalf("the upstream got %s, want the body and X-Sum: 42", seen)
	}
}

// A body the upstream echoes while it still reads it (full duplex) comes
// back whole, several MiB of it, to a client that reads in small pieces.
func TestForwardFullDuplexBody(t *testing.T) {
	const size = 8 << 20
	be := upstream(t, "u", func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		if err := rc.EnableFullDuplex(); err != nil {
			t.Error(err)
			return
		}
		w.WriteHeader(200)
		_ = rc.Flush() // the answer starts before the request body is read
		buf := make([]byte, 16<<10)
		for {
			n, err := r.Body.Read(buf)
			if n > 0 {
				if _, werr := w.Write(buf[:n]); werr != nil {
					return
				}
				_ = rc.Flush()
			}
			if err != nil {
				return
			}
		}
	})
	srv, h1, h2 := bothProtocols(t, Config{Backends: []Backend{be}})
	want := sha256.New()
	_, _ = io.Copy(want, &pacedReader{n: size})
	// With Expect: 100-continue an HTTP/1.1 request takes ReverseProxy;
	// its body must come through whole too.
	names := []string{paths[0], paths[1], "HTTP/1.1 with Expect (ReverseProxy)"}
	for i, c := range []*http.Client{h1, h2, h1} {
		req, err := http.NewRequest(http.MethodPost, srv.URL+"/", &pacedReader{n: size})
		if err != nil {
			t.Fatal(err)
		}
		if i == 2 {
			req.Header.Set("Expect", "100-continue")
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", names[i], err)
		}
		sum := sha256.New()
		n, err := io.CopyBuffer(sum, struct{ io.Reader }{resp.Body}, make([]byte, 512))
		resp.Body.Close()
		if err != nil || n != size || !reflect.DeepEqual(sum.Sum(nil), want.Sum(nil)) {
			t.Errorf("%s: echoed %d of %d bytes (%v), same bytes %v", names[i], n, size, err, reflect.DeepEqual(sum.Sum(nil), want.Sum(nil)))
		}
	}
}

// A client that leaves, before the answer or during its body, ends the
// upstream's request too: nothing waits on an upstream nobody reads.
func TestForwardClientGoneEndsUpstreamRequest(t *testing.T) {
	for _, tc := range []struct {
		name    string
		midBody bool
	}{{"before the answer", false}, {"during the body", true}} {
		midBody := tc.midBody
		t.Run(tc.name, func(t *testing.T) {
			started, gone, release := make(chan struct{}), make(chan struct{}), make(chan struct{})
			be := upstream(t, "u", func(w http.ResponseWriter, r *http.Request) {
				if midBody {
					_, _ = io.WriteString(w, "first")
					_ = http.NewResponseController(w).Flush()
				}
				close(started)
				select {
				case <-r.Context().Done():
					close(gone)
				case <-release:
				}
			})
			srv, _ := front(t, Config{Backends: []Backend{be}}, nil)
			t.Cleanup(func() { close(release) }) // before the servers close, if the test failed
			conn, br := dialRaw(t, srv)
			_, _ = io.WriteString(conn, "GET / HTTP/1.1\r\nHost: gw.test\r\n\r\n")
			<-started
			if midBody {
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatal(err)
				}
				b := make([]byte, 5)
				if _, err := io.ReadFull(resp.Body, b); err != nil || string(b) != "first" {
					t.Fatalf("the start of the body: %q, %v", b, err)
				}
			}
			conn.Close()
			select {
			case <-gone:
			case <-time.After(20 * time.Second):
				t.Fatal("the upstream's request is still open after the client left")
			}
		})
	}
}

// Each of several informational answers reaches the client with its own
// fields, in order, before the final answer: on both paths.
func TestForwardRepeatedEarlyHints(t *testing.T) {
	links := []string{"</a.css>; rel=preload", "</b.js>; rel=preload"}
	be := upstream(t, "u", func(w http.ResponseWriter, r *http.Request) {
		for _, l := range links {
			w.Header().Set("Link", l)
			w.WriteHeader(http.StatusEarlyHints)
		}
		w.Header().Del("Link")
		_, _ = io.WriteString(w, "done")
	})
	srv, h1, h2 := bothProtocols(t, Config{Backends: []Backend{be}})
	for i, c := range []*http.Client{h1, h2} {
		resp, b, hh := getWith1xx(t, c, srv.URL+"/")
		var hints []string
		for _, h := range hh {
			hints = append(hints, fmt.Sprintf("%q %q", h["Link"], h["X-Pre"]))
		}
		want := []string{`["</a.css>; rel=preload"] []`, `["</b.js>; rel=preload"] []`}
		if !reflect.DeepEqual(hints, want) {
			t.Errorf("%s: 1xx %q, want %q", paths[i], hints, want)
		}
		if string(b) != "done" || resp.Header["Link"] != nil || resp.Header.Get("X-Pre") != "gateway" {
			t.Errorf("%s: final %q, header %v", paths[i], b, resp.Header)
		}
	}
}

// An HTTP/1.0 client gets no informational answer (RFC 9110 section 15.2:
// it could take one for the final answer); an HTTP/1.1 client does.
func TestEarlyHintsNotSentToHTTP10(t *testing.T) {
	be := upstream(t, "u", earlyHints)
	srv, _ := front(t, Config{Backends: []Backend{be}}, nil)
	for _, tc := range []struct{ proto, first string }{
		{"HTTP/1.1", "HTTP/1.1 103 Early Hints"},
		{"HTTP/1.0", "HTTP/1.0 200 OK"},
	} {
		conn, br := dialRaw(t, srv)
		_, _ = fmt.Fprintf(conn, "GET / %s\r\nHost: gw.test\r\nConnection: close\r\n\r\n", tc.proto)
		if line, _ := readHead(t, br); line != tc.first {
			t.Errorf("%s client: first answer %q, want %q", tc.proto, line, tc.first)
		}
	}
}

// A status below 100, which net/http's server refuses to write (it panics),
// is the upstream's error: the client gets 502 on both paths.
func TestUpstreamStatusBelow100IsBadGateway(t *testing.T) {
	be := upstream(t, "u", hijacked("HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n"))
	srv, h1, h2 := bothProtocols(t, Config{Backends: []Backend{be}})
	for _, c := range []*http.Client{h1, h2} {
		resp, body := do(t, c, "GET", srv.URL+"/", nil)
		wantProblem(t, resp, body, http.StatusBadGateway, "upstream_error")
	}
}

// The request target reaches the upstream byte for byte as ReverseProxy
// sends it: escapes kept as the client wrote them (%2F, lower-case hex,
// UTF-8), sub-delimiters raw, the query untouched when it is safe, and an
// empty query kept.
func TestForwardRequestTargetBytes(t *testing.T) {
	var mu sync.Mutex
	var uri string
	be := upstream(t, "u", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		uri = r.RequestURI
		mu.Unlock()
	})
	srv, h1, h2 := bothProtocols(t, Config{Backends: []Backend{be}})
	for _, target := range []string{
		"/a%2Fb/c",
		"/a%2fb",
		"/sp%20ace/caf%C3%A9/%7Euser",
		"/a+b/semi;colon/it's(1)*,$!@:=&",
		"/q?x=a+b&y=%2B&z=%20&u=%7e&v=caf%C3%A9&x=2",
		"/q?",
		"/q?a&&b=&=c",
		"/q?k=`|^{}",
	} {
		for i, c := range []*http.Client{h1, h2} {
			req, _ := http.NewRequest("GET", srv.URL, nil)
			path, query, hasQuery := strings.Cut(target, "?")
			req.URL.Opaque, req.URL.RawQuery, req.URL.ForceQuery = path, query, hasQuery
			resp, err := c.Do(req)
			if err != nil {
				t.Fatalf("%s %s: %v", paths[i], target, err)
			}
			resp.Body.Close()
			mu.Lock()
			got := uri
			mu.Unlock()
			if resp.StatusCode != 200 || got != target {
				t.Errorf("%s: sent %s, status %d, the upstream saw %s", paths[i], target, resp.StatusCode, got)
			}
		}
	}
}
