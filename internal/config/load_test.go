package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

// minimalRoute completes a config: one upstream and one public route.
const minimalRoute = `upstreams:
  app:
    targets: [{url: "http://127.0.0.1:7001"}]
routes:
  - name: r
    match: {path: /}
    upstream: app
    public: true
`

func load1(t *testing.T, yaml string) (*Config, error) {
	t.Helper()
	l := newLoader(testEnv, len(yaml))
	l.file("test.yaml", []byte(yaml))
	return l.finish()
}

func mustLoad(t *testing.T, yaml string) *Config {
	t.Helper()
	c, err := load1(t, yaml)
	if err != nil {
		t.Fatalf("load:\n%v", err)
	}
	return c
}

func TestDefaults(t *testing.T) {
	c := mustLoad(t, `version: 1
tracing: {otlp_endpoint: "http://127.0.0.1:4318"}
upstreams:
  app:
    targets: [{url: "http://127.0.0.1:7001"}, {url: "http://127.0.0.1:7002", weight: 0}]
    max_inflight: 0
    health_check: {}
    passive: {}
    circuit_breaker: {}
  bare:
    targets: [{url: "http://127.0.0.1:7003"}]
    retries: 0
    retry_budget: 0
auth:
  keys: {type: api_key, keys: [{id: a, sha256: "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"}]}
  jwt: {type: jwt, jwks_file: jwks.json}
  hmac: {type: jwt, secret: "0123456789abcdef0123456789abcdef"}
rate_limits:
  mode: lease
  on_store_error: fail_open
  policies:
    tb: {algorithm: token_bucket, rate: 7, per: 1s, key: ip}
    lb: {algorithm: leaky_bucket, rate: 7, per: 1s, key: ip}
    fw: {algorithm: fixed_window, limit: 7, window: 1s, key: ip, mode: exact, on_store_error: fail_closed}
routes:
  - name: r
    match: {path: /}
    upstream: app
    public: true
bffs:
  m:
    prefix: /m
    public: true
    endpoints:
      - name: e
        path: /e
        backends:
          - {upstream: app, path: /a}
          - {upstream: bare, path: /b, into: b}
          - {name: n, upstream: bare, path: /c, into: c}
slos:
  - {name: s, route: r, objective: 99}
`)
	d := func(s string) Duration {
		v, err := ParseDuration(s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"server.listen", c.Server.Listen, ":8080"},
		{"server.read_header_timeout", c.Server.ReadHeaderTimeout, d("5s")},
		{"server.idle_timeout", c.Server.IdleTimeout, d("120s")},
		{"server.idle_release_after", *c.Server.IdleReleaseAfter, d("10s")},
		{"server.drain_delay", c.Server.DrainDelay, Duration(0)},
		{"server.shutdown_timeout", c.Server.ShutdownTimeout, d("30s")},
		{"server.max_header_bytes", c.Server.MaxHeaderBytes, Size(65536)},
		{"server.max_body_bytes", c.Server.MaxBodyBytes, Size(10 << 20)},
		{"admin.listen", c.Admin.Listen, "127.0.0.1:9901"},
		{"logging.level", c.Logging.Level, "info"},
		{"logging.access_log", *c.Logging.AccessLog, true},
		{"tracing.sample_ratio", *c.Tracing.SampleRatio, 1.0},
		{"tracing.service_name", c.Tracing.ServiceName, "portico"},
		{"upstream.name", c.Upstreams["app"].Name, "app"},
		{"upstream.balance", c.Upstreams["app"].Balance, "round_robin"},
		{"target.weight", c.Upstreams["app"].Targets[0].Weight, 1},
		{"target.weight 0", c.Upstreams["app"].Targets[1].Weight, 1},
		{"upstream.timeout", c.Upstreams["app"].Timeout, d("15s")},
		{"upstream.connect_timeout", c.Upstreams["app"].ConnectTimeout, d("2s")},
		{"upstream.retries", *c.Upstreams["app"].Retries, 1},
		{"upstream.retries 0 kept", *c.Upstreams["bare"].Retries, 0},
		{"upstream.retry_budget", *c.Upstreams["app"].RetryBudget, 0.2},
		{"upstream.retry_budget 0 kept", *c.Upstreams["bare"].RetryBudget, 0.0},
		{"upstream.max_inflight", c.Upstreams["app"].MaxInflight, 1000},
		{"health_check", *c.Upstreams["app"].HealthCheck, HealthCheck{Path: "/healthz", Interval: d("5s"), Timeout: d("1s"), ExpectStatus: 200, UnhealthyThreshold: 3, HealthyThreshold: 2, AllUnhealthy: "fail"}},
		{"passive", *c.Upstreams["app"].Passive, Passive{ConsecutiveFailures: 5, Ejection: d("30s")}},
		{"circuit_breaker", *c.Upstreams["app"].CircuitBreaker, CircuitBreaker{FailureRatio: 0.5, MinRequests: 20, OpenFor: d("10s")}},
		{"no health_check", c.Upstreams["bare"].HealthCheck, (*HealthCheck)(nil)},
		{"no passive", c.Upstreams["bare"].Passive, (*Passive)(nil)},
		{"no breaker", c.Upstreams["bare"].CircuitBreaker, (*CircuitBreaker)(nil)},
		{"jwt.algorithms", c.Auth["jwt"].Algorithms, []string{"RS256", "ES256", "EdDSA"}},
		{"jwt.algorithms secret", c.Auth["hmac"].Algorithms, []string{"HS256"}},
		{"jwt.leeway", c.Auth["jwt"].Leeway, d("30s")},
		{"jwt.token_from", *c.Auth["jwt"].TokenFrom, TokenSource{Header: "Authorization"}},
		{"jwt.forward_token", *c.Auth["jwt"].ForwardToken, true},
		{"jwt.name", c.Auth["jwt"].Name, "jwt"},
		{"api_key.header", c.Auth["keys"].Header, "X-API-Key"},
		{"api_key.token_from", c.Auth["keys"].TokenFrom, (*TokenSource)(nil)},
		{"store.type", c.RateLimits.Store.Type, "memory"},
		{"store.timeout", c.RateLimits.Store.Timeout, d("20ms")},
		{"expected_nodes", c.RateLimits.ExpectedNodes, 1},
		{"headers", c.RateLimits.Headers, "ietf"},
		{"policy.name", c.RateLimits.Policies["tb"].Name, "tb"},
		{"token_bucket burst", c.RateLimits.Policies["tb"].Burst, int64(7)},
		{"leaky_bucket burst", c.RateLimits.Policies["lb"].Burst, int64(1)},
		{"policy.cost", c.RateLimits.Policies["tb"].Cost, int64(1)},
		{"policy.on_missing_key", c.RateLimits.Policies["tb"].OnMissingKey, "deny"},
		{"policy.mode inherited", c.RateLimits.Policies["tb"].Mode, "lease"},
		{"policy.on_store_error inherited", c.RateLimits.Policies["tb"].OnStoreError, "fail_open"},
		{"policy.mode own", c.RateLimits.Policies["fw"].Mode, "exact"},
		{"policy.on_store_error own", c.RateLimits.Policies["fw"].OnStoreError, "fail_closed"},
		{"route.compression_min_bytes", c.Routes[0].CompressionMinBytes, Size(1024)},
		{"bff.name", c.BFFs["m"].Name, "m"},
		{"bff.compression_min_bytes", c.BFFs["m"].CompressionMinBytes, Size(1024)},
		{"bff.max_backend_body_bytes", c.BFFs["m"].MaxBackendBodyBytes, Size(5 << 20)},
		{"endpoint.method", c.BFFs["m"].Endpoints[0].Method, "GET"},
		{"backend.method", c.BFFs["m"].Endpoints[0].Backends[0].Method, "GET"},
		{"backend.name from upstream", c.BFFs["m"].Endpoints[0].Backends[0].Name, "app"},
		{"backend.name from into", c.BFFs["m"].Endpoints[0].Backends[1].Name, "b"},
		{"backend.name own", c.BFFs["m"].Endpoints[0].Backends[2].Name, "n"},
		{"slo.window", c.SLOs[0].Window, d("28d")},
	}
	for _, ck := range checks {
		if !reflect.DeepEqual(ck.got, ck.want) {
			t.Errorf("%s = %#v, want %#v", ck.name, ck.got, ck.want)
		}
	}
	if c.Tracing == nil {
		t.Fatal("tracing dropped")
	}
}

