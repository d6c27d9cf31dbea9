package aggregate

import (
	"errors"
	"fmt"
	"unicode/utf8"
)

// maxDepth is the deepest nesting of objects and arrays a backend body may
// have; deeper bodies fail the backend (they are either hostile or not
// meant for a client).
const maxDepth = 64

var errTooDeep = fmt.Errorf("JSON nested deeper than %d levels", maxDepth)

// syntaxError is invalid JSON in a backend body.
type syntaxError struct {
	off int
	msg string
}

func (e *syntaxError) Error() string {
	return fmt.Sprintf("invalid JSON at byte %d: %s", e.off, e.msg)
}

// scanner walks one JSON text, validating as it goes, and appends the
// shaped result to out. It never builds a tree: values that need no
// shaping are copied as raw byte ranges.
type scanner struct {
	in    []byte
	pos   int
	depth int
	out   []byte
	// key is scratch space for decoding keys that contain escapes.
	key []byte
	// names and nameEnds are the dedupe arena for objects with renames:
	// the output keys emitted so far, per open object.
	names    []byte
	nameEnds []int
	// sets index the names of an object once it has more than
	// maxScannedNames of them, the innermost last: compared with every
	// earlier name, the keys of a large object (a dictionary-shaped body)
	// cost time quadratic in their number.
	sets []nameSet
}

// nameSet holds the names emitted in the object whose frame (its first
// index in nameEnds) is frame; that object's names are kept here, not in
// the arena, once it has one.
type nameSet struct {
	frame int
	m     map[string]struct{}
}

// maxScannedNames is how many names an object's duplicate check compares
// one by one before indexing them: the common small object allocates
// nothing.
const maxScannedNames = 64

func (s *scanner) reset(in, out []byte) {
	s.in, s.pos, s.depth, s.out = in, 0, 0, out
	s.resetNames()
}

// resetNames empties the dedupe arena and its sets.
func (s *scanner) resetNames() {
	s.names, s.nameEnds = s.names[:0], s.nameEnds[:0]
	if len(s.sets) > 0 {
		clear(s.sets)
		s.sets = s.sets[:0]
	}
}

// endFrame drops the names of the object that began at frame.
func (s *scanner) endFrame(frame, frameBytes int) {
	s.names, s.nameEnds = s.names[:frameBytes], s.nameEnds[:frame]
	if n := len(s.sets); n > 0 && s.sets[n-1].frame == frame {
		s.sets[n-1] = nameSet{}
		s.sets = s.sets[:n-1]
	}
}

// errInvalidUTF8 is a string's byte that is not UTF-8. The caller
// replaces such bytes with U+FFFD and scans again (see fetcher.answer),
// as encoding/json does in a decoded string.
var errInvalidUTF8 = errors.New("invalid UTF-8 in string")

// errLoneSurrogate is a \u escape of half a UTF-16 surrogate pair, which
// encodes no character: strict clients refuse the whole document for it
// (RFC 8259 section 8.2 leaves their behaviour open). The caller replaces
// it with \ufffd and scans again (see fetcher.answer).
var errLoneSurrogate = errors.New("unpaired surrogate escape in string")

// pairedSurrogate reports whether esc, which starts with the \u escape of
// a surrogate, holds a high surrogate followed by the escape of a low one.
func pairedSurrogate(esc []byte) bool {
	if len(esc) < 12 || esc[6] != '\\' || esc[7] != 'u' || !isHex4(esc[8:12]) {
		return false
	}
	hi, lo := hex4(esc[2:6]), hex4(esc[8:12])
	return hi < 0xDC00 && lo >= 0xDC00 && lo < 0xE000
}

