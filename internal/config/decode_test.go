package config

import (
	"strings"
	"testing"
)

// TestWrongTypes covers each kind of value the schema has with a value of
// another kind.
func TestWrongTypes(t *testing.T) {
	tests := []struct {
		name, yaml, want string
	}{
		{"string gets mapping", "admin: {token: {a: 1}}", `test.yaml:2:16: admin.token: expected a string, got a mapping`},
		{"string gets sequence", "admin: {token: [a]}", `admin.token: expected a string, got a sequence`},
		{"int gets string", "rate_limits: {expected_nodes: many}", `rate_limits.expected_nodes: expected an integer, got "many"`},
		{"int gets float", "rate_limits: {expected_nodes: 1.5}", `rate_limits.expected_nodes: expected an integer, got a number`},
		{"int gets bool", "rate_limits: {expected_nodes: true}", `rate_limits.expected_nodes: expected an integer, got a boolean`},
		{"int overflow", "rate_limits: {expected_nodes: 99999999999999999999}", `rate_limits.expected_nodes: integer 99999999999999999999 out of range`},
		// Above int64 but within uint64 the parser gives an integer node,
		// which read "expected an integer, got an integer".
		{"int overflow uint64", "rate_limits: {expected_nodes: 9223372036854775808}", `test.yaml:2:31: rate_limits.expected_nodes: integer 9223372036854775808 out of range`},
		{"int underflow", "rate_limits: {expected_nodes: -9223372036854775809}", `rate_limits.expected_nodes: integer -9223372036854775809 out of range`},
		{"int overflow from env", "rate_limits: {expected_nodes: \"${HUGE}\"}", `test.yaml:2:31: rate_limits.expected_nodes: integer 99999999999999999999 out of range`},
		{"float overflow", "tracing: {otlp_endpoint: \"http://x\", sample_ratio: 1e400}", `tracing.sample_ratio: number 1e400 out of range`},
		{"size overflow", "server: {max_body_bytes: 99999999999999999999}", `server.max_body_bytes: invalid size "99999999999999999999": too large`},
		{"float gets string", "tracing: {otlp_endpoint: \"http://x\", sample_ratio: half}", `tracing.sample_ratio: expected a number, got "half"`},
		{"float gets inf", "tracing: {otlp_endpoint: \"http://x\", sample_ratio: .inf}", `tracing.sample_ratio: must be a finite number`},
		{"bool gets int", "logging: {access_log: 1}", `logging.access_log: expected a boolean (true or false), got an integer`},
		{"bool gets yes", "logging: {access_log: yes}", `logging.access_log: expected a boolean (true or false), got "yes"`},
		{"duration gets sequence", "server: {idle_timeout: [1s]}", `server.idle_timeout: expected a duration such as 5s, got a sequence`},
		{"duration gets bare number", "server: {idle_timeout: 30}", `server.idle_timeout: invalid duration "30": missing unit`},
		{"size gets mapping", "server: {max_body_bytes: {a: 1}}", `server.max_body_bytes: expected a size such as 64KiB, got a mapping`},
		{"size gets float", "server: {max_body_bytes: 1.5}", `server.max_body_bytes: invalid size "1.5"`},
		{"list gets scalar", "server: {trusted_proxies: 10.0.0.0/8}", `server.trusted_proxies: expected a sequence, got "10.0.0.0/8"`},
		{"map gets sequence", "upstreams: [a, b]", `upstreams: expected a mapping, got a sequence`},
		{"struct gets scalar", "server: 8080", `server: expected a mapping, got an integer`},
		{"map key not scalar", "upstreams: {[a]: {}}", `YAML syntax`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := load1(t, "version: 1\n"+tt.yaml+"\n"+minimalRoute)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v\nwant it to contain %q", err, tt.want)
			}
			// One mistake, one message: no validation error piles on.
			if n := strings.Count(err.Error(), "\n") + 1; n != 1 && tt.name != "map gets sequence" {
				t.Errorf("%d messages:\n%v", n, err)
			}
		})
	}
}

// TestMergeKeys checks YAML merge keys: explicit keys override merged ones,
// and among several merged mappings the first listed wins.
func TestMergeKeys(t *testing.T) {
	c := mustLoad(t, `version: 1
x-fast: &fast {timeout: 1s, retries: 0}
x-slow: &slow {timeout: 30s, retries: 3, connect_timeout: 5s}
upstreams:
  a:
    <<: *fast
    targets: [{url: "http://127.0.0.1:1"}]
  b:
    <<: [*fast, *slow]
    targets: [{url: "http://127.0.0.1:2"}]
  c:
    <<: *slow
    timeout: 2s
    targets: [{url: "http://127.0.0.1:3"}]
routes:
  - {name: r, match: {path: /}, upstream: a, public: true}
`)
	a, b, u := c.Upstreams["a"], c.Upstreams["b"], c.Upstreams["c"]
	if a.Timeout.D().Seconds() != 1 || *a.Retries != 0 {
		t.Errorf("a: timeout %v retries %d", a.Timeout, *a.Retries)
	}
	if b.Timeout.D().Seconds() != 1 || *b.Retries != 0 || b.ConnectTimeout.D().Seconds() != 5 {
		t.Errorf("b: timeout %v retries %d connect %v", b.Timeout, *b.Retries, b.ConnectTimeout)
	}
	if u.Timeout.D().Seconds() != 2 || *u.Retries != 3 {
		t.Errorf("c: timeout %v retries %d", u.Timeout, *u.Retries)
	}
	_, err := load1(t, "version: 1\nupstreams:\n  a:\n    <<: [1]\n    targets: [{url: \"http://x\"}]\n"+minimalRoute[len("upstreams:\n"):])
	if err == nil || !strings.Contains(err.Error(), "a merge key (<<) needs a mapping or a list of mappings") {
		t.Errorf("merge of a scalar: %v", err)
	}
}

// TestRedefinedAnchor: an alias refers to the latest definition of its
// anchor name before it, as YAML has it. Anchors were collected up front
// and the last definition in the file won, so upstream a got 2s here.
func TestRedefinedAnchor(t *testing.T) {
	c := mustLoad(t, `version: 1
x-fast: &t {timeout: 1s}
upstreams:
  a: {<<: *t, targets: [{url: "http://127.0.0.1:7001"}]}
  b: {timeout: &d 3s, targets: [{url: "http://127.0.0.1:7002"}]}
  c: {timeout: *d, targets: [{url: "http://127.0.0.1:7003"}]}
  d: {timeout: &d 4s, targets: [{url: "http://127.0.0.1:7004"}]}
  e: {timeout: *d, targets: [{url: "http://127.0.0.1:7005"}]}
  f: {<<: *t, targets: [{url: "http://127.0.0.1:7006"}]}
x-slow: &t {timeout: 2s}
routes:
  - {name: r, match: {path: /}, upstream: a, public: true}
`)
	for name, want := range map[string]string{"a": "1s", "c": "3s", "e": "4s", "f": "1s"} {
		if got := c.Upstreams[name].Timeout.String(); got != want {
			t.Errorf("upstreams.%s.timeout = %s, want %s", name, got, want)
		}
	}
}
