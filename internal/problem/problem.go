// Package problem is the gateway's one error type and the one place that
// renders it: RFC 9457 application/problem+json for HTTP clients and
// grpc-status trailers for gRPC clients. Every stage returns or writes a
// *problem.Error; none formats an error body itself.
package problem

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/portico-gw/portico/internal/reqctx"
)

// StatusClientClosed is the status logged (never sent) when the client went
// away before the gateway answered, as nginx does.
const StatusClientClosed = 499

// Error is a gateway error: a status, a stable machine code, a public detail
// and the private cause (logged, never sent).
type Error struct {
	Status int
	// Code is a stable lower_snake identifier; the problem "type" is
	// "urn:portico:problem:" + Code.
	Code string
	// Detail is safe to show to the client.
	Detail string
	// Cause is the underlying error, for logs.
	Cause error
	// Extra members added to the problem body (e.g. "violated-policies").
	Extra map[string]any
	// RetryAfter, when positive, is sent as Retry-After in whole seconds,
	// rounded up (503 and 429 answers), unless the caller set one already.
	RetryAfter time.Duration
}

// New returns an Error.
func New(status int, code, detail string) *Error {
	return &Error{Status: status, Code: code, Detail: detail}
}

// Wrap returns an Error with cause attached.
func Wrap(status int, code, detail string, cause error) *Error {
	return &Error{Status: status, Code: code, Detail: detail, Cause: cause}
}

func (e *Error) Error() string {
	if e.Cause != nil {
		return fmt.Sprintf("%d %s: %s: %v", e.Status, e.Code, e.Detail, e.Cause)
	}
	return fmt.Sprintf("%d %s: %s", e.Status, e.Code, e.Detail)
}

func (e *Error) Unwrap() error { return e.Cause }

// FromUpstream maps a failed upstream exchange to the error a client gets:
// deadline 504, client gone 499, anything else (dial, reset, bad response)
// 502. An *Error anywhere in the chain is returned as it is.
func FromUpstream(err error) *Error {
	var pe *Error
	if errors.As(err, &pe) {
		return pe
	}
	switch {
	case errors.Is(err, context.Canceled):
		return Wrap(StatusClientClosed, "client_closed", "client closed the request", err)
	case errors.Is(err, context.DeadlineExceeded), isTimeout(err):
		return Wrap(http.StatusGatewayTimeout, "upstream_timeout", "the upstream did not answer in time", err)
	case errors.Is(err, syscall.ECONNREFUSED):
		return Wrap(http.StatusBadGateway, "upstream_unreachable", "the upstream refused the connection", err)
	}
	return Wrap(http.StatusBadGateway, "upstream_error", "the upstream failed to answer", err)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Write renders e to w. Headers the caller set before (Allow, Retry-After,
// WWW-Authenticate) are kept. A gRPC request gets the status as grpc-status
// instead of a body.
func Write(w http.ResponseWriter, r *http.Request, e *Error) {
	status := e.Status
	if status == StatusClientClosed {
		// Nobody is listening; a status is still needed for the logs.
		w.WriteHeader(status)
		return
	}
	requestID := ""
	if r != nil {
		if in := reqctx.From(r.Context()); in != nil {
			requestID = in.RequestID
		}
		if isGRPC(r) {
			writeGRPC(w, e)
			return
		}
	}
	body := map[string]any{
		"type":   "urn:portico:problem:" + e.Code,
		"title":  http.StatusText(status),
		"status": status,
		"detail": e.Detail,
	}
	if requestID != "" {
		body["request_id"] = requestID
	}
	for k, v := range e.Extra {
		if _, taken := body[k]; !taken {
			body[k] = v
		}
	}
	b, _ := json.Marshal(body)
	h := w.Header()
	h.Set("Content-Type", "application/problem+json")
	h.Set("Content-Length", strconv.Itoa(len(b)+1))
	h.Set("X-Content-Type-Options", "nosniff")
	h.Del("Content-Encoding")
	if e.RetryAfter > 0 && h.Get("Retry-After") == "" {
		h.Set("Retry-After", strconv.FormatInt(int64((e.RetryAfter+time.Second-1)/time.Second), 10))
	}
	w.WriteHeader(status)
	_, _ = w.Write(b)
	_, _ = io.WriteString(w, "\n")
}

// WriteStatus renders a new Error; a shorthand for handlers.
func WriteStatus(w http.ResponseWriter, r *http.Request, status int, code, detail string) {
	Write(w, r, New(status, code, detail))
}

func isGRPC(r *http.Request) bool {
	return r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc")
}

// writeGRPC answers a gRPC call with a trailers-only response (gRPC over
// HTTP/2 spec): HTTP 200 and grpc-status in the headers.
func writeGRPC(w http.ResponseWriter, e *Error) {
	h := w.Header()
	h.Set("Content-Type", "application/grpc")
	h.Set("Grpc-Status", strconv.Itoa(grpcCode(e.Status)))
	h.Set("Grpc-Message", e.Detail)
	w.WriteHeader(http.StatusOK)
}

// grpcCode maps an HTTP status to a gRPC code (the inverse of the table in
// grpc's http-grpc-status-mapping.md, with gateway-specific choices).
func grpcCode(status int) int {
	switch status {
	case http.StatusBadRequest:
		return 3 // INVALID_ARGUMENT
	case http.StatusUnauthorized:
		return 16 // UNAUTHENTICATED
	case http.StatusForbidden:
		return 7 // PERMISSION_DENIED
	case http.StatusNotFound, http.StatusMethodNotAllowed:
		return 12 // UNIMPLEMENTED
	case http.StatusRequestEntityTooLarge:
		return 8 // RESOURCE_EXHAUSTED
	case http.StatusTooManyRequests:
		return 8 // RESOURCE_EXHAUSTED
	case http.StatusGatewayTimeout:
		return 4 // DEADLINE_EXCEEDED
	case http.StatusBadGateway, http.StatusServiceUnavailable:
		return 14 // UNAVAILABLE
	}
	return 2 // UNKNOWN
}
