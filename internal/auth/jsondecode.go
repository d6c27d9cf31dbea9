package auth

import (
	"encoding/json"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

// The JOSE header and the claims are decoded here rather than with
// encoding/json: on a token the gateway has not seen, reflection, the
// separate validation pass and one allocation per key and string made the
// JSON about a fifth of the verification's CPU. The decoder works on the
// decoded token text as a string, so names and strings without escapes are
// slices of it, not copies.
//
// It accepts and rejects exactly what json.Unmarshal into a map[string]any
// does, and yields the same values (FuzzJSONObject compares the two),
// including the lenient parts that the claim rules rest on: a repeated name
// keeps its last value (RFC 7515 section 5.2 and RFC 7519 section 4 allow
// this or rejecting), invalid UTF-8 and lone surrogates become U+FFFD,
// nesting deeper than 10000 fails, and a number that does not fit a
// float64 fails. One difference: an integer that a float64 cannot give
// back digit for digit is a json.Number (its text), not the rounded
// float64, so that ids forwarded or keyed on stay the token's own.

// maxJSONDepth is encoding/json's nesting limit.
const maxJSONDepth = 10000

type jsonDecoder struct {
	s     string
	i     int
	depth int
}

// decodeJSONObject decodes s, which must be one JSON object with nothing
// but whitespace around it.
func decodeJSONObject(s string) (map[string]any, bool) {
	d := jsonDecoder{s: s}
	d.space()
	if !d.at('{') {
		return nil, false
	}
	m, ok := d.object()
	if !ok {
		return nil, false
	}
	d.space()
	return m, d.i == len(d.s)
}

// joseHeader is what the gateway reads from a JOSE header. alg and kid are
// the raw JSON texts of the last "alg" and "kid" members ("" when absent).
type joseHeader struct {
	alg, kid string
	crit     bool
}

// decodeJOSEHeader validates s as one JSON object, as decodeJSONObject
// does, without building values for members other than alg and kid.
func decodeJOSEHeader(s string) (joseHeader, bool) {
	var h joseHeader
	d := jsonDecoder{s: s}
	d.space()
	if !d.at('{') {
		return h, false
	}
	ok := d.container('}', true, func(name string) bool {
		start := d.i
		if !d.skip() {
			return false
		}
		switch name {
		case "alg":
			h.alg = d.s[start:d.i]
		case "kid":
			h.kid = d.s[start:d.i]
		case "crit":
			h.crit = true
		}
		return true
	})
	d.space()
	return h, ok && d.i == len(d.s)
}

// headerString converts the raw JSON of a header member to a Go string as
// json.Unmarshal into a string does: null leaves it empty, any other
// non-string is an error.
func headerString(raw string) (string, bool) {
	if raw == "null" {
		return "", true
	}
	if raw == "" || raw[0] != '"' {
		return "", false
	}
	d := jsonDecoder{s: raw}
	return d.str()
}

func (d *jsonDecoder) at(c byte) bool { return d.i < len(d.s) && d.s[d.i] == c }

func (d *jsonDecoder) space() {
	for d.i < len(d.s) {
		switch d.s[d.i] {
		case ' ', '\t', '\n', '\r':
			d.i++
		default:
			return
		}
	}
}

// value decodes the value at d.i, which follows any whitespace.
func (d *jsonDecoder) value() (any, bool) {
	if d.i >= len(d.s) {
		return nil, false
	}
	switch c := d.s[d.i]; {
	case c == '{':
		m, ok := d.object()
		return m, ok
	case c == '[':
		return d.array()
	case c == '"':
		return d.str()
	case c == 't':
		return true, d.literal("true")
	case c == 'f':
		return false, d.literal("false")
	case c == 'n':
		return nil, d.literal("null")
	case c == '-' || '0' <= c && c <= '9':
		end, ok := d.numberEnd()
		if !ok {
			return nil, false
		}
		lit := d.s[d.i:end]
		f, err := strconv.ParseFloat(lit, 64)
		if err != nil {
			return nil, false // out of range, as encoding/json
		}
		d.i = end
		if inexactInteger(lit, f) {
			return json.Number(lit), true
		}
		return f, true
	}
	return nil, false
}

func (d *jsonDecoder) object() (map[string]any, bool) {
	m := make(map[string]any)
	ok := d.container('}', true, func(name string) bool {
		v, ok := d.value()
		m[name] = v
		return ok
	})
	if !ok {
		return nil, false
	}
	return m, true
}

func (d *jsonDecoder) array() (any, bool) {
	a := make([]any, 0) // never nil, as encoding/json: "[]" is an empty array
	ok := d.container(']', false, func(string) bool {
		v, ok := d.value()
		a = append(a, v)
		return ok
	})
	if !ok {
		return nil, false
	}
	return a, true
}

// container walks the object or array that opens at d.i and ends with
// end, counting its depth against encoding/json's limit. For each member
// it reads the name (objects; decoded only when names is set, else just
// validated) and the colon, then calls member with d.i at the value, which
// member must move past.
func (d *jsonDecoder) container(end byte, names bool, member func(name string) bool) bool {
	object := end == '}'
	d.i++ // '{' or '['
	if d.depth++; d.depth > maxJSONDepth {
		return false
	}
	d.space()
	if d.at(end) {
		d.i++
		d.depth--
		return true
	}
	for {
		var name string
		if object {
			if !d.at('"') {
				return false
			}
			ok := true
			if names {
				name, ok = d.str()
			} else {
				ok = d.skipString()
			}
			if !ok {
				return false
			}
			d.space()
			if !d.at(':') {
				return false
			}
			d.i++
			d.space()
		}
		if !member(name) {
			return false
		}
		d.space()
		switch {
		case d.at(','):
			d.i++
			d.space()
		case d.at(end):
			d.i++
			d.depth--
			return true
		default:
			return false
		}
	}
}

// skip validates the value at d.i and moves past it without building it.
// Numbers are checked for syntax only: encoding/json keeps a header value
// it does not convert as raw text.
func (d *jsonDecoder) skip() bool {
	if d.i >= len(d.s) {
		return false
	}
	switch c := d.s[d.i]; {
	case c == '{':
		return d.container('}', false, func(string) bool { return d.skip() })
	case c == '[':
		return d.container(']', false, func(string) bool { return d.skip() })
	case c == '"':
		return d.skipString()
	case c == 't':
		return d.literal("true")
	case c == 'f':
		return d.literal("false")
	case c == 'n':
		return d.literal("null")
	case c == '-' || '0' <= c && c <= '9':
		end, ok := d.numberEnd()
		d.i = end
		return ok
	}
	return false
}

func (d *jsonDecoder) literal(lit string) bool {
	if len(d.s)-d.i < len(lit) || d.s[d.i:d.i+len(lit)] != lit {
		return false
	}
	d.i += len(lit)
	return true
}

// inexactInteger reports whether lit, an integer literal, would not come
// back from f as the same digits: past 2^53 most integers have no float64
// of their own, and a 64-bit user id rounded to its neighbour names
// another user when it is forwarded or keyed on. Shorter literals, and
// those with a fraction or exponent (whose value, not spelling, counts),
// never are.
func inexactInteger(lit string, f float64) bool {
	if len(lit) < 16 || strings.ContainsAny(lit, ".eE") {
		return false
	}
	var buf [32]byte
	return string(strconv.AppendFloat(buf[:0], f, 'f', -1, 64)) != lit
}

// numberEnd returns the end of the number at d.i (RFC 8259 section 6).
func (d *jsonDecoder) numberEnd() (int, bool) {
	s, i := d.s, d.i
	if s[i] == '-' {
		i++
	}
	switch {
	case i >= len(s):
		return i, false
	case s[i] == '0':
		i++
	case '1' <= s[i] && s[i] <= '9':
		i = digits(s, i)
	default:
		return i, false
	}
	if i < len(s) && s[i] == '.' {
		i++
		if i >= len(s) || s[i] < '0' || s[i] > '9' {
			return i, false
		}
		i = digits(s, i)
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		if i >= len(s) || s[i] < '0' || s[i] > '9' {
			return i, false
		}
		i = digits(s, i)
	}
	return i, true
}

func digits(s string, i int) int {
	for i < len(s) && '0' <= s[i] && s[i] <= '9' {
		i++
	}
	return i
}

// str decodes the string at d.i (which is '"'). Without escapes and with
// valid UTF-8 it is a slice of the input.
func (d *jsonDecoder) str() (string, bool) {
	s := d.s
	start := d.i + 1
	for i := start; i < len(s); {
		switch c := s[i]; {
		case c == '"':
			d.i = i + 1
			return s[start:i], true
		case c == '\\':
			return d.strSlow(start, i)
		case c < ' ':
			return "", false
		case c < utf8.RuneSelf:
			i++
		default:
			r, size := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && size == 1 {
				return d.strSlow(start, i)
			}
			i += size
		}
	}
	return "", false
}

// strSlow decodes a string with escapes or invalid UTF-8, as encoding/json
// unquotes: s[start:i] is plain text already checked.
func (d *jsonDecoder) strSlow(start, i int) (string, bool) {
	s := d.s
	// Sized by this string, not by the rest of the input: claims are
	// decoded before the signature is checked, and a token of many short
	// escaped strings would otherwise allocate quadratically in its size.
	b := make([]byte, 0, stringLen(s, i)+i-start)
	b = append(b, s[start:i]...)
	for i < len(s) {
		switch c := s[i]; {
		case c == '"':
			d.i = i + 1
			return string(b), true
		case c == '\\':
			if i+1 >= len(s) {
				return "", false
			}
			switch s[i+1] {
			case '"', '\\', '/':
				b = append(b, s[i+1])
			case 'b':
				b = append(b, '\b')
			case 'f':
				b = append(b, '\f')
			case 'n':
				b = append(b, '\n')
			case 'r':
				b = append(b, '\r')
			case 't':
				b = append(b, '\t')
			case 'u':
				r, ok := hex4(s, i+2)
				if !ok {
					return "", false
				}
				i += 6
				if utf16.IsSurrogate(r) {
					// A pair only when a \u escape of the other half
					// follows; otherwise U+FFFD, and what follows is
					// decoded on its own.
					if i+1 < len(s) && s[i] == '\\' && s[i+1] == 'u' {
						if r2, ok := hex4(s, i+2); ok {
							if dec := utf16.DecodeRune(r, r2); dec != unicode.ReplacementChar {
								b = utf8.AppendRune(b, dec)
								i += 6
								continue
							}
						}
					}
					r = unicode.ReplacementChar
				}
				b = utf8.AppendRune(b, r)
				continue
			default:
				return "", false
			}
			i += 2
		case c < ' ':
			return "", false
		case c < utf8.RuneSelf:
			b = append(b, c)
			i++
		default:
			r, size := utf8.DecodeRuneInString(s[i:])
			b = utf8.AppendRune(b, r) // U+FFFD for invalid UTF-8
			i += size
		}
	}
	return "", false
}

// stringLen returns the raw length of the string text from s[i] to its
// closing quote (or to the end of s when it has none), stepping over
// escapes. It is the capacity strSlow needs but for invalid UTF-8, which
// grows to U+FFFD (append then grows the buffer).
func stringLen(s string, i int) int {
	for j := i; j < len(s); j++ {
		switch s[j] {
		case '"':
			return j - i
		case '\\':
			j++
		}
	}
	return len(s) - i
}

// skipString validates the string at d.i (which is '"') and moves past it.
func (d *jsonDecoder) skipString() bool {
	s := d.s
	for i := d.i + 1; i < len(s); {
		switch c := s[i]; {
		case c == '"':
			d.i = i + 1
			return true
		case c == '\\':
			if i+1 >= len(s) {
				return false
			}
			switch s[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if _, ok := hex4(s, i+2); !ok {
					return false
				}
				i += 6
			default:
				return false
			}
		case c < ' ':
			return false
		default:
			i++
		}
	}
	return false
}

// hex4 reads the four hex digits of a \u escape at s[i:].
func hex4(s string, i int) (rune, bool) {
	if len(s)-i < 4 {
		return 0, false
	}
	var r rune
	for _, c := range []byte(s[i : i+4]) {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			c = c - 'A' + 10
		default:
			return 0, false
		}
		r = r*16 + rune(c)
	}
	return r, true
}
