package aggregate

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func shapeString(t testing.TB, sp shapeSpec, in string) (string, error) {
	t.Helper()
	sh, err := compileShape(sp)
	if err != nil {
		t.Fatalf("compile %+v: %v", sp, err)
	}
	out, err := sh.apply(&scanner{}, []byte(in), nil)
	return string(out), err
}

func TestShape(t *testing.T) {
	t.Parallel()
	feed := `{"items":[` +
		`{"id":1234567890123456789,"text":"hi","author":{"id":7,"name":"Ann","avatar_url":"a"},"tags":["x","y"],"likes":3},` +
		`{"id":9007199254740993,"text":"yo","author":{"id":8,"name":"Bob","avatar_url":"b"},"tags":[],"likes":0}` +
		`],"next_cursor":"c2"}`
	tests := []struct {
		name string
		sp   shapeSpec
		in   string
		want string
	}{
		{"none keeps bytes", shapeSpec{}, ` {"b":1, "a":[1.50e3]} `, `{"b":1, "a":[1.50e3]}`},
		{"fields top level keeps input order", shapeSpec{Fields: []string{"name", "id"}},
			`{"id":1,"bio":"x","name":"n","loc":{"a":1}}`, `{"id":1,"name":"n"}`},
		{"fields missing key", shapeSpec{Fields: []string{"nope"}}, `{"id":1}`, `{}`},
		{"fields in arrays with 64-bit ids", shapeSpec{Fields: []string{"items[].id", "items[].author.name"}}, feed,
			`{"items":[{"id":1234567890123456789,"author":{"name":"Ann"}},{"id":9007199254740993,"author":{"name":"Bob"}}]}`},
		{"fields nested arrays items[].tags[]", shapeSpec{Fields: []string{"items[].tags[]"}}, feed,
			`{"items":[{"tags":["x","y"]},{"tags":[]}]}`},
		{"fields a.b[].c", shapeSpec{Fields: []string{"a.b[].c"}},
			`{"a":{"b":[{"c":1,"d":2},{"d":3},{"c":[4]}],"z":0},"q":1}`, `{"a":{"b":[{"c":1},{},{"c":[4]}]}}`},
		{"fields wrong type is omitted, null kept", shapeSpec{Fields: []string{"a.b", "c[].d"}},
			`{"a":"secret","c":[{"d":1},"s",null,5,{"d":2,"e":3}]}`, `{"c":[{"d":1},null,{"d":2}]}`},
		{"fields whole value wins over deeper path", shapeSpec{Fields: []string{"a", "a.b"}},
			`{"a":{"b":1,"c":2},"d":3}`, `{"a":{"b":1,"c":2}}`},
		{"fields root array", shapeSpec{Fields: []string{"[].id"}},
			`[{"id":1,"x":2},{"id":3}]`, `[{"id":1},{"id":3}]`},
		{"fields nested arrays of arrays", shapeSpec{Fields: []string{"m[][].v"}},
			`{"m":[[{"v":1,"w":2}],[{"v":3}]]}`, `{"m":[[{"v":1}],[{"v":3}]]}`},
		{"drop top level", shapeSpec{Drop: []string{"tracking"}},
			`{"slots":[1,2],"tracking":{"pixel":"p"},"z":true}`, `{"slots":[1,2],"z":true}`},
		{"drop inside arrays", shapeSpec{Drop: []string{"items[].author.avatar_url", "items[].tags", "next_cursor"}}, feed,
			`{"items":[{"id":1234567890123456789,"text":"hi","author":{"id":7,"name":"Ann"},"likes":3},{"id":9007199254740993,"text":"yo","author":{"id":8,"name":"Bob"},"likes":0}]}`},
		{"drop wins over fields", shapeSpec{Fields: []string{"a", "b"}, Drop: []string{"b", "a.x"}},
			`{"a":{"x":1,"y":2},"b":3,"c":4}`, `{"a":{"y":2}}`},
		{"rename top level", shapeSpec{Rename: map[string]string{"text": "body"}},
			`{"id":1,"text":"t"}`, `{"id":1,"body":"t"}`},
		{"rename inside arrays", shapeSpec{Fields: []string{"items[].id", "items[].text"}, Rename: map[string]string{"items[].text": "body"}}, feed,
			`{"items":[{"id":1234567890123456789,"body":"hi"},{"id":9007199254740993,"body":"yo"}]}`},
		{"rename never duplicates a key", shapeSpec{Rename: map[string]string{"a": "b"}},
			`{"a":1,"b":2,"c":3}`, `{"b":1,"c":3}`},
		{"rename to a name needing escapes", shapeSpec{Rename: map[string]string{"a": `q"x`}},
			`{"a":1}`, `{"q\"x":1}`},
		{"escaped keys match", shapeSpec{Fields: []string{"name"}},
			`{"n\u0061me":"x","other":1}`, `{"n\u0061me":"x"}`},
		{"pick scalar", shapeSpec{Pick: "count"}, `{"count":12345678901234567890,"x":1}`, `12345678901234567890`},
		{"pick object", shapeSpec{Pick: "settings"}, `{"a":1,"settings":{"dark":true,"lang":"en"}}`, `{"dark":true,"lang":"en"}`},
		{"pick missing is null", shapeSpec{Pick: "count"}, `{"x":1}`, `null`},
		{"pick deep", shapeSpec{Pick: "a.b.c"}, `{"a":{"b":{"c":"d"}}}`, `"d"`},
		{"pick through arrays", shapeSpec{Pick: "items[].author.name"}, feed, `["Ann","Bob"]`},
		{"pick after rename uses the new name", shapeSpec{Rename: map[string]string{"count": "n"}, Pick: "n"},
			`{"count":3}`, `3`},
		{"pick object shaped by fields", shapeSpec{Fields: []string{"user.name", "user.id"}, Pick: "user"},
			`{"user":{"id":1,"name":"n","bio":"b"},"x":2}`, `{"id":1,"name":"n"}`},
		{"pick array keeps fields inside", shapeSpec{Fields: []string{"items[].id"}, Pick: "items"}, feed,
			`[{"id":1234567890123456789},{"id":9007199254740993}]`},
		{"pick from non-object is null", shapeSpec{Pick: "a.b"}, `{"a":[1]}`, `null`},
		{"pick through a root array", shapeSpec{Pick: "[].id"}, `[{"id":1},{"x":2},{"id":{"a":3}}]`, `[1,null,{"a":3}]`},
		{"pick the root array shaped", shapeSpec{Fields: []string{"[].id"}, Pick: "[]"}, `[{"id":1,"x":2},{"id":3}]`, `[{"id":1},{"id":3}]`},
		{"pick into renamed array elements", shapeSpec{Rename: map[string]string{"items[].text": "body"}, Pick: "items[].body"}, feed, `["hi","yo"]`},
		{"pick keeps drop below it", shapeSpec{Drop: []string{"user.secret"}, Pick: "user"}, `{"user":{"id":1,"secret":"s"}}`, `{"id":1}`},
		{"drop missing path is harmless", shapeSpec{Drop: []string{"a.b.c"}}, `{"a":{"b":7},"d":[]}`, `{"a":{"b":7},"d":[]}`},
		{"drop of a key meets an array: nothing dropped (as documented)", shapeSpec{Drop: []string{"items.secret"}}, `{"items":[{"secret":1}]}`, `{"items":[{"secret":1}]}`},
		{"fields empty object and array", shapeSpec{Fields: []string{"a.b", "c[].d"}}, `{"a":{},"c":[],"e":1}`, `{"a":{},"c":[]}`},
		{"whitespace and unicode kept in values", shapeSpec{Fields: []string{"s"}},
			"{\n \"s\" : \"h\\u00e9 \\ud83d\\ude00 ✓\" ,\"t\":1}", `{"s":"h\u00e9 \ud83d\ude00 ✓"}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := shapeString(t, tc.sp, tc.in)
			if err != nil {
				t.Fatalf("shape: %v", err)
			}
			if got != tc.want {
				t.Fatalf("got  %s\nwant %s", got, tc.want)
			}
			if !json.Valid([]byte(got)) {
				t.Fatalf("output is not valid JSON: %s", got)
			}
		})
	}
}

func TestShapeErrors(t *testing.T) {
	t.Parallel()
	deep := strings.Repeat(`{"a":`, 65) + "1" + strings.Repeat("}", 65)
	ok64 := strings.Repeat(`[`, 64) + strings.Repeat("]", 64)
	tests := []struct {
		name    string
		sp      shapeSpec
		in      string
		wantErr error // nil: any syntax error
		ok      bool
	}{
		{"too deep, no shaping", shapeSpec{}, deep, errTooDeep, false},
		{"too deep, shaping", shapeSpec{Fields: []string{"a"}}, deep, errTooDeep, false},
		{"too deep, dropped value still counted", shapeSpec{Drop: []string{"a"}}, deep, errTooDeep, false},
		{"64 levels pass", shapeSpec{}, ok64, nil, true},
		{"trailing data", shapeSpec{}, `{} {}`, nil, false},
		{"truncated", shapeSpec{Fields: []string{"a"}}, `{"a":[1,2`, nil, false},
		{"bad number", shapeSpec{}, `[01]`, nil, false},
		{"bad literal", shapeSpec{}, `[tru]`, nil, false},
		{"control char", shapeSpec{}, "[\"a\x01\"]", nil, false},
		{"bad escape", shapeSpec{}, `["\x"]`, nil, false},
		{"missing colon", shapeSpec{Drop: []string{"a"}}, `{"a" 1}`, nil, false},
		{"empty", shapeSpec{}, ``, nil, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := shapeString(t, tc.sp, tc.in)
			if tc.ok {
				if err != nil {
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("no error")
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("error %v, want %v", err, tc.wantErr)
			}
			var se *syntaxError
			if tc.wantErr == nil && !errors.As(err, &se) {
				t.Fatalf("error %v is not a syntax error", err)
			}
		})
	}
}

func TestCompileShapeErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		sp   shapeSpec
		want string
	}{
		{"empty path", shapeSpec{Fields: []string{""}}, "empty field path"},
		{"empty segment", shapeSpec{Fields: []string{"a..b"}}, "empty key"},
		{"bad brackets", shapeSpec{Fields: []string{"a[0].b"}}, `only "[]"`},
		{"conflicting markers", shapeSpec{Fields: []string{"a[].b", "a.c"}}, "disagrees"},
		{"drop whole body", shapeSpec{Drop: []string{"[]"}}, "whole body"},
		{"rename to path", shapeSpec{Rename: map[string]string{"a": "b.c"}}, "one non-empty key"},
		{"pick not in fields", shapeSpec{Fields: []string{"a"}, Pick: "b"}, "not among fields"},
		{"pick dropped", shapeSpec{Drop: []string{"a"}, Pick: "a"}, "removed by drop"},
		{"pick old name", shapeSpec{Rename: map[string]string{"a": "b"}, Pick: "a"}, "was renamed"},
		{"pick markers disagree", shapeSpec{Fields: []string{"a[].b"}, Pick: "a.b"}, "disagrees"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := compileShape(tc.sp)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestLookupScalar(t *testing.T) {
	t.Parallel()
	body := []byte(`{"id":12345678901234567890,"name":"a/b?c","flags":{"on":true},"n":null,"arr":[1],"esc":"x\u0041"}`)
	tests := []struct {
		path string
		want string
		ok   bool
	}{
		{"id", "12345678901234567890", true},
		{"name", "a/b?c", true},
		{"flags.on", "true", true},
		{"esc", "xA", true},
		{"n", "", false},
		{"arr", "", false},
		{"flags", "", false},
		{"missing", "", false},
		{"name.x", "", false},
	}
	for _, tc := range tests {
		t.Run(tc.path, func(t *testing.T) {
			t.Parallel()
			got, err := lookupScalar(&scanner{}, body, strings.Split(tc.path, "."))
			if (err == nil) != tc.ok {
				t.Fatalf("err = %v, want ok=%v", err, tc.ok)
			}
			if string(got) != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestIsJSON(t *testing.T) {
	t.Parallel()
	for ct, want := range map[string]bool{
		"": true, "application/json": true, "Application/JSON; charset=utf-8": true,
		"application/problem+json": true, "application/vnd.api+json ; x=1": true,
		"text/plain": false, "text/html; charset=utf-8": false, "+json": false, "application/jsonp": false,
	} {
		if got := isJSON(ct); got != want {
			t.Errorf("isJSON(%q) = %v, want %v", ct, got, want)
		}
	}
}
