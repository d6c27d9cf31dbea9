package compress

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
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
