package config

import (
	"errors"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"

	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/token"
)

// The decoder walks goccy/go-yaml's AST instead of using its Unmarshal, for
// three reasons: every value must keep its file:line:column (recorded per
// field path for validation and Config.Where); every problem must be reported,
// not only the first; and ${VAR} expansion must apply to scalar values only,
// after parsing (so an expanded value can never inject YAML structure).
//
// Positions recorded for a field path are those of its key (for mapping
// entries) or of the item (for sequence items), which is where an editor
// should put the cursor; errors about a scalar's own text (wrong type, bad
// duration, unset variable) point at the scalar itself.

// maxDepth bounds nesting, including alias expansion, so a hostile file
// cannot exhaust the stack. The schema is never deeper than about ten.
const maxDepth = 64

// maxWork bounds the values one file may decode, counting alias and merge-key
// expansions: ten aliases of ten aliases of ... (the "billion laughs")
// would otherwise take exponential time from a few hundred bytes. A
// 1,000-route file with every option set needs about 50,000.
const maxWork = 500_000

var (
	durationType = reflect.TypeFor[Duration]()
	sizeType     = reflect.TypeFor[Size]()
)

// decoder decodes the documents of one load; its position and field tables
// are shared by all files of that load.
type decoder struct {
	file    string
	lookup  func(string) (string, bool)
	errs    *Errors
	pos     map[string]pos
	failed  map[string]bool
	anchors map[string][]anchorDef // by name, in document order
	fields  map[reflect.Type]map[string]int
	depth   int
	work    int  // values decoded, see maxWork
	stopped bool // maxWork reached: decode nothing more
}

// spend counts n units of work and reports whether decoding may go on.
func (d *decoder) spend(n ast.Node, field string, units int) bool {
	if d.stopped {
		return false
	}
	d.work += units
	if d.work > maxWork {
		d.stopped = true
		d.fail(n, field, "the file expands to more than %d values (aliases or merge keys nested too deep)", maxWork)
		return false
	}
	return true
}

// dupNouns names what a duplicate map key in a merged top-level map is.
var dupNouns = map[string]string{
	"upstreams":            "upstream",
	"auth":                 "auth provider",
	"bffs":                 "BFF",
	"rate_limits.policies": "policy",
}

func (d *decoder) at(n ast.Node) pos {
	if n == nil {
		return pos{file: d.file}
	}
	tk := n.GetToken()
	if m, ok := n.(*ast.MappingNode); ok && !m.IsFlowStyle && len(m.Values) > 0 {
		tk = m.Values[0].Key.GetToken()
	}
	if tk == nil || tk.Position == nil {
		return pos{file: d.file}
	}
	return pos{file: d.file, line: tk.Position.Line, col: tk.Position.Column}
}

func (d *decoder) errorf(n ast.Node, field, format string, args ...any) {
	d.errs.add(errAt(d.at(n), field, format, args...))
}

// fail reports a problem with the value at field and remembers the field, so
// validation does not pile a second message onto a value that never decoded.
func (d *decoder) fail(n ast.Node, field, format string, args ...any) {
	d.errorf(n, field, format, args...)
	d.failed[field] = true
}

// resolve strips anchors, tags and aliases down to the node that holds data.
func (d *decoder) resolve(n ast.Node) ast.Node {
	for range maxDepth {
		switch t := n.(type) {
		case *ast.AnchorNode:
			n = t.Value
		case *ast.TagNode:
			n = t.Value
		case *ast.AliasNode:
			name := ""
			if t.Value != nil {
				name = t.Value.GetToken().Value
			}
			target := aliasTarget(d.anchors[name], t.GetToken().Position)
			if target == nil {
				return nil
			}
			n = target
		default:
			return n
		}
	}
	return nil
}

// anchorDef is one definition of an anchor name and where it starts.
type anchorDef struct {
	line, col int
	node      ast.Node
}

// aliasTarget returns the node an alias at p refers to: the latest
// definition of its name before p, as YAML has it when a name is defined
// twice. An alias before every definition gets the first one, as it
// always has here.
func aliasTarget(defs []anchorDef, p *token.Position) ast.Node {
	if len(defs) == 0 {
		return nil
	}
	target := defs[0].node
	for _, def := range defs[1:] {
		if p == nil || def.line > p.Line || def.line == p.Line && def.col > p.Column {
			break
		}
		target = def.node
	}
	return target
}

func kindOf(n ast.Node) string {
	switch n.(type) {
	case *ast.MappingNode:
		return "a mapping"
	case *ast.SequenceNode:
		return "a sequence"
	case *ast.StringNode, *ast.LiteralNode:
		return "a string"
	case *ast.IntegerNode:
		return "an integer"
	case *ast.FloatNode, *ast.InfinityNode, *ast.NanNode:
		return "a number"
	case *ast.BoolNode:
		return "a boolean"
	case *ast.NullNode:
		return "null"
	}
	return "an unsupported YAML node"
}

