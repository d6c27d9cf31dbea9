package reqctx

import (
	"crypto/rand"
	"encoding/hex"
	"strconv"
	"sync/atomic"
)

// RequestIDs makes X-Request-Id values: a prefix, a random per-process part
// and a counter. Ids must be unique, not secret, so one random read at start
// is enough and each id costs an atomic add and a small format.
type RequestIDs struct {
	prefix string
	seq    atomic.Uint64
}

// NewRequestIDs returns a generator whose ids start with prefix (the public
// listener uses none, the admin API "admin-").
func NewRequestIDs(prefix string) *RequestIDs {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return &RequestIDs{prefix: prefix + hex.EncodeToString(b[:]) + "-"}
}

// Next returns a new id.
func (g *RequestIDs) Next() string {
	var buf [40]byte
	out := append(buf[:0], g.prefix...)
	out = strconv.AppendUint(out, g.seq.Add(1), 36)
	return string(out)
}

// ValidRequestID reports whether a client-sent X-Request-Id may be kept:
// 1-128 characters of [A-Za-z0-9._-] (DESIGN.md "Routing precedence").
func ValidRequestID(s string) bool {
	if len(s) == 0 || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}
