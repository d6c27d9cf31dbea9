package router

import (
	"errors"
	"fmt"
	"strings"
)

// pattern is a parsed route path.
type pattern struct {
	segs   []patSeg
	prefix bool // ended in "/*"
	lits   int
}

// patSeg is a literal (in canonical form) or a parameter.
type patSeg struct {
	lit   string
	param string
}

// parsePattern parses a route path: "/" followed by segments separated by
// '/'. A segment is a literal or a whole "{name}"; a final "*" makes the
// pattern a prefix. Patterns that no cleaned path could match (empty or dot
// segments, except a trailing slash) are errors.
func parsePattern(path string) (pattern, error) {
	var p pattern
	if path == "" || path[0] != '/' {
		return p, errors.New("path must start with '/'")
	}
	if strings.IndexByte(path, 0) >= 0 {
		return p, errors.New("path contains a NUL byte")
	}
	raw := strings.Split(path[1:], "/")
	if raw[len(raw)-1] == "*" {
		p.prefix = true
		raw = raw[:len(raw)-1]
	}
	if len(raw) > maxSegments {
		return p, fmt.Errorf("path has more than %d segments", maxSegments)
	}
	seen := map[string]bool{}
	for i, s := range raw {
		last := i == len(raw)-1
		switch {
		case s == "":
			if !last || p.prefix {
				return p, errors.New("path has an empty segment ('//'); requests are cleaned, so it could never match")
			}
		case s == "." || s == "..":
			return p, errors.New("path has a dot segment; requests are cleaned, so it could never match")
		case strings.ContainsAny(s, "*"):
			return p, errors.New("'*' is allowed only as the whole last segment ('/prefix/*')")
		}
		if strings.HasPrefix(s, "{") && strings.HasSuffix(s, "}") {
			name := s[1 : len(s)-1]
			if !validParamName(name) {
				return p, fmt.Errorf("invalid parameter name %q (letters, digits, '_', '-', '.')", name)
			}
			if seen[name] {
				return p, fmt.Errorf("duplicate parameter %q", name)
			}
			seen[name] = true
			p.segs = append(p.segs, patSeg{param: name})
			continue
		}
		if strings.ContainsAny(s, "{}") {
			return p, errors.New("a parameter must be a whole segment: '{name}'")
		}
		p.segs = append(p.segs, patSeg{lit: canonicalLiteral(s)})
		p.lits++
	}
	return p, nil
}

func validParamName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// The canonical form of a segment is its decoded text with '%' written %25
// and '/' written %2F. Pattern literals (decoded text without '/') and
// escaped request segments both map to it, so they compare with ==.
func canonicalLiteral(s string) string {
	return strings.ReplaceAll(s, "%", "%25")
}

// appendCanonical appends the canonical form of the escaped path p (whole,
// separators included) to dst. An invalid escape is a literal '%'.
func appendCanonical(dst []byte, p string) []byte {
	for i := 0; i < len(p); i++ {
		c := p[i]
		if c != '%' {
			dst = append(dst, c)
			continue
		}
		if i+2 < len(p) && isHex(p[i+1]) && isHex(p[i+2]) {
			d := unhex(p[i+1])<<4 | unhex(p[i+2])
			i += 2
			switch d {
			case '/':
				dst = append(dst, "%2F"...)
			case '%':
				dst = append(dst, "%25"...)
			default:
				dst = append(dst, d)
			}
			continue
		}
		dst = append(dst, "%25"...)
	}
	return dst
}

// decodeCanonical turns a canonical segment into its decoded text.
func decodeCanonical(s string) string {
	if strings.IndexByte(s, '%') < 0 {
		return s
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) {
			switch s[i+1 : i+3] {
			case "2F":
				b.WriteByte('/')
				i += 2
				continue
			case "25":
				b.WriteByte('%')
				i += 2
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
