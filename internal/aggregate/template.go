package aggregate

import (
	"errors"
	"fmt"
	"net/textproto"
	"net/url"
	"strings"
)

// source says where a template placeholder takes its value from.
type source uint8

const (
	srcLiteral source = iota
	srcParam          // {name}: a path parameter of the endpoint
	srcClaim          // {claims.X}
	srcQuery          // {query.X}
	srcHeader         // {header.X}
	srcHost           // {header.Host}: the request's host, which is not among its header fields
	srcDep            // {OTHER.field.path}: OTHER's raw response
)

// part is a literal run of a template or one placeholder.
type part struct {
	src  source
	text string   // the literal, or the param/claim/query/header name
	keys []string // srcDep: the field path in the dependency's body
	// inQuery: the placeholder is after the template's '?', so its value is
	// query-escaped instead of path-escaped.
	inQuery bool
}

// template is a compiled backend path such as "/users/{claims.sub}?limit=20".
type template struct {
	raw   string
	parts []part
	// dep is the backend name {OTHER.x} placeholders refer to ("" if none).
	dep string
}

// parseTemplate compiles a backend path. after is the backend this one
// waits for; only it may be read with {after.field}.
func parseTemplate(s, after string) (*template, error) {
	if !strings.HasPrefix(s, "/") {
		return nil, fmt.Errorf("path %q must start with '/'", s)
	}
	t := &template{raw: s}
	inQuery := false
	check := make([]byte, 0, len(s))
	for i := 0; i < len(s); {
		switch s[i] {
		case '{':
			j := strings.IndexByte(s[i+1:], '}')
			if j < 0 {
				return nil, fmt.Errorf("path %q: '{' at byte %d is not closed", s, i)
			}
			inner := s[i+1 : i+1+j]
			if strings.ContainsAny(inner, "{") {
				return nil, fmt.Errorf("path %q: nested '{' at byte %d", s, i)
			}
			p, err := parsePlaceholder(inner, after)
			if err != nil {
				return nil, fmt.Errorf("path %q: %w", s, err)
			}
			p.inQuery = inQuery
			t.parts = append(t.parts, p)
			if p.src == srcDep {
				t.dep = after
			}
			check = append(check, 'x')
			i += j + 2
		case '}':
			return nil, fmt.Errorf("path %q: '}' at byte %d without '{'", s, i)
		default:
			j := strings.IndexAny(s[i:], "{}")
			if j < 0 {
				j = len(s) - i
			}
			lit := s[i : i+j]
			if !inQuery && strings.Contains(lit, "?") {
				inQuery = true
			}
			check = append(check, lit...)
			t.parts = append(t.parts, part{src: srcLiteral, text: escapeLiteral(lit)})
			i += j
		}
	}
	// The literal parts are sent as written (but for the bytes escapeLiteral
	// encodes), so they must already be a valid origin-form request target.
	u, err := url.ParseRequestURI(string(check))
	if err != nil || u.Fragment != "" || strings.Contains(string(check), "#") {
		return nil, fmt.Errorf("path %q is not a valid request path", s)
	}
	return t, nil
}

// escapeLiteral percent-encodes the bytes of a literal that a request
// target never carries raw (controls, space, '"', '<', '>', '\', '^', '`',
// '|', non-ASCII), keeping all else as written. Left raw, one such byte
// makes the rendered path an invalid escaped form; the URL then re-escapes
// its decoded path, and a value's "%2F" would go out as a real '/'.
func escapeLiteral(lit string) string {
	n := 0
	for i := 0; i < len(lit); i++ {
		if rawInTarget(lit[i]) {
			n++
		}
	}
	if n == 0 {
		return lit
	}
	const hex = "0123456789ABCDEF"
	b := make([]byte, 0, len(lit)+2*n)
	for i := 0; i < len(lit); i++ {
		if c := lit[i]; rawInTarget(c) {
			b = append(b, '%', hex[c>>4], hex[c&15])
		} else {
			b = append(b, c)
		}
	}
	return string(b)
}

// rawInTarget reports whether c may not appear unescaped in a request
// target (RFC 3986 section 2; '#', '{' and '}' never reach here).
func rawInTarget(c byte) bool {
	switch c {
	case ' ', '"', '<', '>', '\\', '^', '`', '|':
		return true
	}
	return c < 0x20 || c >= 0x7f
}