// scalar returns the text of a scalar node after ${VAR} expansion (applied to
// string scalars only: numbers and booleans cannot hold a ${).
func (d *decoder) scalar(n ast.Node, field string) (text string, isString, ok bool) {
	switch t := n.(type) {
	case *ast.StringNode:
		text, isString = t.Value, true
	case *ast.LiteralNode:
		if t.Value != nil {
			text = t.Value.Value
		}
		isString = true
	case *ast.IntegerNode, *ast.FloatNode, *ast.BoolNode, *ast.InfinityNode, *ast.NanNode:
		text = n.GetToken().Value
	default:
		return "", false, false
	}
	if isString {
		out, err := expand(text, d.lookup)
		if err != nil {
			d.fail(n, field, "%s", err.Error())
			return "", true, false
		}
		text = out
	}
	return text, isString, true
}

// decode decodes node into v. allocNull says whether a null value still
// allocates an empty struct behind a pointer (true for map values and
// sequence items, where a missing body is an entry with everything missing;
// false for optional blocks such as tracing, where null means absent).
func (d *decoder) decode(node ast.Node, v reflect.Value, field string, allocNull bool) {
	if !d.spend(node, field, 1) {
		return
	}
	d.depth++
	defer func() { d.depth-- }()
	if d.depth > maxDepth {
		d.fail(node, field, "nesting deeper than %d levels", maxDepth)
		return
	}
	orig := node
	node = d.resolve(node)
	if node == nil {
		d.fail(orig, field, "unknown or circular alias")
		return
	}
	if _, isNull := node.(*ast.NullNode); isNull {
		if allocNull && v.Kind() == reflect.Pointer && v.IsNil() && v.Type().Elem().Kind() == reflect.Struct {
			v.Set(reflect.New(v.Type().Elem()))
		}
		return
	}
	switch v.Type() {
	case durationType:
		text, _, ok := d.scalar(node, field)
		if !ok {
			d.typeError(orig, node, field, "a duration such as 5s")
			return
		}
		dur, err := ParseDuration(text)
		if err != nil {
			d.fail(node, field, "%s", err.Error())
			return
		}
		if dur < 0 {
			d.fail(node, field, "must not be negative")
			return
		}
		v.SetInt(int64(dur))
		return
	case sizeType:
		text, _, ok := d.scalar(node, field)
		if !ok {
			d.typeError(orig, node, field, "a size such as 64KiB")
			return
		}
		sz, err := ParseSize(text)
		if err != nil {
			d.fail(node, field, "%s", err.Error())
			return
		}
		v.SetInt(int64(sz))
		return
	}
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		d.decode(node, v.Elem(), field, allocNull)
	case reflect.Struct:
		m, ok := node.(*ast.MappingNode)
		if !ok {
			d.typeError(orig, node, field, "a mapping")
			return
		}
		for _, e := range d.entries(m, field) {
			key, ok := d.key(e, field)
			if !ok {
				continue
			}
			d.field(v, key, e, joinField(field, key))
		}
	case reflect.Map:
		m, ok := node.(*ast.MappingNode)
		if !ok {
			d.typeError(orig, node, field, "a mapping")
			return
		}
		if v.IsNil() {
			v.Set(reflect.MakeMapWithSize(v.Type(), len(m.Values)))
		}
		for _, e := range d.entries(m, field) {
			key, ok := d.key(e, field)
			if !ok {
				continue
			}
			sub := joinField(field, key)
			kp := d.at(e.Key)
			if first, dup := d.pos[sub]; dup && v.MapIndex(reflect.ValueOf(key)).IsValid() {
				noun := dupNouns[field]
				if noun == "" {
					noun = "key"
				}
				d.errs.add(errAt(kp, sub, "duplicate %s %q (first defined at %s)", noun, key, first))
				continue
			}
			d.pos[sub] = kp
			elem := reflect.New(v.Type().Elem()).Elem()
			d.decode(e.Value, elem, sub, true)
			allocated(elem)
			v.SetMapIndex(reflect.ValueOf(key), elem)
		}
	case reflect.Slice:
		s, ok := node.(*ast.SequenceNode)
		if !ok {
			d.typeError(orig, node, field, "a sequence")
			return
		}
		v.Grow(len(s.Values))
		for _, item := range s.Values {
			i := v.Len()
			sub := field + "[" + strconv.Itoa(i) + "]"
			d.pos[sub] = d.at(d.resolveOr(item))
			v.SetLen(i + 1) // the new item is zero: Grow cleared it
			elem := v.Index(i)
			d.decode(item, elem, sub, true)
			allocated(elem)
		}
	case reflect.String:
		text, _, ok := d.scalar(node, field)
		if !ok {
			if joined, isPair := adjacentPair(node); isPair {
				v.SetString(joined)
				return
			}
			d.typeError(orig, node, field, "a string")
			return
		}
		v.SetString(text)
	case reflect.Bool:
		text, _, ok := d.scalar(node, field)
		b, err := strconv.ParseBool(text)
		if !ok || err != nil || (text != "true" && text != "false") {
			d.typeError(orig, node, field, "a boolean (true or false)")
			return
		}
		v.SetBool(b)
	case reflect.Int, reflect.Int64, reflect.Int32:
		var n int64
		var err error
		text := ""
		switch t := node.(type) {
		case *ast.IntegerNode:
			text = t.GetToken().Value
			switch x := t.Value.(type) {
			case int64:
				n = x
			case uint64:
				if x > math.MaxInt64 {
					err = strconv.ErrRange
				}
				n = int64(x)
			}
		default:
			var ok bool
			if text, _, ok = d.scalar(node, field); !ok {
				d.typeError(orig, node, field, "an integer")
				return
			}
			n, err = strconv.ParseInt(strings.TrimSpace(text), 10, 64)
		}
		if errors.Is(err, strconv.ErrRange) {
			// Otherwise it reads "expected an integer, got an integer".
			d.fail(node, field, "integer %s out of range", strings.TrimSpace(text))
			return
		}
		if err != nil {
			d.typeError(orig, node, field, "an integer")
			return
		}
		if v.OverflowInt(n) {
			d.fail(node, field, "integer %d out of range", n)
			return
		}
		v.SetInt(n)
	case reflect.Float64:
		var f float64
		switch t := node.(type) {
		case *ast.InfinityNode, *ast.NanNode:
			d.fail(node, field, "must be a finite number")
			return
		case *ast.FloatNode:
			f = t.Value
		case *ast.IntegerNode:
			switch x := t.Value.(type) {
			case int64:
				f = float64(x)
			case uint64:
				f = float64(x)
			}
		default:
			text, _, ok := d.scalar(node, field)
			var err error
			if ok {
				f, err = strconv.ParseFloat(strings.TrimSpace(text), 64)
			}
			if errors.Is(err, strconv.ErrRange) {
				d.fail(node, field, "number %s out of range", strings.TrimSpace(text))
				return
			}
			if !ok || err != nil {
				d.typeError(orig, node, field, "a number")
				return
			}
		}
		if math.IsNaN(f) || math.IsInf(f, 0) {
			d.fail(node, field, "must be a finite number")
			return
		}
		v.SetFloat(f)
	default:
		// Unreachable for the schema in types.go; a new field of a new kind
		// fails loudly in tests rather than silently decoding nothing.
		d.fail(node, field, "internal error: cannot decode into %s", v.Type())
	}
}

