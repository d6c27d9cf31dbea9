package config

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/goccy/go-yaml/parser"
)

// FuzzLoadBytes feeds arbitrary bytes to the loader: it must return a config
// or an *Errors, never panic, and every error must carry the file name.
// Crashers found by `go test -fuzz` land in testdata/fuzz/FuzzLoadBytes and
// run as regression cases with every plain `go test`.
func FuzzLoadBytes(f *testing.F) {
	for _, dir := range []string{"testdata/valid", "testdata/invalid"} {
		files, _ := filepath.Glob(filepath.Join(dir, "*.yaml"))
		more, _ := filepath.Glob(filepath.Join(dir, "*", "*.y*ml"))
		for _, p := range append(files, more...) {
			data, err := os.ReadFile(p)
			if err == nil {
				f.Add(data)
			}
		}
	}
	f.Add([]byte("version: 1\nx: &a [*a]\n"))
	f.Add([]byte("version: 1\n<<: {<<: {<<: {}}}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := LoadBytes("fuzz.yaml", data)
		if err == nil {
			if c == nil || c.Version != 1 || c.Where("version") == "" {
				t.Fatalf("nil error with config %+v", c)
			}
			return
		}
		// The same input gives the same report (map order never shows).
		if _, again := LoadBytes("fuzz.yaml", data); again == nil || again.Error() != err.Error() {
			t.Fatalf("second load differs:\n%v\n---\n%v", err, again)
		}
		errs, ok := err.(*Errors)
		if !ok || len(errs.List) == 0 {
			t.Fatalf("error %T %v is not a non-empty *Errors", err, err)
		}
		for _, e := range errs.List {
			if e.File != "fuzz.yaml" || e.Msg == "" {
				t.Fatalf("error without file or message: %#v", e)
			}
		}
		if c != nil {
			t.Fatal("config returned with an error")
		}
	})
}

// bigConfig returns a config with n routes and n/10 BFF endpoints, as a
// large real deployment might have. full routes (about 400 bytes each) set
// rewrite, scopes, timeout, CORS and header rules; the others (about 150
// bytes) only match, upstream, auth and rate limits.
func bigConfig(n int, full bool) []byte {
	var b strings.Builder
	b.WriteString("version: 1\nupstreams:\n")
	for i := range 20 {
		fmt.Fprintf(&b, "  up%d:\n    targets: [{url: \"http://127.0.0.1:%d\"}, {url: \"http://127.0.0.2:%d\", weight: 2}]\n    health_check: {path: /healthz}\n", i, 7000+i, 7000+i)
	}
	b.WriteString("auth:\n  jwt: {type: jwt, jwks_url: \"http://127.0.0.1:7000/jwks.json\", audiences: [portico]}\n")
	b.WriteString("rate_limits:\n  policies:\n    per-ip: {algorithm: token_bucket, rate: 50, per: 1s, key: ip}\n    per-user: {algorithm: sliding_window_counter, limit: 100, window: 1m, key: claim:sub}\n")
	b.WriteString("routes:\n")
	for i := range n {
		if !full {
			fmt.Fprintf(&b, "  - name: route-%d\n    match: {host: api%d.example.com, path: \"/api/v1/items%d/{id}\", methods: [GET]}\n    upstream: up%d\n    auth: [jwt]\n    rate_limit: [per-user]\n", i, i%10, i, i%20)
			continue
		}
		fmt.Fprintf(&b, `  - name: route-%d
    match: {host: api%d.example.com, path: "/api/v1/items%d/{id}", methods: [GET, POST]}
    upstream: up%d
    rewrite: {path: "/items/{id}"}
    auth: [jwt]
    scopes: [items:read]
    rate_limit: [per-ip, per-user]
    timeout: 3s
    cors: {origins: ["https://app.example.com"], methods: [GET, POST]}
    request_headers: {set: {X-From: portico}, remove: [Cookie]}
`, i, i%10, i, i%20)
	}
	b.WriteString("bffs:\n  mobile:\n    prefix: /mobile\n    auth: [jwt]\n    endpoints:\n")
	for i := range n / 10 {
		fmt.Fprintf(&b, `      - name: ep%d
        path: /ep%d/{id}
        backends:
          - {upstream: up1, path: "/users/{claims.sub}", into: user, fields: [name, avatar_url]}
          - {upstream: up2, path: "/items/{id}?u={user.id}", after: user, into: items, fields: ["items[].id"]}
`, i, i)
	}
	return []byte(b.String())
}

func TestBigConfig(t *testing.T) {
	c, err := LoadBytes("big.yaml", bigConfig(1000, true))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Routes) != 1000 || len(c.BFFs["mobile"].Endpoints) != 100 {
		t.Errorf("routes %d", len(c.Routes))
	}
}

// BenchmarkLoad1000Routes measures a reload-sized load: 1,000 routes and 100
// BFF endpoints, parsed, defaulted and validated.
// It also reports cpu-ms/op (process CPU time, GC included), which stays
// meaningful on a machine whose cores are shared with other work, where
// wall-clock ns/op is not.
func BenchmarkLoad1000Routes(b *testing.B) {
	for _, full := range []bool{false, true} {
		name := "typical"
		if full {
			name = "full"
		}
		b.Run(name, func(b *testing.B) {
			data := bigConfig(1000, full)
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			start := cpuTime()
			for b.Loop() {
				if _, err := LoadBytes("big.yaml", data); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64((cpuTime()-start).Microseconds())/1000/float64(b.N), "cpu-ms/op")
		})
	}
}

// BenchmarkParse1000Routes is the goccy/go-yaml parse alone, the floor under
// BenchmarkLoad1000Routes.
func BenchmarkParse1000Routes(b *testing.B) {
	data := bigConfig(1000, true)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	start := cpuTime()
	for b.Loop() {
		if _, err := parser.ParseBytes(data, 0); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64((cpuTime()-start).Microseconds())/1000/float64(b.N), "cpu-ms/op")
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
