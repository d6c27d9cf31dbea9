package auth

import (
	"encoding/json"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// jsonCases are inputs whose treatment by encoding/json the token rules
// depend on; every one must be decoded, or refused, exactly as it does.
var jsonCases = []string{
	`{}`, ` {"a":1} `, "\t\r\n{\"a\":1}\n", `{"a":1}x`, `{"a":1}{}`, `{"a":1`, `{"a":1,}`, `{,"a":1}`, `{"a" 1}`,
	`{"a":}`, `{a:1}`, `{'a':1}`, `{"a":1 "b":2}`, `null`, `[]`, `[{"a":1}]`, `"x"`, `1`, `true`, ``, ` `,
	"\xef\xbb\xbf{}", `{"a":[]}`, `{"a":{}}`, `{"a":[1,]}`, `{"a":[,1]}`, `{"a":[1 2]}`,
	// duplicate names: the last wins, whatever the types
	`{"exp":"soon","exp":1}`, `{"exp":1,"exp":"soon"}`, `{"aud":["x"],"aud":"portico"}`, `{"a":{"b":1,"b":[2]}}`,
	// literals
	`{"a":true,"b":false,"c":null}`, `{"a":tru}`, `{"a":nul}`, `{"a":True}`, `{"a":truex}`, `{"a":nullnull}`,
	// numbers
	`{"a":0,"b":-0,"c":1.5,"d":-1e3,"e":1E+3,"f":2e-3,"g":1764320000,"h":123456789012345678901234567890}`,
	`{"a":01}`, `{"a":-}`, `{"a":1.}`, `{"a":.5}`, `{"a":+1}`, `{"a":1e}`, `{"a":1e+}`, `{"a":0x10}`, `{"a":NaN}`,
	`{"a":Infinity}`, `{"a":-Infinity}`, `{"a":1e400}`, `{"a":-1e400}`, `{"a":1e-400}`, `{"a":[1e309]}`, `{"a":1_000}`,
	`{"a":--1}`, `{"a":-01}`, `{"a":1.5e3.2}`,
	// strings and escapes
	`{"a":"plain","b":"","c":"\"\\\/\b\f\n\r\t"}`, `{"\u0061lg":"x"}`, `{"a":"\u00e9\u4e2d"}`, `{"a":"\ud83d\ude00"}`,
	`{"a":"\ud83d"}`, `{"a":"\ude00"}`, `{"a":"\ud83dx"}`, `{"a":"\ud83d\u0041"}`, `{"a":"\ud83d\ud83d\ude00"}`,
	`{"a":"\ud83d\uzzzz"}`, `{"a":"\u12"}`, `{"a":"\u12g4"}`, `{"a":"\x"}`, `{"a":"\'"}`, `{"a":"\U0041"}`, `{"a":"\`,
	`{"a":"x`, `{"a":"\u0000"}`, "{\"a\":\"\x00\"}", "{\"a\":\"\x1f\"}", "{\"a\":\"\x7f\"}", "{\"a\":\"tab\there\"}",
	"{\"a\":\"\xff\"}", "{\"a\":\"x\xffy\xfe\"}", "{\"\xff\":1}", "{\"a\":\"\xed\xa0\x80\"}", "{\"a\":\"\xc3\"}",
	"{\"a\":\"\xef\xbf\xbd\"}", "{\"a\":\"\xe2\x82\"}", "{\"a\":\"\\n\xff\"}", "{\"a\":\"\xf0\x9f\x98\x80\"}",
	// nesting
	`{"a":[[[[[[1]]]]]],"b":{"c":{"d":{}}}}`,
	"{\"a\":" + strings.Repeat("[", maxJSONDepth-1) + strings.Repeat("]", maxJSONDepth-1) + "}",
	"{\"a\":" + strings.Repeat("[", maxJSONDepth) + strings.Repeat("]", maxJSONDepth) + "}",
	"{\"a\":" + strings.Repeat(`{"a":`, maxJSONDepth-1) + "1" + strings.Repeat("}", maxJSONDepth-1) + "}",
	"{\"a\":" + strings.Repeat(`{"a":`, maxJSONDepth) + "1" + strings.Repeat("}", maxJSONDepth) + "}",
	// a realistic payload
	`{"iss":"https://id.example.com","aud":["portico","other"],"sub":"user-42","scope":"posts:read feed:read",` +
		`"scp":["a","b"],"iat":1764309600,"nbf":1764309600,"exp":1764313200,"realm_access":{"roles":["x"]},"n":null}`,
}

// TestJSONObject checks decodeJSONObject against encoding/json.
func TestJSONObject(t *testing.T) {
	for _, in := range jsonCases {
		checkJSONObject(t, in)
		checkJOSEHeader(t, in)
	}
}

// FuzzJSONObject checks that decodeJSONObject accepts what json.Unmarshal
// into a map[string]any accepts and yields the same map, and that
// decodeJOSEHeader agrees with json.Unmarshal into a map of raw values.
func FuzzJSONObject(f *testing.F) {
	for _, in := range jsonCases {
		if len(in) < 1000 {
			f.Add(in)
		}
	}
	f.Fuzz(func(t *testing.T, in string) {
		checkJSONObject(t, in)
		checkJOSEHeader(t, in)
	})
}

func checkJSONObject(t *testing.T, in string) {
	t.Helper()
	var want map[string]any
	err := json.Unmarshal([]byte(in), &want)
	wantOK := err == nil && want != nil
	got, ok := decodeJSONObject(in)
	if ok != wantOK {
		t.Fatalf("%s: ok = %v, encoding/json: %v (%v)", short(in), ok, wantOK, err)
	}
	if ok && !reflect.DeepEqual(numbersAsFloats(t, got), want) {
		t.Fatalf("%s: got %#v, encoding/json %#v", short(in), got, want)
	}
}

// numbersAsFloats returns v with each json.Number as the float64
// encoding/json gives, after checking it is one the decoder must keep as
// text: an integer whose float64 does not give its digits back.
func numbersAsFloats(t *testing.T, v any) any {
	t.Helper()
	switch x := v.(type) {
	case json.Number:
		f, err := strconv.ParseFloat(string(x), 64)
		if err != nil || strings.ContainsAny(string(x), ".eE") || strconv.FormatFloat(f, 'f', -1, 64) == string(x) {
			t.Fatalf("json.Number %s: the float64 %v would do", x, f)
		}
		return f
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[k] = numbersAsFloats(t, e)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = numbersAsFloats(t, e)
		}
		return out
	}
	return v
}

func checkJOSEHeader(t *testing.T, in string) {
	t.Helper()
	var want map[string]json.RawMessage
	err := json.Unmarshal([]byte(in), &want)
	wantOK := err == nil && want != nil
	got, ok := decodeJOSEHeader(in)
	if ok != wantOK {
		t.Fatalf("%s: header ok = %v, encoding/json: %v (%v)", short(in), ok, wantOK, err)
	}
	if !ok {
		return
	}
	_, crit := want["crit"]
	if got.crit != crit || got.alg != string(want["alg"]) || got.kid != string(want["kid"]) {
		t.Fatalf("%s: header %+v, encoding/json alg %s kid %s crit %v", short(in), got, want["alg"], want["kid"], crit)
	}
	for _, raw := range []string{got.alg, got.kid} {
		if raw == "" {
			continue
		}
		var s string
		err := json.Unmarshal([]byte(raw), &s)
		if hs, ok := headerString(raw); ok != (err == nil) || hs != s {
			t.Fatalf("headerString(%s) = %q, %v; encoding/json %q, %v", raw, hs, ok, s, err)
		}
	}
}

func short(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// TestJSONStringsShareInput pins down the point of the decoder: names and
// plain strings are slices of the input, not copies.
func TestJSONStringsShareInput(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are not meaningful under the race detector")
	}
	in := `{"sub":"user-42","scope":"a b"}`
	allocs := testing.AllocsPerRun(100, func() {
		if m, ok := decodeJSONObject(in); !ok || m["sub"] != "user-42" {
			t.Fatal("decode")
		}
	})
	// The map (two allocations) and one interface box per string value.
	if allocs > 4 {
		t.Fatalf("%v allocations, want at most 4", allocs)
	}
}