// idle_release_after: 0 turns releasing off; it is not "unset".
func TestIdleReleaseZeroIsOff(t *testing.T) {
	c := mustLoad(t, "version: 1\nserver: {idle_release_after: 0s}\n"+minimalRoute)
	if c.Server.IdleReleaseAfter == nil || *c.Server.IdleReleaseAfter != 0 {
		t.Errorf("idle_release_after: 0s loaded as %v, want 0", c.Server.IdleReleaseAfter)
	}
}

func TestNoTracingWhenAbsent(t *testing.T) {
	c := mustLoad(t, "version: 1\n"+minimalRoute)
	if c.Tracing != nil {
		t.Errorf("tracing = %+v, want nil when absent", c.Tracing)
	}
	c = mustLoad(t, "version: 1\ntracing:\n"+minimalRoute)
	if c.Tracing != nil {
		t.Errorf("tracing: (null) = %+v, want nil", c.Tracing)
	}
}

func TestWhere(t *testing.T) {
	c, err := load([]string{"testdata/valid/design.yaml"}, testEnv)
	if err != nil {
		t.Fatal(err)
	}
	const f = "testdata/valid/design.yaml"
	tests := []struct{ field, want string }{
		{"server.tls.cert", f + ":7:9"},
		{"server.tls", f + ":7:3"},
		{"server.listen", f + ":6:3"},
		{"upstreams.posts", f + ":29:3"},
		{"upstreams.posts.targets[0].url", f + ":30:16"},
		{"upstreams.posts.targets[0]", f + ":30:15"},
		{"routes[0].match.path", f + ":81:36"},
		{"routes[1].name", f + ":96:5"},
		{"routes[1].compression_min_bytes", f + ":96:5"}, // defaulted: the route's position
		{"bffs.mobile.endpoints[0].backends[3].after", f + ":123:71"},
		{"slos[0].objective", f + ":128:5"},
		{"nothing.here", ""},
	}
	for _, tt := range tests {
		if got := c.Where(tt.field); got != tt.want {
			t.Errorf("Where(%q) = %q, want %q", tt.field, got, tt.want)
		}
	}
	if got := (&Config{}).Where("server"); got != "" {
		t.Errorf("Where on a config not from Load = %q, want empty", got)
	}
}

