package config

import (
	"encoding/json"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// The configuration reference (docs/configuration.md) and the editor schema
// (docs/portico.schema.json) are written for people, but checked here
// against the Go types by reflection, so neither can fall out of step: a
// new yaml key without docs fails the build, and so does a schema property
// the loader does not know.
//
// Key paths use [] for list items and <name> for map keys:
// routes[].match.path, upstreams.<name>.targets[].url.

// yamlPaths returns every key path of t, depth first.
func yamlPaths(t reflect.Type, prefix string, out *[]string) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Struct:
		if t == durationType || t == sizeType {
			return
		}
		for i := range t.NumField() {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if name == "" || name == "-" {
				continue
			}
			p := joinField(prefix, name)
			*out = append(*out, p)
			yamlPaths(f.Type, p, out)
		}
	case reflect.Slice:
		yamlPaths(t.Elem(), prefix+"[]", out)
	case reflect.Map:
		yamlPaths(t.Elem(), prefix+".<name>", out)
	}
}

func configPaths() []string {
	var out []string
	yamlPaths(reflect.TypeFor[Config](), "", &out)
	return out
}

func TestConfigurationDocCoversEveryKey(t *testing.T) {
	doc, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range configPaths() {
		if !strings.Contains(string(doc), "`"+p+"`") {
			t.Errorf("docs/configuration.md does not document `%s`", p)
		}
	}
}

// schemaPaths walks a JSON Schema the way yamlPaths walks the Go types,
// following $ref into $defs.
func schemaPaths(t *testing.T, root map[string]any, node map[string]any, prefix string, out *[]string, depth int) {
	if depth > 20 {
		t.Fatalf("schema nests deeper than 20 at %s", prefix)
	}
	if ref, ok := node["$ref"].(string); ok {
		name := strings.TrimPrefix(ref, "#/$defs/")
		def, ok := root["$defs"].(map[string]any)[name].(map[string]any)
		if !ok {
			t.Fatalf("%s: dangling $ref %s", prefix, ref)
		}
		node = def
	}
	if props, ok := node["properties"].(map[string]any); ok {
		keys := make([]string, 0, len(props))
		for k := range props {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			p := joinField(prefix, k)
			*out = append(*out, p)
			schemaPaths(t, root, props[k].(map[string]any), p, out, depth+1)
		}
	}
	if items, ok := node["items"].(map[string]any); ok {
		schemaPaths(t, root, items, prefix+"[]", out, depth+1)
	}
	if ap, ok := node["additionalProperties"].(map[string]any); ok {
		schemaPaths(t, root, ap, prefix+".<name>", out, depth+1)
	}
}

func TestSchemaMatchesTypes(t *testing.T) {
	data, err := os.ReadFile("../../docs/portico.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	var root map[string]any
	if err := json.Unmarshal(data, &root); err != nil {
		t.Fatalf("docs/portico.schema.json: %v", err)
	}
	if root["$schema"] != "https://json-schema.org/draft/2020-12/schema" {
		t.Errorf("$schema = %v, want draft 2020-12", root["$schema"])
	}
	var got []string
	schemaPaths(t, root, root, "", &got, 0)
	// x- extension keys are allowed by patternProperties, not properties.
	want := configPaths()
	for _, p := range want {
		if !slices.Contains(got, p) {
			t.Errorf("schema lacks %s", p)
		}
	}
	for _, p := range got {
		if !slices.Contains(want, p) {
			t.Errorf("schema has %s, which the loader does not know", p)
		}
	}
}

// TestDocExamplesUseRealKeys decodes every example of the configuration
// reference: fragments may reference names they do not define, but must
// not hold unknown keys, wrong types or bad syntax.
func TestDocExamplesUseRealKeys(t *testing.T) {
	for _, s := range docSections {
		if s.example == "" {
			continue
		}
		l := newLoader(func(string) (string, bool) { return "secret", true }, 0)
		l.file(s.key+".example.yaml", []byte("version: 1\n"+s.example+"\n"))
		_, err := l.finish()
		if err == nil {
			continue
		}
		for _, e := range err.(*Errors).List {
			for _, bad := range []string{"unknown key", "expected ", "YAML syntax", "invalid duration", "invalid size", "not set"} {
				if strings.Contains(e.Msg, bad) {
					t.Errorf("example of %s: %v", s.key, e)
				}
			}
		}
	}
}