// adjacentPair undoes a goccy/go-yaml quirk: inside nested flow collections
// it reads the plain scalar posts:read (no space after the colon, so a
// scalar in YAML 1.2) as the mapping {posts: read}. For a string field such
// a one-entry mapping whose value starts right after the colon is taken back
// as the scalar text.
func adjacentPair(n ast.Node) (string, bool) {
	m, ok := n.(*ast.MappingNode)
	if !ok || len(m.Values) != 1 {
		return "", false
	}
	k, ok1 := m.Values[0].Key.(*ast.StringNode)
	val, ok2 := m.Values[0].Value.(ast.ScalarNode)
	if !ok1 || !ok2 || k.Token.Type != token.StringType {
		return "", false
	}
	kp, vp := k.GetToken().Position, val.GetToken().Position
	vt := val.GetToken()
	if kp == nil || vp == nil || vt.Type == token.SingleQuoteType || vt.Type == token.DoubleQuoteType ||
		kp.Line != vp.Line || vp.Column != kp.Column+len(k.Token.Value)+1 {
		return "", false
	}
	return k.Value + ":" + vt.Value, true
}

// allocated makes sure a map value or list item is never a nil pointer, even
// when its decoding failed early (an unknown alias, say): later stages may
// then range over routes and upstreams without nil checks.
func allocated(v reflect.Value) {
	if v.Kind() == reflect.Pointer && v.IsNil() {
		v.Set(reflect.New(v.Type().Elem()))
	}
}

// resolveOr is resolve that keeps the original node when resolution fails,
// for positions only.
func (d *decoder) resolveOr(n ast.Node) ast.Node {
	if r := d.resolve(n); r != nil {
		return r
	}
	return n
}

func (d *decoder) typeError(orig, node ast.Node, field, want string) {
	if d.failed[field] {
		return // the scalar already reported why (an unset variable, say)
	}
	got := kindOf(node)
	if t, _, ok := d.scalar(node, field); ok && got == "a string" {
		got = strconv.Quote(truncate(t))
	}
	d.fail(orig, field, "expected %s, got %s", want, got)
}

