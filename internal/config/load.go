package config

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/parser"
)

// Load reads, merges, defaults and validates the configuration in paths. Each
// path is a file or a directory; a directory contributes every *.yaml and
// *.yml file directly in it (no recursion, names starting with "." skipped,
// symlinks followed as Kubernetes ConfigMap mounts need), in lexical order.
//
// Environment variables are read with os.LookupEnv. On any problem Load
// returns a nil Config and an *Errors listing every problem found.
func Load(paths ...string) (*Config, error) {
	return load(paths, os.LookupEnv)
}

// LoadBytes loads one in-memory file named name, as Load would load a file
// with that content. It serves tests and fuzzing.
func LoadBytes(name string, data []byte) (*Config, error) {
	l := newLoader(os.LookupEnv, len(data))
	l.file(name, data)
	return l.finish()
}

func load(paths []string, lookup func(string) (string, bool)) (*Config, error) {
	return loadCached(paths, lookup, nil)
}

// loadCached is load with an optional cache of parsed files.
func loadCached(paths []string, lookup func(string) (string, bool), cache *astCache) (*Config, error) {
	errs := &Errors{}
	if len(paths) == 0 {
		errs.add(Error{Msg: "no configuration file given"})
		return nil, errs.orNil()
	}
	files := listFiles(paths, errs)
	if len(files) == 0 && len(errs.List) == 0 {
		errs.add(Error{File: strings.Join(paths, ", "), Msg: "no *.yaml or *.yml files found"})
	}
	// Read everything first so the position table is sized once.
	datas := make([][]byte, len(files))
	total := 0
	for i, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			errs.add(Error{File: f, Msg: readError(err)})
			datas[i] = nil
			continue
		}
		datas[i] = data
		total += len(data)
	}
	l := newLoader(lookup, total)
	l.errs = errs
	l.cache = cache
	l.broken = len(errs.List) > 0 // a path or file could not be read
	l.preparse(files, datas)
	for i, f := range files {
		if datas[i] != nil {
			l.file(f, datas[i])
		}
	}
	return l.finish()
}

func readError(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Op + ": " + pe.Err.Error()
	}
	return err.Error()
}

// listFiles expands directories into their YAML files and keeps files as
// given (any extension: a file named explicitly is meant to be loaded).
func listFiles(paths []string, errs *Errors) []string {
	var out []string
	seen := map[string]bool{}
	addFile := func(f string) {
		// A file named twice (-c dir -c ./dir/a.yaml) loads once.
		if key := filepath.Clean(f); !seen[key] {
			seen[key] = true
			out = append(out, f)
		}
	}
	for _, p := range paths {
		st, err := os.Stat(p) // follows symlinks
		if err != nil {
			errs.add(Error{File: p, Msg: readError(err)})
			continue
		}
		if !st.IsDir() {
			addFile(p)
			continue
		}
		entries, err := os.ReadDir(p)
		if err != nil {
			errs.add(Error{File: p, Msg: readError(err)})
			continue
		}
		var names []string
		for _, e := range entries {
			name := e.Name()
			if strings.HasPrefix(name, ".") {
				continue // also skips the ..data and ..2026_* ConfigMap directories
			}
			ext := filepath.Ext(name)
			if ext != ".yaml" && ext != ".yml" {
				continue
			}
			full := filepath.Join(p, name)
			if e.Type()&fs.ModeSymlink != 0 {
				st, err := os.Stat(full)
				if err != nil {
					errs.add(Error{File: full, Msg: readError(err)})
					continue
				}
				if st.IsDir() {
					continue
				}
			} else if !e.Type().IsRegular() {
				continue
			}
			names = append(names, full)
		}
		slices.Sort(names)
		for _, n := range names {
			addFile(n)
		}
	}
	return out
}

// loader accumulates the files of one load into one Config.
type loader struct {
	cfg    *Config
	errs   *Errors
	pos    map[string]pos
	failed map[string]bool
	fields map[reflect.Type]map[string]int
	lookup func(string) (string, bool)

	// owner records where each singleton section was first defined.
	owner map[string]pos

	cache *astCache // nil: parse every file

	// broken is set when a file could not be read or parsed.
	broken bool

	// pre holds files parsed ahead by preparse.
	pre map[string]parseResult

	// local maps an index of the merged routes and slos lists to the
	// index within its own file, which is what error messages show (the
	// user reads routes[0] of team.yaml, not routes[17] of the merge).
	local map[string][]int
}

