package upstream

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"net/url"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// scanRequest reports whether req takes the lean client: GET, HEAD or
// OPTIONS to an http:// URL, without a body, Upgrade, Expect or
// Transfer-Encoding, and without "upgrade" in Connection. For such a
// request it also returns the error net/http's Transport would give before
// sending anything: an invalid header name or value (a value with CR or
// LF could smuggle a field) or a control byte in the request URI; and it
// lists the header fields in f for writeRequest. One walk over the header
// map does all three.
func scanRequest(req *http.Request, f *headFields) (lean bool, err error) {
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
	default:
		return false, nil
	}
	if req.URL.Scheme != "http" || (req.Body != nil && req.Body != http.NoBody) || req.ContentLength > 0 ||
		len(req.TransferEncoding) > 0 {
		return false, nil
	}
	for k, vv := range req.Header {
		switch k {
		case "Upgrade", "Expect", "Transfer-Encoding":
			if len(vv) > 0 {
				return false, nil
			}
		case "Connection":
			if httpguts.HeaderValuesContainsToken(vv, "upgrade") {
				return false, nil
			}
		}
		if err != nil {
			continue // only whether the request is lean is still open
		}
		if !httpguts.ValidHeaderFieldName(k) {
			err = errors.New("net/http: invalid header field name " + k)
			continue
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				err = errors.New("net/http: invalid header field value for " + k)
			}
		}
		switch k {
		case "User-Agent":
			f.ua, f.hasUA = vv, true
			continue
		case "Connection":
			if len(vv) > 0 {
				f.connection = vv[0]
			}
		case "Host", "Content-Length", "Transfer-Encoding", "Trailer":
			continue // written from the request's fields, or not at all
		}
		if f.n < len(f.list) {
			f.list[f.n] = headField{k, vv}
			f.n++
		} else {
			f.overflow = true
		}
	}
	if err == nil && !requestURIValid(req.URL) {
		err = errCTLInURL
	}
	return true, err
}

// headFields are what scanRequest found in a request's header for
// writeRequest, which then need not walk the map again.
type headFields struct {
	list       [16]headField // the fields written as they are
	n          int
	overflow   bool     // more than len(list): writeRequest walks the map
	ua         []string // the User-Agent values
	hasUA      bool     // a User-Agent key is present, even without values
	connection string   // the first Connection value
}

type headField struct {
	k  string
	vv []string
}

// writeRequest writes the head of a request that scanRequest accepted and
// passed (filling f), byte for byte as
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
func writeRequest(bw *bufio.Writer, req *http.Request, f *headFields) error {
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

	if !f.hasUA {
		bw.WriteString("User-Agent: " + defaultUserAgent + "\r\n")
	} else if len(f.ua) > 0 && f.ua[0] != "" {
		bw.WriteString("User-Agent: ")
		bw.WriteString(textproto.TrimString(f.ua[0]))
		bw.WriteString("\r\n")
	}
	if req.Close && !hasToken(f.connection, "close") {
		bw.WriteString("Connection: close\r\n")
	}
	if f.overflow {
		for k, vv := range req.Header {
			switch k {
			case "Host", "User-Agent", "Content-Length", "Transfer-Encoding", "Trailer":
				continue
			}
			writeField(bw, k, vv)
		}
	} else {
		for _, fl := range f.list[:f.n] {
			writeField(bw, fl.k, fl.vv)
		}
	}
	_, err = bw.WriteString("\r\n")
	return err
}

func writeField(bw *bufio.Writer, k string, vv []string) {
	for _, v := range vv {
		bw.WriteString(k)
		bw.WriteString(": ")
		bw.WriteString(textproto.TrimString(v))
		bw.WriteString("\r\n")
	}
}

// defaultUserAgent is what Request.Write sends when a request has no
// User-Agent header.
const defaultUserAgent = "Go-http-client/1.1"

var errCTLInURL = errors.New("net/http: can't write control character in Request.URL")

