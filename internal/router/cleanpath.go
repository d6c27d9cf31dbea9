package router

import (
	"errors"
	"net/http"
	"net/url"
	"strings"

	"github.com/portico-gw/portico/internal/problem"
)

// ErrInvalidPath is the cause of every error CleanPath returns; test for it
// with errors.Is. The error itself is a *problem.Error with status 400, ready
// for problem.Write.
var ErrInvalidPath = errors.New("invalid request path")

func invalidPath(detail string) error {
	return problem.Wrap(http.StatusBadRequest, "invalid_path", detail, ErrInvalidPath)
}

// CleanPath normalises an escaped request path (r.URL.EscapedPath()) before
// routing. It returns the decoded path and the cleaned path in escaped form.
//
// Cleaning removes "." and ".." segments (also when their dots are written
// %2e or %2E, in any mix; ".." never climbs above the root), collapses empty
// segments ("//"), and keeps a trailing slash (a trailing dot segment leaves
// one, as RFC 3986 section 5.2.4 does). Each kept segment keeps the client's
// own escaping: %2F stays %2F in cleanEscaped, so it never turns into a
// separator upstream, while in decoded it is a literal '/' inside one
// segment. Bytes that may not appear raw in a path (space, controls, '"',
// '\\', non-ASCII...) are percent-encoded in cleanEscaped, so that
// url.URL.EscapedPath keeps it verbatim; a backslash is an ordinary
// character, never a separator. ';' is an ordinary character too (no
// path parameters), but a dot segment followed by ';' ("..;x") is rejected,
// because some upstream servers strip the parameter and then climb.
//
// Rejected with a 400 *problem.Error: paths not starting with '/', invalid
// percent-encoding, and NUL bytes (raw or %00).
//
// A path that needs no change is returned as it is, without allocating.
func CleanPath(escaped string) (decoded, cleanEscaped string, err error) {
	if escaped == "" || escaped[0] != '/' {
		return "", "", invalidPath("the request path must start with '/'")
	}
	clean := true    // no cleaning or encoding needed
	percent := false // decoding needed
	dotEsc := false  // a %2e, which may spell a dot segment
	for i := 0; i < len(escaped); i++ {
		c := escaped[i]
		switch {
		case c == 0:
			return "", "", invalidPath("the request path contains a NUL byte")
		case c == '%':
			if i+2 >= len(escaped) || !isHex(escaped[i+1]) || !isHex(escaped[i+2]) {
				return "", "", invalidPath("the request path has an invalid percent-encoding")
			}
			switch escaped[i+1 : i+3] {
			case "00":
				return "", "", invalidPath("the request path contains a NUL byte")
			case "2e", "2E":
				dotEsc = true
			}
			percent = true
			i += 2
		case c == '/':
			if i+1 < len(escaped) && escaped[i+1] == '/' {
				clean = false
			}
		case c == '.':
			// "." or ".." as a whole segment, or a dot segment with
			// parameters ("..;x"), goes to the slow path.
			if escaped[i-1] == '/' {
				j := i + 1
				if j < len(escaped) && escaped[j] == '.' {
					j++
				}
				if j == len(escaped) || escaped[j] == '/' || escaped[j] == ';' {
					clean = false
				}
			}
		case !validPathByte(c):
			clean = false
		}
	}
	if clean && !dotEsc {
		if !percent {
			return escaped, escaped, nil
		}
		decoded, err = url.PathUnescape(escaped)
		if err != nil {
			return "", "", invalidPath("the request path has an invalid percent-encoding")
		}
		return decoded, escaped, nil
	}

	// First the segments to keep, as offsets into escaped, so that ".."
	// pops in constant time (no copying: a long run of "a/../" costs
	// linear time); then one builder writes them.
	type span struct{ start, end int }
	var keptBuf [32]span
	kept := keptBuf[:0]
	trailing := false
	for pos := 1; ; {
		end := len(escaped)
		if i := strings.IndexByte(escaped[pos:], '/'); i >= 0 {
			end = pos + i
		}
		seg, last := escaped[pos:end], end == len(escaped)
		switch dotKind(seg) {
		case 0:
			if seg == "" {
				trailing = last
				break
			}
			if semi := strings.IndexByte(seg, ';'); semi >= 0 && dotKind(seg[:semi]) != 0 {
				return "", "", invalidPath("the request path has a dot segment with parameters")
			}
			kept = append(kept, span{pos, end})
			trailing = false
		case 1:
			trailing = last
		case 2:
			if len(kept) > 0 {
				kept = kept[:len(kept)-1]
			}
			trailing = last
		}
		if last {
			break
		}
		pos = end + 1
	}
	var b strings.Builder
	b.Grow(len(escaped) + 8)
	for _, sp := range kept {
		b.WriteByte('/')
		writeEncoded(&b, escaped[sp.start:sp.end])
	}
	if b.Len() == 0 || trailing {
		b.WriteByte('/')
	}
	cleanEscaped = b.String()
	if strings.IndexByte(cleanEscaped, '%') < 0 {
		return cleanEscaped, cleanEscaped, nil
	}
	decoded, err = url.PathUnescape(cleanEscaped)
	if err != nil {
		// Unreachable: the input was validated above.
		return "", "", invalidPath("the request path has an invalid percent-encoding")
	}
	return decoded, cleanEscaped, nil
}

// dotKind reports whether seg decodes to "." (1), ".." (2) or neither (0).
func dotKind(seg string) int {
	dots := 0
	for i := 0; i < len(seg); i++ {
		switch {
		case seg[i] == '.':
		case seg[i] == '%' && i+2 < len(seg) && seg[i+1] == '2' && (seg[i+2] == 'e' || seg[i+2] == 'E'):
			i += 2
		default:
			return 0
		}
		dots++
		if dots > 2 {
			return 0
		}
	}
	return dots
}

// writeEncoded writes seg, percent-encoding the bytes that may not appear raw
// in a URL path (existing escapes are kept as written).
func writeEncoded(b *strings.Builder, seg string) {
	const hex = "0123456789ABCDEF"
	for i := 0; i < len(seg); i++ {
		c := seg[i]
		if c == '%' || validPathByte(c) {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&15])
	}
}

// validPathByte reports whether c may appear unescaped in a path as
// net/url's validEncoded accepts it: unreserved, sub-delims, ':', '@',
// '[', ']' and the separator '/'. ('%' is handled by the callers.)
func validPathByte(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	switch c {
	case '-', '.', '_', '~', '!', '$', '&', '\'', '(', ')', '*', '+', ',', ';', '=', ':', '@', '[', ']', '/':
		return true
	}
	return false
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10
	}
	return 0
}

// SetPath stores a CleanPath result in u the way net/url expects: Path is
// the decoded form and RawPath the escaped one. The proxy reads the
// outbound path from u.EscapedPath(), which then returns cleanEscaped
// verbatim. RawPath is set even when it equals Path: left empty, net/url
// would escape the sub-delimiters ! ' ( ) * of Path, and RFC 3986 section
// 2.2 makes "/it's" and "/it%27s" different paths (a signed URL would no
// longer match).
func SetPath(u *url.URL, decoded, cleanEscaped string) {
	u.Path, u.RawPath = decoded, cleanEscaped
}
