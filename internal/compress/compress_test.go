package compress

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"testing"
	"time"

	"github.com/andybalholm/brotli"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var all = []string{Zstd, Brotli, Gzip}

func TestNegotiate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		ae    string
		prefs []string
		want  string
	}{
		{"", all, ""},
		{"gzip", all, "gzip"},
		{"gzip, deflate, br", all, "br"},
		{"gzip, deflate, br, zstd", all, "zstd"},
		{"gzip, br, zstd", []string{Gzip, Brotli, Zstd}, "gzip"},
		{"br;q=0.5, gzip;q=0.8", all, "gzip"},
		{"br;q=0.8, gzip;q=0.8", []string{Gzip, Brotli}, "gzip"},
		{"br;q=0.8, gzip;q=0.8", []string{Brotli, Gzip}, "br"},
		{"*", all, "zstd"},
		{"*;q=0.5, zstd;q=0", all, "br"},
		{"*;q=0", all, ""},
		{"identity", all, ""},
		{"identity;q=0, gzip;q=0.1", all, "gzip"},
		{"identity;q=1, gzip;q=0.5", all, ""},
		{"identity;q=0.5, gzip;q=0.5", all, "gzip"},
		{"gzip;q=0", all, ""},
		{"x-gzip", all, "gzip"},
		{"GZIP;Q=1.0", all, "gzip"},
		{"gzip;q=1.001", all, ""},
		{"gzip;q=2", all, ""},
		{"gzip;q=0.0001", all, ""},
		{"gzip;q=abc, br", all, "br"},
		{"gzip ; q=0.9 , br ; q=0.2", all, "gzip"},
		{"deflate, compress", all, ""},
		{",,, ,gzip", all, "gzip"},
		{"gzip;level=9;q=0.3, br;q=0.2", all, "gzip"},
		{"gzip, gzip;q=0", all, "gzip"},
		{"zstd", nil, ""},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%q %v", tc.ae, tc.prefs), func(t *testing.T) {
			t.Parallel()
			if got := Negotiate(tc.ae, tc.prefs); got != tc.want {
				t.Fatalf("Negotiate(%q, %v) = %q, want %q", tc.ae, tc.prefs, got, tc.want)
			}
		})
	}
}

func TestNegotiateAllocs(t *testing.T) {
	if n := testing.AllocsPerRun(100, func() { Negotiate("gzip;q=0.8, deflate, br;q=0.9, zstd", all) }); n != 0 {
		t.Fatalf("Negotiate allocates %v times", n)
	}
}

func decode(t *testing.T, coding string, body []byte) []byte {
	t.Helper()
	var r io.Reader
	switch coding {
	case Gzip:
		zr, err := gzip.NewReader(bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		r = zr
	case Brotli:
		r = brotli.NewReader(bytes.NewReader(body))
	case Zstd:
		zr, err := zstd.NewReader(bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer zr.Close()
		r = zr
	case "":
		return body
	default:
		t.Fatalf("unknown coding %q", coding)
	}
	out, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("decoding %s: %v", coding, err)
	}
	return out
}

func middleware(t testing.TB, encs []string, min int64) func(http.Handler) http.Handler {
	t.Helper()
	mw, err := Middleware(encs, min, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	return mw
}

var jsonBody = []byte(`{"items":[` + strings.Repeat(`{"id":1234567890,"text":"hello world"},`, 100) + `{"id":0}]}`)

func TestRoundTrip(t *testing.T) {
	t.Parallel()
	for _, coding := range all {
		t.Run(coding, func(t *testing.T) {
			t.Parallel()
			h := middleware(t, all, 1024)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				w.Header().Set("Content-Length", fmt.Sprint(len(jsonBody)))
				w.Header().Set("Etag", `"v1"`)
				// Several writes, crossing the minimum in the middle.
				_, _ = w.Write(jsonBody[:700])
				_, _ = w.Write(jsonBody[700:])
			}))
			r := httptest.NewRequest("GET", "/", nil)
			r.Header.Set("Accept-Encoding", coding)
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, r)
			if got := rec.Header().Get("Content-Encoding"); got != coding {
				t.Fatalf("Content-Encoding %q, want %q", got, coding)
			}
			if rec.Header().Get("Content-Length") != "" {
				t.Fatal("Content-Length kept on an encoded body")
			}
			if rec.Header().Get("Vary") != "Accept-Encoding" {
				t.Fatalf("Vary %q", rec.Header().Get("Vary"))
			}
			if rec.Header().Get("Etag") != `W/"v1"` {
				t.Fatalf("Etag %q, want it weakened", rec.Header().Get("Etag"))
			}
			if rec.Body.Len() >= len(jsonBody)/2 {
				t.Fatalf("encoded %d bytes into %d", len(jsonBody), rec.Body.Len())
			}
			if got := decode(t, coding, rec.Body.Bytes()); !bytes.Equal(got, jsonBody) {
				t.Fatalf("round trip changed the body: %q", got)
			}
		})
	}
}

