package config

import (
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"

	"golang.org/x/net/http/httpguts"
)

func TestCheckPathPattern(t *testing.T) {
	tests := []struct {
		in  string
		err string // substring; "" for valid
	}{
		{in: "/"},
		{in: "/api"},
		{in: "/api/"},
		{in: "/api/*"},
		{in: "/*"},
		{in: "/posts/{id}"},
		{in: "/u/{user_id}/posts/{post2}"},
		{in: "/files/{name}/*"},
		{in: "/a.b/c-d/~e"},
		{in: "", err: "is required"},
		{in: "api", err: "must start with /"},
		{in: "/a//b", err: "empty segment"},
		{in: "/a/./b", err: "dot segment"},
		{in: "/a/..", err: "dot segment"},
		{in: "/a/*/b", err: "only allowed at the end"},
		{in: "/a*", err: "whole segment"},
		{in: "/a/{id", err: "whole segment"},
		{in: "/a/id}", err: "whole segment"},
		{in: "/a/x{id}", err: "whole segment"},
		{in: "/a/{}", err: "whole segment"},
		{in: "/a/{1x}", err: "invalid parameter name"},
		{in: "/a/{x-y}", err: "invalid parameter name"},
		{in: "/{id}/{id}", err: "duplicate parameter"},
		{in: "/a?b", err: "query"},
		{in: "/a#b", err: "fragment"},
		{in: "/a b", err: "spaces"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			err := checkPathPattern(tt.in)
			if tt.err == "" && err != nil || tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)) {
				t.Errorf("checkPathPattern(%q) = %v, want %q", tt.in, err, tt.err)
			}
		})
	}
}

func TestPathParams(t *testing.T) {
	params, prefix := PathParams("/u/{user}/p/{id}/*")
	if !reflect.DeepEqual(params, []string{"user", "id"}) || !prefix {
		t.Errorf("got %v %v", params, prefix)
	}
	if params, prefix := PathParams("/static"); params != nil || prefix {
		t.Errorf("got %v %v", params, prefix)
	}
}

func TestNormalizePattern(t *testing.T) {
	if a, b := normalizePattern("/a/{id}/b"), normalizePattern("/a/{x}/b"); a != b {
		t.Errorf("%q != %q", a, b)
	}
	if normalizePattern("/a/b") == normalizePattern("/a/{b}") {
		t.Error("a literal and a parameter segment normalized alike")
	}
}

