package faults

import (
	"strings"
	"testing"
)

// The suite's verdicts rest on the metrics parser: test it on what
// client_golang writes, escapes included.
func TestParseMetrics(t *testing.T) {
	const text = `# HELP portico_requests_total Requests.
# TYPE portico_requests_total counter
portico_requests_total{code="200",method="GET",route="a"} 3
portico_requests_total{code="502",method="GET",route="a"} 1
portico_requests_total{code="200",method="GET",route="b"} 2.5e+01
portico_upstream_requests_total{code="error",target="http://127.0.0.1:1/x?\"q\"\\n",upstream="u"} 7
go_goroutines 42
portico_access_log_dropped_total 0
`
	m, err := ParseMetrics(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		metric string
		labels map[string]string
		want   float64
	}{
		{"all series", "portico_requests_total", nil, 29},
		{"by route", "portico_requests_total", map[string]string{"route": "a"}, 4},
		{"by two labels", "portico_requests_total", map[string]string{"route": "a", "code": "502"}, 1},
		{"exponent", "portico_requests_total", map[string]string{"route": "b"}, 25},
		{"escaped label value", "portico_upstream_requests_total", map[string]string{"target": `http://127.0.0.1:1/x?"q"\n`}, 7},
		{"no labels", "go_goroutines", nil, 42},
		{"no match", "portico_requests_total", map[string]string{"route": "c"}, 0},
		{"absent metric", "portico_nothing", nil, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := m.Sum(tc.metric, tc.labels); got != tc.want {
				t.Errorf("Sum = %v, want %v", got, tc.want)
			}
		})
	}
	for _, bad := range []string{
		`x{a="1" 1`,
		`x{a=1} 1`,
		`x{a="1"}`,
		`x{a="1"} one`,
	} {
		if _, err := ParseMetrics(strings.NewReader(bad + "\n")); err == nil {
			t.Errorf("ParseMetrics(%q) accepted a malformed line", bad)
		}
	}
}

func TestLineBufferFind(t *testing.T) {
	b := newLineBuffer(false)
	_, _ = b.Write([]byte(`{"msg":"proxy exchange failed","status":504,"route":"a"}` + "\n" + `not json` + "\n"))
	_, _ = b.Write([]byte(`{"msg":"proxy exchange failed","status":502,"route":"a"}` + "\n" + `{"msg":"partial`))
	if n := len(b.Find("proxy exchange failed", map[string]string{"status": "504"})); n != 1 {
		t.Errorf("status 504: %d lines, want 1", n)
	}
	if n := len(b.Find("proxy exchange failed", map[string]string{"route": "a"})); n != 2 {
		t.Errorf("route a: %d lines, want 2", n)
	}
	if n := b.Count(); n != 3 {
		t.Errorf("Count = %d, want 3 complete lines", n)
	}
	if n := len(b.Lines()); n != 3 {
		t.Errorf("Lines: %d, want 3 (the partial line is not complete)", n)
	}
	d := newLineBuffer(true)
	_, _ = d.Write([]byte("a\nb\n"))
	if d.Count() != 2 || d.String() != "" {
		t.Errorf("discarding buffer: count %d, kept %q", d.Count(), d.String())
	}
}
