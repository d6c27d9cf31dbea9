package problem

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/portico-gw/portico/internal/reqctx"
)

func TestWriteProblemJSON(t *testing.T) {
	ctx, info := reqctx.NewContext(context.Background())
	info.RequestID = "req-1"
	r := httptest.NewRequest(http.MethodGet, "/x", nil).WithContext(ctx)
	w := httptest.NewRecorder()
	e := New(http.StatusTooManyRequests, "rate_limited", "slow down")
	e.RetryAfter = 1500 * time.Millisecond
	e.Extra = map[string]any{"violated-policies": []string{"per-ip"}, "status": 999}
	Write(w, r, e)

	if w.Code != 429 || w.Header().Get("Content-Type") != "application/problem+json" || w.Header().Get("Retry-After") != "2" {
		t.Fatalf("status %d, headers %v", w.Code, w.Header())
	}
	var body map[string]any
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"type": "urn:portico:problem:rate_limited", "title": "Too Many Requests", "status": float64(429),
		"detail": "slow down", "request_id": "req-1"}
	for k, v := range want {
		if body[k] != v {
			t.Errorf("%s = %v, want %v", k, body[k], v)
		}
	}
	if vp, ok := body["violated-policies"].([]any); !ok || len(vp) != 1 || vp[0] != "per-ip" {
		t.Errorf("violated-policies = %v", body["violated-policies"])
	}
}

func TestWriteKeepsCallerRetryAfter(t *testing.T) {
	w := httptest.NewRecorder()
	w.Header().Set("Retry-After", "30")
	e := New(http.StatusServiceUnavailable, "x", "y")
	e.RetryAfter = time.Second
	Write(w, httptest.NewRequest(http.MethodGet, "/", nil), e)
	if got := w.Header().Get("Retry-After"); got != "30" {
		t.Errorf("Retry-After = %q, want the caller's 30", got)
	}
}

func TestWriteGRPC(t *testing.T) {
	r := httptest.NewRequest(http.MethodPost, "/pkg.Svc/Method", nil)
	r.ProtoMajor = 2
	r.Header.Set("Content-Type", "application/grpc+proto")
	w := httptest.NewRecorder()
	Write(w, r, New(http.StatusGatewayTimeout, "upstream_timeout", "late"))
	if w.Code != 200 || w.Header().Get("Grpc-Status") != "4" || w.Body.Len() != 0 {
		t.Errorf("gRPC error: %d %v %q", w.Code, w.Header(), w.Body.String())
	}
	w = httptest.NewRecorder()
	Write(w, r, New(http.StatusInternalServerError, "internal_error", "100% broken: é"))
	if w.Header().Get("Grpc-Status") != "13" || w.Header().Get("Grpc-Message") != "100%25 broken: %C3%A9" {
		t.Errorf("gRPC internal error: %v", w.Header())
	}
	// gRPC-Web is read by browsers as HTTP: it gets problem+json.
	r.Header.Set("Content-Type", "application/grpc-web+proto")
	w = httptest.NewRecorder()
	Write(w, r, New(http.StatusNotFound, "route_not_found", "no route"))
	if w.Code != 404 || w.Header().Get("Content-Type") != "application/problem+json" {
		t.Errorf("gRPC-Web error: %d %v", w.Code, w.Header())
	}
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

func TestFromUpstream(t *testing.T) {
	own := New(http.StatusServiceUnavailable, "breaker_open", "paused")
	cases := []struct {
		err    error
		status int
	}{
		{fmt.Errorf("wrapped: %w", own), 503},
		{context.DeadlineExceeded, 504},
		{&net.OpError{Op: "read", Err: timeoutErr{}}, 504},
		{context.Canceled, StatusClientClosed},
		{&net.OpError{Op: "dial", Err: errors.New("connection refused")}, 502},
		{errors.New("malformed HTTP response"), 502},
	}
	for _, c := range cases {
		if got := FromUpstream(c.err); got.Status != c.status || !errors.Is(got, c.err) && got != own {
			t.Errorf("FromUpstream(%v) = %d, want %d", c.err, got.Status, c.status)
		}
	}
}

// TestBodyEscaping: details echo request data; the hand-written encoder must
// produce valid JSON that decodes to the same text encoding/json would.
func TestBodyEscaping(t *testing.T) {
	for _, detail := range []string{
		`plain`, `quote " and \ backslash`, "ctrl \x00\x01\n\t\x1f", `<script>&</script>`,
		"utf8 é ✓ \u2028\u2029", "bad utf8 \xff\xfe end", "",
	} {
		checkDetail(t, detail)
	}
}

func FuzzBody(f *testing.F) {
	f.Add("no route matches GET /x", "code")
	f.Add("\xff<\"\\>", "a\"b")
	f.Fuzz(func(t *testing.T, detail, code string) {
		checkDetail(t, detail)
		b := appendBody(nil, 400, &Error{Status: 400, Code: code, Detail: detail}, "id")
		if !json.Valid(b) {
			t.Fatalf("invalid JSON for code %q: %s", code, b)
		}
	})
}

func checkDetail(t *testing.T, detail string) {
	t.Helper()
	b := appendBody(nil, 404, &Error{Status: 404, Code: "route_not_found", Detail: detail}, "r1")
	var got struct{ Detail string }
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatalf("invalid JSON for %q: %v: %s", detail, err, b)
	}
	want, _ := json.Marshal(detail)
	var wantS string
	_ = json.Unmarshal(want, &wantS)
	if got.Detail != wantS {
		t.Errorf("detail %q decoded as %q, want %q", detail, got.Detail, wantS)
	}
}

func BenchmarkWrite(b *testing.B) {
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	e := New(http.StatusTooManyRequests, "rate_limited", "the rate limit of policy per-ip is exhausted")
	e.RetryAfter = time.Second
	b.ReportAllocs()
	for b.Loop() {
		w := httptest.NewRecorder()
		Write(w, r, e)
	}
}