func TestPassThrough(t *testing.T) {
	t.Parallel()
	big := bytes.Repeat([]byte("a"), 4096)
	tests := []struct {
		name        string
		method      string
		ae          string
		status      int
		header      map[string]string
		body        []byte
		wantVary    bool
		wantLength  bool
		wantCT      string
		wantEncoded string // Content-Encoding expected ("" none)
	}{
		{"below minimum", "GET", "gzip", 200, map[string]string{"Content-Type": "application/json"}, []byte(`{"a":1}`), true, true, "", ""},
		{"declared length below minimum", "GET", "gzip", 200, map[string]string{"Content-Type": "application/json", "Content-Length": "7"}, []byte(`{"a":1}`), true, true, "", ""},
		{"client accepts nothing", "GET", "", 200, map[string]string{"Content-Type": "text/plain"}, big, true, true, "", ""},
		{"client accepts only other", "GET", "deflate", 200, map[string]string{"Content-Type": "text/plain"}, big, true, true, "", ""},
		{"already encoded", "GET", "gzip", 200, map[string]string{"Content-Type": "text/plain", "Content-Encoding": "br"}, big, false, true, "", "br"},
		{"image", "GET", "gzip", 200, map[string]string{"Content-Type": "image/png"}, big, false, true, "", ""},
		{"event stream", "GET", "gzip", 200, map[string]string{"Content-Type": "text/event-stream"}, big, false, true, "", ""},
		{"no-transform", "GET", "gzip", 200, map[string]string{"Content-Type": "text/plain", "Cache-Control": "public, no-transform"}, big, false, true, "", ""},
		{"partial content", "GET", "gzip", 206, map[string]string{"Content-Type": "text/plain", "Content-Range": "bytes 0-4095/9999"}, big, false, true, "", ""},
		// RFC 9110 section 15.4.5: a 304 carries the Vary its 200 would.
		{"not modified", "GET", "gzip", 304, nil, nil, true, false, "", ""},
		{"not modified image", "GET", "gzip", 304, map[string]string{"Content-Type": "image/png"}, nil, false, false, "", ""},
		{"no content", "GET", "gzip", 204, nil, nil, false, false, "", ""},
		{"HEAD", "HEAD", "gzip", 200, map[string]string{"Content-Type": "text/plain", "Content-Length": "4096"}, nil, true, true, "", ""},
		{"sniffed binary", "GET", "gzip", 200, nil, append([]byte("\x89PNG\r\n\x1a\n"), big...), false, false, "image/png", ""},
		{"sniffed text is compressed", "GET", "gzip", 200, nil, big, true, false, "text/plain; charset=utf-8", "gzip"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := middleware(t, all, 1024)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				for k, v := range tc.header {
					w.Header().Set(k, v)
				}
				if tc.body != nil && w.Header().Get("Content-Length") == "" && tc.header["Content-Type"] != "" {
					w.Header().Set("Content-Length", fmt.Sprint(len(tc.body)))
				}
				w.WriteHeader(tc.status)
				_, _ = w.Write(tc.body)
			}))
			r := httptest.NewRequest(tc.method, "/", nil)
			if tc.ae != "" {
				r.Header.Set("Accept-Encoding", tc.ae)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, r)
			if rec.Code != tc.status {
				t.Fatalf("status %d", rec.Code)
			}
			if got := rec.Header().Get("Content-Encoding"); got != tc.wantEncoded {
				t.Fatalf("Content-Encoding %q, want %q", got, tc.wantEncoded)
			}
			if got := rec.Header().Get("Vary") == "Accept-Encoding"; got != tc.wantVary {
				t.Fatalf("Vary %q, want present=%v", rec.Header().Get("Vary"), tc.wantVary)
			}
			if got := rec.Header().Get("Content-Length") != ""; got != tc.wantLength {
				t.Fatalf("Content-Length %q, want present=%v", rec.Header().Get("Content-Length"), tc.wantLength)
			}
			if tc.wantCT != "" && rec.Header().Get("Content-Type") != tc.wantCT {
				t.Fatalf("Content-Type %q, want %q", rec.Header().Get("Content-Type"), tc.wantCT)
			}
			coding := tc.wantEncoded
			if tc.header["Content-Encoding"] != "" {
				coding = "" // the handler's own encoding passes untouched
			}
			if got := decode(t, coding, rec.Body.Bytes()); !bytes.Equal(got, tc.body) {
				t.Fatalf("body changed: %d bytes, want %d", len(got), len(tc.body))
			}
		})
	}
}

