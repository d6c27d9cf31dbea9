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
			v, ok := lookup(name)
			switch {
			case hasDef && v == "":
				v = def
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
