// Package reqctx carries the per-request facts that several stages read: the
// matched route, the client IP, the request id, path parameters and the
// caller's identity. The gateway stores one *Info in the request context when
// a request arrives, so later stages read and annotate it without each adding
// a context value of their own.
package reqctx

import (
	"context"
	"net/netip"
	"time"

	"github.com/portico-gw/portico/internal/identity"
)

// Param is one path parameter captured by the router.
type Param struct {
	Key, Value string
}

// Info is the request-scoped state. Fields are written by the stage named in
// their comment and only read after it; a handler runs on one goroutine per
// request, so no locking is needed except where noted.
type Info struct {
	// Start is when the gateway received the request (gateway).
	Start time.Time
	// RequestID is the validated inbound or generated X-Request-Id (gateway).
	RequestID string
	// Route is the route name, "BFF/ENDPOINT" for BFF endpoints, or
	// "unmatched" (gateway).
	Route string
	// ClientIP is the client address after applying trusted_proxies (gateway).
	ClientIP netip.Addr
	// PeerTrusted reports that the peer is in trusted_proxies, so the
	// X-Forwarded-Proto and X-Forwarded-Host it sent are believed (gateway).
	PeerTrusted bool
	// Params are the path parameters of the matched route (gateway).
	Params []Param
	// Identity is set by the auth stage when a credential was accepted.
	Identity *identity.Identity
	// Upstream names the upstream that answered, for the access log (proxy).
	Upstream string
	// TraceID is the W3C trace id, hex, when tracing is active (telemetry).
	TraceID string
}

// Param returns the value of the path parameter key.
func (in *Info) Param(key string) (string, bool) {
	for _, p := range in.Params {
		if p.Key == key {
			return p.Value, true
		}
	}
	return "", false
}

type ctxKey struct{}

// infoContext carries an Info inside the context value itself, so a
// request pays one allocation for both.
type infoContext struct {
	context.Context
	info Info
}

func (c *infoContext) Value(key any) any {
	if key == (ctxKey{}) {
		return &c.info
	}
	return c.Context.Value(key)
}

// NewContext returns a context derived from parent that carries a fresh
// Info, and that Info.
func NewContext(parent context.Context) (context.Context, *Info) {
	c := &infoContext{Context: parent}
	return c, &c.info
}

// With returns ctx carrying info.
func With(ctx context.Context, info *Info) context.Context {
	return context.WithValue(ctx, ctxKey{}, info)
}

// From returns the request's Info, or nil outside a gateway request.
func From(ctx context.Context) *Info {
	in, _ := ctx.Value(ctxKey{}).(*Info)
	return in
}

// IdentityFrom returns the identity of the request, from its Info or, outside
// the gateway, from identity.FromContext.
func IdentityFrom(ctx context.Context) *identity.Identity {
	if in := From(ctx); in != nil && in.Identity != nil {
		return in.Identity
	}
	return identity.FromContext(ctx)
}
