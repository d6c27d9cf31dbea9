package aggregate

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
)

// node is one object level of the shaping tree: the keys that fields,
// drop and rename name at this level.
type node struct {
	children []*child
	// allow: fields restricts this object's keys to the selected children.
	allow bool
	// restrictive: allow here or anywhere below, so a value of the wrong
	// type (a string where an object was expected) must not leak through.
	restrictive bool
	// hasRename: a child is renamed, so output keys are deduplicated (the
	// first occurrence wins) to keep the object free of duplicate keys.
	hasRename bool
}

// child is one key of a node.
type child struct {
	key string
	// arr is how many array levels the value has before sub applies; set
	// only by paths that go deeper than this key.
	arr    int
	arrSet bool
	// selected: the key lies on a fields path (meaningful when the parent
	// node has allow). keep: the key is itself a fields path, so its whole
	// value is kept (only drop and rename apply below).
	selected bool
	keep     bool
	drop     bool
	rename   string
	// nameJSON is the quoted output key when renamed; renameB the same
	// unquoted, for the dedupe check without a conversion per key.
	nameJSON []byte
	renameB  []byte
	sub      *node
}

func (n *node) find(key []byte) *child {
	for _, c := range n.children {
		if c.key == string(key) {
			return c
		}
	}
	return nil
}

func (n *node) findString(key string) *child {
	for _, c := range n.children {
		if c.key == key {
			return c
		}
	}
	return nil
}

// pickStep is one step of a compiled pick path, in original (pre-rename)
// key names; c is the shaping tree's child for the step, or nil when no
// shaping applies below it.
type pickStep struct {
	key string
	arr int
	c   *child
	// rest is, for the last step, how many array levels of c remain after
	// the pick's own "[]" markers.
	rest int
}

// shaper is a compiled set of shaping operators for one backend.
type shaper struct {
	root *child
	pick []pickStep
	// none: no operator is configured; the body is only validated.
	none bool
}

// shapeSpec is the part of a backend's config that shaping reads.
type shapeSpec struct {
	Fields []string
	Drop   []string
	Rename map[string]string
	Pick   string
}

func compileShape(sp shapeSpec) (*shaper, error) {
	sh := &shaper{root: &child{}}
	if len(sp.Fields) == 0 && len(sp.Drop) == 0 && len(sp.Rename) == 0 && sp.Pick == "" {
		sh.none = true
		return sh, nil
	}
	for _, f := range sp.Fields {
		segs, err := parsePath(f)
		if err != nil {
			return nil, fmt.Errorf("fields: %w", err)
		}
		last, err := sh.insert(segs)
		if err != nil {
			return nil, fmt.Errorf("fields: %w", err)
		}
		last.keep = true
		// Mark the path selected and every object on it restricted.
		cur := sh.root
		cur.selected = true
		_, rest := rootSegments(segs)
		for _, s := range rest {
			cur.sub.allow = true
			cur = cur.sub.findString(s.key)
			cur.selected = true
		}
	}
	for _, f := range sp.Drop {
		segs, err := parsePath(f)
		if err != nil {
			return nil, fmt.Errorf("drop: %w", err)
		}
		if _, rest := rootSegments(segs); len(rest) == 0 {
			return nil, fmt.Errorf("drop: %q would drop the whole body", f)
		}
		last, err := sh.insert(segs)
		if err != nil {
			return nil, fmt.Errorf("drop: %w", err)
		}
		last.drop = true
	}
	// Sorted so that errors do not depend on map order.
	renames := make([]string, 0, len(sp.Rename))
	for k := range sp.Rename {
		renames = append(renames, k)
	}
	sort.Strings(renames)
	for _, from := range renames {
		to := sp.Rename[from]
		if to == "" || strings.ContainsAny(to, ".[]") {
			return nil, fmt.Errorf("rename: %q: the new name %q must be one non-empty key without '.', '[' or ']'", from, to)
		}
		segs, err := parsePath(from)
		if err != nil {
			return nil, fmt.Errorf("rename: %w", err)
		}
		if _, rest := rootSegments(segs); len(rest) == 0 {
			return nil, fmt.Errorf("rename: %q names the whole body", from)
		}
		last, err := sh.insert(segs)
		if err != nil {
			return nil, fmt.Errorf("rename: %w", err)
		}
		last.rename = to
		last.nameJSON, _ = json.Marshal(to)
		last.renameB = []byte(to)
	}
	finish(sh.root, false)
	if sp.Pick != "" {
		steps, err := sh.compilePick(sp.Pick)
		if err != nil {
			return nil, fmt.Errorf("pick: %w", err)
		}
		sh.pick = steps
	}
	return sh, nil
}

