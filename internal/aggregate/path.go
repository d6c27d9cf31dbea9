package aggregate

import (
	"errors"
	"fmt"
	"strings"
)

// segment is one step of a field path: an object key followed by arr
// levels of "[]" (each means: the value is an array, apply the rest of the
// path to every element).
type segment struct {
	key string
	arr int
}

// maxPathSegments bounds a field path; a deeper path cannot match anything
// within the 64-level nesting limit anyway.
const maxPathSegments = 64

// parsePath parses a dot path such as "items[].author.name". The first
// segment may be a bare "[]" (the body itself is an array: "[].id"). Keys
// cannot contain '.', '[' or ']'.
func parsePath(s string) ([]segment, error) {
	if s == "" {
		return nil, errors.New("empty field path")
	}
	parts := strings.Split(s, ".")
	if len(parts) > maxPathSegments {
		return nil, fmt.Errorf("field path %q has more than %d segments", s, maxPathSegments)
	}
	segs := make([]segment, 0, len(parts))
	for i, p := range parts {
		name := p
		arr := 0
		if j := strings.IndexAny(p, "[]"); j >= 0 {
			name = p[:j]
			rest := p[j:]
			for rest != "" {
				if !strings.HasPrefix(rest, "[]") {
					return nil, fmt.Errorf("field path %q: segment %q: only \"[]\" may follow a key", s, p)
				}
				rest = rest[2:]
				arr++
			}
		}
		if name == "" && !(i == 0 && arr > 0) {
			return nil, fmt.Errorf("field path %q: empty key in segment %d", s, i+1)
		}
		segs = append(segs, segment{key: name, arr: arr})
	}
	return segs, nil
}

// rootSegments splits a parsed path into the root's array depth and the key
// segments below it.
func rootSegments(segs []segment) (rootArr int, rest []segment) {
	if len(segs) > 0 && segs[0].key == "" {
		return segs[0].arr, segs[1:]
	}
	return 0, segs
}

func formatPath(segs []segment) string {
	var b strings.Builder
	for i, s := range segs {
		if i > 0 && s.key != "" {
			b.WriteByte('.')
		}
		b.WriteString(s.key)
		for range s.arr {
			b.WriteString("[]")
		}
	}
	return b.String()
}
