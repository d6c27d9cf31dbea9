package aggregate

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/portico-gw/portico/internal/identity"
	"github.com/portico-gw/portico/internal/reqctx"
)

func FuzzFieldPath(f *testing.F) {
	for _, s := range []string{"a", "items[].author.name", "[].id", "m[][].v", "a..b", "a[0]", "[]", "a[]x", ".", "a.[].b"} {
		f.Add(s)
	}
	doc := []byte(`{"a":{"b":[{"c":1}]},"items":[{"author":{"name":"n"}}],"m":[[{"v":1}]]}`)
	f.Fuzz(func(t *testing.T, s string) {
		segs, err := parsePath(s)
		if err != nil {
			return
		}
		// Formatting and parsing again gives the same path.
		again, err := parsePath(formatPath(segs))
		if err != nil || formatPath(again) != formatPath(segs) {
			t.Fatalf("%q -> %q does not round trip: %v", s, formatPath(segs), err)
		}
		for _, sp := range []shapeSpec{{Fields: []string{s}}, {Drop: []string{s}}, {Rename: map[string]string{s: "z"}}, {Pick: s}} {
			sh, err := compileShape(sp)
			if err != nil {
				continue
			}
			out, err := sh.apply(&scanner{}, doc, nil)
			if err != nil || !json.Valid(out) {
				t.Fatalf("%+v on a valid document: %v, output %s", sp, err, out)
			}
		}
	})
}

func FuzzTemplate(f *testing.F) {
	for _, s := range []string{"/users/{claims.sub}", "/feed/{id}?limit=20", "/s?u={user.id}&q={query.q}", "/{header.X-A}/x", "/{", "/}", "/{}", "/a?b#c", "/%zz", "/géo|x/{query.q}"} {
		f.Add(s, "a/b?c&d=e f")
	}
	f.Fuzz(func(t *testing.T, s, v string) {
		tmpl, err := parseTemplate(s, "user")
		if err != nil {
			return
		}
		info := &reqctx.Info{Identity: &identity.Identity{Claims: map[string]any{}}}
		r := httptest.NewRequest("GET", "/", nil)
		q := url.Values{}
		dep := map[string]any{}
		for _, p := range tmpl.parts {
			switch p.src {
			case srcParam:
				info.Params = append(info.Params, reqctx.Param{Key: p.text, Value: v})
			case srcClaim:
				info.Identity.Claims[p.text] = v
			case srcQuery:
				q.Set(p.text, v)
			case srcHeader:
				r.Header[p.text] = []string{v}
			case srcHost:
				r.Host = v
			case srcDep:
				m := dep
				for _, k := range p.keys[:len(p.keys)-1] {
					next, ok := m[k].(map[string]any)
					if !ok {
						next = map[string]any{}
						m[k] = next
					}
					m = next
				}
				if _, taken := m[p.keys[len(p.keys)-1]]; !taken {
					m[p.keys[len(p.keys)-1]] = v
				}
			}
		}
		r.URL.RawQuery = q.Encode()
		body, _ := json.Marshal(dep)
		in := &Input{Request: r, Info: info, dep: &Result{Body: body}}
		out, err := tmpl.render(nil, in, &scanner{})
		if err != nil {
			return
		}
		// A value never adds a segment, a query or a fragment: the rendered
		// target has exactly the template's literal structure.
		lit := 0
		for _, p := range tmpl.parts {
			if p.src == srcLiteral {
				lit += strings.Count(p.text, "/") + strings.Count(p.text, "?") + strings.Count(p.text, "&")
			}
		}
		if got := strings.Count(string(out), "/") + strings.Count(string(out), "?") + strings.Count(string(out), "&"); got != lit {
			t.Fatalf("template %q with %q rendered %q: %d separators, template has %d", s, v, out, got, lit)
		}
		if _, err := url.ParseRequestURI(string(out)); err != nil {
			t.Fatalf("template %q with %q rendered an invalid target %q: %v", s, v, out, err)
		}
		// The path goes out as rendered: a URL whose escaped form it is
		// not would re-escape its decoded path, and a value's %2F would
		// become a '/'.
		path, _, _ := strings.Cut(string(out), "?")
		if p, err := url.PathUnescape(path); err == nil {
			if u := (&url.URL{Path: p, RawPath: path}); u.EscapedPath() != path && strings.Contains(path, "%") {
				t.Fatalf("template %q with %q rendered the path %q, sent as %q", s, v, path, u.EscapedPath())
			}
		}
	})
}

func FuzzShape(f *testing.F) {
	seeds := []string{
		`{"items":[{"id":1,"text":"t","author":{"name":"n"}}],"next":"x"}`,
		`[{"id":1},{"id":2}]`, `{"a":{"b":[{"c":1}]}}`, `"s"`, `12.5e3`, `null`,
		`{"a":"\u00e9\ud83d\ude00"}`, `{"a\udc00":"\ud83d","b":"\\ud800"}`, `{"a":[[[]]]}`, `{"a" 1}`, `[1,]`, `{"a":1,"r":2,"a":3}`,
	}
	for _, s := range seeds {
		f.Add([]byte(s), "items[].id", "items[].text", uint8(1|4))
		f.Add([]byte(s), "a.b[].c", "a", uint8(2|8))
		f.Add([]byte(s), "[].id", "[].id", uint8(1|8))
		f.Add([]byte(s), "a", "r", uint8(4))
	}
	// op bits: 1 fields [p1, p2]; 2 drop [p2]; 4 rename p1 -> "r"; 8 pick p2.
	f.Fuzz(func(t *testing.T, data []byte, p1, p2 string, op uint8) {
		var sp shapeSpec
		if op&1 != 0 {
			sp.Fields = []string{p1, p2}
		}
		if op&2 != 0 {
			sp.Drop = []string{p2}
		}
		if op&4 != 0 {
			sp.Rename = map[string]string{p1: "r"}
		}
		if op&8 != 0 {
			sp.Pick = p2
		}
		sh, err := compileShape(sp)
		if err != nil {
			return
		}
		out, err := sh.apply(&scanner{}, data, nil)
		if errors.Is(err, errLoneSurrogate) {
			// Replaced in a copy, as the endpoint does, the text shapes.
			data = bytes.Clone(data)
			replaceLoneSurrogates(data)
			out, err = sh.apply(&scanner{}, data, nil)
		}
		// encoding/json's Valid does not check UTF-8, which RFC 8259
		// section 8.1 requires and the scanner checks.
		valid := json.Valid(data) && utf8.Valid(data)
		if err == nil && !valid {
			t.Fatalf("accepted invalid JSON %q", data)
		}
		if !valid {
			return
		}
		if err != nil {
			if errors.Is(err, errTooDeep) {
				return
			}
			t.Fatalf("rejected valid JSON %q: %v", data, err)
		}
		if !json.Valid(out) {
			t.Fatalf("%+v on %q gave invalid JSON %q", sp, data, out)
		}
		// Nor may it hold what strict clients refuse (a lone surrogate).
		if _, err := (&scanner{}).validate(out); err != nil {
			t.Fatalf("%+v on %q gave %q: %v", sp, data, out, err)
		}
		// Shaping is idempotent for fields and drop alone: a second pass
		// changes nothing.
		if op&(4|8) == 0 {
			again, err := sh.apply(&scanner{}, out, nil)
			if err != nil || string(again) != string(out) {
				t.Fatalf("%+v not idempotent on %q: %q then %q (%v)", sp, data, out, again, err)
			}
		}
	})
}
