package ratelimit

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"

	"github.com/portico-gw/portico/internal/identity"
	"github.com/portico-gw/portico/internal/reqctx"
)

// Phase says where in a route's chain a rate-limit middleware runs.
type Phase uint8

const (
	// PreAuth runs before authentication: policies keyed only by ip,
	// header, route and global, so floods are shed before any signature
	// check.
	PreAuth Phase = iota + 1
	// PostAuth runs after authentication: every policy whose key uses claim
	// or consumer.
	PostAuth
)

func (p Phase) String() string {
	switch p {
	case PreAuth:
		return "pre_auth"
	case PostAuth:
		return "post_auth"
	}
	return "unknown"
}

type partKind uint8

const (
	partIP partKind = iota + 1
	partHeader
	partClaim
	partConsumer
	partRoute
	partGlobal
)

type keyPart struct {
	kind partKind
	name string // canonical header name or claim name
}

// Key is a compiled key expression: `ip | header:NAME | claim:NAME |
// consumer | route | global` joined with '+'.
type Key struct {
	// Text is the normalized expression (header names canonicalized); it
	// prefixes every subject, so two policies share a subject (and one store
	// call) exactly when their normalized expressions are equal.
	Text  string
	parts []keyPart
	// overrideFrom is the part whose value selects an override: consumer if
	// present, else the first claim part; -1 for none.
	overrideFrom int
}

// ParseKey compiles a key expression.
func ParseKey(expr string) (*Key, error) {
	if strings.TrimSpace(expr) == "" {
		return nil, fmt.Errorf("empty key expression")
	}
	k := &Key{overrideFrom: -1}
	var norm []string
	for _, raw := range strings.Split(expr, "+") {
		part := strings.TrimSpace(raw)
		name, arg, hasArg := strings.Cut(part, ":")
		var p keyPart
		switch name {
		case "ip":
			p.kind = partIP
		case "header":
			p.kind = partHeader
			arg = http.CanonicalHeaderKey(strings.TrimSpace(arg))
		case "claim":
			p.kind = partClaim
			arg = strings.TrimSpace(arg)
		case "consumer":
			p.kind = partConsumer
		case "route":
			p.kind = partRoute
		case "global":
			p.kind = partGlobal
		default:
			return nil, fmt.Errorf("key part %q: want ip, header:NAME, claim:NAME, consumer, route or global", part)
		}
		needsArg := p.kind == partHeader || p.kind == partClaim
		if needsArg != hasArg || (needsArg && arg == "") {
			if needsArg {
				return nil, fmt.Errorf("key part %q needs a name (%s:NAME)", part, name)
			}
			return nil, fmt.Errorf("key part %q takes no name", part)
		}
		p.name = arg
		for _, q := range k.parts {
			if q == p {
				return nil, fmt.Errorf("key part %q repeated", part)
			}
		}
		k.parts = append(k.parts, p)
		if needsArg {
			norm = append(norm, name+":"+arg)
		} else {
			norm = append(norm, name)
		}
	}
	for i, p := range k.parts {
		if p.kind == partConsumer {
			k.overrideFrom = i
			break
		}
	}
	if k.overrideFrom < 0 {
		for i, p := range k.parts {
			if p.kind == partClaim {
				k.overrideFrom = i
				break
			}
		}
	}
	k.Text = strings.Join(norm, "+")
	return k, nil
}

// Phase returns PostAuth when the key reads the identity (claim, consumer),
// else PreAuth.
func (k *Key) Phase() Phase {
	for _, p := range k.parts {
		if p.kind == partClaim || p.kind == partConsumer {
			return PostAuth
		}
	}
	return PreAuth
}

// missing reports a key part the request lacks (for on_missing_key).
type missing struct {
	part keyPart
}

func (m missing) String() string {
	switch m.part.kind {
	case partIP:
		return "a client IP"
	case partHeader:
		return "header " + m.part.name
	case partClaim:
		return "claim " + m.part.name
	case partConsumer:
		return "a consumer (API key id)"
	}
	return "a key part"
}

// appendSubject appends the subject of r under k to buf: the normalized
// expression, then for each part '=' LEN ':' VALUE, the length making the
// encoding unambiguous whatever the values contain. A missing part is
// written as "=-" when shared is true (all such requests share one bucket);
// otherwise appendSubject stops and returns ok=false with the part.
// overrideVal is the value that selects an override ("" for none).
func (k *Key) appendSubject(buf []byte, r *http.Request, info *reqctx.Info, id *identity.Identity, route string, shared bool) (out []byte, overrideVal string, miss missing, ok bool) {
	buf = append(buf, k.Text...)
	for i, p := range k.parts {
		var v string
		var have bool
		switch p.kind {
		case partIP:
			buf, have = appendClientIP(buf, r, info)
			if have {
				continue
			}
		case partHeader:
			v = r.Header.Get(p.name)
			have = v != ""
		case partClaim:
			v, have = id.Claim(p.name)
			have = have && v != ""
		case partConsumer:
			if id != nil {
				v = id.Consumer
			}
			have = v != ""
		case partRoute:
			v, have = route, true
		case partGlobal:
			v, have = "", true
		}
		if !have {
			if !shared {
				return buf, "", missing{p}, false
			}
			buf = append(buf, "=-"...)
			continue
		}
		if i == k.overrideFrom {
			overrideVal = v
		}
		buf = append(buf, '=')
		buf = strconv.AppendInt(buf, int64(len(v)), 10)
		buf = append(buf, ':')
		buf = append(buf, v...)
	}
	return buf, overrideVal, missing{}, true
}

// appendClientIP appends "=LEN:ADDR" for the client IP the gateway computed
// (honouring trusted_proxies), or, outside a gateway request, the peer
// address of r.
func appendClientIP(buf []byte, r *http.Request, info *reqctx.Info) ([]byte, bool) {
	var addr netip.Addr
	if info != nil && info.ClientIP.IsValid() {
		addr = info.ClientIP
	} else if info == nil {
		host, _, err := net.SplitHostPort(r.RemoteAddr)
		if err != nil {
			host = r.RemoteAddr
		}
		a, err := netip.ParseAddr(host)
		if err != nil {
			return buf, false
		}
		addr = a
	} else {
		return buf, false
	}
	// A zone names the receiving interface, not the client; with it the
	// same client could fall into several buckets, and the text could
	// outgrow the two-digit length written below.
	addr = addr.Unmap().WithZone("")
	buf = append(buf, "=0:"...) // length patched below
	lenAt := len(buf) - 2
	start := len(buf)
	buf = addr.AppendTo(buf)
	n := len(buf) - start
	// Addresses are at most 45 bytes; write the two-digit length in place.
	if n >= 10 {
		buf = append(buf, 0)
		copy(buf[lenAt+1:], buf[lenAt:len(buf)-1])
		buf[lenAt] = byte('0' + n/10)
		buf[lenAt+1] = byte('0' + n%10)
	} else {
		buf[lenAt] = byte('0' + n)
	}
	return buf, true
}