// replaceLoneSurrogates rewrites, in place, every \u escape of an
// unpaired surrogate in the JSON text b as \ufffd (the same length).
// Outside strings valid JSON has no backslash, so every one starts an
// escape.
func replaceLoneSurrogates(b []byte) {
	for i := 0; i+1 < len(b); i++ {
		if b[i] != '\\' {
			continue
		}
		if b[i+1] != 'u' || i+6 > len(b) || !isHex4(b[i+2:i+6]) {
			i++ // a two-byte escape, or invalid JSON the scan reports
			continue
		}
		if r := hex4(b[i+2 : i+6]); r >= 0xD800 && r < 0xE000 {
			if pairedSurrogate(b[i:]) {
				i += 6
			} else {
				copy(b[i+2:i+6], "fffd")
			}
		}
		i += 5
	}
}

func (s *scanner) fail(msg string) error {
	return &syntaxError{off: s.pos, msg: msg}
}

func (s *scanner) ws() {
	for s.pos < len(s.in) {
		switch s.in[s.pos] {
		case ' ', '\t', '\n', '\r':
			s.pos++
		default:
			return
		}
	}
}

// peek returns the next byte, or 0 at the end of input.
func (s *scanner) peek() byte {
	if s.pos < len(s.in) {
		return s.in[s.pos]
	}
	return 0
}

// apply shapes one whole JSON text with sh and appends the result to out.
func (sh *shaper) apply(s *scanner, in, out []byte) ([]byte, error) {
	s.reset(in, out)
	s.ws()
	var err error
	switch {
	case sh.none:
		start := s.pos
		if err = s.skipValue(); err == nil {
			s.out = append(s.out, in[start:s.pos]...)
		}
	case sh.pick != nil:
		err = s.pickNav(sh.pick, 0, sh.pick[0].arr)
	case s.omit(sh.root, sh.root.arr):
		if err = s.skipValue(); err == nil {
			s.out = append(s.out, "null"...)
		}
	default:
		err = s.shapeChild(sh.root, sh.root.arr)
	}
	if err != nil {
		return s.out, err
	}
	s.ws()
	if s.pos != len(s.in) {
		return s.out, s.fail("data after the top-level value")
	}
	return s.out, nil
}

// validate checks that in is one JSON text within the depth limit and
// returns it without surrounding whitespace (a sub-slice of in, no copy).
func (s *scanner) validate(in []byte) ([]byte, error) {
	s.reset(in, s.out[:0])
	s.ws()
	start := s.pos
	if err := s.skipValue(); err != nil {
		return nil, err
	}
	end := s.pos
	s.ws()
	if s.pos != len(s.in) {
		return nil, s.fail("data after the top-level value")
	}
	return in[start:end], nil
}

// omit reports whether the value about to be read must be left out: its
// type does not fit the path and an allow-list applies below it. null is
// never omitted (it carries no data).
func (s *scanner) omit(c *child, arrLeft int) bool {
	if c.sub == nil || !c.sub.restrictive {
		return false
	}
	switch b := s.peek(); {
	case b == 'n':
		return false
	case arrLeft > 0:
		return b != '['
	default:
		return b != '{'
	}
}

// shapeChild shapes the value of c with arrLeft array levels still to
// unwrap.
func (s *scanner) shapeChild(c *child, arrLeft int) error {
	if c.sub == nil {
		return s.copyValue()
	}
	b := s.peek()
	if arrLeft > 0 {
		if b != '[' {
			return s.copyValue()
		}
		if err := s.enter(); err != nil {
			return err
		}
		s.out = append(s.out, '[')
		s.ws()
		if s.peek() == ']' {
			s.pos++
		} else {
			first := true
			for {
				s.ws()
				if s.omit(c, arrLeft-1) {
					if err := s.skipValue(); err != nil {
						return err
					}
				} else {
					if !first {
						s.out = append(s.out, ',')
					}
					first = false
					if err := s.shapeChild(c, arrLeft-1); err != nil {
						return err
					}
				}
				if done, err := s.next(']'); err != nil || done {
					if err != nil {
						return err
					}
					break
				}
			}
		}
		s.depth--
		s.out = append(s.out, ']')
		return nil
	}
	if b != '{' {
		return s.copyValue()
	}
	return s.shapeObject(c.sub)
}