func TestMultiFileMerge(t *testing.T) {
	c, err := load([]string{"testdata/valid/multi"}, testEnv)
	if err != nil {
		t.Fatal(err)
	}
	wantFiles := []string{"testdata/valid/multi/00-platform.yaml", "testdata/valid/multi/10-mobile.yml", "testdata/valid/multi/20-web.yaml"}
	if !reflect.DeepEqual(c.Files, wantFiles) {
		t.Errorf("files = %v, want %v", c.Files, wantFiles)
	}
	if len(c.Upstreams) != 2 || len(c.BFFs) != 2 || len(c.SLOs) != 2 || len(c.RateLimits.Policies) != 2 {
		t.Errorf("merge lost entries: %d upstreams, %d bffs, %d slos, %d policies", len(c.Upstreams), len(c.BFFs), len(c.SLOs), len(c.RateLimits.Policies))
	}
	// Settings from the platform file, policies from both; the web policy
	// keeps its own mode while inheriting on_store_error.
	if c.RateLimits.Mode != "lease" || c.RateLimits.Policies["per-user"].Mode != "lease" || c.RateLimits.Policies["web-burst"].Mode != "exact" {
		t.Errorf("modes: %q %q %q", c.RateLimits.Mode, c.RateLimits.Policies["per-user"].Mode, c.RateLimits.Policies["web-burst"].Mode)
	}
	if got := c.Where("slos[1].name"); got != "testdata/valid/multi/20-web.yaml:23:6" {
		t.Errorf("Where(slos[1].name) = %q", got)
	}
	if got := c.Where("rate_limits.policies.web-burst"); got != "testdata/valid/multi/20-web.yaml:6:5" {
		t.Errorf("Where(policy) = %q", got)
	}
}

