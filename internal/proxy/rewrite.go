package proxy

import (
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"

	"github.com/portico-gw/portico/internal/reqctx"
)

// template is a compiled rewrite.path: literal text (already escaped) and
// references to path parameters.
type template struct {
	parts []part
	size  int // bytes of literal text, to size the builder
}

type part struct {
	lit   string
	param string // "" for literal parts; "*" for the rest of a prefix route
}

// parseTemplate compiles "/v1/posts/{id}" or "/v2/{*}". Literal text is
// taken as an escaped path: bytes that may not appear raw are escaped.
func parseTemplate(s string) (*template, error) {
	if !strings.HasPrefix(s, "/") {
		return nil, fmt.Errorf("%q must start with '/'", s)
	}
	t := &template{}
	for s != "" {
		open := strings.IndexByte(s, '{')
		if close := strings.IndexByte(s, '}'); close >= 0 && (open < 0 || close < open) {
			return nil, errors.New("'}' without '{'")
		}
		if open < 0 {
			t.addLit(s)
			break
		}
		if open > 0 {
			t.addLit(s[:open])
		}
		end := strings.IndexByte(s[open:], '}')
		if end < 0 {
			return nil, errors.New("'{' without '}'")
		}
		name := s[open+1 : open+end]
		if name != "*" && !validParamName(name) {
			return nil, fmt.Errorf("invalid parameter {%s}", name)
		}
		t.parts = append(t.parts, part{param: name})
		s = s[open+end+1:]
	}
	return t, nil
}

func (t *template) addLit(s string) {
	esc := escapeLiteral(s)
	t.parts = append(t.parts, part{lit: esc})
	t.size += len(esc)
}

// escapeLiteral escapes what url.URL would refuse to keep raw in a path,
// keeping existing %XX escapes.
func escapeLiteral(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '%' || c == '/' || shouldKeep(c) {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, "%%%02X", c)
	}
	return b.String()
}

func shouldKeep(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("-._~!$&'()*+,;=:@", c) >= 0
}

// outboundPath applies the route's rewrite to the inbound escaped path.
func (h *handler) outboundPath(esc string, info *reqctx.Info) string {
	switch {
	case h.rewrite != nil:
		return h.rewrite.expand(info)
	case h.strip != nil:
		return stripPrefix(esc, h.strip)
	}
	return esc
}

// expand fills the template. {name} values are decoded parameters and are
// escaped as one segment (a '/' in them becomes %2F); {*} is the router's
// escaped rest of the path and is inserted as it is. A parameter the route
// did not capture expands to nothing.
func (t *template) expand(info *reqctx.Info) string {
	var b strings.Builder
	b.Grow(t.size + 32)
	for _, p := range t.parts {
		if p.param == "" {
			b.WriteString(p.lit)
			continue
		}
		var v string
		if info != nil {
			v, _ = info.Param(p.param)
		}
		if p.param == "*" {
			b.WriteString(v)
		} else {
			b.WriteString(url.PathEscape(v))
		}
	}
	return b.String()
}

// stripPrefix removes the leading segments of esc when they equal prefix
// (decoded, segment by segment), leaving at least "/". A path that does not
// start with the whole prefix is returned unchanged.
func stripPrefix(esc string, prefix []string) string {
	rest := esc
	for _, want := range prefix {
		if !strings.HasPrefix(rest, "/") {
			return esc
		}
		seg := rest[1:]
		next := ""
		if i := strings.IndexByte(seg, '/'); i >= 0 {
			seg, next = seg[:i], seg[i:]
		}
		if seg != want {
			if strings.IndexByte(seg, '%') < 0 {
				return esc
			}
			if dec, err := url.PathUnescape(seg); err != nil || dec != want {
				return esc
			}
		}
		rest = next
	}
	if rest == "" {
		return "/"
	}
	return rest
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

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
