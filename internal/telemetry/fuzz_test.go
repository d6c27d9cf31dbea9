package telemetry

import (
	"encoding/json"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"unicode/utf8"
)

func FuzzParseTraceparent(f *testing.F) {
	for _, s := range []string{inbound, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
		"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", "ff-" + strings.Repeat("a", 52), ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tid, _, ok := parseTraceparent(s)
		if !ok {
			return
		}
		if !tid.IsValid() || tid.String() != s[3:35] {
			t.Fatalf("%q accepted with trace id %s", s, tid)
		}
	})
}

// FuzzAccessLogLine: whatever the request line holds, the access log line
// is one valid JSON object and no credential value survives redaction.
func FuzzAccessLogLine(f *testing.F) {
	f.Add("/a/b", "token=abc&x=1")
	f.Add("/\xff\"\\", "api%5Fkey=s3cr&key=%zz")
	f.Add("/x", "password=p&password=q&sig")
	f.Fuzz(func(t *testing.T, path, rawQuery string) {
		if !strings.HasPrefix(path, "/") {
			path = "/" + path
		}
		u := &url.URL{Path: path, RawQuery: rawQuery}
		req := httptest.NewRequest("GET", "/", nil)
		req.URL = u
		tel := &Telemetry{}
		b := tel.appendPath(nil, req)
		var got string
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatalf("path %q query %q -> %s: %v", path, rawQuery, b, err)
		}
		if !utf8.ValidString(got) {
			t.Fatalf("invalid UTF-8 in %q", got)
		}
		_, q, _ := strings.Cut(got, "?")
		for _, part := range strings.Split(q, "&") {
			name, value, hasValue := strings.Cut(part, "=")
			if hasValue && tel.redacted(queryName(name)) && value != redactedValue {
				t.Fatalf("credential %q logged as %q", name, value)
			}
		}
	})
}