// TestConfigMapSymlinks loads a directory laid out as Kubernetes mounts a
// ConfigMap: files are symlinks into a ..data directory.
func TestConfigMapSymlinks(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "..2026_11_28_05_00_00.123")
	if err := os.Mkdir(data, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name, body string) {
		if err := os.WriteFile(filepath.Join(data, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("a.yaml", "version: 1\n"+minimalRoute)
	write("b.yml", "version: 1\nlogging: {level: debug}\n")
	if err := os.Symlink(filepath.Base(data), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"a.yaml", "b.yml"} {
		if err := os.Symlink(filepath.Join("..data", n), filepath.Join(dir, n)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "sub.yaml"), 0o755); err != nil { // a directory: not recursed into
		t.Fatal(err)
	}
	c, err := load([]string{dir}, testEnv)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Files) != 2 || c.Logging.Level != "debug" || len(c.Routes) != 1 {
		t.Errorf("files %v, level %q, routes %d", c.Files, c.Logging.Level, len(c.Routes))
	}
	// A dangling symlink is an error naming it.
	if err := os.Symlink("..data/gone.yaml", filepath.Join(dir, "c.yaml")); err != nil {
		t.Fatal(err)
	}
	_, err = load([]string{dir}, testEnv)
	if err == nil || !strings.Contains(err.Error(), filepath.Join(dir, "c.yaml")+": stat: no such file or directory") {
		t.Errorf("dangling symlink: %v", err)
	}
}

func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name  string
		paths []string
		want  string
	}{
		{"no paths", nil, "no configuration file given"},
		{"missing file", []string{filepath.Join(dir, "nope.yaml")}, filepath.Join(dir, "nope.yaml") + ": stat: no such file or directory"},
		{"empty dir", []string{dir}, dir + ": no *.yaml or *.yml files found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Load(tt.paths...)
			if c != nil || err == nil || err.Error() != tt.want {
				t.Fatalf("Load = %v, %v; want error %q", c, err, tt.want)
			}
			var errs *Errors
			if !errors.As(err, &errs) {
				t.Fatalf("error %T is not *Errors", err)
			}
		})
	}
}

func TestLoadBytes(t *testing.T) {
	c, err := LoadBytes("inline.yaml", []byte("version: 1\n"+minimalRoute))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c.Files, []string{"inline.yaml"}) || c.Where("routes[0]") != "inline.yaml:6:5" {
		t.Errorf("files %v, where %q", c.Files, c.Where("routes[0]"))
	}
	_, err = LoadBytes("bad.yaml", []byte("version: 1\nroutes: {}\n"))
	var errs *Errors
	if !errors.As(err, &errs) || len(errs.List) != 1 {
		t.Fatalf("err = %v", err)
	}
	want := Error{File: "bad.yaml", Line: 2, Col: 9, Field: "routes", Msg: "expected a sequence, got a mapping"}
	if errs.List[0] != want {
		t.Errorf("got %#v, want %#v", errs.List[0], want)
	}
	var one Error
	if !errors.As(err, &one) || one != want {
		t.Errorf("errors.As(Error) = %#v", one)
	}
}

func TestErrorFormat(t *testing.T) {
	e := &Errors{List: []Error{
		NewError("b.yaml", 2, 1, "server", "second"),
		NewError("a.yaml", 10, 3, "routes[0].name", "first"),
		NewError("a.yaml", 2, 7, "", "no field"),
		NewError("c.yaml", 0, 0, "", "unreadable"),
		NewError("a.yaml", 10, 3, "routes[0].name", "first"),
	}}
	e.sort()
	want := "a.yaml:2:7: no field\na.yaml:10:3: routes[0].name: first\nb.yaml:2:1: server: second\nc.yaml: unreadable"
	if got := e.Error(); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	if (&Errors{}).orNil() != nil {
		t.Error("empty Errors is not nil")
	}
}

