package gateway

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"runtime/debug"
	"strings"

	"github.com/portico-gw/portico/internal/problem"
	"github.com/portico-gw/portico/internal/reqctx"
)

// clientIP returns the address the request came from: the peer, or, when the
// peer is a trusted proxy, the rightmost X-Forwarded-For address that is not
// itself trusted (so a client cannot choose its own address by prepending).
// peerTrusted reports whether the peer itself is a trusted proxy.
func clientIP(r *http.Request, trusted []netip.Prefix) (client netip.Addr, peerTrusted bool) {
	peer := peerAddr(r.RemoteAddr)
	if len(trusted) == 0 || !inPrefixes(peer, trusted) {
		return peer, false
	}
	return forwardedClient(r, peer, trusted), true
}

// forwardedClient walks X-Forwarded-For from its right end, sent by the
// trusted peer.
func forwardedClient(r *http.Request, peer netip.Addr, trusted []netip.Prefix) netip.Addr {
	values := r.Header.Values("X-Forwarded-For")
	for i := len(values) - 1; i >= 0; i-- {
		list := values[i]
		for list != "" {
			var part string
			if j := strings.LastIndexByte(list, ','); j >= 0 {
				part, list = list[j+1:], list[:j]
			} else {
				part, list = list, ""
			}
			a, ok := parseHop(strings.TrimSpace(part))
			if !ok {
				// A malformed hop: stop trusting the chain here.
				return peer
			}
			a = a.Unmap()
			if !inPrefixes(a, trusted) {
				return a
			}
			peer = a
		}
	}
	return peer
}

// parseHop reads one X-Forwarded-For entry: an address, or an address
// with a port ("203.0.113.9:4711", "[2001:db8::1]:4711") or in brackets
// ("[2001:db8::1]"), as some load balancers write it (and as RFC 7239
// writes nodes). Refusing those would make every client behind such a
// balancer look like the balancer itself, sharing one per-IP limit.
func parseHop(s string) (netip.Addr, bool) {
	if a, err := netip.ParseAddr(s); err == nil {
		return a, true
	}
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr(), true
	}
	if len(s) > 2 && s[0] == '[' && s[len(s)-1] == ']' {
		if a, err := netip.ParseAddr(s[1 : len(s)-1]); err == nil && a.Is6() {
			return a, true
		}
	}
	return netip.Addr{}, false
}

func peerAddr(remote string) netip.Addr {
	if ap, err := netip.ParseAddrPort(remote); err == nil {
		return ap.Addr().Unmap()
	}
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = remote
	}
	a, _ := netip.ParseAddr(host)
	return a.Unmap()
}

func inPrefixes(a netip.Addr, ps []netip.Prefix) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// recoverer turns a panic in a handler into a 500 problem (or, when the
// response had started, an aborted connection so the client never takes a
// truncated body for a whole one). http.ErrAbortHandler passes through.
func recoverer(logger *slog.Logger) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			defer func() {
				v := recover()
				if v == nil {
					return
				}
				if err, ok := v.(error); ok && errors.Is(err, http.ErrAbortHandler) {
					panic(v)
				}
				route := ""
				if in := reqctx.From(r.Context()); in != nil {
					route = in.Route
				}
				logger.Error("handler panic", "route", route, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
				if started, ok := w.(interface{ Started() bool }); ok && started.Started() {
					panic(http.ErrAbortHandler)
				}
				problem.Write(w, r, problem.New(http.StatusInternalServerError, "internal_error", "the gateway failed to handle the request"))
			}()
			next.ServeHTTP(w, r)
		})
	}
}