func TestAcceptEncodingLines(t *testing.T) {
	t.Parallel()
	h := middleware(t, all, 0)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(jsonBody)
	}))
	r := httptest.NewRequest("GET", "/", nil)
	r.Header.Add("Accept-Encoding", "gzip;q=0.5")
	r.Header.Add("Accept-Encoding", "br")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, r)
	if got := rec.Header().Get("Content-Encoding"); got != Brotli {
		t.Fatalf("two Accept-Encoding lines gave %q, want br from the second line", got)
	}
}

func TestVaryMerged(t *testing.T) {
	t.Parallel()
	h := middleware(t, all, 0)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Vary", "Origin")
		_, _ = w.Write(jsonBody)
	}))
	r := httptest.NewRequest("GET", "/", nil)
	r.Header.Set("Accept-Encoding", "gzip")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, r)
	if got := rec.Header().Values("Vary"); len(got) != 2 || got[0] != "Origin" || got[1] != "Accept-Encoding" {
		t.Fatalf("Vary %q", got)
	}
}

func TestMinimumZero(t *testing.T) {
	t.Parallel()
	h := middleware(t, []string{Gzip}, 0)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{}`))
	}))
	r := httptest.NewRequest("GET", "/", nil)
	r.Header.Set("Accept-Encoding", "gzip")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, r)
	if rec.Header().Get("Content-Encoding") != "gzip" || string(decode(t, Gzip, rec.Body.Bytes())) != `{}` {
		t.Fatalf("minimum 0 did not compress a tiny body: %v", rec.Header())
	}
}

func TestMiddlewareErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		encs []string
		min  int64
		want string
	}{
		{[]string{"deflate"}, 0, "unknown coding"},
		{[]string{Gzip, Gzip}, 0, "twice"},
		{[]string{Gzip}, -1, "negative"},
		{[]string{Gzip}, 1 << 30, "larger than"},
	}
	for _, tc := range tests {
		if _, err := Middleware(tc.encs, tc.min, Deps{}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Middleware(%v, %d): error %v, want %q", tc.encs, tc.min, err, tc.want)
		}
	}
	mw, err := Middleware(nil, 0, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	inner := http.NotFoundHandler()
	if fmt.Sprint(mw(inner)) != fmt.Sprint(inner) {
		t.Fatal("no codings must return the handler itself")
	}
}

// TestStreamingFlush checks, over a real connection, that flushed chunks
// reach the client through the encoder before the handler ends, and that
// http.ResponseController works through the wrapper.
func TestStreamingFlush(t *testing.T) {
	for _, coding := range all {
		t.Run(coding, func(t *testing.T) {
			next := make(chan struct{})
			srv := httptest.NewServer(middleware(t, all, 1<<20)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				rc := http.NewResponseController(w)
				if err := rc.SetWriteDeadline(time.Now().Add(5 * time.Second)); err != nil {
					t.Errorf("SetWriteDeadline through the wrapper: %v", err)
				}
				w.Header().Set("Content-Type", "application/x-ndjson")
				for i := range 3 {
					fmt.Fprintf(w, "{\"n\":%d}\n", i)
					if err := rc.Flush(); err != nil {
						t.Errorf("Flush: %v", err)
					}
					select {
					case <-next:
					case <-r.Context().Done():
						return
					}
				}
			})))
			defer srv.Close()
			tr := &http.Transport{DisableCompression: true}
			defer tr.CloseIdleConnections()
			req, _ := http.NewRequest("GET", srv.URL, nil)
			req.Header.Set("Accept-Encoding", coding)
			resp, err := tr.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.Header.Get("Content-Encoding") != coding {
				t.Fatalf("Content-Encoding %q", resp.Header.Get("Content-Encoding"))
			}
			var dec io.Reader
			switch coding {
			case Gzip:
				zr, err := gzip.NewReader(resp.Body)
				if err != nil {
					t.Fatal(err)
				}
				dec = zr
			case Brotli:
				dec = brotli.NewReader(resp.Body)
			case Zstd:
				zr, err := zstd.NewReader(resp.Body)
				if err != nil {
					t.Fatal(err)
				}
				defer zr.Close()
				dec = zr
			}
			br := bufio.NewReader(dec)
			for i := range 3 {
				line, err := br.ReadString('\n')
				if err != nil {
					t.Fatalf("line %d: %v", i, err)
				}
				if want := fmt.Sprintf("{\"n\":%d}\n", i); line != want {
					t.Fatalf("line %q, want %q", line, want)
				}
				next <- struct{}{} // the handler waits: this line came from a flush
			}
			if rest, err := io.ReadAll(br); err != nil || len(rest) != 0 {
				t.Fatalf("trailing %q, %v", rest, err)
			}
		})
	}
}

// TestInformationalAndFlusher checks, over a real connection, that a 103
// Early Hints passes at once (the final status is still decided later) and
// that a plain http.Flusher assertion, as older handlers do, flushes
// through the encoder.
func TestInformationalAndFlusher(t *testing.T) {
	srv := httptest.NewServer(middleware(t, all, 1<<20)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</app.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"part":1}`))
		f, ok := w.(http.Flusher)
		if !ok {
			t.Error("the wrapper is not an http.Flusher")
			return
		}
		f.Flush()
		_, _ = w.Write([]byte(`{"part":2}`))
	})))
	defer srv.Close()
	tr := &http.Transport{DisableCompression: true}
	defer tr.CloseIdleConnections()
	var hints []int
	ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
		Got1xxResponse: func(code int, _ textproto.MIMEHeader) error { hints = append(hints, code); return nil },
	})
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL, nil)
	req.Header.Set("Accept-Encoding", "gzip")
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if len(hints) != 1 || hints[0] != http.StatusEarlyHints {
		t.Fatalf("informational responses %v, want [103]", hints)
	}
	if resp.StatusCode != 200 || resp.Header.Get("Content-Encoding") != "gzip" {
		t.Fatalf("status %d, Content-Encoding %q", resp.StatusCode, resp.Header.Get("Content-Encoding"))
	}
	if got := string(decode(t, Gzip, body)); got != `{"part":1}{"part":2}` {
		t.Fatalf("body %q", got)
	}
}