// field decodes the value of one mapping entry into the struct field whose
// yaml tag is key, or reports an unknown key.
func (d *decoder) field(v reflect.Value, key string, e *ast.MappingValueNode, sub string) {
	idx, ok := d.fieldIndex(v.Type(), key)
	if !ok {
		d.unknownKey(v.Type(), key, e, sub)
		return
	}
	kp := d.at(e.Key)
	// The same path twice from one file is a key written twice in one
	// mapping (the parser allows that so the error can name both places).
	// From two files it is a merged section (upstreams, routes, ...).
	if first, ok := d.pos[sub]; ok && first.file == d.file {
		d.errs.add(errAt(kp, sub, "duplicate key %q (first defined at %s)", key, first))
		return
	}
	d.pos[sub] = kp
	d.decode(e.Value, v.Field(idx), sub, false)
}

func (d *decoder) unknownKey(t reflect.Type, key string, e *ast.MappingValueNode, sub string) {
	msg := fmt.Sprintf("unknown key %q", key)
	if s := d.suggest(t, key); s != "" {
		msg += fmt.Sprintf(" (did you mean %q?)", s)
	}
	d.errs.add(errAt(d.at(e.Key), sub, "%s", msg))
}

func (d *decoder) fieldIndex(t reflect.Type, key string) (int, bool) {
	m, ok := d.fields[t]
	if !ok {
		m = make(map[string]int, t.NumField())
		for i := range t.NumField() {
			name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
			if name != "" && name != "-" {
				m[name] = i
			}
		}
		d.fields[t] = m
	}
	i, ok := m[key]
	return i, ok
}

// suggest returns the known key of t closest to key, if it is close enough to
// be a typo.
func (d *decoder) suggest(t reflect.Type, key string) string {
	d.fieldIndex(t, key) // fill the cache
	best, bestDist := "", 3
	for k := range d.fields[t] {
		if dist := editDistance(k, key); dist < bestDist || dist == bestDist && best != "" && k < best {
			best, bestDist = k, dist
		}
	}
	return best
}

// editDistance is the Levenshtein distance between two short strings.
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 99
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// key returns a mapping entry's key as a string. Keys are never expanded.
func (d *decoder) key(e *ast.MappingValueNode, field string) (string, bool) {
	k := d.resolve(e.Key)
	switch t := k.(type) {
	case *ast.StringNode:
		return t.Value, true
	case *ast.IntegerNode, *ast.FloatNode, *ast.BoolNode:
		return t.GetToken().Value, true
	}
	d.errorf(e.Key, field, "mapping keys must be strings")
	return "", false
}

// entries returns a mapping's entries with YAML merge keys (<<: *anchor)
// expanded: merged entries come first and explicit keys override them.
func (d *decoder) entries(m *ast.MappingNode, field string) []*ast.MappingValueNode {
	hasMerge := false
	for _, e := range m.Values {
		if e.Key.IsMergeKey() {
			hasMerge = true
			break
		}
	}
	if !hasMerge {
		return m.Values
	}
	if !d.spend(m, field, 1) {
		return nil
	}
	d.depth++
	defer func() { d.depth-- }()
	if d.depth > maxDepth {
		d.fail(m, field, "nesting deeper than %d levels", maxDepth)
		return nil
	}
	// seen holds the explicit keys, then each merged key as it is taken:
	// explicit keys override merged ones, and among merged mappings the
	// first one listed wins (YAML merge key semantics).
	seen := map[string]bool{}
	for _, e := range m.Values {
		if !e.Key.IsMergeKey() {
			if k, ok := d.key(e, field); ok {
				seen[k] = true
			}
		}
	}
	var out []*ast.MappingValueNode
	addFrom := func(n ast.Node) {
		src, ok := d.resolve(n).(*ast.MappingNode)
		if !ok {
			d.errorf(n, field, "a merge key (<<) needs a mapping or a list of mappings")
			return
		}
		sub := d.entries(src, field)
		if !d.spend(n, field, len(sub)) {
			return
		}
		for _, e := range sub {
			if k, ok := d.key(e, field); ok && !seen[k] {
				seen[k] = true
				out = append(out, e)
			}
		}
	}
	for _, e := range m.Values {
		if !e.Key.IsMergeKey() {
			continue
		}
		if seq, ok := d.resolve(e.Value).(*ast.SequenceNode); ok {
			for _, item := range seq.Values {
				addFrom(item)
			}
		} else {
			addFrom(e.Value)
		}
	}
	for _, e := range m.Values {
		if !e.Key.IsMergeKey() {
			out = append(out, e)
		}
	}
	return out
}

// joinField appends a mapping key to a field path.
func joinField(field, key string) string {
	if field == "" {
		return key
	}
	return field + "." + key
}
