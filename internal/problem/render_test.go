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