func TestCompressibleTypes(t *testing.T) {
	for ct, want := range map[string]bool{
		"application/json": true, "application/problem+json": true, "text/html; charset=utf-8": true,
		"text/event-stream": false, "image/png": false, "application/grpc": false,
		"application/grpc+json": false, "application/grpc-web+proto": false,
	} {
		if got := Compressible(ct); got != want {
			t.Errorf("Compressible(%q) = %v, want %v", ct, got, want)
		}
	}
}

// A 304 answering a revalidation of the compressed variant (If-None-Match
// with the weak tag only that variant carries) gets the weak tag too, so
// the cache keeps a weak validator for the compressed body; a client that
// holds the identity body keeps the strong one.
func TestNotModifiedKeepsTheVariantsValidator(t *testing.T) {
	t.Parallel()
	h := middleware(t, all, 1024)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Etag", `"v1"`)
		w.WriteHeader(http.StatusNotModified)
	}))
	for _, tc := range []struct{ inm, want string }{
		{`W/"v1"`, `W/"v1"`},
		{`"v0", W/"v1"`, `W/"v1"`},
		{`"v1"`, `"v1"`},
		{``, `"v1"`},
	} {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.Header.Set("Accept-Encoding", "gzip")
		if tc.inm != "" {
			r.Header.Set("If-None-Match", tc.inm)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		if got := rec.Header().Get("Etag"); rec.Code != http.StatusNotModified || got != tc.want {
			t.Errorf("If-None-Match %s: %d ETag %s, want 304 %s", tc.inm, rec.Code, got, tc.want)
		}
	}
}
