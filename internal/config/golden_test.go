package config

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the .golden files of testdata/invalid")

// testEnv is the environment every fixture sees: fixtures never depend on
// the real environment of the machine running the tests.
func testEnv(name string) (string, bool) {
	env := map[string]string{
		"PORTICO_ADMIN_TOKEN": "s3cret-admin-token",
		"POSTS_URL":           "http://127.0.0.1:7002",
		"EMPTY":               "",
		"RETRIES":             "3",
		"JWT_SECRET":          "0123456789abcdef0123456789abcdef",
		"HUGE":                "99999999999999999999",
		"TOKEN_FROM_FILE":     "s3cret-admin-token\n",
	}
	v, ok := env[name]
	return v, ok
}

// TestInvalidFixtures loads every testdata/invalid/NAME.yaml (or NAME/
// directory) and compares the error text with NAME.golden.
func TestInvalidFixtures(t *testing.T) {
	entries, err := os.ReadDir("testdata/invalid")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range entries {
		name := e.Name()
		if strings.HasSuffix(name, ".golden") {
			continue
		}
		n++
		base := strings.TrimSuffix(strings.TrimSuffix(name, ".yaml"), ".yml")
		t.Run(base, func(t *testing.T) {
			path := filepath.Join("testdata/invalid", name)
			_, err := load([]string{path}, testEnv)
			if err == nil {
				t.Fatalf("%s loaded without error", path)
			}
			if _, ok := err.(*Errors); !ok {
				t.Fatalf("error is %T, want *Errors", err)
			}
			got := err.Error() + "\n"
			golden := filepath.Join("testdata/invalid", base+".golden")
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("errors differ from %s\n--- got\n%s--- want\n%s", golden, got, want)
			}
		})
	}
	if n < 40 {
		t.Errorf("only %d invalid fixtures; every rule needs one", n)
	}
}

// TestValidFixtures loads every testdata/valid/NAME.yaml (or NAME/ directory).
func TestValidFixtures(t *testing.T) {
	entries, err := os.ReadDir("testdata/valid")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		t.Run(e.Name(), func(t *testing.T) {
			path := filepath.Join("testdata/valid", e.Name())
			c, err := load([]string{path}, testEnv)
			if err != nil {
				t.Fatalf("%s:\n%v", path, err)
			}
			if c.Version != 1 || len(c.Files) == 0 {
				t.Errorf("version %d, files %v", c.Version, c.Files)
			}
		})
	}
}
