package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
)

func TestLoaderReusesUnchangedFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("a.yaml", "version: 1\n"+minimalRoute)
	write("b.yaml", "version: 1\nlogging:\n  level: ${LEVEL}\n")
	env := map[string]string{"LEVEL": "warn"}
	l := &Loader{LookupEnv: func(k string) (string, bool) { v, ok := env[k]; return v, ok }}

	first, err := l.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if l.cache.hits != 0 || len(l.cache.files) != 2 {
		t.Fatalf("first load: %d hits, %d cached", l.cache.hits, len(l.cache.files))
	}

	// Unchanged files: both trees reused, same result, fresh env.
	env["LEVEL"] = "error"
	second, err := l.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if l.cache.hits != 2 {
		t.Errorf("second load: %d hits, want 2", l.cache.hits)
	}
	if second.Logging.Level != "error" {
		t.Errorf("level = %q: the environment must be read on every load", second.Logging.Level)
	}
	second.Logging.Level = first.Logging.Level
	if !reflect.DeepEqual(first, second) {
		t.Errorf("reload from cached trees differs:\n%+v\n%+v", first, second)
	}
	if second.Where("routes[0].name") != filepath.Join(dir, "a.yaml")+":6:5" {
		t.Errorf("Where after reload = %q", second.Where("routes[0].name"))
	}

	// One file changed: only it is parsed again; a broken edit is reported
	// and the next good one loads.
	write("b.yaml", "version: 1\nlogging: {level: [\n")
	if _, err := l.Load(dir); err == nil {
		t.Fatal("broken file loaded")
	}
	if l.cache.hits != 3 {
		t.Errorf("after changing b.yaml: %d hits, want 3", l.cache.hits)
	}
	write("b.yaml", "version: 1\nlogging: {level: debug}\n")
	c, err := l.Load(dir)
	if err != nil || c.Logging.Level != "debug" {
		t.Fatalf("level %v, err %v", c, err)
	}

	// A removed file leaves the cache.
	if err := os.Remove(filepath.Join(dir, "b.yaml")); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Load(dir); err != nil {
		t.Fatal(err)
	}
	if len(l.cache.files) != 1 {
		t.Errorf("%d files cached after removing one, want 1", len(l.cache.files))
	}
}

// BenchmarkReload1000Routes is a reload through a Loader of an unchanged
// 1,000-route file: decode, defaults and validation without the YAML parse.
func BenchmarkReload1000Routes(b *testing.B) {
	path := filepath.Join(b.TempDir(), "big.yaml")
	if err := os.WriteFile(path, bigConfig(1000, true), 0o644); err != nil {
		b.Fatal(err)
	}
	l := &Loader{}
	if _, err := l.Load(path); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	start := cpuTime()
	for b.Loop() {
		if _, err := l.Load(path); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64((cpuTime()-start).Microseconds())/1000/float64(b.N), "cpu-ms/op")
}

// TestLoaderConcurrent runs loads from several goroutines (go test -race
// checks the cache and the position table).
func TestLoaderConcurrent(t *testing.T) {
	l := &Loader{LookupEnv: testEnv}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			c, err := l.Load("testdata/valid/multi")
			if err == nil && c.Where("routes[0].name") == "" {
				err = errors.New("no position")
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}

// TestParallelParseKeepsOrderAndErrors loads a directory of many files, so
// they are parsed in parallel, and checks the merge order and that syntax
// errors of several files are all reported.
func TestParallelParseKeepsOrderAndErrors(t *testing.T) {
	dir := t.TempDir()
	for i := range 12 {
		body := fmt.Sprintf("version: 1\nupstreams:\n  up%02d:\n    targets: [{url: \"http://127.0.0.1:%d\"}]\nroutes:\n  - {name: r%02d, match: {path: /r%02d}, upstream: up%02d, public: true}\n", i, 7000+i, i, i, i)
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("%02d.yaml", i)), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	c, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range c.Routes {
		if want := fmt.Sprintf("r%02d", i); r.Name != want {
			t.Fatalf("routes[%d] = %s, want %s (file order lost)", i, r.Name, want)
		}
	}
	for _, n := range []string{"03.yaml", "07.yaml"} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("version: 1\nroutes: [\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	_, err = Load(dir)
	if err == nil || strings.Count(err.Error(), "YAML syntax") != 2 {
		t.Errorf("want two syntax errors, got:\n%v", err)
	}
}

// BenchmarkLoadDir10Files loads the config of BenchmarkLoad1000Routes/full
// split into ten files (shared sections and 100 routes in the first, 100
// routes in each other, the BFF in the last), which parse in parallel.
func BenchmarkLoadDir10Files(b *testing.B) {
	text := string(bigConfig(1000, true))
	r, bff := strings.Index(text, "routes:\n"), strings.Index(text, "bffs:\n")
	items := strings.SplitAfter(text[r+len("routes:\n"):bff], "\n  - name: ")
	// SplitAfter leaves each item's "  - name: " at the end of the one before.
	routes := make([]string, 0, len(items))
	for i, it := range items {
		it = strings.TrimSuffix(it, "  - name: ")
		if i > 0 {
			it = "  - name: " + it
		}
		if strings.TrimSpace(it) != "" {
			routes = append(routes, it)
		}
	}
	dir := b.TempDir()
	for f := range 10 {
		var sb strings.Builder
		if f == 0 {
			sb.WriteString(text[:r])
		} else {
			sb.WriteString("version: 1\n")
		}
		sb.WriteString("routes:\n")
		for _, rt := range routes[f*100 : (f+1)*100] {
			sb.WriteString(rt)
		}
		if f == 9 {
			sb.WriteString(text[bff:])
		}
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("%02d.yaml", f)), []byte(sb.String()), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	c, err := Load(dir)
	if err != nil {
		b.Fatal(err)
	}
	if len(c.Routes) != 1000 || len(c.Files) != 10 {
		b.Fatalf("%d routes from %d files", len(c.Routes), len(c.Files))
	}
	b.ReportAllocs()
	start := cpuTime()
	for b.Loop() {
		if _, err := Load(dir); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64((cpuTime()-start).Microseconds())/1000/float64(b.N), "cpu-ms/op")
}