// listLen returns the length of the merged top-level list key, or 0.
func (l *loader) listLen(key string) int {
	switch key {
	case "routes":
		return len(l.cfg.Routes)
	case "slos":
		return len(l.cfg.SLOs)
	}
	return 0
}

// localFields rewrites routes[N] and slos[N] at the start of each error's
// field from the merged index to the index within the error's file.
func (l *loader) localFields() {
	for i := range l.errs.List {
		e := &l.errs.List[i]
		for key, table := range l.local {
			rest, ok := strings.CutPrefix(e.Field, key+"[")
			if !ok {
				continue
			}
			end := strings.IndexByte(rest, ']')
			n, err := strconv.Atoi(rest[:max(end, 0)])
			if end < 0 || err != nil || n >= len(table) {
				continue
			}
			e.Field = key + "[" + strconv.Itoa(table[n]) + rest[end:]
		}
	}
}

// parse parses one file, through the cache when there is one.
func (l *loader) parse(name string, data []byte) (*ast.File, error) {
	if l.cache != nil {
		if f, ok := l.cache.get(name, data); ok {
			return f, nil
		}
	}
	var f *ast.File
	var err error
	if r, ok := l.pre[name]; ok {
		f, err = r.tree, r.err
	} else {
		f, err = parseYAML(data)
	}
	if err == nil && l.cache != nil {
		l.cache.put(name, data, f)
	}
	return f, err
}

func parseYAML(data []byte) (*ast.File, error) {
	// Duplicate keys are reported by the decoder, which can name both places.
	return parser.ParseBytes(data, 0, parser.AllowDuplicateMapKey())
}

// prepare trims a byte order mark: editors on Windows may start a UTF-8 file
// with one, which the parser would take as part of the first key.
func prepare(data []byte) []byte {
	return bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
}

type parseResult struct {
	tree *ast.File
	err  error
}

// preparse parses the files that will need parsing on up to GOMAXPROCS
// goroutines, since parsing is most of a load's time and files are
// independent; decoding then runs in file order on the results.
func (l *loader) preparse(files []string, datas [][]byte) {
	type job struct {
		name string
		data []byte
	}
	var jobs []job
	for i, name := range files {
		if datas[i] == nil {
			continue // unreadable: reported
		}
		data := prepare(datas[i])
		if _, _, deep := tooDeep(data); deep {
			continue // reported by file
		}
		if l.cache != nil && l.cache.has(name, data) {
			continue
		}
		jobs = append(jobs, job{name, data})
	}
	if len(jobs) < 2 {
		return // nothing to overlap
	}
	results := make([]parseResult, len(jobs))
	sem := make(chan struct{}, runtime.GOMAXPROCS(0))
	var wg sync.WaitGroup
	for i, j := range jobs {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			tree, err := parseYAML(j.data)
			results[i] = parseResult{tree, err}
		})
	}
	wg.Wait()
	for i, j := range jobs {
		l.pre[j.name] = results[i]
	}
}

// newLoader returns a loader for about size bytes of YAML.
func newLoader(lookup func(string) (string, bool), size int) *loader {
	return &loader{
		cfg:  &Config{},
		errs: &Errors{},
		// One position per ~12 bytes of YAML is close to what real
		// configs record; sizing the table once avoids rehashing it.
		pos:    make(map[string]pos, size/12),
		failed: map[string]bool{},
		fields: map[reflect.Type]map[string]int{},
		lookup: lookup,
		owner:  map[string]pos{},
		local:  map[string][]int{},
		pre:    map[string]parseResult{},
	}
}

// singletons are the top-level sections that only one file may hold.
var singletons = map[string]bool{"server": true, "admin": true, "logging": true, "tracing": true}

