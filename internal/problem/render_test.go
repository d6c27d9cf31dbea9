package problem

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/portico-gw/portico/internal/reqctx"
)

// TestUpstreamErrorsRenderWithoutCause: the 5xx answers of failed upstream
// exchanges are complete problem documents whose text never carries the
// private cause (addresses, internal error strings), and the headers the
// proxy may have copied from a half-read upstream answer do not survive.
func TestUpstreamErrorsRenderWithoutCause(t *testing.T) {
	const secret = "10.9.8.7:6543"
	causes := []error{
		fmt.Errorf("dial tcp %s: %w", secret, syscall.ECONNREFUSED),
		&net.OpError{Op: "read", Net: "tcp", Addr: fakeAddr(secret), Err: errors.New("connection reset by peer")},
		fmt.Errorf("roundtrip to %s: %w", secret, context.DeadlineExceeded),
		errors.New("malformed HTTP response from " + secret),
	}
	for _, cause := range causes {
		t.Run(cause.Error(), func(t *testing.T) {
			ctx, info := reqctx.NewContext(context.Background())
			info.RequestID = "rid-7"
			r := httptest.NewRequest(http.MethodGet, "/x", nil).WithContext(ctx)
			w := httptest.NewRecorder()
			w.Header().Set("Content-Encoding", "gzip")
			w.Header().Set("Content-Length", "99999")
			e := FromUpstream(cause)
			if e.Status < 500 {
				t.Fatalf("FromUpstream(%v) = %d, want a 5xx", cause, e.Status)
			}
			Write(w, r, e)

			body := w.Body.String()
			if strings.Contains(body, secret) || strings.Contains(body, cause.Error()) {
				t.Errorf("body leaks the cause: %s", body)
			}
			if got := w.Header().Get("Content-Encoding"); got != "" {
				t.Errorf("Content-Encoding %q kept on a problem body", got)
			}
			if got := w.Header().Get("Content-Length"); got != strconv.Itoa(len(body)) {
				t.Errorf("Content-Length %q, body is %d bytes", got, len(body))
			}
			if got := w.Header().Get("X-Content-Type-Options"); got != "nosniff" {
				t.Errorf("X-Content-Type-Options %q", got)
			}
			var doc map[string]any
			if err := json.Unmarshal(w.Body.Bytes(), &doc); err != nil {
				t.Fatalf("invalid JSON: %v: %s", err, body)
			}
			want := map[string]any{
				"type": "urn:portico:problem:" + e.Code, "title": http.StatusText(w.Code),
				"status": float64(w.Code), "detail": e.Detail, "request_id": "rid-7",
			}
			for k, v := range want {
				if doc[k] != v {
					t.Errorf("%s = %v, want %v", k, doc[k], v)
				}
			}
			if len(doc) != len(want) {
				t.Errorf("unexpected members: %v", doc)
			}
		})
	}
}

type fakeAddr string

func (a fakeAddr) Network() string { return "tcp" }
func (a fakeAddr) String() string  { return string(a) }

// TestHTTPErrorsAreNotStored: the gateway's errors describe one request at
// one moment (a route missing until the next reload, a full upstream, the
// request id in the body), yet 404, 405, 414 and 501 are heuristically
// cacheable (RFC 9111 section 4.2.2) and shared caches do store them
// without a Cache-Control. A Cache-Control the caller set (response_headers)
// stays.
func TestHTTPErrorsAreNotStored(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if cc := r.URL.Query().Get("cc"); cc != "" {
			w.Header().Set("Cache-Control", cc)
		}
		status, _ := strconv.Atoi(r.URL.Query().Get("status"))
		Write(w, r, New(status, "x", "no"))
	}))
	defer srv.Close()
	for _, tc := range []struct{ query, want string }{
		{"status=404", "no-store"},
		{"status=405", "no-store"},
		{"status=503", "no-store"},
		{"status=404&cc=max-age%3D5", "max-age=5"},
	} {
		resp, err := srv.Client().Get(srv.URL + "/?" + tc.query)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if got := strings.Join(resp.Header.Values("Cache-Control"), ", "); got != tc.want {
			t.Errorf("%s: Cache-Control %q, want %q", tc.query, got, tc.want)
		}
	}
}