// TestAllErrorsAtOnce checks that one file with problems in many sections
// reports each of them, not only the first.
func TestAllErrorsAtOnce(t *testing.T) {
	_, err := load1(t, `version: 1
server: {listen: nowhere}
admin: {listen: "0.0.0.0:1"}
logging: {level: loud}
upstreams:
  app: {targets: [{url: "gopher://x"}]}
routes:
  - {name: r, match: {path: x}, upstream: app}
`)
	if err == nil {
		t.Fatal("no error")
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != 6 {
		t.Errorf("got %d errors, want 6:\n%v", len(lines), err)
	}
}

func TestDefaultsExported(t *testing.T) {
	if DefaultSLOWindow.D() != 28*24*time.Hour || DefaultMaxBodyBytes != 10<<20 {
		t.Error("exported defaults changed")
	}
}

// TestAliasBomb checks that nested aliases and merge keys (the "billion
// laughs") stop with an error instead of expanding exponentially.
func TestAliasBomb(t *testing.T) {
	var b strings.Builder
	b.WriteString("version: 1\nx-0: &a0 {a: b, c: d}\n")
	for i := 1; i < 9; i++ {
		p := "*a" + strconv.Itoa(i-1)
		fmt.Fprintf(&b, "x-%d: &a%d {<<: [%s]}\n", i, i, strings.Repeat(p+", ", 9)+p)
	}
	b.WriteString(minimalRoute + "    match: {path: /, headers: *a8}\n")
	_, err := load1(t, strings.Replace(b.String(), "    match: {path: /}\n", "", 1))
	if err == nil || !strings.Contains(err.Error(), "aliases or merge keys nested too deep") {
		t.Fatalf("err = %v", err)
	}
}

// TestFailedEntriesAreNotNil checks that entries whose decoding failed early
// still exist as empty values, so validation never meets a nil pointer.
func TestFailedEntriesAreNotNil(t *testing.T) {
	for _, in := range []string{
		"version: 1\nupstreams: {a: *nope}\n",
		"version: 1\nroutes: [*nope]\n",
		"version: 1\nbffs: {b: {public: true, prefix: /b, endpoints: [*x, {name: e, path: /e, backends: [*y]}]}}\n",
		"version: 1\nauth: {a: *x}\nrate_limits: {policies: {p: *x, q: {overrides: {o: *x}}}}\nslos: [*x]\n",
	} {
		_, err := LoadBytes("nil.yaml", []byte(in))
		if err == nil || !strings.Contains(err.Error(), "unknown or circular alias") {
			t.Errorf("%q: err = %v", in, err)
		}
	}
}

// TestFileEncodings checks CRLF line ends, a UTF-8 byte order mark and
// document markers.
func TestFileEncodings(t *testing.T) {
	base := "version: 1\n" + minimalRoute
	for name, in := range map[string]string{
		"crlf":    strings.ReplaceAll(base, "\n", "\r\n"),
		"bom":     "\ufeff" + base,
		"markers": "---\n" + base + "...\n",
	} {
		c, err := LoadBytes(name+".yaml", []byte(in))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		want := name + ".yaml:6:5"
		if name == "markers" {
			want = name + ".yaml:7:5"
		}
		if got := c.Where("routes[0].name"); got != want {
			t.Errorf("%s: Where = %q, want %q", name, got, want)
		}
	}
}

func TestFileNamedTwiceLoadsOnce(t *testing.T) {
	c, err := load([]string{"testdata/valid/multi", "./testdata/valid/multi/10-mobile.yml", "testdata/valid/multi/"}, testEnv)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Files) != 3 {
		t.Errorf("files %v", c.Files)
	}
}