func (l *loader) file(name string, data []byte) {
	l.cfg.Files = append(l.cfg.Files, name)
	data = prepare(data)
	if line, col, deep := tooDeep(data); deep {
		l.errs.add(Error{File: name, Line: line, Col: col, Msg: fmt.Sprintf("YAML syntax: collections nested deeper than %d levels", maxFlowDepth)})
		l.broken = true
		return
	}
	f, err := l.parse(name, data)
	if err != nil {
		l.errs.add(syntaxError(name, err))
		l.broken = true
		return
	}
	d := &decoder{
		file:    name,
		lookup:  l.lookup,
		errs:    l.errs,
		pos:     l.pos,
		failed:  l.failed,
		anchors: map[string][]anchorDef{},
		fields:  l.fields,
	}
	var docs []*ast.DocumentNode
	for _, doc := range f.Docs {
		if doc.Body != nil {
			docs = append(docs, doc)
		}
	}
	if bytes.IndexByte(data, '&') >= 0 {
		// Anchors are collected up front: one defined under a key the
		// decoder skips (an x- key, an unknown key) must still serve its
		// aliases. An alias takes the latest definition of its name
		// before it, as in YAML.
		for _, doc := range docs {
			ast.Walk(anchorCollector(d.anchors), doc.Body)
		}
	}
	if len(docs) == 0 {
		l.errs.add(Error{File: name, Line: 1, Col: 1, Field: "version", Msg: "missing; every file must say version: 1"})
		return
	}
	if len(docs) > 1 {
		d.errorf(docs[1].Body, "", "a file holds one YAML document; put others in their own files")
	}
	root, ok := d.resolve(docs[0].Body).(*ast.MappingNode)
	if !ok {
		d.errorf(docs[0].Body, "", "the file must be a mapping (version: 1, server: ..., routes: ...)")
		l.broken = true
		return
	}
	rv := reflect.ValueOf(l.cfg).Elem()
	sawVersion := false
	for _, e := range d.entries(root, "") {
		key, ok := d.key(e, "")
		if !ok {
			continue
		}
		kp := d.at(e.Key)
		switch {
		case key == "version":
			if sawVersion {
				l.errs.add(errAt(kp, "version", "duplicate key \"version\""))
				continue
			}
			sawVersion = true
			var v int
			d.decode(e.Value, reflect.ValueOf(&v).Elem(), "version", false)
			if !d.failed["version"] && v != 1 {
				l.errs.add(errAt(kp, "version", "must be 1, got %d", v))
			}
			// The merged config's version position is the first file's.
			if _, ok := l.pos["version"]; !ok {
				l.pos["version"] = kp
			}
			l.cfg.Version = 1
			continue
		case singletons[key]:
			if first, dup := l.owner[key]; dup {
				if first.file == name {
					l.errs.add(errAt(kp, key, "duplicate key %q (first defined at %s)", key, first))
				} else {
					l.errs.add(errAt(kp, key, "defined in more than one file (first defined at %s)", first))
				}
				continue
			}
			l.owner[key] = kp
		case key == "rate_limits":
			l.rateLimits(d, e)
			continue
		case strings.HasPrefix(key, "x-"):
			continue // extension keys hold YAML anchors for reuse
		}
		before := l.listLen(key)
		d.field(rv, key, e, key)
		for i := before; i < l.listLen(key); i++ {
			l.local[key] = append(l.local[key], i-before)
		}
	}
	if !sawVersion {
		d.errs.add(errAt(d.at(root), "version", "missing; every file must say version: 1"))
	}
}

// maxFlowDepth bounds [ and { nesting. The parser's time grows with the
// square of the nesting depth (20,000 levels take many seconds), and no
// configuration nests deeper than about ten, so deeper input is refused
// before parsing.
const maxFlowDepth = 128

// tooDeep scans for flow collections nested deeper than maxFlowDepth and
// returns the position where the limit is crossed. It skips quoted text and
// comments; a bracket inside a plain scalar counts too, which can only
// make it stricter than the parser on input no real file contains.
func tooDeep(data []byte) (line, col int, deep bool) {
	depth, line, lineStart := 0, 1, 0
	for i := 0; i < len(data); i++ {
		switch c := data[i]; c {
		case '\n':
			line, lineStart = line+1, i+1
		case '#':
			if i == 0 || data[i-1] == ' ' || data[i-1] == '\t' || data[i-1] == '\n' {
				for i+1 < len(data) && data[i+1] != '\n' {
					i++
				}
			}
		case '"', '\'':
			if i > 0 && data[i-1] != ' ' && data[i-1] != '[' && data[i-1] != '{' && data[i-1] != ',' && data[i-1] != ':' && data[i-1] != '\n' && data[i-1] != '\t' {
				continue // a quote inside a plain scalar (it's, 5")
			}
			for i++; i < len(data) && data[i] != c; i++ {
				switch {
				case data[i] == '\\' && c == '"':
					i++
				case data[i] == '\n':
					line, lineStart = line+1, i+1
				}
			}
		case '[', '{':
			if depth++; depth > maxFlowDepth {
				return line, i - lineStart + 1, true
			}
		case ']', '}':
			depth = max(depth-1, 0)
		}
	}
	return 0, 0, false
}

