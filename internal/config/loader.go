package config

import (
	"bytes"
	"os"
	"sync"

	"github.com/goccy/go-yaml/ast"
)

// Loader loads configurations like Load, and keeps the parsed syntax tree of
// each file between calls, so a reload re-parses only the files whose bytes
// changed. YAML parsing is most of the cost of a load (about three quarters
// for a large file), and on a reload usually one team's file has changed.
//
// The price is memory: a parsed tree holds about 60 bytes per byte of YAML
// (a 400 KB file with 1,000 routes keeps about 24 MB); use Load when that
// matters more than reload time.
//
// The trees are only read after parsing (environment variables are expanded
// while decoding, never in the tree), so reusing them cannot leak one load's
// values into the next. A Loader is safe for concurrent use; loads run one
// at a time. The zero value is ready to use.
type Loader struct {
	// LookupEnv resolves ${VAR}; nil means os.LookupEnv.
	LookupEnv func(string) (string, bool)

	mu    sync.Mutex
	cache astCache
}

// Load loads paths as the package-level Load does.
func (l *Loader) Load(paths ...string) (*Config, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	lookup := l.LookupEnv
	if lookup == nil {
		lookup = os.LookupEnv
	}
	l.cache.startLoad()
	defer l.cache.endLoad()
	return loadCached(paths, lookup, &l.cache)
}

// astCache maps a file name to its last content and parsed tree. Entries of
// files not read by the latest load are dropped at its end.
type astCache struct {
	files map[string]cachedFile
	used  map[string]bool
	hits  int // for tests
}

type cachedFile struct {
	data []byte
	tree *ast.File
}

func (c *astCache) startLoad() { c.used = map[string]bool{} }

func (c *astCache) endLoad() {
	for name := range c.files {
		if !c.used[name] {
			delete(c.files, name)
		}
	}
	c.used = nil
}

func (c *astCache) get(name string, data []byte) (*ast.File, bool) {
	c.used[name] = true
	f, ok := c.files[name]
	if !ok || !bytes.Equal(f.data, data) {
		return nil, false
	}
	c.hits++
	return f.tree, true
}

// has reports whether name is cached with exactly data, without counting a
// use.
func (c *astCache) has(name string, data []byte) bool {
	f, ok := c.files[name]
	return ok && bytes.Equal(f.data, data)
}

func (c *astCache) put(name string, data []byte, tree *ast.File) {
	if c.files == nil {
		c.files = map[string]cachedFile{}
	}
	c.used[name] = true
	c.files[name] = cachedFile{data: data, tree: tree}
}