func parsePlaceholder(inner, after string) (part, error) {
	if inner == "" {
		return part{}, errors.New("empty placeholder {}")
	}
	prefix, name, dotted := strings.Cut(inner, ".")
	if !dotted {
		return part{src: srcParam, text: inner}, nil
	}
	if name == "" || prefix == "" {
		return part{}, fmt.Errorf("placeholder {%s}: empty name", inner)
	}
	switch prefix {
	case "claims":
		return part{src: srcClaim, text: name}, nil
	case "query":
		return part{src: srcQuery, text: name}, nil
	case "header":
		name = textproto.CanonicalMIMEHeaderKey(name)
		if name == "Host" {
			// The server moves Host out of the header (into Request.Host),
			// so read there it would always be missing.
			return part{src: srcHost, text: name}, nil
		}
		return part{src: srcHeader, text: name}, nil
	}
	if after == "" || prefix != after {
		return part{}, fmt.Errorf("placeholder {%s}: %q is not claims, query, header or the backend named in after", inner, prefix)
	}
	keys := strings.Split(name, ".")
	for _, k := range keys {
		if k == "" {
			return part{}, fmt.Errorf("placeholder {%s}: empty key", inner)
		}
		// A template value is one scalar, so the path names object keys
		// only; "[]" (all elements) has no single value to give.
		if strings.ContainsAny(k, "[]") {
			return part{}, fmt.Errorf("placeholder {%s}: a template reads one value, so its path cannot contain \"[]\"", inner)
		}
	}
	return part{src: srcDep, text: prefix, keys: keys}, nil
}

// missingError is a template value the request or a dependency did not
// provide.
type missingError struct {
	what string
	dep  bool // from a dependency's body (an upstream fault), not the request
	err  error
}

func (e *missingError) Error() string {
	if e.err != nil {
		return fmt.Sprintf("template value %s: %v", e.what, e.err)
	}
	return "template value " + e.what + " is missing"
}

// render appends the request target (path and query) to dst.
func (t *template) render(dst []byte, in *Input, s *scanner) ([]byte, error) {
	for i := range t.parts {
		p := &t.parts[i]
		var (
			v  string
			vb []byte
			ok bool
		)
		switch p.src {
		case srcLiteral:
			dst = append(dst, p.text...)
			continue
		case srcParam:
			if in.Info != nil {
				v, ok = in.Info.Param(p.text)
			}
			if !ok {
				return dst, &missingError{what: placeholderName(p)}
			}
		case srcClaim:
			v, ok = in.identity().Claim(p.text)
			if !ok {
				return dst, &missingError{what: placeholderName(p)}
			}
		case srcQuery:
			vs := in.queryValues()[p.text]
			if len(vs) == 0 {
				return dst, &missingError{what: placeholderName(p)}
			}
			v = vs[0]
		case srcHeader:
			vs := in.Request.Header[p.text]
			if len(vs) == 0 {
				return dst, &missingError{what: placeholderName(p)}
			}
			v = vs[0]
		case srcHost:
			if v = in.Request.Host; v == "" {
				return dst, &missingError{what: placeholderName(p)}
			}
		case srcDep:
			r := in.dep
			if r == nil {
				return dst, &missingError{what: placeholderName(p), dep: true}
			}
			var err error
			vb, err = lookupScalar(s, r.Body, p.keys)
			if err != nil {
				return dst, &missingError{what: placeholderName(p), dep: true, err: err}
			}
		}
		if vb != nil {
			v = string(vb) // rare: only {OTHER.field}
		}
		// A whole segment of "." or ".." would walk the upstream path even
		// when escaped (servers decode %2E before cleaning), so refuse it,
		// and an empty value, which names another resource ("/users/" for
		// "/users/{claims.sub}"). A dependency's value is its fault.
		if !p.inQuery && (v == "" || v == "." || v == "..") {
			return dst, &missingError{what: placeholderName(p), dep: p.src == srcDep, err: fmt.Errorf("%q cannot be part of a path", v)}
		}
		dst = appendEscaped(dst, v)
	}
	return dst, nil
}

// appendEscaped percent-encodes every byte outside RFC 3986's unreserved
// set, so a value can never add a path segment ('/'), start a query ('?'),
// or add a parameter ('&', '=').
// The same conservative set suits the path and the query (space becomes
// %20, which both accept).
func appendEscaped(dst []byte, v string) []byte {
	const hex = "0123456789ABCDEF"
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			c == '-' || c == '.' || c == '_' || c == '~' {
			dst = append(dst, c)
			continue
		}
		dst = append(dst, '%', hex[c>>4], hex[c&15])
	}
	return dst
}

func placeholderName(p *part) string {
	switch p.src {
	case srcParam:
		return "path parameter " + p.text
	case srcClaim:
		return "claim " + p.text
	case srcQuery:
		return "query parameter " + p.text
	case srcHeader, srcHost:
		return "header " + p.text
	case srcDep:
		return p.text + "." + strings.Join(p.keys, ".")
	}
	return p.text
}
