package config

import (
	"fmt"
	"strings"
)

// expand replaces ${VAR} and ${VAR:-default} in a scalar with values from
// lookup, and $$ with a single $. A $ followed by anything else is kept as
// is, so values such as bcrypt hashes or regular expressions ending in $
// need no escaping. Like the shell, ${VAR:-default} uses the default when VAR
// is unset or empty; ${VAR} with VAR set to "" gives "".
//
// The string is returned unchanged (and unallocated) when it holds no $.
func expand(s string, lookup func(string) (string, bool)) (string, error) {
	i := strings.IndexByte(s, '$')
	if i < 0 {
		return s, nil
	}
	var b strings.Builder
	b.Grow(len(s))
	for {
		b.WriteString(s[:i])
		s = s[i:]
		switch {
		case len(s) >= 2 && s[1] == '$':
			b.WriteByte('$')
			s = s[2:]
		case len(s) >= 2 && s[1] == '{':
			end := strings.IndexByte(s, '}')
			if end < 0 {
				return "", fmt.Errorf("unterminated ${ in %q", truncate(s))
			}
			expr := s[2:end]
			s = s[end+1:]
			name, def, hasDef := strings.Cut(expr, ":-")
			if !validEnvName(name) {
				return "", fmt.Errorf("invalid environment variable name %q in ${%s}", name, expr)
			}
			if hasExpansion(def) {
				// The first } ends the expression, so ${A:-${B}} would
				// give the text "${B}" (or A's value and a stray "}"),
				// silently: a token or URL nobody meant.
				return "", fmt.Errorf("${...} inside the default of ${%s:-...} is not supported", name)
			}
			v, ok := lookup(name)
			switch {
			case hasDef && v == "":
				// A default follows the rules of any value: $$ is a $.
				var err error
				if v, err = expand(def, lookup); err != nil {
					return "", err
				}
			case !ok:
				return "", fmt.Errorf("environment variable %s is not set (use ${%s:-default} for a default)", name, name)
			}
			b.WriteString(v)
		default:
			b.WriteByte('$')
			s = s[1:]
		}
		i = strings.IndexByte(s, '$')
		if i < 0 {
			b.WriteString(s)
			return b.String(), nil
		}
	}
}

// hasExpansion reports whether s holds a ${ that is not escaped as $${.
func hasExpansion(s string) bool {
	for i := 0; i+1 < len(s); i++ {
		if s[i] == '$' {
			if s[i+1] == '{' {
				return true
			}
			if s[i+1] == '$' {
				i++
			}
		}
	}
	return false
}

// validEnvName reports whether s is a POSIX-style variable name.
func validEnvName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '_', c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z':
		case c >= '0' && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

func truncate(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}