// requestURIValid reports whether the request URI of u (URL.RequestURI)
// is free of control bytes. An escaped path never holds one.
func requestURIValid(u *url.URL) bool {
	if u.Opaque != "" && (strings.HasPrefix(u.Opaque, "//") && hasCTL(u.Scheme) || hasCTL(u.Opaque)) {
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

// asciiEqualFold reports whether s is lower, ignoring ASCII case.
func asciiEqualFold[T string | []byte](s T, lower string) bool {
	if len(s) != len(lower) {
		return false
	}
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

// parseResponse reads the head of a common answer from what br has
// buffered: "HTTP/1.1", a final status other than 204 and 304,
// well-formed header fields each on one line, one valid Content-Length
// and no Transfer-Encoding (scanHead), to a request other than HEAD. For
// anything else (also a head not buffered whole) it returns nil and
// consumes nothing, and http.ReadResponse reads the same bytes: the
// answers parseResponse takes are those it can read exactly as
// http.ReadResponse would, and FuzzReadResponse holds it to that.
//
// On success the head is consumed, the answer's resp.ContentLength is the
// body's length and resp.Body is http.NoBody when that is 0, else nil:
// the caller reads the body (fixedBody).
func parseResponse(br *bufio.Reader, req *http.Request) *h1Answer {
	if req.Method == http.MethodHead {
		return nil
	}
	buf, _ := br.Peek(br.Buffered())
	// Check everything before allocating anything: an answer left to
	// http.ReadResponse (a chunked one, say) costs only this scan.
	size, code, fields, length, ok := scanHead(buf)
	if !ok {
		return nil
	}

	// One string holds the status and every field (each line with its
	// CRLF); the Response's strings are slices of it.
	head := string(buf[:size-2])
	line, rest, _ := strings.Cut(head, "\r\n")
	a := new(h1Answer)
	h := make(http.Header, fields)
	strs := a.vals[:] // the first value of each name
	if fields > len(a.vals) {
		strs = make([]string, fields)
	}
	for rest != "" {
		var field string
		field, rest, _ = strings.Cut(rest, "\r\n")
		name, value, _ := strings.Cut(field, ":")
		if !isCanonical(name) {
			name = textproto.CanonicalMIMEHeaderKey(name)
		}
		value = textproto.TrimString(value)
		if vv := h[name]; vv != nil {
			h[name] = append(vv, value)
		} else {
			vv, strs = strs[:1:1], strs[1:]
			vv[0] = value
			h[name] = vv
		}
	}
	// As http.ReadResponse: Connection: close in an HTTP/1.1 answer ends
	// the connection after it and is removed; Pragma: no-cache without
	// Cache-Control implies Cache-Control: no-cache.
	closing := httpguts.HeaderValuesContainsToken(h["Connection"], "close")
	if closing {
		delete(h, "Connection")
	}
	if hp := h["Pragma"]; len(hp) > 0 && hp[0] == "no-cache" {
		if _, ok := h["Cache-Control"]; !ok {
			h["Cache-Control"] = []string{"no-cache"}
		}
	}
	_, _ = br.Discard(size)
	a.resp = http.Response{
		Status: line[len("HTTP/1.1 "):], StatusCode: code, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: h, ContentLength: length, Close: closing, Request: req,
	}
	if length == 0 {
		a.resp.Body = http.NoBody
	}
	return a
}

// scanHead checks that buf starts with an answer's whole head of the kind
// parseResponse takes: every line ending in CRLF, up to an empty one; the
// status line "HTTP/1.1 ddd" with an optional reason, as http.ReadResponse
// reads it, and a final status other than 204 and 304; each field a token,
// a colon and a valid value on one line (no obs-fold); no
// Transfer-Encoding; one Content-Length, decimal. It returns the size of
// the head with its empty line, the status code, the number of fields and
// the length.
func scanHead(buf []byte) (size, code, fields int, length int64, ok bool) {
	line, rest, ok := cutLine(buf)
	if !ok {
		return 0, 0, 0, 0, false
	}
	status, ok := bytes.CutPrefix(line, []byte("HTTP/1.1 "))
	if !ok || len(status) < 3 || len(status) > 3 && status[3] != ' ' || bytes.IndexByte(status, '\r') >= 0 {
		return 0, 0, 0, 0, false
	}
	for _, c := range status[:3] {
		if c < '0' || c > '9' {
			return 0, 0, 0, 0, false
		}
		code = code*10 + int(c-'0')
	}
	if code < 200 || code > 599 || code == http.StatusNoContent || code == http.StatusNotModified {
		return 0, 0, 0, 0, false
	}
	lengths := 0
	for {
		var field []byte
		if field, rest, ok = cutLine(rest); !ok {
			return 0, 0, 0, 0, false
		}
		if len(field) == 0 {
			break
		}
		// A CR or LF in a field is refused with the other control bytes.
		name, value, ok := bytes.Cut(field, []byte(":"))
		if !ok || len(name) == 0 || !validFieldName(name) || !validFieldValue(value) {
			return 0, 0, 0, 0, false // including obs-fold: a line that starts with a blank
		}
		fields++
		switch {
		case asciiEqualFold(name, "transfer-encoding"):
			return 0, 0, 0, 0, false
		case asciiEqualFold(name, "content-length"):
			lengths++
			if length, ok = parseLength(trimBlanks(value)); !ok {
				return 0, 0, 0, 0, false
			}
		}
	}
	if lengths != 1 {
		// None (a body until close) or several (even equal ones):
		// http.ReadResponse's rules.
		return 0, 0, 0, 0, false
	}
	return len(buf) - len(rest), code, fields, length, true
}

// cutLine cuts the first line, which must end in CRLF, from b.
func cutLine(b []byte) (line, rest []byte, ok bool) {
	i := bytes.IndexByte(b, '\n')
	if i < 1 || b[i-1] != '\r' {
		return nil, nil, false
	}
	return b[:i-1], b[i+1:], true
}

// isCanonical reports whether a token is in canonical form (as
// textproto.CanonicalMIMEHeaderKey would return it), which is far cheaper
// to check than to compute.
func isCanonical(name string) bool {
	upper := true
	for i := 0; i < len(name); i++ {
		c := name[i]
		if upper && 'a' <= c && c <= 'z' || !upper && 'A' <= c && c <= 'Z' {
			return false
		}
		upper = c == '-'
	}
	return true
}

// trimBlanks trims spaces and tabs, as net/textproto trims a value.
func trimBlanks(s []byte) []byte {
	for len(s) > 0 && (s[0] == ' ' || s[0] == '\t') {
		s = s[1:]
	}
	for len(s) > 0 && (s[len(s)-1] == ' ' || s[len(s)-1] == '\t') {
		s = s[:len(s)-1]
	}
	return s
}

// parseLength reads a Content-Length value as http.ReadResponse accepts
// it: decimal digits, at most 63 bits (here at most 18 digits, so that it
// cannot overflow; longer values are left to http.ReadResponse).
func parseLength(s []byte) (int64, bool) {
	if len(s) == 0 || len(s) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// validFieldName reports whether s is a token (RFC 9110 5.6.2).
func validFieldName(s []byte) bool {
	for _, c := range s {
		if !tokenByte[c] {
			return false
		}
	}
	return true
}

// validFieldValue reports whether s holds only field-vchar, SP and HTAB
// (RFC 9110 5.5; obs-text allowed), as net/textproto accepts a value.
func validFieldValue(s []byte) bool {
	for _, c := range s {
		if c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// h1Answer is an answer parseResponse read, with room for its body reader
// and for the first values of its header fields: one allocation for what
// would otherwise take three.
type h1Answer struct {
	resp http.Response
	body h1Body
	vals [8]string
}

var tokenByte = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-'a'+'A'] = true, true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

// fixedBody reads a body of known length from br as net/http's body
// does: its last bytes come with io.EOF, and an end of stream before them
// is io.ErrUnexpectedEOF.
type fixedBody struct {
	br     *bufio.Reader
	remain int64
}

func (b *fixedBody) Read(p []byte) (int, error) {
	if b.remain <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > b.remain {
		p = p[:b.remain]
	}
	n, err := b.br.Read(p)
	b.remain -= int64(n)
	switch {
	case err == io.EOF && b.remain > 0:
		err = io.ErrUnexpectedEOF
	case err == nil && n > 0 && b.remain == 0:
		err = io.EOF
	}
	return n, err
}
