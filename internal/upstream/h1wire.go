package upstream

import (
	"bufio"
	"errors"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"net/url"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// checkRequest refuses, as net/http's Transport does before sending
// anything, a request with an invalid header name or value (a value with
// CR or LF could smuggle a field) or a control byte in its request URI.
func checkRequest(req *http.Request) error {
	for k, vv := range req.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return errors.New("net/http: invalid header field name " + k)
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return errors.New("net/http: invalid header field value for " + k)
			}
		}
	}
	if !requestURIValid(req.URL) {
		return errCTLInURL
	}
	return nil
}

// writeRequest writes the head of a request that fastPath accepted (GET,
// HEAD or OPTIONS without a body, Upgrade, Expect or Transfer-Encoding)
// and checkRequest passed, byte for byte as
// Request.Write would but for the order of the header fields, which
// RFC 9110 5.3 leaves free between different names (Request.Write sorts
// them, at the cost of a sort and a pooled slice per request). Requests
// whose context traces what is written go through Request.Write, which
// calls the hooks.
//
// What Request.Write does for such a request, and so this: the request
// line with the URL's request URI (refused if it holds a control byte);
// Host from req.Host, else the URL's host, in Punycode, emptied when it is
// not a valid Host value, without an IPv6 zone; User-Agent, Go's default
// when the header is absent, none when its first value is empty (as
// httputil.ReverseProxy sets it), else only that first value; Connection:
// close when req.Close asks for it and the header does not say so
// already; no Content-Length or Transfer-Encoding (no body, and these
// methods send no zero length); then the other fields, values trimmed of
// surrounding blanks, except Host, User-Agent, Content-Length,
// Transfer-Encoding and Trailer.
func writeRequest(bw *bufio.Writer, req *http.Request) error {
	if t := httptrace.ContextClientTrace(req.Context()); t != nil &&
		(t.WroteHeaderField != nil || t.WroteHeaders != nil || t.WroteRequest != nil) {
		return req.Write(bw)
	}
	u := req.URL
	host := req.Host
	if host == "" {
		host = u.Host
	}
	host, err := httpguts.PunycodeHostPort(host)
	if err != nil {
		return err
	}
	if !httpguts.ValidHostHeader(host) {
		host = ""
	}
	host = removeZone(host)

	bw.WriteString(req.Method)
	bw.WriteByte(' ')
	writeRequestURI(bw, u)
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(host)
	bw.WriteString("\r\n")

	h := req.Header
	if ua, ok := h["User-Agent"]; !ok {
		bw.WriteString("User-Agent: " + defaultUserAgent + "\r\n")
	} else if len(ua) > 0 && ua[0] != "" {
		bw.WriteString("User-Agent: ")
		bw.WriteString(textproto.TrimString(ua[0]))
		bw.WriteString("\r\n")
	}
	if req.Close {
		if c := h["Connection"]; len(c) == 0 || !hasToken(c[0], "close") {
			bw.WriteString("Connection: close\r\n")
		}
	}
	for k, vv := range h {
		switch k {
		case "Host", "User-Agent", "Content-Length", "Transfer-Encoding", "Trailer":
			continue
		}
		for _, v := range vv {
			bw.WriteString(k)
			bw.WriteString(": ")
			bw.WriteString(textproto.TrimString(v))
			bw.WriteString("\r\n")
		}
	}
	_, err = bw.WriteString("\r\n")
	return err
}

// defaultUserAgent is what Request.Write sends when a request has no
// User-Agent header.
const defaultUserAgent = "Go-http-client/1.1"

var errCTLInURL = errors.New("net/http: can't write control character in Request.URL")

// requestURIValid reports whether the request URI of u (URL.RequestURI)
// is free of control bytes.
func requestURIValid(u *url.URL) bool {
	if u.Opaque != "" {
		if strings.HasPrefix(u.Opaque, "//") && hasCTL(u.Scheme) || hasCTL(u.Opaque) {
			return false
		}
	} else if hasCTL(u.EscapedPath()) {
		return false
	}
	return !hasCTL(u.RawQuery)
}

// writeRequestURI writes URL.RequestURI without building it.
func writeRequestURI(bw *bufio.Writer, u *url.URL) {
	if u.Opaque != "" {
		if strings.HasPrefix(u.Opaque, "//") {
			bw.WriteString(u.Scheme)
			bw.WriteByte(':')
		}
		bw.WriteString(u.Opaque)
	} else if p := u.EscapedPath(); p != "" {
		bw.WriteString(p)
	} else {
		bw.WriteByte('/')
	}
	if u.ForceQuery || u.RawQuery != "" {
		bw.WriteByte('?')
		bw.WriteString(u.RawQuery)
	}
}

func hasCTL(s string) bool {
	for i := 0; i < len(s); i++ {
		if b := s[i]; b < ' ' || b == 0x7f {
			return true
		}
	}
	return false
}

// removeZone drops an IPv6 zone from a bracketed host (RFC 6874: an
// intermediary must not send it on).
func removeZone(host string) string {
	if !strings.HasPrefix(host, "[") {
		return host
	}
	i := strings.LastIndex(host, "]")
	if i < 0 {
		return host
	}
	j := strings.LastIndex(host[:i], "%")
	if j < 0 {
		return host
	}
	return host[:j] + host[i:]
}

// hasToken reports whether token (lower case ASCII) appears in v as a
// word delimited by the start or end of v, a space, a comma or a tab,
// ignoring ASCII case: how Request.Write reads a Connection header.
func hasToken(v, token string) bool {
	for sp := 0; sp+len(token) <= len(v); sp++ {
		if sp > 0 && !isTokenBoundary(v[sp-1]) {
			continue
		}
		if end := sp + len(token); end != len(v) && !isTokenBoundary(v[end]) {
			continue
		}
		if asciiEqualFold(v[sp:sp+len(token)], token) {
			return true
		}
	}
	return false
}

func isTokenBoundary(b byte) bool { return b == ' ' || b == ',' || b == '\t' }

func asciiEqualFold(s, lower string) bool {
	for i := 0; i < len(s); i++ {
		b := s[i]
		if 'A' <= b && b <= 'Z' {
			b += 'a' - 'A'
		}
		if b != lower[i] {
			return false
		}
	}
	return true
}
