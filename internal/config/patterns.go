package config

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// The small languages inside config values (route path patterns, hosts,
// backend path templates, JSON field paths, rate-limit keys) are checked
// here. The router, aggregator and limiter parse them again at compile time;
// these checks exist so a bad value is reported with its file position by
// `portico validate` instead of failing a reload later.

// PathParams returns the {param} names of a route path pattern, and whether
// it ends in the /* prefix wildcard.
func PathParams(pattern string) (params []string, prefix bool) {
	for seg := range strings.SplitSeq(pattern, "/") {
		switch {
		case seg == "*":
			prefix = true
		case len(seg) > 2 && seg[0] == '{' && seg[len(seg)-1] == '}':
			params = append(params, seg[1:len(seg)-1])
		}
	}
	return params, prefix
}

// checkPathPattern validates a route path pattern: /-rooted; {name} only as a
// whole segment; * only as the last segment; no duplicate parameter names.
func checkPathPattern(p string) error {
	if p == "" {
		return errors.New("is required")
	}
	if p[0] != '/' {
		return fmt.Errorf("%q must start with /", p)
	}
	if strings.ContainsAny(p, "?# \t\r\n") {
		return fmt.Errorf("%q must not contain a query, a fragment or spaces", p)
	}
	segs := strings.Split(p[1:], "/")
	seen := map[string]bool{}
	for i, seg := range segs {
		last := i == len(segs)-1
		switch {
		case seg == "" && !last:
			return fmt.Errorf("%q has an empty segment (//)", p)
		case seg == "." || seg == "..":
			return fmt.Errorf("%q has a dot segment", p)
		case seg == "*":
			if !last {
				return fmt.Errorf("%q: /* is only allowed at the end", p)
			}
		case strings.Contains(seg, "*"):
			return fmt.Errorf("%q: * must be a whole segment at the end (/prefix/*)", p)
		case strings.ContainsAny(seg, "{}"):
			if len(seg) < 3 || seg[0] != '{' || seg[len(seg)-1] != '}' {
				return fmt.Errorf("%q: a parameter must be a whole segment like {id}", p)
			}
			name := seg[1 : len(seg)-1]
			if !isIdent(name) {
				return fmt.Errorf("%q: invalid parameter name %q (letters, digits and _)", p, name)
			}
			if seen[name] {
				return fmt.Errorf("%q: duplicate parameter {%s}", p, name)
			}
			seen[name] = true
		}
	}
	return nil
}

// normalizePattern maps patterns that match the same requests to one string
// (/a/{id} and /a/{x} are the same route), for conflict detection.
func normalizePattern(p string) string {
	if !strings.Contains(p, "{") {
		return p
	}
	segs := strings.Split(p, "/")
	for i, s := range segs {
		if strings.HasPrefix(s, "{") {
			segs[i] = "{}"
		}
	}
	return strings.Join(segs, "/")
}

// checkHost validates a route host: an exact name or *.suffix, no port.
func checkHost(h string) error {
	name := h
	if rest, ok := strings.CutPrefix(h, "*."); ok {
		name = rest
	}
	if name == "" || len(name) > 253 {
		return fmt.Errorf("invalid host %q", h)
	}
	for label := range strings.SplitSeq(name, ".") {
		if label == "" || len(label) > 63 {
			return fmt.Errorf("invalid host %q (exact name or *.suffix, no port)", h)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return fmt.Errorf("invalid host %q (exact name or *.suffix, no port)", h)
			}
		}
	}
	return nil
}

func isIdent(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' && i > 0) {
			return false
		}
	}
	return true
}

// isMethod reports whether s is an upper-case HTTP method token.
func isMethod(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= 'A' && c <= 'Z' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// maxFieldPathSegments mirrors the aggregation stage's bound on a field
// path's length, which it enforces when it compiles.
const maxFieldPathSegments = 64

// checkFieldPath validates a JSON field path such as items[].author.name:
// dot-separated keys, each optionally followed by [] (every array item); a
// path may start with [] for a top-level array.
func checkFieldPath(p string) error {
	if p == "" {
		return errors.New("empty field path")
	}
	segs := strings.Split(p, ".")
	if len(segs) > maxFieldPathSegments {
		return fmt.Errorf("field path %q has more than %d segments", p, maxFieldPathSegments)
	}
	for i, seg := range segs {
		key := seg
		for strings.HasSuffix(key, "[]") {
			key = key[:len(key)-2]
		}
		if key == "" && (i > 0 || seg == "") {
			return fmt.Errorf("invalid field path %q (dot-separated keys, [] for array items)", p)
		}
		if strings.ContainsAny(key, "[]{} \t\r\n\"") {
			return fmt.Errorf("invalid field path %q (dot-separated keys, [] for array items)", p)
		}
	}
	return nil
}

// isKeyName reports whether s is one JSON key (for into and rename targets).
func isKeyName(s string) bool {
	return s != "" && !strings.ContainsAny(s, ".[]{} \t\r\n\"")
}

// templateRefs returns the expressions inside {...} in a backend path
// template and its skeleton (the template with each {...} as one 'x'), or
// an error for unbalanced braces.
func templateRefs(t string) (refs []string, skeleton string, err error) {
	var sk strings.Builder
	for {
		open := strings.IndexAny(t, "{}")
		if open < 0 {
			sk.WriteString(t)
			return refs, sk.String(), nil
		}
		if t[open] == '}' {
			return nil, "", errors.New("unbalanced } in template")
		}
		end := strings.IndexAny(t[open+1:], "{}")
		if end < 0 || t[open+1+end] == '{' {
			return nil, "", errors.New("unbalanced { in template")
		}
		refs = append(refs, t[open+1:open+1+end])
		sk.WriteString(t[:open])
		sk.WriteByte('x')
		t = t[open+1+end+1:]
	}
}

// checkKeyExpr validates a rate-limit key: parts ip | header:NAME |
// claim:NAME | consumer | route | global joined with +.
func checkKeyExpr(k string) error {
	if k == "" {
		return errors.New("is required (ip, header:NAME, claim:NAME, consumer, route or global, joined with +)")
	}
	seen := map[string]bool{}
	for part := range strings.SplitSeq(k, "+") {
		part = strings.TrimSpace(part)
		if seen[part] {
			return fmt.Errorf("%q repeats %q", k, part)
		}
		seen[part] = true
		if err := checkKeyPart(part, true); err != nil {
			return fmt.Errorf("%q: %w", k, err)
		}
	}
	return nil
}

func checkKeyPart(part string, rateLimit bool) error {
	switch part {
	case "ip":
		return nil
	case "consumer", "route", "global":
		if rateLimit {
			return nil
		}
	}
	if name, ok := strings.CutPrefix(part, "header:"); ok {
		if !httpguts.ValidHeaderFieldName(name) {
			return fmt.Errorf("invalid header name in %q", part)
		}
		return nil
	}
	if name, ok := strings.CutPrefix(part, "claim:"); ok {
		if name == "" || strings.ContainsAny(name, " \t+") {
			return fmt.Errorf("invalid claim name in %q", part)
		}
		return nil
	}
	if rateLimit {
		return fmt.Errorf("unknown part %q (ip, header:NAME, claim:NAME, consumer, route, global)", part)
	}
	return fmt.Errorf("unknown hash key %q (ip, header:NAME, claim:NAME)", part)
}
