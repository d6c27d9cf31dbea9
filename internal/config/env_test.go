package config

import (
	"strings"
	"testing"
)

func TestExpand(t *testing.T) {
	env := map[string]string{"HOST": "db", "PORT": "5432", "EMPTY": ""}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	tests := []struct {
		in, want string
		err      string // substring of the error, "" for none
	}{
		{in: "plain", want: "plain"},
		{in: "", want: ""},
		{in: "${HOST}", want: "db"},
		{in: "${HOST}:${PORT}", want: "db:5432"},
		{in: "redis://${HOST}:${PORT}/0", want: "redis://db:5432/0"},
		{in: "${MISSING:-fallback}", want: "fallback"},
		{in: "${EMPTY:-fallback}", want: "fallback"},
		{in: "${EMPTY}", want: ""},
		{in: "${HOST:-x}", want: "db"},
		{in: "${MISSING:-}", want: ""},
		{in: "${MISSING:-a:-b}", want: "a:-b"},
		{in: "$$", want: "$"},
		{in: "$${HOST}", want: "${HOST}"},
		{in: "$$$${HOST}", want: "$${HOST}"},
		{in: "cost $5", want: "cost $5"},
		{in: "end$", want: "end$"},
		{in: "^a+$", want: "^a+$"},
		{in: "$HOST", want: "$HOST"},
		{in: "${MISSING:-pa$$word}", want: "pa$word"},
		{in: "${HOST:-pa$$word}", want: "db"},
		{in: "${MISSING:-cost $5}", want: "cost $5"},
		{in: "${MISSING:-{x}}", want: "{x}"},
		{in: "${MISSING:-$${HOST}}", want: "${HOST}"},
		{in: "${MISSING:-${HOST}}", err: "inside the default of ${MISSING:-...} is not supported"},
		{in: "${HOST:-${PORT}}", err: "inside the default of ${HOST:-...} is not supported"},
		{in: "${MISSING}", err: "environment variable MISSING is not set"},
		{in: "x ${HOST", err: "unterminated ${"},
		{in: "${}", err: "invalid environment variable name"},
		{in: "${1X}", err: "invalid environment variable name"},
		{in: "${A-B}", err: "invalid environment variable name"},
		{in: "${HOST:=x}", err: "invalid environment variable name"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := expand(tt.in, lookup)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("expand(%q) = %q, %v; want error containing %q", tt.in, got, err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("expand(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
			}
		})
	}
}

// TestExpandNoDollarAllocs guards the common case: a value without $ costs
// nothing.
func TestExpandNoDollarAllocs(t *testing.T) {
	lookup := func(string) (string, bool) { return "", false }
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := expand("http://127.0.0.1:7001", lookup); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("expand without $ allocates %v times", allocs)
	}
}

// TestEnvOnlyInValues checks that keys are never expanded and that an
// expanded value cannot inject YAML structure.
func TestEnvOnlyInValues(t *testing.T) {
	env := map[string]string{"INJECT": "x\nroutes: []", "LEVEL": "debug"}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	l := newLoader(lookup, 0)
	l.file("env.yaml", []byte(`version: 1
logging:
  level: ${LEVEL}
admin:
  token: ${INJECT}
upstreams:
  ${LEVEL}:
    targets: [{url: "http://127.0.0.1:1"}]
`+minimalRoute[len("upstreams:\n  app:\n    targets: [{url: \"http://127.0.0.1:7001\"}]\n"):]))
	_, err := l.finish()
	if err == nil {
		t.Fatal("want an error: the route's upstream app is undefined and the key ${LEVEL} is not expanded")
	}
	if !strings.Contains(err.Error(), `upstreams.${LEVEL}: invalid upstream name "${LEVEL}"`) {
		t.Errorf("key was expanded or not reported:\n%v", err)
	}
	if l.cfg.Admin.Token != "x\nroutes: []" || l.cfg.Logging.Level != "debug" {
		t.Errorf("token %q, level %q", l.cfg.Admin.Token, l.cfg.Logging.Level)
	}
	if len(l.cfg.Routes) != 1 {
		t.Errorf("routes = %d, want 1 (an expanded value injected structure)", len(l.cfg.Routes))
	}
}

// FuzzExpand checks that expansion never panics, leaves $-free text alone,
// and that escaping any text with $$ gives it back unchanged.
func FuzzExpand(f *testing.F) {
	for _, s := range []string{"", "plain", "${A}", "${A:-b}", "$$", "$${A}", "${", "${A", "$", "a$b${C:-}d"} {
		f.Add(s)
	}
	lookup := func(k string) (string, bool) {
		if k == "A" {
			return "value-of-a", true
		}
		return "", false
	}
	f.Fuzz(func(t *testing.T, s string) {
		out, err := expand(s, lookup)
		if !strings.Contains(s, "$") && (err != nil || out != s) {
			t.Fatalf("expand(%q) = %q, %v; want it unchanged", s, out, err)
		}
		escaped := strings.ReplaceAll(s, "$", "$$")
		back, err := expand(escaped, lookup)
		if err != nil || back != s {
			t.Fatalf("expand(%q) = %q, %v; want %q", escaped, back, err, s)
		}
	})
}