// enter consumes an opening bracket, counting depth.
func (s *scanner) enter() error {
	s.depth++
	if s.depth > maxDepth {
		return errTooDeep
	}
	s.pos++
	return nil
}

// next consumes the separator after a member or element: ',' (false) or
// the closing byte (true).
func (s *scanner) next(closing byte) (bool, error) {
	s.ws()
	switch s.peek() {
	case ',':
		s.pos++
		s.ws()
		return false, nil
	case closing:
		s.pos++
		return true, nil
	}
	return false, s.fail("expected ',' or '" + string(closing) + "'")
}

// member reads an object key and its colon and returns the raw key range
// and whether it has escapes; the scanner is left at the value.
func (s *scanner) member() (start, end int, esc bool, err error) {
	if s.peek() != '"' {
		return 0, 0, false, s.fail("expected a string key")
	}
	start = s.pos
	if esc, err = s.skipString(); err != nil {
		return 0, 0, false, err
	}
	end = s.pos
	s.ws()
	if s.peek() != ':' {
		return 0, 0, false, s.fail("expected ':'")
	}
	s.pos++
	s.ws()
	return start, end, esc, nil
}

// keyBytes returns the decoded key of the raw quoted range in[start:end].
func (s *scanner) keyBytes(start, end int, esc bool) []byte {
	raw := s.in[start+1 : end-1]
	if !esc {
		return raw
	}
	s.key = unescape(s.key[:0], raw)
	return s.key
}

func (s *scanner) shapeObject(n *node) error {
	if err := s.enter(); err != nil {
		return err
	}
	s.out = append(s.out, '{')
	frame := len(s.nameEnds)
	frameBytes := len(s.names)
	first := true
	s.ws()
	if s.peek() == '}' {
		s.pos++
	} else {
		for {
			ks, ke, esc, err := s.member()
			if err != nil {
				return err
			}
			key := s.keyBytes(ks, ke, esc)
			c := n.find(key)
			emit := true
			switch {
			case c == nil:
				emit = !n.allow
			case c.drop, n.allow && !c.selected:
				emit = false
			default:
				emit = !s.omit(c, c.arr)
			}
			if emit && n.hasRename {
				name := key
				if c != nil && c.rename != "" {
					name = c.renameB
				}
				if s.scans(frame) {
					emit = s.firstScanned(frame, frameBytes, name)
				} else {
					emit = s.firstIndexed(frame, frameBytes, name)
				}
			}
			if !emit {
				err = s.skipValue()
			} else {
				if !first {
					s.out = append(s.out, ',')
				}
				first = false
				if c != nil && c.rename != "" {
					s.out = append(s.out, c.nameJSON...)
				} else {
					s.out = append(s.out, s.in[ks:ke]...)
				}
				s.out = append(s.out, ':')
				if c == nil {
					err = s.copyValue()
				} else {
					err = s.shapeChild(c, c.arr)
				}
			}
			if err != nil {
				return err
			}
			if done, err := s.next('}'); err != nil || done {
				if err != nil {
					return err
				}
				break
			}
		}
	}
	s.endFrame(frame, frameBytes)
	s.depth--
	s.out = append(s.out, '}')
	return nil
}

// firstName records name as emitted in the current object and reports
// whether it was new there.
func (s *scanner) firstName(frame, frameBytes int, name []byte) bool {
	if s.scans(frame) {
		return s.firstScanned(frame, frameBytes, name)
	}
	return s.firstIndexed(frame, frameBytes, name)
}

// scans reports whether the names of the object at frame are compared one
// by one: it has fewer than maxScannedNames and no set is open. The hot
// caller (shapeObject) asks it itself, so that firstScanned is inlined
// there.
func (s *scanner) scans(frame int) bool {
	return len(s.sets) == 0 && len(s.nameEnds)-frame < maxScannedNames
}