// insert adds the path to the tree and returns the child of its last key
// (the root pseudo-child for a bare "[]").
func (sh *shaper) insert(segs []segment) (*child, error) {
	rootArr, rest := rootSegments(segs)
	cur := sh.root
	if len(rest) > 0 {
		if err := setArr(cur, rootArr, segs); err != nil {
			return nil, err
		}
	}
	for i, s := range rest {
		if cur.sub == nil {
			cur.sub = &node{}
		}
		c := cur.sub.findString(s.key)
		if c == nil {
			c = &child{key: s.key}
			cur.sub.children = append(cur.sub.children, c)
		}
		if i < len(rest)-1 {
			if err := setArr(c, s.arr, segs); err != nil {
				return nil, err
			}
		}
		cur = c
	}
	return cur, nil
}

func setArr(c *child, arr int, segs []segment) error {
	if c.arrSet && c.arr != arr {
		return fmt.Errorf("%q disagrees with another path on the \"[]\" markers of %q", formatPath(segs), orRoot(c.key))
	}
	c.arr, c.arrSet = arr, true
	return nil
}

func orRoot(key string) string {
	if key == "" {
		return "the body"
	}
	return key
}

// finish clears allow below kept values and computes restrictive and
// hasRename bottom-up.
func finish(c *child, underKeep bool) bool {
	if c.sub == nil {
		return false
	}
	underKeep = underKeep || c.keep
	n := c.sub
	if underKeep {
		n.allow = false
	}
	restrictive := n.allow
	for _, ch := range n.children {
		if finish(ch, underKeep) {
			restrictive = true
		}
		if ch.rename != "" {
			n.hasRename = true
		}
	}
	n.restrictive = restrictive
	return restrictive
}

// compilePick resolves a pick path, written in post-rename names, to the
// original keys and the shaping children along it. A path that fields or
// drop removed is an error here rather than a null at run time.
func (sh *shaper) compilePick(p string) ([]pickStep, error) {
	segs, err := parsePath(p)
	if err != nil {
		return nil, err
	}
	rootArr, rest := rootSegments(segs)
	steps := make([]pickStep, 0, len(rest)+1)
	steps = append(steps, pickStep{arr: rootArr, c: sh.root})
	for i, s := range rest {
		prev := steps[len(steps)-1].c
		var c *child
		if prev != nil && prev.sub != nil {
			n := prev.sub
			// A renamed key answers to its new name only.
			for _, ch := range n.children {
				if ch.rename == s.key {
					c = ch
					break
				}
			}
			if c == nil {
				c = n.findString(s.key)
				if c != nil && c.rename != "" {
					return nil, fmt.Errorf("%q: key %q was renamed to %q", p, s.key, c.rename)
				}
			}
			if n.allow && (c == nil || !c.selected) {
				return nil, fmt.Errorf("%q: %q is not among fields", p, s.key)
			}
			if c != nil && c.drop {
				return nil, fmt.Errorf("%q: %q is removed by drop", p, s.key)
			}
		}
		key := s.key
		if c != nil {
			key = c.key
		}
		if c != nil && c.sub != nil && i < len(rest)-1 && s.arr != c.arr {
			return nil, fmt.Errorf("%q disagrees with fields, drop or rename on the \"[]\" markers of %q", p, s.key)
		}
		steps = append(steps, pickStep{key: key, arr: s.arr, c: c})
	}
	// The root step is intermediate unless the pick is a bare "[]".
	if len(rest) > 0 && sh.root.sub != nil && rootArr != sh.root.arr {
		return nil, fmt.Errorf("%q disagrees with fields, drop or rename on the \"[]\" markers of the body", p)
	}
	last := &steps[len(steps)-1]
	if last.c != nil && last.c.sub != nil {
		if last.arr > last.c.arr {
			return nil, fmt.Errorf("%q has more \"[]\" markers than fields, drop or rename give %q", p, orRoot(last.c.key))
		}
		last.rest = last.c.arr - last.arr
	}
	return steps, nil
}