func TestCheckHost(t *testing.T) {
	for _, ok := range []string{"api.example.com", "API.Example.COM", "*.example.com", "localhost", "a-b.c_d.example"} {
		if err := checkHost(ok); err != nil {
			t.Errorf("checkHost(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", "*.", "*", "*.*.a", "a..b", ".a", "a.", "a:80", "a b", "[::1]", strings.Repeat("a", 64) + ".com"} {
		if err := checkHost(bad); err == nil {
			t.Errorf("checkHost(%q) accepted", bad)
		}
	}
}

func TestCheckFieldPath(t *testing.T) {
	for _, ok := range []string{"a", "a.b", "items[]", "items[].id", "[].id", "[]", "a[][].b", "a-b.c_d", "$meta.x"} {
		if err := checkFieldPath(ok); err != nil {
			t.Errorf("checkFieldPath(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", ".", "a.", ".a", "a..b", "a.[]", "a[0]", "a[", "a]b", "a b", "a{b}", `a"b`, "a[]x"} {
		if err := checkFieldPath(bad); err == nil {
			t.Errorf("checkFieldPath(%q) accepted", bad)
		}
	}
}

func TestTemplateRefs(t *testing.T) {
	tests := []struct {
		in   string
		want []string
		err  bool
	}{
		{in: "/plain"},
		{in: "/u/{id}", want: []string{"id"}},
		{in: "/u/{claims.sub}?x={query.x}&{header.X-A}", want: []string{"claims.sub", "query.x", "header.X-A"}},
		{in: "/{a}{b}", want: []string{"a", "b"}},
		{in: "/{}", want: []string{""}},
		{in: "/{a", err: true},
		{in: "/a}", err: true},
		{in: "/{a{b}}", err: true},
	}
	for _, tt := range tests {
		got, _, err := templateRefs(tt.in)
		if (err != nil) != tt.err || !tt.err && !slices.Equal(got, tt.want) {
			t.Errorf("templateRefs(%q) = %q, %v; want %q, error %v", tt.in, got, err, tt.want, tt.err)
		}
	}
}

func TestCheckKeyExpr(t *testing.T) {
	for _, ok := range []string{"ip", "consumer", "route", "global", "header:X-User", "claim:sub", "ip+route", "claim:org+claim:sub+route"} {
		if err := checkKeyExpr(ok); err != nil {
			t.Errorf("checkKeyExpr(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", "user", "ip+", "+ip", "ip+ip", "header:", "header:a b", "claim:", "cookie:sid", "IP"} {
		if err := checkKeyExpr(bad); err == nil {
			t.Errorf("checkKeyExpr(%q) accepted", bad)
		}
	}
	if err := checkKeyPart("consumer", false); err == nil {
		t.Error("hash_key accepted consumer")
	}
}

func TestTokens(t *testing.T) {
	for _, ok := range []string{"GET", "PROPFIND", "M-SEARCH"} {
		if !isMethod(ok) {
			t.Errorf("isMethod(%q) = false", ok)
		}
	}
	for _, bad := range []string{"", "get", "Get", "GE T", "GET1"} {
		if isMethod(bad) {
			t.Errorf("isMethod(%q) = true", bad)
		}
	}
	for _, ok := range []string{"X-Api-Key", "Authorization", "x_y", "A!#$%&'*+-.^_`|~"} {
		if !httpguts.ValidHeaderFieldName(ok) {
			t.Errorf("httpguts.ValidHeaderFieldName(%q) = false", ok)
		}
	}
	for _, bad := range []string{"", "a b", "a:b", "(x)", "é"} {
		if httpguts.ValidHeaderFieldName(bad) {
			t.Errorf("httpguts.ValidHeaderFieldName(%q) = true", bad)
		}
	}
}

// TestWhereTableReleasesConfigs checks that the position table does not keep
// loaded configs alive: after a config is collected its entry goes.
func TestWhereTableReleasesConfigs(t *testing.T) {
	count := func() int {
		n := 0
		positionTable.Range(func(any, any) bool { n++; return true })
		return n
	}
	before := count()
	for range 10 {
		if _, err := LoadBytes("gc.yaml", []byte("version: 1\n"+minimalRoute)); err != nil {
			t.Fatal(err)
		}
	}
	// Cleanups run on a runtime goroutine after collection; give them a
	// bounded number of GC cycles rather than a sleep.
	for i := 0; i < 100 && count() > before; i++ {
		runtime.GC()
		runtime.Gosched()
	}
	if n := count(); n > before {
		t.Errorf("%d position tables left after GC, want at most %d", n, before)
	}
}

func TestTooDeep(t *testing.T) {
	tests := []struct {
		in   string
		deep bool
		line int
	}{
		{in: "a: [1, {b: [2]}]\n"},
		{in: "a: " + strings.Repeat("[", 128) + strings.Repeat("]", 128)},
		{in: "a: 1\nb: " + strings.Repeat("[", 129), deep: true, line: 2},
		{in: "a: \"" + strings.Repeat("[", 500) + "\"\nb: 1\n"},
		{in: "a: '" + strings.Repeat("{", 500) + "'\n"},
		{in: "# " + strings.Repeat("[", 500) + "\nb: [1]\n"},
		{in: "a: \"x\\\"" + strings.Repeat("[", 500) + "\"\n"},
		{in: "a: it's " + strings.Repeat("[", 129), deep: true, line: 1},
	}
	for i, tt := range tests {
		line, _, deep := tooDeep([]byte(tt.in))
		if deep != tt.deep || deep && line != tt.line {
			t.Errorf("case %d: tooDeep = line %d, %v; want line %d, %v", i, line, deep, tt.line, tt.deep)
		}
	}
	_, err := LoadBytes("deep.yaml", []byte("version: 1\nserver: "+strings.Repeat("{a: ", 20000)+"1"+strings.Repeat("}", 20000)+"\n"))
	if err == nil || !strings.Contains(err.Error(), "deep.yaml:2:") || !strings.Contains(err.Error(), "nested deeper than 128") {
		t.Errorf("err = %v", err)
	}
}