// firstScanned is firstName comparing the object's names one by one.
func (s *scanner) firstScanned(frame, frameBytes int, name []byte) bool {
	start := frameBytes
	for _, end := range s.nameEnds[frame:] {
		if string(s.names[start:end]) == string(name) {
			return false
		}
		start = end
	}
	s.names = append(s.names, name...)
	s.nameEnds = append(s.nameEnds, len(s.names))
	return true
}

// firstIndexed is firstName for an object past maxScannedNames names, or
// inside one.
func (s *scanner) firstIndexed(frame, frameBytes int, name []byte) bool {
	if n := len(s.sets); n > 0 && s.sets[n-1].frame == frame {
		m := s.sets[n-1].m
		if _, dup := m[string(name)]; dup {
			return false
		}
		m[string(name)] = struct{}{}
		return true
	}
	ends := s.nameEnds[frame:]
	start := frameBytes
	for _, end := range ends {
		if string(s.names[start:end]) == string(name) {
			return false
		}
		start = end
	}
	if len(ends) >= maxScannedNames {
		// A frame with a set appends no more names, so the frames of
		// the objects inside it still begin past its own.
		m := make(map[string]struct{}, 2*len(ends))
		start = frameBytes
		for _, end := range ends {
			m[string(s.names[start:end])] = struct{}{}
			start = end
		}
		m[string(name)] = struct{}{}
		s.sets = append(s.sets, nameSet{frame: frame, m: m})
		return true
	}
	s.names = append(s.names, name...)
	s.nameEnds = append(s.nameEnds, len(s.names))
	return true
}

// pickNav navigates to the pick path's target and emits exactly one value:
// the shaped target, an array of targets for "[]" steps, or null where the
// path does not exist.
func (s *scanner) pickNav(steps []pickStep, i, arrLeft int) error {
	b := s.peek()
	if arrLeft > 0 {
		if b != '[' {
			return s.skipAsNull()
		}
		if err := s.enter(); err != nil {
			return err
		}
		s.out = append(s.out, '[')
		s.ws()
		if s.peek() == ']' {
			s.pos++
		} else {
			first := true
			for {
				if !first {
					s.out = append(s.out, ',')
				}
				first = false
				if err := s.pickNav(steps, i, arrLeft-1); err != nil {
					return err
				}
				if done, err := s.next(']'); err != nil || done {
					if err != nil {
						return err
					}
					break
				}
			}
		}
		s.depth--
		s.out = append(s.out, ']')
		return nil
	}
	if i == len(steps)-1 {
		st := steps[i]
		if st.c == nil {
			return s.copyValue()
		}
		if s.omit(st.c, st.rest) {
			return s.skipAsNull()
		}
		return s.shapeChild(st.c, st.rest)
	}
	if b != '{' {
		return s.skipAsNull()
	}
	if err := s.enter(); err != nil {
		return err
	}
	want := steps[i+1].key
	found := false
	s.ws()
	if s.peek() == '}' {
		s.pos++
	} else {
		for {
			ks, ke, esc, err := s.member()
			if err != nil {
				return err
			}
			if !found && string(s.keyBytes(ks, ke, esc)) == want {
				found = true
				err = s.pickNav(steps, i+1, steps[i+1].arr)
			} else {
				err = s.skipValue()
			}
			if err != nil {
				return err
			}
			if done, err := s.next('}'); err != nil || done {
				if err != nil {
					return err
				}
				break
			}
		}
	}
	s.depth--
	if !found {
		s.out = append(s.out, "null"...)
	}
	return nil
}

func (s *scanner) skipAsNull() error {
	if err := s.skipValue(); err != nil {
		return err
	}
	s.out = append(s.out, "null"...)
	return nil
}

func (s *scanner) copyValue() error {
	start := s.pos
	if err := s.skipValue(); err != nil {
		return err
	}
	s.out = append(s.out, s.in[start:s.pos]...)
	return nil
}

