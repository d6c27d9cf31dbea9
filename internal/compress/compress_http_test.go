package compress

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"
	"time"
)

// serveHTTP starts a real HTTP server (127.0.0.1) with the stage (all
// codings, 1 KiB minimum) in front of h. Its client does not decode
// bodies, so tests see the bytes on the wire.
func serveHTTP(t *testing.T, h http.Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(middleware(t, all, 1024)(h))
	t.Cleanup(srv.Close)
	srv.Client().Transport.(*http.Transport).DisableCompression = true
	return srv
}

func get(t *testing.T, srv *httptest.Server, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest("GET", srv.URL+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Add(hdr[i], hdr[i+1])
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

// A file server behind the stage: a full answer is encoded and stops
// offering byte ranges (they would be ranges of the identity body); a
// range request still gets its identity 206 slice.
func TestHTTPServeContentRanges(t *testing.T) {
	t.Parallel()
	srv := serveHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Etag", `"v1"`)
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(jsonBody))
	}))
	full, body := get(t, srv, "Accept-Encoding", "gzip")
	if full.StatusCode != 200 || full.Header.Get("Content-Encoding") != Gzip {
		t.Fatalf("status %d, Content-Encoding %q", full.StatusCode, full.Header.Get("Content-Encoding"))
	}
	if got := full.Header.Get("Accept-Ranges"); got != "" {
		t.Fatalf("Accept-Ranges %q on an encoded body", got)
	}
	if got := decode(t, Gzip, body); !bytes.Equal(got, jsonBody) {
		t.Fatal("round trip changed the body")
	}
	part, body := get(t, srv, "Accept-Encoding", "gzip", "Range", "bytes=0-99")
	if part.StatusCode != http.StatusPartialContent || part.Header.Get("Content-Encoding") != "" {
		t.Fatalf("range: status %d, Content-Encoding %q", part.StatusCode, part.Header.Get("Content-Encoding"))
	}
	if !bytes.Equal(body, jsonBody[:100]) || part.Header.Get("Content-Range") == "" {
		t.Fatalf("range: Content-Range %q, body %q", part.Header.Get("Content-Range"), body)
	}
	// A strong If-Range still matches the identity representation.
	again, _ := get(t, srv, "Accept-Encoding", "gzip", "Range", "bytes=0-99", "If-Range", `"v1"`)
	if again.StatusCode != http.StatusPartialContent {
		t.Fatalf("If-Range with the strong tag: status %d", again.StatusCode)
	}
}

// The upstream's Vary is merged: Accept-Encoding is listed once whatever
// its case, and "Vary: *" already covers it.
func TestHTTPVaryMergedWithUpstream(t *testing.T) {
	t.Parallel()
	tests := []struct{ upstream, want string }{
		{"accept-encoding", "accept-encoding"},
		{"Origin, ACCEPT-ENCODING", "Origin, ACCEPT-ENCODING"},
		{"*", "*"},
	}
	for _, tc := range tests {
		t.Run(tc.upstream, func(t *testing.T) {
			t.Parallel()
			srv := serveHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				w.Header().Set("Vary", tc.upstream)
				_, _ = w.Write(jsonBody)
			}))
			for _, ae := range []string{"br", ""} { // encoded, and passed as is
				resp, _ := get(t, srv, "Accept-Encoding", ae)
				if got := strings.Join(resp.Header.Values("Vary"), ", "); got != tc.want {
					t.Fatalf("Accept-Encoding %q: Vary %q, want %q", ae, got, tc.want)
				}
			}
		})
	}
}

// A handler that flushes before writing (the proxy does for every answer
// of unknown length) sends the header before any byte could be sniffed.
// Without a Content-Type the type is unknown then: the answer must not be
// labelled text/plain and encoded, as a binary stream would arrive
// mislabelled. (net/http itself sends no Content-Type then.)
func TestHTTPFlushBeforeBodyWithoutType(t *testing.T) {
	t.Parallel()
	png := append([]byte("\x89PNG\r\n\x1a\n"), bytes.Repeat([]byte{0}, 4096)...)
	tests := []struct {
		name string
		set  func(http.Header)
	}{
		{"no Content-Type", func(http.Header) {}},
		{"sniffing suppressed", func(h http.Header) { h["Content-Type"] = nil }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := serveHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				tc.set(w.Header())
				w.WriteHeader(http.StatusOK)
				http.NewResponseController(w).Flush()
				_, _ = w.Write(png)
			}))
			resp, body := get(t, srv, "Accept-Encoding", "gzip")
			if ce, ct := resp.Header.Get("Content-Encoding"), resp.Header.Get("Content-Type"); ce != "" || ct != "" {
				t.Fatalf("Content-Encoding %q, Content-Type %q on a body of unknown type", ce, ct)
			}
			if !bytes.Equal(body, png) {
				t.Fatal("body changed")
			}
		})
	}
}

// A WebSocket handshake proxied through the stage (every coding accepted,
// no minimum) reaches the client as the upstream's 101, and the tunnel
// behind it carries bytes both ways: the proxy hijacks the connection
// through the wrapper (http.ResponseController and Unwrap).
func TestHTTPUpgradeThroughTheStage(t *testing.T) {
	t.Parallel()
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Upgrade", "websocket")
		w.Header().Set("Connection", "Upgrade")
		w.WriteHeader(http.StatusSwitchingProtocols)
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		line, _ := brw.ReadString('\n')
		_, _ = brw.WriteString("echo " + line)
		_ = brw.Flush()
	}))
	defer up.Close()
	target, _ := url.Parse(up.URL)
	gw := httptest.NewServer(middleware(t, all, 0)(httputil.NewSingleHostReverseProxy(target)))
	defer gw.Close()
	c, err := net.Dial("tcp", gw.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	_, _ = io.WriteString(c, "GET / HTTP/1.1\r\nHost: gw.test\r\nAccept-Encoding: gzip, br, zstd\r\n"+
		"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Content-Encoding") != "" || resp.Header.Get("Vary") != "" {
		t.Fatalf("status %d, Content-Encoding %q, Vary %q", resp.StatusCode, resp.Header.Get("Content-Encoding"), resp.Header.Get("Vary"))
	}
	_, _ = io.WriteString(c, "hello\n")
	if line, err := br.ReadString('\n'); line != "echo hello\n" {
		t.Fatalf("through the tunnel: %q, %v", line, err)
	}
}

// The upstream's digests are of its identity bytes: on an encoded answer
// they would fail a client's integrity check, so they go; an answer
// passed as is keeps them.
func TestHTTPDigestsDroppedWhenEncoding(t *testing.T) {
	t.Parallel()
	srv := serveHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Digest", "sha-256=:AAAA:")
		w.Header().Set("Repr-Digest", "sha-256=:BBBB:")
		w.Header().Set("Digest", "SHA-256=CCCC")
		_, _ = w.Write(jsonBody)
	}))
	resp, _ := get(t, srv, "Accept-Encoding", "gzip")
	if resp.Header.Get("Content-Encoding") != "gzip" {
		t.Fatalf("not encoded: %v", resp.Header)
	}
	for _, k := range []string{"Content-Digest", "Repr-Digest", "Digest"} {
		if v := resp.Header.Get(k); v != "" {
			t.Errorf("encoded answer carries the identity body's %s %q", k, v)
		}
	}
	resp, _ = get(t, srv, "Accept-Encoding", "identity")
	if resp.Header.Get("Content-Digest") == "" || resp.Header.Get("Digest") == "" {
		t.Errorf("an answer passed as is lost its digests: %v", resp.Header)
	}
}
