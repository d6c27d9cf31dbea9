package listener

import (
	"net"
	"net/http"
	"net/netip"
	"strings"

	"github.com/portico-gw/portico/internal/problem"
)

// RedirectHandler answers every request with 308 Permanent Redirect to the
// same host, path and query over https. httpsPort is the HTTPS listener's
// port ("8443", ":8443" or a whole listen address); 443 or empty leaves the
// port out. 308 rather than 301 keeps the method and body (RFC 9110,
// 15.4.9). A Host that is not a plain host name or address gets 400, so the
// redirect can never point at another site.
func RedirectHandler(httpsPort string) http.Handler {
	port := httpsPort
	if i := strings.LastIndexByte(port, ':'); i >= 0 {
		port = port[i+1:]
	}
	if port == "443" {
		port = ""
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host := r.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		} else {
			host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
		}
		if !validHost(host) {
			problem.WriteStatus(w, r, http.StatusBadRequest, "invalid_host", "the request has no valid Host header")
			return
		}
		if strings.IndexByte(host, ':') >= 0 {
			// Only an IPv6 literal may hold a colon: "a:b:c" or
			// "1.2.3.4:80:90" would become a Location no client can follow.
			if _, err := netip.ParseAddr(host); err != nil {
				problem.WriteStatus(w, r, http.StatusBadRequest, "invalid_host", "the request has no valid Host header")
				return
			}
			host = "[" + host + "]" // IPv6 literal
		}
		var b strings.Builder
		b.Grow(len("https://") + len(host) + 6 + len(r.URL.RawPath) + len(r.URL.Path) + 1 + len(r.URL.RawQuery))
		b.WriteString("https://")
		b.WriteString(host)
		if port != "" {
			b.WriteByte(':')
			b.WriteString(port)
		}
		path := r.URL.EscapedPath()
		if !strings.HasPrefix(path, "/") {
			b.WriteByte('/')
		}
		b.WriteString(path)
		if r.URL.RawQuery != "" {
			b.WriteByte('?')
			b.WriteString(r.URL.RawQuery)
		}
		w.Header().Set("Location", b.String())
		w.WriteHeader(http.StatusPermanentRedirect)
	})
}

// validHost accepts DNS names and IP literals: letters, digits, '.', '-',
// '_' and ':' (IPv6), nothing that could end the authority of a URL.
func validHost(h string) bool {
	if h == "" || len(h) > 255 {
		return false
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '-', c == '_', c == ':':
		default:
			return false
		}
	}
	return true
}
