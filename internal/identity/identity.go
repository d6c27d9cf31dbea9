// Package identity holds the caller's identity as established by
// authentication. It is a leaf package so that rate limiting, aggregation and
// logging can read an identity without importing the auth stage.
package identity

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// Identity is who made a request, as one auth provider vouched for it.
type Identity struct {
	// Provider is the name of the auth provider that accepted the request.
	Provider string
	// Subject is the JWT "sub" claim; empty for API keys.
	Subject string
	// Consumer is the API key id; empty for JWTs.
	Consumer string
	// Scopes are the granted scopes (JWT "scope"/"scp" claim or the key's scopes).
	Scopes []string
	// Claims are the JWT's verified claims as decoded JSON (numbers are
	// float64, but an integer a float64 cannot hold digit for digit is a
	// json.Number); nil for API keys. Read them with Claim.
	Claims map[string]any
}

// Claim returns a claim as a string: strings as they are, numbers and
// booleans in their JSON form, arrays of those joined with single spaces.
// The second result is false when the claim is absent or not representable.
// "sub", "consumer" (an API key's id), "scope" and "scp" are answered from
// the identity's fields when Claims lacks them.
func (id *Identity) Claim(name string) (string, bool) {
	if id == nil {
		return "", false
	}
	v, ok := id.Claims[name]
	if !ok {
		switch name {
		case "sub":
			return id.Subject, id.Subject != ""
		case "consumer":
			return id.Consumer, id.Consumer != ""
		case "scope", "scp":
			return strings.Join(id.Scopes, " "), len(id.Scopes) > 0
		}
		return "", false
	}
	return claimString(v)
}

// HasScope reports whether the identity was granted scope.
func (id *Identity) HasScope(scope string) bool {
	if id == nil {
		return false
	}
	for _, s := range id.Scopes {
		if s == scope {
			return true
		}
	}
	return false
}

func claimString(v any) (string, bool) {
	switch x := v.(type) {
	case string:
		return x, true
	case bool:
		return strconv.FormatBool(x), true
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64), true
	case int64:
		return strconv.FormatInt(x, 10), true
	case int:
		return strconv.Itoa(x), true
	case json.Number:
		return string(x), true
	case fmt.Stringer:
		return x.String(), true
	case []string:
		return strings.Join(x, " "), true
	case []any:
		parts := make([]string, 0, len(x))
		for _, e := range x {
			s, ok := claimString(e)
			if !ok {
				return "", false
			}
			parts = append(parts, s)
		}
		return strings.Join(parts, " "), true
	}
	return "", false
}

type ctxKey struct{}

// NewContext returns ctx carrying id. Prefer setting reqctx.Info.Identity
// on the gateway path, which costs no extra context allocation; this helper
// serves code that runs outside a gateway request (tests, tools).
func NewContext(ctx context.Context, id *Identity) context.Context {
	return context.WithValue(ctx, ctxKey{}, id)
}

// FromContext returns the identity stored by NewContext, or nil.
func FromContext(ctx context.Context) *Identity {
	id, _ := ctx.Value(ctxKey{}).(*Identity)
	return id
}
