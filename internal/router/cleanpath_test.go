package router

import (
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/portico-gw/portico/internal/problem"
)

func TestCleanPath(t *testing.T) {
	tests := []struct {
		in, decoded, escaped string
	}{
		{"/", "/", "/"},
		{"/a/b", "/a/b", "/a/b"},
		{"/a/b/", "/a/b/", "/a/b/"},
		{"//a//b//", "/a/b/", "/a/b/"},
		{"//", "/", "/"},
		{"/a/./b", "/a/b", "/a/b"},
		{"/a/../b", "/b", "/b"},
		{"/../../a", "/a", "/a"},
		{"/a/b/..", "/a/", "/a/"},
		{"/a/b/.", "/a/b/", "/a/b/"},
		{"/a/..", "/", "/"},
		{"/a/%2e%2E/b", "/b", "/b"},
		{"/a/.%2e/b", "/b", "/b"},
		{"/a/%2E./b", "/b", "/b"},
		{"/a/%2e/b", "/a/b", "/a/b"},
		{"/a/%2e%2e%2e/b", "/a/.../b", "/a/%2e%2e%2e/b"},
		{"/a/.../b", "/a/.../b", "/a/.../b"},
		{"/.well-known/x", "/.well-known/x", "/.well-known/x"},
		{"/api/a%2Fb", "/api/a/b", "/api/a%2Fb"},
		{"/api/a%2fb/../c", "/api/c", "/api/c"},
		{"/api/a%2F..%2Fb", "/api/a/../b", "/api/a%2F..%2Fb"},
		{"/caf%C3%A9", "/café", "/caf%C3%A9"},
		{"/a%20b", "/a b", "/a%20b"},
		{"/a;b/c", "/a;b/c", "/a;b/c"},
		{"/a/..;b", "", ""}, // rejected below
		{`/a\..\b`, `/a\..\b`, `/a%5C..%5Cb`},
		{`/a\b`, `/a\b`, `/a%5Cb`},
		{"/a\"b", "/a\"b", "/a%22b"},
		{"/%41", "/A", "/%41"},
		{"/a/b/../../../c/./d//", "/c/d/", "/c/d/"},
		{"/a/it's(1)*!$", "/a/it's(1)*!$", "/a/it's(1)*!$"}, // sub-delimiters stay as sent
	}
	for _, tc := range tests {
		if tc.escaped == "" {
			continue
		}
		t.Run(tc.in, func(t *testing.T) {
			dec, esc, err := CleanPath(tc.in)
			if err != nil {
				t.Fatalf("CleanPath(%q): %v", tc.in, err)
			}
			if dec != tc.decoded || esc != tc.escaped {
				t.Fatalf("CleanPath(%q) = %q, %q; want %q, %q", tc.in, dec, esc, tc.decoded, tc.escaped)
			}
			// The escaped form survives net/url unchanged, so %2F stays encoded.
			u := &url.URL{}
			SetPath(u, dec, esc)
			if got := u.EscapedPath(); got != esc {
				t.Fatalf("EscapedPath after SetPath = %q, want %q", got, esc)
			}
		})
	}
}

func TestCleanPathRejects(t *testing.T) {
	for _, in := range []string{
		"", "a/b", "*", "/a%", "/a%2", "/a%zz", "/a%2g/b", "/a\x00b", "/a%00b",
		"/a/..;x/b", "/a/.;x", "/%2e%2e;jsessionid=1/admin",
	} {
		t.Run(in, func(t *testing.T) {
			_, _, err := CleanPath(in)
			if err == nil {
				t.Fatalf("CleanPath(%q) succeeded, want an error", in)
			}
			if !errors.Is(err, ErrInvalidPath) {
				t.Fatalf("error %v is not ErrInvalidPath", err)
			}
			var pe *problem.Error
			if !errors.As(err, &pe) || pe.Status != http.StatusBadRequest {
				t.Fatalf("error %v is not a 400 problem", err)
			}
		})
	}
}

func TestCleanPathNoAllocWhenClean(t *testing.T) {
	allocs := testing.AllocsPerRun(100, func() {
		_, _, _ = CleanPath("/api/v1/users/42/posts")
	})
	if allocs != 0 {
		t.Fatalf("CleanPath of a clean path allocates %v times", allocs)
	}
}

// checkCleanInvariants is shared by the fuzz target and the table above.
func checkCleanInvariants(t *testing.T, in string) {
	dec, esc, err := CleanPath(in)
	if err != nil {
		return
	}
	if !strings.HasPrefix(esc, "/") || !strings.HasPrefix(dec, "/") {
		t.Fatalf("CleanPath(%q) = %q, %q: not absolute", in, dec, esc)
	}
	if strings.Contains(esc, "//") {
		t.Fatalf("CleanPath(%q) = %q: has //", in, esc)
	}
	for _, seg := range strings.Split(esc[1:], "/") {
		if dotKind(seg) != 0 {
			t.Fatalf("CleanPath(%q) = %q: dot segment %q", in, esc, seg)
		}
	}
	dec2, esc2, err := CleanPath(esc)
	if err != nil || dec2 != dec || esc2 != esc {
		t.Fatalf("not idempotent: CleanPath(%q) = %q, %q, %v; first pass %q, %q", esc, dec2, esc2, err, dec, esc)
	}
	u, err := url.PathUnescape(esc)
	if err != nil || u != dec {
		t.Fatalf("decode(%q) = %q, %v; want %q", esc, u, err, dec)
	}
	if strings.HasSuffix(in, "/") && !strings.HasSuffix(esc, "/") {
		t.Fatalf("CleanPath(%q) = %q lost the trailing slash", in, esc)
	}
}

func FuzzCleanPath(f *testing.F) {
	for _, s := range []string{
		"/", "/a/../b", "/%2e%2E/x", "//a//", "/a%2Fb/..", "/a;b/..;c", `/a\..\b`,
		"/a/b/./", "/%zz", "/café", "/a%25/b",
	} {
		f.Add(s)
	}
	f.Fuzz(checkCleanInvariants)
}

func TestCleanPathAllocations(t *testing.T) {
	for _, tc := range []struct {
		path string
		max  float64
	}{
		{"/api/v1/users/42/posts", 0},
		{"/.well-known/openid-configuration", 0},
		{"/a/.hidden/..x/...", 0},
		{"/caf%C3%A9/a%2Fb", 1}, // the decoded copy only
	} {
		allocs := testing.AllocsPerRun(100, func() { _, _, _ = CleanPath(tc.path) })
		if allocs > tc.max {
			t.Errorf("CleanPath(%q) allocates %v times, want at most %v", tc.path, allocs, tc.max)
		}
	}
}

func TestCleanPathLinearTime(t *testing.T) {
	// 16k segments, then as many "..": popping must not copy the prefix
	// each time (quadratic: hundreds of megabytes of copying for one
	// request line). Copies would show as allocations; the kept-segment
	// stack grows only logarithmically.
	deep := "/" + strings.Repeat("a/", 16<<10) + strings.Repeat("../", 16<<10) + "x"
	dec, esc, err := CleanPath(deep)
	if err != nil || dec != "/x" || esc != "/x" {
		t.Fatalf("CleanPath = %q, %q, %v", dec, esc, err)
	}
	if allocs := testing.AllocsPerRun(5, func() { _, _, _ = CleanPath(deep) }); allocs > 30 {
		t.Fatalf("CleanPath of a deep path allocates %v times", allocs)
	}
}
