package auth

import (
	"net/http"
	"net/url"
	"strings"
)

type credKind uint8

const (
	fromHeader credKind = iota + 1
	fromCookie
	fromQuery
)

// credSource says where a credential is read from and how it is removed.
type credSource struct {
	kind credKind
	name string // canonical header name, cookie name or query parameter
	// bearer: the value is an RFC 6750 "Bearer" credential (the Authorization
	// header); otherwise a bare value, with an optional "Bearer " prefix
	// tolerated in headers.
	bearer bool
}

// get returns the credential and whether one was presented. A present but
// empty credential is returned as ("", true) so it fails as malformed rather
// than counting as missing. An Authorization header with another scheme
// (Basic, say) is not a bearer credential and counts as absent.
//
// A header or query parameter that comes more than once is refused the
// same way: an upstream may read another occurrence than the one checked
// here (the last, or all joined), so a second token must not ride along
// with a valid one (RFC 9110 section 5.3; RFC 6750 section 3.1 calls a
// repeated parameter an invalid request).
func (c credSource) get(r *http.Request) (string, bool) {
	switch c.kind {
	case fromHeader:
		vals := r.Header[c.name]
		if len(vals) == 0 {
			return "", false
		}
		if len(vals) > 1 {
			return "", true
		}
		if c.bearer {
			return parseBearer(vals[0])
		}
		v := strings.TrimSpace(vals[0])
		if tok, ok := parseBearer(v); ok {
			return tok, true
		}
		return v, true
	case fromCookie:
		return cookieValue(r.Header["Cookie"], c.name)
	case fromQuery:
		if r.URL == nil {
			return "", false
		}
		return queryValue(r.URL.RawQuery, c.name)
	}
	return "", false
}

// strip removes the credential from the request before it is forwarded.
func (c credSource) strip(r *http.Request) {
	switch c.kind {
	case fromHeader:
		delete(r.Header, c.name)
	case fromCookie:
		stripCookie(r.Header, c.name)
	case fromQuery:
		stripQuery(r, c.name)
	}
}

// parseBearer extracts the token of an RFC 6750 section 2.1 credential:
// "Bearer" 1*SP token68. The scheme compares case-insensitively (RFC 9110
// section 11.1); surrounding whitespace is ignored. ok is false when the
// value uses another scheme.
func parseBearer(v string) (tok string, ok bool) {
	v = strings.TrimLeft(v, " \t")
	const scheme = "Bearer"
	if len(v) < len(scheme) || !strings.EqualFold(v[:len(scheme)], scheme) {
		return "", false
	}
	rest := v[len(scheme):]
	if rest == "" {
		return "", true
	}
	if rest[0] != ' ' && rest[0] != '\t' {
		return "", false // "Bearerx": another scheme
	}
	return strings.Trim(rest, " \t"), true
}

// cookieValue finds a cookie by name in the Cookie header lines (RFC 6265
// section 5.4) without allocating, unlike http.Request.Cookie which parses
// every cookie.
func cookieValue(lines []string, name string) (string, bool) {
	for _, line := range lines {
		for line != "" {
			var part string
			part, line, _ = strings.Cut(line, ";")
			part = strings.TrimSpace(part)
			// net/http (and so a Go upstream) reads "session =x" as the
			// cookie "session", and a bare "session" as that cookie with an
			// empty value: whitespace before '=' is not part of the name, and
			// the first "session" counts even without '='.
			k, v, _ := strings.Cut(part, "=")
			if strings.TrimRight(k, " \t\r\n") != name {
				continue
			}
			if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
				v = v[1 : len(v)-1]
			}
			return v, true
		}
	}
	return "", false
}

// stripCookie removes the named cookie and keeps the others.
func stripCookie(h http.Header, name string) {
	lines := h["Cookie"]
	if len(lines) == 0 {
		return
	}
	var kept []string
	for _, line := range lines {
		for line != "" {
			var part string
			part, line, _ = strings.Cut(line, ";")
			part = strings.TrimSpace(part)
			if part == "" {
				continue
			}
			if k, _, _ := strings.Cut(part, "="); strings.TrimRight(k, " \t\r\n") == name {
				continue
			}
			kept = append(kept, part)
		}
	}
	if len(kept) == 0 {
		delete(h, "Cookie")
		return
	}
	h["Cookie"] = []string{strings.Join(kept, "; ")}
}

// queryValue returns the value of a query parameter, unescaping only when
// needed (url.QueryUnescape returns its input when it has no escapes). A
// parameter given twice is present but empty (see credSource.get).
func queryValue(raw, name string) (string, bool) {
	var v string
	found := false
	for raw != "" {
		var part string
		part, raw, _ = strings.Cut(raw, "&")
		k, pv, _ := strings.Cut(part, "=")
		if !queryKeyIs(k, name) {
			continue
		}
		if found {
			return "", true
		}
		v, found = pv, true
	}
	if !found {
		return "", false
	}
	uv, err := url.QueryUnescape(v)
	if err != nil {
		return "", true // present but broken: fails as malformed
	}
	return uv, true
}

func queryKeyIs(k, name string) bool {
	if k == name {
		return true
	}
	if strings.ContainsAny(k, "%+") {
		uk, err := url.QueryUnescape(k)
		return err == nil && uk == name
	}
	return false
}

// stripQuery removes every occurrence of a query parameter, keeping the
// other parameters exactly as the client escaped them. RequestURI is
// rewritten too, so nothing downstream (access log) sees the credential.
func stripQuery(r *http.Request, name string) {
	if r.URL == nil || r.URL.RawQuery == "" {
		return
	}
	raw := r.URL.RawQuery
	var b strings.Builder
	for raw != "" {
		var part string
		part, raw, _ = strings.Cut(raw, "&")
		k, _, _ := strings.Cut(part, "=")
		if queryKeyIs(k, name) {
			continue
		}
		if b.Len() > 0 {
			b.WriteByte('&')
		}
		b.WriteString(part)
	}
	r.URL.RawQuery = b.String()
	if r.RequestURI != "" {
		r.RequestURI = r.URL.RequestURI()
	}
	if r.Form != nil {
		r.Form.Del(name)
	}
}
