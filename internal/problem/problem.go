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
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"

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

// noStore is shared by every error response; capped so an append copies.
var noStore = []string{"no-store"}

// Write renders e to w. Headers the caller set before (Allow, Retry-After,
// WWW-Authenticate, Cache-Control) are kept; without a Cache-Control the
// answer gets "no-store". A gRPC request gets the status as grpc-status
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
		if IsGRPC(r) {
			writeGRPC(w, e)
			return
		}
	}
	b := appendBody(make([]byte, 0, 256), status, e, requestID)
	h := w.Header()
	h.Set("Content-Type", "application/problem+json")
	h.Set("Content-Length", strconv.Itoa(len(b)))
	h.Set("X-Content-Type-Options", "nosniff")
	h.Del("Content-Encoding")
	if _, ok := h["Cache-Control"]; !ok {
		// The answer holds for this request only (its request_id, a
		// route missing until a reload, a busy upstream), and 404, 405,
		// 414 and 501 are heuristically cacheable (RFC 9111 section
		// 4.2.2). A value the caller set (response_headers) stays.
		h["Cache-Control"] = noStore[:1:1]
	}
	if e.RetryAfter > 0 && h.Get("Retry-After") == "" {
		h.Set("Retry-After", strconv.FormatInt(int64((e.RetryAfter+time.Second-1)/time.Second), 10))
	}
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// appendBody renders the problem document by hand: a gateway under a flood
// of rejected requests spends most of each 429 here, and building a map for
// encoding/json cost three times what the fixed members need.
func appendBody(b []byte, status int, e *Error, requestID string) []byte {
	b = append(b, `{"type":"urn:portico:problem:`...)
	b = appendEscaped(b, e.Code)
	b = append(b, `","title":`...)
	b = appendString(b, http.StatusText(status))
	b = append(b, `,"status":`...)
	b = strconv.AppendInt(b, int64(status), 10)
	b = append(b, `,"detail":`...)
	b = appendString(b, e.Detail)
	if requestID != "" {
		b = append(b, `,"request_id":`...)
		b = appendString(b, requestID)
	}
	if len(e.Extra) > 0 {
		keys := make([]string, 0, len(e.Extra))
		for k := range e.Extra {
			switch k {
			case "type", "title", "status", "detail", "request_id":
				continue // the fixed members win
			}
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			v, err := json.Marshal(e.Extra[k])
			if err != nil {
				continue
			}
			b = append(b, ',')
			b = appendString(b, k)
			b = append(b, ':')
			b = append(b, v...)
		}
	}
	return append(b, "}\n"...)
}

func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	b = appendEscaped(b, s)
	return append(b, '"')
}

// appendEscaped escapes s for a JSON string (RFC 8259 section 7), and <, >
// and & as encoding/json does, so a detail echoing request data cannot
// become markup in a careless client.
func appendEscaped(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c < 0x20 || c == '<' || c == '>' || c == '&':
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		case c < utf8.RuneSelf:
			b = append(b, c)
		default:
			r, size := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && size == 1 {
				b = append(b, `\ufffd`...)
			} else if r == '\u2028' || r == '\u2029' {
				b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
			} else {
				b = append(b, s[i:i+size]...)
			}
			i += size
			continue
		}
		i++
	}
	return b
}

// WriteStatus renders a new Error; a shorthand for handlers.
func WriteStatus(w http.ResponseWriter, r *http.Request, status int, code, detail string) {
	Write(w, r, New(status, code, detail))
}

// IsGRPC reports a gRPC call: HTTP/2 with Content-Type application/grpc,
// application/grpc+FORMAT or application/grpc;PARAMS (not gRPC-Web, which
// browsers read as HTTP). Such a call gets its errors as grpc-status here,
// and telemetry counts it by its grpc-status. The protocol is checked
// first, so an HTTP/1 request costs no header lookup.
func IsGRPC(r *http.Request) bool {
	if r.ProtoMajor != 2 {
		return false
	}
	ct := r.Header["Content-Type"]
	if len(ct) == 0 {
		return false
	}
	rest, ok := strings.CutPrefix(ct[0], "application/grpc")
	return ok && (rest == "" || rest[0] == '+' || rest[0] == ';')
}

// writeGRPC answers a gRPC call with a trailers-only response (gRPC over
// HTTP/2 spec): HTTP 200 and grpc-status in the headers.
func writeGRPC(w http.ResponseWriter, e *Error) {
	h := w.Header()
	h.Set("Content-Type", "application/grpc")
	h.Del("Content-Encoding")
	h.Del("Content-Length")
	h.Set("Grpc-Status", strconv.Itoa(grpcCode(e.Status)))
	h.Set("Grpc-Message", grpcMessage(e.Detail))
	w.WriteHeader(http.StatusOK)
}

// grpcMessage percent-encodes a status message as the gRPC over HTTP/2
// spec asks: bytes outside printable ASCII, and '%' itself.
func grpcMessage(s string) string {
	const hexdigits = "0123456789ABCDEF"
	var b []byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c <= 0x7e && c != '%' {
			if b != nil {
				b = append(b, c)
			}
			continue
		}
		if b == nil {
			b = append(make([]byte, 0, len(s)+8), s[:i]...)
		}
		b = append(b, '%', hexdigits[c>>4], hexdigits[c&0xf])
	}
	if b == nil {
		return s
	}
	return string(b)
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
	case http.StatusInternalServerError:
		return 13 // INTERNAL: the gateway's own failure
	}
	return 2 // UNKNOWN
}