// skipValue validates and skips one value.
func (s *scanner) skipValue() error {
	switch b := s.peek(); b {
	case '{':
		if err := s.enter(); err != nil {
			return err
		}
		s.ws()
		if s.peek() == '}' {
			s.pos++
			s.depth--
			return nil
		}
		for {
			if _, _, _, err := s.member(); err != nil {
				return err
			}
			if err := s.skipValue(); err != nil {
				return err
			}
			if done, err := s.next('}'); err != nil || done {
				s.depth--
				return err
			}
		}
	case '[':
		if err := s.enter(); err != nil {
			return err
		}
		s.ws()
		if s.peek() == ']' {
			s.pos++
			s.depth--
			return nil
		}
		for {
			if err := s.skipValue(); err != nil {
				return err
			}
			if done, err := s.next(']'); err != nil || done {
				s.depth--
				return err
			}
		}
	case '"':
		_, err := s.skipString()
		return err
	case 't':
		return s.literal("true")
	case 'f':
		return s.literal("false")
	case 'n':
		return s.literal("null")
	case 0:
		if s.pos >= len(s.in) {
			return s.fail("unexpected end of input")
		}
	}
	return s.skipNumber()
}

func (s *scanner) literal(lit string) error {
	if len(s.in)-s.pos < len(lit) || string(s.in[s.pos:s.pos+len(lit)]) != lit {
		return s.fail("invalid literal")
	}
	s.pos += len(lit)
	return nil
}

// skipString skips a string starting at its opening quote and reports
// whether it contains escapes.
func (s *scanner) skipString() (bool, error) {
	s.pos++
	esc := false
	for s.pos < len(s.in) {
		// Fast path over the bytes that need no attention.
		for s.pos < len(s.in) && plain[s.in[s.pos]] {
			s.pos++
		}
		if s.pos >= len(s.in) {
			break
		}
		c := s.in[s.pos]
		switch {
		case c == '"':
			s.pos++
			return esc, nil
		case c == '\\':
			esc = true
			if s.pos+1 >= len(s.in) {
				return esc, s.fail("unterminated escape")
			}
			switch s.in[s.pos+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				s.pos += 2
			case 'u':
				if s.pos+6 > len(s.in) || !isHex4(s.in[s.pos+2:s.pos+6]) {
					return esc, s.fail("invalid \\u escape")
				}
				// D800-DFFF (the digits are hex): half of a surrogate pair.
				if s.in[s.pos+2]|0x20 == 'd' && s.in[s.pos+3] >= '8' {
					if !pairedSurrogate(s.in[s.pos:]) {
						return esc, errLoneSurrogate
					}
					s.pos += 6
				}
				s.pos += 6
			default:
				return esc, s.fail("invalid escape")
			}
		case c < 0x20:
			return esc, s.fail("control character in string")
		default:
			// Not ASCII. JSON between systems is UTF-8 (RFC 8259 section
			// 8.1): a stray byte passed on would make the whole merged
			// response unparsable to strict clients, not just this body.
			r, size := utf8.DecodeRune(s.in[s.pos:])
			if r == utf8.RuneError && size == 1 {
				return esc, errInvalidUTF8
			}
			s.pos += size
		}
	}
	return esc, s.fail("unterminated string")
}

// plain marks the string bytes that end nothing, start no escape and need
// no UTF-8 check: ASCII but '"', '\\' and control characters. A read-only
// table.
var plain = func() (t [256]bool) {
	for i := range t {
		t[i] = i >= 0x20 && i < utf8.RuneSelf && i != '"' && i != '\\'
	}
	return t
}()

func isHex4(b []byte) bool {
	for _, c := range b {
		if hexVal(c) < 0 {
			return false
		}
	}
	return true
}

func hexVal(c byte) rune {
	switch {
	case c >= '0' && c <= '9':
		return rune(c - '0')
	case c >= 'a' && c <= 'f':
		return rune(c - 'a' + 10)
	case c >= 'A' && c <= 'F':
		return rune(c - 'A' + 10)
	}
	return -1
}