// anchorCollector records every anchor definition of a document by name,
// in document order.
type anchorCollector map[string][]anchorDef

func (a anchorCollector) Visit(n ast.Node) ast.Visitor {
	if an, ok := n.(*ast.AnchorNode); ok {
		if name, ok := an.Name.(*ast.StringNode); ok {
			def := anchorDef{node: an.Value}
			if p := an.GetToken().Position; p != nil {
				def.line, def.col = p.Line, p.Column
			}
			defs := append(a[name.Value], def)
			// The walk goes in document order; sorting keeps that certain.
			slices.SortStableFunc(defs, func(x, y anchorDef) int {
				return cmp.Or(cmp.Compare(x.line, y.line), cmp.Compare(x.col, y.col))
			})
			a[name.Value] = defs
		}
	}
	return a
}

// rateLimits decodes a rate_limits section: policies merge across files, the
// other settings belong to one file.
func (l *loader) rateLimits(d *decoder, e *ast.MappingValueNode) {
	const field = "rate_limits"
	if _, ok := l.pos[field]; !ok {
		l.pos[field] = d.at(e.Key)
	}
	node := d.resolve(e.Value)
	if _, isNull := node.(*ast.NullNode); isNull {
		return
	}
	m, ok := node.(*ast.MappingNode)
	if !ok {
		d.typeError(e.Value, node, field, "a mapping")
		return
	}
	rv := reflect.ValueOf(&l.cfg.RateLimits).Elem()
	claimed := false
	for _, sub := range d.entries(m, field) {
		key, ok := d.key(sub, field)
		if !ok {
			continue
		}
		if _, known := d.fieldIndex(rv.Type(), key); !known {
			// A typo (polices) is reported as an unknown key, not as a
			// second file claiming the settings.
			d.unknownKey(rv.Type(), key, sub, joinField(field, key))
			continue
		}
		if key != "policies" && !claimed {
			// The first setting a file writes claims them all for it.
			kp := d.at(sub.Key)
			if first, dup := l.owner[field]; dup && first.file != d.file {
				l.errs.add(errAt(kp, field+"."+key, "rate_limits settings other than policies are defined in more than one file (first defined at %s)", first))
				continue
			}
			if _, dup := l.owner[field]; !dup {
				l.owner[field] = kp
			}
			claimed = true
		}
		// A key written twice in one file is reported by d.field.
		d.field(rv, key, sub, joinField(field, key))
	}
}

// syntaxError turns a goccy/go-yaml parse error into an Error with position.
func syntaxError(file string, err error) Error {
	var ye yaml.Error
	if errors.As(err, &ye) {
		if tk := ye.GetToken(); tk != nil && tk.Position != nil {
			return Error{File: file, Line: tk.Position.Line, Col: tk.Position.Column, Msg: "YAML syntax: " + ye.GetMessage()}
		}
		return Error{File: file, Msg: "YAML syntax: " + ye.GetMessage()}
	}
	return Error{File: file, Msg: fmt.Sprintf("YAML syntax: %v", err)}
}

// finish applies defaults, validates and returns the merged config.
func (l *loader) finish() (*Config, error) {
	if !l.broken {
		// A file that could not be read or parsed would make every name it
		// defines look undefined elsewhere: then only what was found so
		// far is reported, and validation waits until every file parses.
		applyDefaults(l.cfg)
		v := &validator{cfg: l.cfg, pos: l.pos, failed: l.failed, errs: l.errs}
		v.validate()
	}
	l.localFields()
	if err := l.errs.orNil(); err != nil {
		return nil, err
	}
	remember(l.cfg, l.pos)
	return l.cfg, nil
}
