package config

import (
	"runtime"
	"strings"
	"sync"
	"weak"
)

// positionTable maps a loaded *Config to the positions of its fields.
//
// The schema in types.go is shared and has no room for loader state, so the
// positions live beside it, keyed by a weak pointer: the table never keeps a
// Config alive, and a cleanup drops the entry when the Config is collected.
// (A weak pointer, unlike an address, is never reused by a later Config.)
// A copy of a Config (c2 := *c) has no positions; Where then returns "".
var positionTable sync.Map // weak.Pointer[Config] -> map[string]pos

func remember(c *Config, p map[string]pos) {
	k := weak.Make(c)
	positionTable.Store(k, p)
	runtime.AddCleanup(c, func(k weak.Pointer[Config]) { positionTable.Delete(k) }, k)
}

func positionsOf(c *Config) map[string]pos {
	v, ok := positionTable.Load(weak.Make(c))
	if !ok {
		return nil
	}
	return v.(map[string]pos)
}

// Where returns "FILE:LINE:COL" of a field path such as "server.tls.cert",
// "routes[3].match.path" or "upstreams.posts.targets[0].url", for later
// stages that find a problem the loader could not (a certificate file that
// cannot be read, say). Indices are those of the merged Config (the index
// into Config.Routes), while the loader's own error messages show the index
// within the file, which is what a reader of that file counts. A field that
// was not written in the file (one that got its default) gives the position
// of its nearest written ancestor. The result is "" for a Config not
// returned by Load, LoadBytes or a Loader.
func (c *Config) Where(field string) string {
	p, ok := lookupPos(positionsOf(c), field)
	if !ok {
		return ""
	}
	return p.String()
}

// lookupPos finds field or its nearest recorded ancestor.
func lookupPos(m map[string]pos, field string) (pos, bool) {
	for field != "" {
		if p, ok := m[field]; ok {
			return p, true
		}
		field = parentField(field)
	}
	return pos{}, false
}

// parentField drops the last element of a field path: a.b[3].c -> a.b[3] ->
// a.b -> a. Map keys containing dots (header names never do; hosts might)
// are looked up whole first, so only the fallback can split them.
func parentField(field string) string {
	i := strings.LastIndexAny(field, ".[")
	if i < 0 {
		return ""
	}
	return field[:i]
}