// skipNumber validates a number per RFC 8259 section 6.
func (s *scanner) skipNumber() error {
	start := s.pos
	if s.peek() == '-' {
		s.pos++
	}
	switch c := s.peek(); {
	case c == '0':
		s.pos++
	case c >= '1' && c <= '9':
		s.digits()
	default:
		s.pos = start
		return s.fail("invalid value")
	}
	if s.peek() == '.' {
		s.pos++
		if !s.digits() {
			return s.fail("invalid number")
		}
	}
	if c := s.peek(); c == 'e' || c == 'E' {
		s.pos++
		if c := s.peek(); c == '+' || c == '-' {
			s.pos++
		}
		if !s.digits() {
			return s.fail("invalid number")
		}
	}
	return nil
}

func (s *scanner) digits() bool {
	start := s.pos
	for s.pos < len(s.in) && s.in[s.pos] >= '0' && s.in[s.pos] <= '9' {
		s.pos++
	}
	return s.pos > start
}

// unescape appends the decoded form of a validated JSON string body (no
// quotes) to dst. Unpaired surrogates become U+FFFD, as encoding/json does.
func unescape(dst, raw []byte) []byte {
	for i := 0; i < len(raw); {
		c := raw[i]
		if c != '\\' {
			dst = append(dst, c)
			i++
			continue
		}
		switch raw[i+1] {
		case 'b':
			dst = append(dst, '\b')
		case 'f':
			dst = append(dst, '\f')
		case 'n':
			dst = append(dst, '\n')
		case 'r':
			dst = append(dst, '\r')
		case 't':
			dst = append(dst, '\t')
		case 'u':
			r := hex4(raw[i+2 : i+6])
			i += 6
			if r >= 0xD800 && r < 0xDC00 && i+6 <= len(raw) && raw[i] == '\\' && raw[i+1] == 'u' {
				if r2 := hex4(raw[i+2 : i+6]); r2 >= 0xDC00 && r2 < 0xE000 {
					r = 0x10000 + (r-0xD800)<<10 + (r2 - 0xDC00)
					i += 6
				}
			}
			dst = utf8.AppendRune(dst, r)
			continue
		default: // '"', '\\', '/'
			dst = append(dst, raw[i+1])
		}
		i += 2
	}
	return dst
}

func hex4(b []byte) rune {
	return hexVal(b[0])<<12 | hexVal(b[1])<<8 | hexVal(b[2])<<4 | hexVal(b[3])
}

var errNotScalar = errors.New("not a string, number or boolean")

// lookupScalar finds the value at the dot path keys in a JSON text and
// returns it as template text: strings decoded, numbers and booleans as
// written. A missing key, null, object or array is an error.
func lookupScalar(s *scanner, in []byte, keys []string) ([]byte, error) {
	s.reset(in, s.out[:0])
	s.ws()
	for _, k := range keys {
		if s.peek() != '{' {
			return nil, fmt.Errorf("no field %q", k)
		}
		if err := s.enter(); err != nil {
			return nil, err
		}
		found := false
		s.ws()
		if s.peek() == '}' {
			s.pos++
		} else {
			for {
				ks, ke, esc, err := s.member()
				if err != nil {
					return nil, err
				}
				if string(s.keyBytes(ks, ke, esc)) == k {
					found = true
					break
				}
				if err := s.skipValue(); err != nil {
					return nil, err
				}
				if done, err := s.next('}'); err != nil || done {
					if err != nil {
						return nil, err
					}
					break
				}
			}
		}
		if !found {
			return nil, fmt.Errorf("no field %q", k)
		}
	}
	start := s.pos
	switch b := s.peek(); {
	case b == '"':
		esc, err := s.skipString()
		if err != nil {
			return nil, err
		}
		raw := s.in[start+1 : s.pos-1]
		if !esc {
			return raw, nil
		}
		return unescape(nil, raw), nil
	case b == 't' || b == 'f' || b == '-' || (b >= '0' && b <= '9'):
		if err := s.skipValue(); err != nil {
			return nil, err
		}
		return s.in[start:s.pos], nil
	}
	return nil, errNotScalar
}
