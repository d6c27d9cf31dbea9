package config

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// docs/configuration.md and docs/portico.schema.json are generated from the
// Go types and the table below by `go test ./internal/config -update`;
// TestDocsUpToDate fails when either file differs from what the types and
// the table produce, and when a yaml key has no entry here.

type fieldDoc struct {
	desc string
	def  string   // default, as written in YAML; "" when none
	enum []string // allowed values
}

// fieldDocs documents every yaml key, by Go type and key.
var fieldDocs = map[string]fieldDoc{
	"Config.version":     {desc: "Schema version; every file says `version: 1`.", enum: []string{"1"}},
	"Config.server":      {desc: "The public listener. At most one file may hold it."},
	"Config.admin":       {desc: "The admin listener (health, metrics, admin API, dashboard). At most one file."},
	"Config.logging":     {desc: "Process log and access log. At most one file."},
	"Config.tracing":     {desc: "OTLP trace export; absent means no export (trace context is still propagated). At most one file."},
	"Config.upstreams":   {desc: "Named pools of targets. Names are unique across files."},
	"Config.auth":        {desc: "Named authentication providers (JWT or API key). Names are unique across files."},
	"Config.rate_limits": {desc: "The rate-limit store, its settings and the named policies. Policies merge across files; the other settings belong to one file."},
	"Config.routes":      {desc: "Proxied routes, matched by host, method and path. Names are unique across files."},
	"Config.bffs":        {desc: "Backends for frontends: aggregated endpoints per client team. Names are unique across files."},
	"Config.slos":        {desc: "Service level objectives on routes and BFF endpoints. Names are unique across files."},

	"Server.listen":               {desc: "Address of the public listener, host:port.", def: `":8080"`},
	"Server.tls":                  {desc: "Serve TLS (and HTTP/2 via ALPN). Needs cert and key, or certificates."},
	"Server.h2c":                  {desc: "Accept cleartext HTTP/2 on the listener.", def: "false"},
	"Server.http_redirect_listen": {desc: "Optional plain listener (host:port) that redirects everything to https; needs tls."},
	"Server.proxy_protocol":       {desc: "Accept the PROXY protocol header from an L4 load balancer.", def: "false"},
	"Server.read_header_timeout":  {desc: "Time allowed to read request headers. A reload applies it to new connections.", def: "5s"},
	"Server.idle_timeout":         {desc: "Keep-alive idle timeout. A reload applies it to new connections.", def: "120s"},
	"Server.idle_release_after":   {desc: "A plain HTTP/1.1 keep-alive connection idle this long gives back its goroutine and buffers (about 18 KiB) until its next request arrives; 0 keeps them. A reload applies a new value. Waking a released connection costs CPU (docs/operations.md), so only a connection idle longer than its clients usually pause should be released. Linux only; not on TLS or PROXY protocol listeners.", def: "10s"},
	"Server.drain_delay":          {desc: "After SIGTERM, keep serving this long (with Connection: close) before closing listeners; 5s suits Kubernetes.", def: "0s"},
	"Server.shutdown_timeout":     {desc: "How long in-flight requests may finish after the listeners close.", def: "30s"},
	"Server.max_header_bytes":     {desc: "Largest request header block (the request line included; net/http allows 4096 bytes more before its 431). A reload applies it to new connections.", def: "65536"},
	"Server.max_body_bytes":       {desc: "Largest request body; routes may override. For a gRPC call, the largest request message instead (a stream may be longer; past it the call ends with grpc-status 8).", def: "10MiB"},
	"Server.trusted_proxies":      {desc: "CIDRs of proxies whose X-Forwarded-For is trusted; the client IP is the rightmost address not in these. With proxy_protocol, only peers in these send the PROXY header (all do when empty); a reload applies to the next connection."},

	"ServerTLS.cert":         {desc: "PEM certificate chain file."},
	"ServerTLS.key":          {desc: "PEM private key file."},
	"ServerTLS.certificates": {desc: "Several certificates, chosen by SNI."},
	"ServerTLS.min_version":  {desc: "Lowest TLS version accepted.", def: `"1.2"`, enum: []string{"1.2", "1.3"}},
	"CertKey.cert":           {desc: "PEM certificate chain file."},
	"CertKey.key":            {desc: "PEM private key file."},

	"Admin.listen": {desc: "Address of the admin listener. A non-loopback address needs a token.", def: `"127.0.0.1:9901"`},
	"Admin.token":  {desc: "Bearer token for /admin/*, /dashboard/ and /debug/pprof/ (/healthz, /readyz and /metrics never need it). A reload rotates it. Use ${VAR}."},

	"Logging.level":      {desc: "Process log level (JSON lines on stderr).", def: "info", enum: []string{"debug", "info", "warn", "error"}},
	"Logging.access_log": {desc: "One JSON line per request on stdout, through a bounded asynchronous buffer.", def: "true"},

	"Tracing.otlp_endpoint": {desc: "OTLP over HTTP endpoint (http:// or https://). Required when tracing is present."},
	"Tracing.sample_ratio":  {desc: "Share of new traces sampled, 0 to 1.", def: "1"},
	"Tracing.service_name":  {desc: "service.name of exported spans.", def: "portico"},

	"Upstream.targets":           {desc: "The target addresses; at least one."},
	"Upstream.balance":           {desc: "Balancing between targets.", def: "round_robin", enum: []string{"round_robin", "least_request", "random", "consistent_hash"}},
	"Upstream.hash_key":          {desc: "For consistent_hash (and only then, where it is required): ip, header:NAME or claim:NAME."},
	"Upstream.timeout":           {desc: "Per attempt, until response headers.", def: "15s"},
	"Upstream.connect_timeout":   {desc: "TCP (and TLS) connect timeout.", def: "2s"},
	"Upstream.read_idle_timeout": {desc: "Once the response headers arrived, the longest the upstream may go without sending a byte of the body (for a request whose body is still streaming through Go's transport, a byte of the request body counts too); past it the exchange is aborted as an upstream failure and the client gets a broken response, never a clean truncated one. Not applied to WebSocket tunnels (server.idle_timeout). 0 turns it off; otherwise at least 1s (docs/upstreams.md).", def: "5m"},
	"Upstream.retries":           {desc: "Retries of idempotent requests on connect error, 502, 503, 504 (any method when no byte was sent); 0 to 10, 0 disables.", def: "1"},
	"Upstream.retry_budget":      {desc: "Retries never exceed this share of requests (0 to 1).", def: "0.2"},
	"Upstream.max_inflight":      {desc: "Concurrent requests to this upstream; beyond it, 503 at once. 0 means the default.", def: "1000"},
	"Upstream.preserve_host":     {desc: "Send the client's Host instead of the target's.", def: "false"},
	"Upstream.http1_client":      {desc: "Client for bodiless GET, HEAD and OPTIONS to http:// targets: lean (on the request's goroutine, docs/upstreams.md) or standard (Go's transport, as every other request).", def: "lean", enum: []string{"lean", "standard"}},
	"Upstream.health_check":      {desc: "Active health checking; off unless present (`health_check: {}` turns it on with defaults)."},
	"Upstream.passive":           {desc: "Passive ejection from live traffic; off unless present."},
	"Upstream.circuit_breaker":   {desc: "Per-upstream circuit breaker; off unless present."},
	"Upstream.tls":               {desc: "TLS settings for https:// targets (custom CA, client certificate for mTLS)."},

	"Target.url":    {desc: "http://, https:// or h2c:// (cleartext HTTP/2) URL of the target; each URL once per upstream."},
	"Target.weight": {desc: "Relative weight, at most 1000000; 0 means the default.", def: "1"},

	"HealthCheck.path":                {desc: "Path probed on each target.", def: "/healthz"},
	"HealthCheck.interval":            {desc: "Time between probes.", def: "5s"},
	"HealthCheck.timeout":             {desc: "Probe timeout; at most interval.", def: "1s"},
	"HealthCheck.expect_status":       {desc: "Status that counts as healthy.", def: "200"},
	"HealthCheck.unhealthy_threshold": {desc: "Consecutive failures that mark a target down.", def: "3"},
	"HealthCheck.healthy_threshold":   {desc: "Consecutive successes that mark it up again.", def: "2"},
	"HealthCheck.all_unhealthy":       {desc: "When every target is down: fail (503) or ignore (panic mode: use them all).", def: "fail", enum: []string{"fail", "ignore"}},

	"Passive.consecutive_failures": {desc: "Consecutive failures that eject a target.", def: "5"},
	"Passive.ejection":             {desc: "How long an ejected target stays out.", def: "30s"},

	"CircuitBreaker.failure_ratio": {desc: "Failure share that opens the breaker, in (0, 1].", def: "0.5"},
	"CircuitBreaker.min_requests":  {desc: "Requests needed before the ratio counts.", def: "20"},
	"CircuitBreaker.open_for":      {desc: "How long the breaker stays open before a trial request.", def: "10s"},

	"UpstreamTLS.ca":          {desc: "PEM CA bundle that verifies the targets."},
	"UpstreamTLS.cert":        {desc: "PEM client certificate (mTLS); needs key."},
	"UpstreamTLS.key":         {desc: "PEM client key; needs cert."},
	"UpstreamTLS.server_name": {desc: "SNI and verified name, when it differs from the target host."},

	"AuthProvider.type":           {desc: "Provider kind.", enum: []string{"jwt", "api_key"}},
	"AuthProvider.jwks_url":       {desc: "jwt: http(s) URL of the key set. Exactly one of jwks_url, jwks_file, secret."},
	"AuthProvider.jwks_file":      {desc: "jwt: key set file."},
	"AuthProvider.secret":         {desc: "jwt: HMAC secret (at least 32 bytes) for HS256/384/512. Use ${VAR}."},
	"AuthProvider.issuer":         {desc: "jwt: required iss claim."},
	"AuthProvider.audiences":      {desc: "jwt: accepted aud values (any one)."},
	"AuthProvider.algorithms":     {desc: "jwt: accepted algorithms; HS* only with secret, and only HS* with secret.", def: "[RS256, ES256, EdDSA] ([HS256] with secret)"},
	"AuthProvider.leeway":         {desc: "jwt: clock skew allowed on exp and nbf.", def: "30s"},
	"AuthProvider.token_from":     {desc: "jwt: where the token is read; exactly one of header, cookie, query.", def: "{header: Authorization}"},
	"AuthProvider.forward_token":  {desc: "jwt: pass the token on to the upstream when this provider accepted the request (false strips it always).", def: "true"},
	"AuthProvider.forward_claims": {desc: "jwt: claim name to request header; inbound copies are always stripped; array claims are joined with spaces."},
	"AuthProvider.header":         {desc: "api_key: header carrying the key.", def: "X-API-Key (when query is not set)"},
	"AuthProvider.query":          {desc: "api_key: query parameter carrying the key, instead of a header."},
	"AuthProvider.keys":           {desc: "api_key: the accepted keys, at least one."},
	"AuthProvider.forward_id":     {desc: "api_key: request header that carries the key id upstream (the key itself is never forwarded or logged)."},

	"TokenSource.header": {desc: "Header name (Authorization expects `Bearer TOKEN`)."},
	"TokenSource.cookie": {desc: "Cookie name."},
	"TokenSource.query":  {desc: "Query parameter name."},

	"APIKey.id":     {desc: "Consumer id, unique within the provider; the rate-limit `consumer` key."},
	"APIKey.sha256": {desc: "Hex SHA-256 of the key (64 hex digits); plaintext keys never go in config."},
	"APIKey.scopes": {desc: "Scopes granted to this consumer."},

	"RateLimits.store":          {desc: "Where counters live. Changing it needs a restart."},
	"RateLimits.expected_nodes": {desc: "Node count assumed by the local fallback before any heartbeat was seen.", def: "1"},
	"RateLimits.mode":           {desc: "exact: one atomic store operation per decision; lease: nodes take small batches of quota and spend them locally.", def: "exact", enum: []string{"exact", "lease"}},
	"RateLimits.on_store_error": {desc: "When the store fails: local (per-node share of the limit), fail_open or fail_closed.", def: "local", enum: []string{"local", "fail_open", "fail_closed"}},
	"RateLimits.headers":        {desc: "Response headers: ietf (RateLimit-Policy, RateLimit), legacy (adds X-RateLimit-*) or none.", def: "ietf", enum: []string{"ietf", "legacy", "none"}},
	"RateLimits.policies":       {desc: "Named policies, referenced by routes and BFFs."},

	"Store.type":     {desc: "memory (per process) or redis (shared).", def: "memory", enum: []string{"memory", "redis"}},
	"Store.url":      {desc: "redis:// or rediss:// URL (user:pass@ for ACL). Exactly one of url and cluster with type redis."},
	"Store.cluster":  {desc: "Redis Cluster seed addresses, host:port."},
	"Store.username": {desc: "ACL user for cluster."},
	"Store.password": {desc: "Password for cluster. Use ${VAR}."},
	"Store.tls":      {desc: "TLS to the store."},
	"Store.timeout":  {desc: "Per store operation.", def: "20ms"},

	"ClientTLS.ca":          {desc: "PEM CA bundle."},
	"ClientTLS.cert":        {desc: "PEM client certificate; needs key."},
	"ClientTLS.key":         {desc: "PEM client key; needs cert."},
	"ClientTLS.server_name": {desc: "Name to verify, when it differs from the address."},

	"Policy.algorithm":      {desc: "Counting algorithm.", enum: []string{"fixed_window", "sliding_window_log", "sliding_window_counter", "token_bucket", "leaky_bucket"}},
	"Policy.limit":          {desc: "Window algorithms: requests per window, at most 2^40 (sliding_window_log: at most 1000)."},
	"Policy.window":         {desc: "Window algorithms: the window length, at most about 407d."},
	"Policy.rate":           {desc: "Bucket algorithms: tokens added per `per`."},
	"Policy.per":            {desc: "Bucket algorithms: the refill period of `rate`."},
	"Policy.burst":          {desc: "Bucket algorithms: capacity, at most 2^40; refilling all of it at rate/per must take under about 35 years.", def: "token_bucket: rate; leaky_bucket: 1"},
	"Policy.max_delay":      {desc: "leaky_bucket only: early requests wait up to this instead of a 429.", def: "0s"},
	"Policy.key":            {desc: "What is counted: ip, header:NAME, claim:NAME, consumer, route, global, joined with +."},
	"Policy.mode":           {desc: "Overrides rate_limits.mode.", def: "rate_limits.mode", enum: []string{"exact", "lease"}},
	"Policy.on_store_error": {desc: "Overrides rate_limits.on_store_error.", def: "rate_limits.on_store_error", enum: []string{"local", "fail_open", "fail_closed"}},
	"Policy.shadow":         {desc: "Count and log, never block.", def: "false"},
	"Policy.cost":           {desc: "Units one request takes; at most limit (burst for buckets).", def: "1"},
	"Policy.on_missing_key": {desc: "A request without the key's part: deny (429), skip (unlimited) or shared (one shared bucket). A deny policy keyed on a claim or consumer cannot be used without auth.", def: "deny", enum: []string{"deny", "skip", "shared"}},
	"Policy.overrides":      {desc: "Per consumer (API key id) or claim value: other numbers, e.g. plans. Needs a key with consumer or claim:NAME."},

	"PolicyOverride.limit":  {desc: "Window algorithms: replaces limit."},
	"PolicyOverride.window": {desc: "Window algorithms: replaces window."},
	"PolicyOverride.rate":   {desc: "Bucket algorithms: replaces rate."},
	"PolicyOverride.per":    {desc: "Bucket algorithms: replaces per."},
	"PolicyOverride.burst":  {desc: "Bucket algorithms: replaces burst."},

	"Route.name":                  {desc: "Required, unique; the metrics label. Letters, digits, '.', '_', '-'."},
	"Route.match":                 {desc: "Which requests the route takes."},
	"Route.upstream":              {desc: "The upstream; exactly one of upstream and upstreams."},
	"Route.upstreams":             {desc: "Weighted split between upstreams."},
	"Route.rewrite":               {desc: "Changes the path sent upstream: path or strip_prefix."},
	"Route.auth":                  {desc: "Auth providers, any one of which admits the request. A route needs auth or public: true."},
	"Route.public":                {desc: "Marks a route without auth as intended.", def: "false"},
	"Route.scopes":                {desc: "Scopes all required (needs auth); 403 when missing."},
	"Route.rate_limit":            {desc: "Policies applied, all of them."},
	"Route.timeout":               {desc: "Whole exchange until response headers, retries included; 0 means only the upstream's per-attempt timeout.", def: "0s"},
	"Route.websocket":             {desc: "Let WebSocket handshakes through; the connection then lives by idle timeouts. The route's upstreams must not have h2c:// targets (no Upgrade over HTTP/2).", def: "false"},
	"Route.cors":                  {desc: "CORS; preflights are answered by the gateway."},
	"Route.max_body_bytes":        {desc: "Overrides server.max_body_bytes; 0 means the server's. For a gRPC call it bounds each request message, not the stream.", def: "server.max_body_bytes"},
	"Route.request_headers":       {desc: "Headers set or removed on the way upstream."},
	"Route.response_headers":      {desc: "Headers set or removed on the way back."},
	"Route.compression":           {desc: "Response encodings offered, in order of preference.", enum: []string{"zstd", "br", "gzip"}},
	"Route.compression_min_bytes": {desc: "Smallest body compressed; at most 64MiB.", def: "1KiB"},

	"Match.host":    {desc: "Exact host or *.suffix (any depth of subdomain, not the apex); case-insensitive; no port. Empty: any host."},
	"Match.path":    {desc: "Required: exact (/a/b), {param} segments (/posts/{id}) or prefix (/api/* matches /api, /api/ and /api/x)."},
	"Match.methods": {desc: "Upper-case methods; empty means every method but CONNECT and TRACE, which a route takes only when it lists them."},
	"Match.headers": {desc: "Headers that must have these exact values."},
	"Match.query":   {desc: "Query parameters that must have these exact values."},

	"WeightedUpstream.name":   {desc: "An upstream name."},
	"WeightedUpstream.weight": {desc: "Relative share, from 1 to 1000000."},

	"Rewrite.path":         {desc: "New path; may use the {param}s of match.path and, on a prefix route, {*} for the rest."},
	"Rewrite.strip_prefix": {desc: "Prefix of match.path removed before forwarding; not /."},

	"CORS.origins":           {desc: "Allowed origins (scheme://host[:port], printable ASCII, no path, userinfo, query or fragment; * only as a leading *. label) or *; at least one."},
	"CORS.methods":           {desc: "Allowed methods for preflights."},
	"CORS.headers":           {desc: "Allowed request headers."},
	"CORS.expose_headers":    {desc: "Response headers exposed to scripts."},
	"CORS.allow_credentials": {desc: "Allow credentials (never with origin *).", def: "false"},
	"CORS.max_age":           {desc: "How long browsers may cache a preflight.", def: "0s"},

	"HeaderRules.set":    {desc: "Header name to value (replaces)."},
	"HeaderRules.remove": {desc: "Header names removed."},

	"BFF.owner":                  {desc: "Owning team, for humans and the admin API."},
	"BFF.prefix":                 {desc: "Path prefix of all endpoints, e.g. /mobile; prefix or host (or both) is required."},
	"BFF.host":                   {desc: "Host of all endpoints, exact or *.suffix."},
	"BFF.auth":                   {desc: "As on routes; a BFF needs auth or public: true."},
	"BFF.public":                 {desc: "As on routes.", def: "false"},
	"BFF.scopes":                 {desc: "As on routes."},
	"BFF.rate_limit":             {desc: "As on routes."},
	"BFF.compression":            {desc: "As on routes.", enum: []string{"zstd", "br", "gzip"}},
	"BFF.compression_min_bytes":  {desc: "Smallest body compressed; at most 64MiB.", def: "1KiB"},
	"BFF.cors":                   {desc: "As on routes."},
	"BFF.max_backend_body_bytes": {desc: "Larger backend bodies fail that backend (so does JSON deeper than 64 levels).", def: "5MiB"},
	"BFF.endpoints":              {desc: "The aggregated endpoints; at least one."},

	"Endpoint.name":     {desc: "Unique within the BFF; metrics and SLOs call it BFF/NAME."},
	"Endpoint.path":     {desc: "Path pattern under the prefix, as route paths."},
	"Endpoint.method":   {desc: "Method served.", def: "GET"},
	"Endpoint.timeout":  {desc: "Whole endpoint deadline; 0 means none beyond the backends' own.", def: "0s"},
	"Endpoint.backends": {desc: "The upstream calls; at least one."},

	"Backend.name":     {desc: "Unique within the endpoint; used by after, Portico-Partial, metrics and errors.", def: "into, else upstream"},
	"Backend.upstream": {desc: "The upstream called."},
	"Backend.method":   {desc: "Method of the call.", def: "GET"},
	"Backend.path":     {desc: "Path template: {param}, {claims.X}, {query.X}, {header.X}, and {OTHER.field} for the backend named in after."},
	"Backend.into":     {desc: "Key under which the shaped result goes in the response, one backend per key; empty merges it into the top level."},
	"Backend.fields":   {desc: "Field paths kept (items[].id); applied first."},
	"Backend.drop":     {desc: "Field paths removed; after fields."},
	"Backend.rename":   {desc: "Field path to new key name; after drop."},
	"Backend.pick":     {desc: "Field path whose value replaces the whole body; after rename."},
	"Backend.after":    {desc: "Name of a backend of the same endpoint this one waits for (no cycles)."},
	"Backend.optional": {desc: "A failure leaves the key out and adds the name to Portico-Partial instead of failing the endpoint.", def: "false"},
	"Backend.timeout":  {desc: "Per call; at most the endpoint timeout.", def: "the endpoint's remaining time less a small reserve"},

	"SLO.name":          {desc: "Unique SLO name; the metrics label."},
	"SLO.route":         {desc: "A route name or BFF/ENDPOINT."},
	"SLO.objective":     {desc: "Percent of good requests, strictly between 0 and 100, e.g. 99.9. Bad: 5xx including the gateway's own 502/503/504."},
	"SLO.window":        {desc: "Error-budget window, at least 1m.", def: "28d"},
	"SLO.latency":       {desc: "Optional: slower requests are bad too.", def: "0s (off)"},
	"SLO.alert_webhook": {desc: "http(s) URL that receives alert notifications."},
}

// schemaRequired lists the keys the validator always requires, per type,
// so editors flag them as missing too.
var schemaRequired = map[string][]string{
	"Target":           {"url"},
	"AuthProvider":     {"type"},
	"APIKey":           {"id", "sha256"},
	"Policy":           {"algorithm", "key"},
	"Route":            {"name", "match"},
	"Match":            {"path"},
	"WeightedUpstream": {"name", "weight"},
	"CertKey":          {"cert", "key"},
	"Upstream":         {"targets"},
	"BFF":              {"endpoints"},
	"Endpoint":         {"name", "path", "backends"},
	"Backend":          {"upstream", "path"},
	"SLO":              {"name", "route", "objective"},
}

// envPattern accepts a ${VAR} reference where a number or boolean goes.
const envPattern = `^\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}$`

type docRow struct {
	path, typ string
	doc       fieldDoc
}

// docRows walks the types like yamlPaths, with each key's type and docs.
func docRows(t *testing.T, typ reflect.Type, prefix string, out *[]docRow) {
	for typ.Kind() == reflect.Pointer {
		typ = typ.Elem()
	}
	switch typ.Kind() {
	case reflect.Struct:
		if typ == durationType || typ == sizeType {
			return
		}
		for i := range typ.NumField() {
			f := typ.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if name == "" || name == "-" {
				continue
			}
			d, ok := fieldDocs[typ.Name()+"."+name]
			if !ok {
				t.Errorf("fieldDocs has no entry %q", typ.Name()+"."+name)
			}
			p := joinField(prefix, name)
			*out = append(*out, docRow{path: p, typ: typeName(f.Type), doc: d})
			docRows(t, f.Type, p, out)
		}
	case reflect.Slice:
		docRows(t, typ.Elem(), prefix+"[]", out)
	case reflect.Map:
		docRows(t, typ.Elem(), prefix+".<name>", out)
	}
}

func typeName(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case t == durationType:
		return "duration"
	case t == sizeType:
		return "size"
	}
	switch t.Kind() {
	case reflect.String:
		return "string"
	case reflect.Int, reflect.Int64:
		return "integer"
	case reflect.Float64:
		return "number"
	case reflect.Bool:
		return "boolean"
	case reflect.Slice:
		return "list of " + typeName(t.Elem())
	case reflect.Map:
		return "map of " + typeName(t.Elem())
	}
	return "mapping"
}

// genSchema builds the JSON Schema of the configuration.
func genSchema(t *testing.T) []byte {
	defs := map[string]any{
		"Duration": map[string]any{
			"description": "A duration with units ms, s, m, h, d, w (e.g. 300ms, 1m30s, 28d), or 0.",
			"anyOf": []any{
				map[string]any{"type": "string", "pattern": `^(0|([0-9]+(\.[0-9]+)?(ms|s|m|h|d|w))+)$|\$\{`},
				map[string]any{"const": 0},
			},
		},
		"Size": map[string]any{
			"description": "A byte count: an integer, or a number with KiB, MiB, GiB, KB, MB or GB.",
			"type":        []string{"integer", "string"},
			"minimum":     0,
			"pattern":     `^[0-9]+ ?(B|KiB|MiB|GiB|KB|MB|GB)?$|\$\{`,
		},
	}
	var prop func(typ reflect.Type) map[string]any
	var object func(typ reflect.Type) map[string]any
	object = func(typ reflect.Type) map[string]any {
		props := map[string]any{}
		for i := range typ.NumField() {
			f := typ.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if name == "" || name == "-" {
				continue
			}
			p := prop(f.Type)
			d := fieldDocs[typ.Name()+"."+name]
			p["description"] = d.desc
			if len(d.enum) > 0 {
				if typ.Name() == "Config" && name == "version" {
					p["enum"] = []int{1}
				} else if _, isArray := p["items"]; isArray {
					p["items"].(map[string]any)["enum"] = d.enum
				} else {
					p["enum"] = d.enum
				}
			}
			if d.def != "" && !strings.Contains(d.def, " ") {
				var v any
				if err := json.Unmarshal([]byte(d.def), &v); err != nil {
					v = d.def
				}
				p["default"] = v
			}
			props[name] = p
		}
		obj := map[string]any{"type": "object", "additionalProperties": false, "properties": props}
		if req := schemaRequired[typ.Name()]; req != nil {
			obj["required"] = req
		}
		return obj
	}
	prop = func(typ reflect.Type) map[string]any {
		for typ.Kind() == reflect.Pointer {
			typ = typ.Elem()
		}
		switch {
		case typ == durationType:
			return map[string]any{"$ref": "#/$defs/Duration"}
		case typ == sizeType:
			return map[string]any{"$ref": "#/$defs/Size"}
		}
		switch typ.Kind() {
		case reflect.Struct:
			if _, ok := defs[typ.Name()]; !ok {
				defs[typ.Name()] = nil // reserve against recursion
				defs[typ.Name()] = object(typ)
			}
			return map[string]any{"$ref": "#/$defs/" + typ.Name()}
		case reflect.Slice:
			return map[string]any{"type": "array", "items": prop(typ.Elem())}
		case reflect.Map:
			return map[string]any{"type": "object", "additionalProperties": prop(typ.Elem())}
		case reflect.String:
			return map[string]any{"type": "string"}
		case reflect.Int, reflect.Int64:
			return map[string]any{"type": []string{"integer", "string"}, "pattern": envPattern}
		case reflect.Float64:
			return map[string]any{"type": []string{"number", "string"}, "pattern": envPattern}
		case reflect.Bool:
			return map[string]any{"type": []string{"boolean", "string"}, "pattern": envPattern}
		}
		t.Fatalf("no schema for %s", typ)
		return nil
	}
	root := object(reflect.TypeFor[Config]())
	root["$schema"] = "https://json-schema.org/draft/2020-12/schema"
	root["$id"] = "https://github.com/portico-gw/portico/docs/portico.schema.json"
	root["title"] = "Portico configuration"
	root["description"] = "One Portico configuration file (version 1). Several files merge into one configuration; see docs/configuration.md."
	root["required"] = []string{"version"}
	root["patternProperties"] = map[string]any{"^x-": map[string]any{"description": "Extension keys are ignored; use them to hold YAML anchors."}}
	root["$defs"] = defs
	out, err := json.MarshalIndent(root, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append(out, '\n')
}

type docSection struct {
	key, title, intro, example string
}

var docSections = []docSection{
	{key: "version", title: "version", intro: "Every file starts with `version: 1`."},
	{key: "server", title: "server", intro: "The public listener. Changing `listen` or the TLS listener setup needs a restart; certificates reload.", example: `server:
  listen: ":8443"
  tls: {cert: /etc/portico/gw.crt, key: /etc/portico/gw.key, min_version: "1.3"}
  http_redirect_listen: ":8080"
  drain_delay: 5s
  max_body_bytes: 10MiB
  trusted_proxies: [10.0.0.0/8]`},
	{key: "admin", title: "admin", intro: "The admin listener: `/healthz`, `/readyz`, `/metrics` (never need the token), `/admin/*`, `/dashboard/` and `/debug/pprof/` (bearer token). A non-loopback `listen` without a `token` is a validation error (loopback: 127.0.0.0/8, ::1, localhost).", example: `admin:
  listen: "0.0.0.0:9901"
  token: ${PORTICO_ADMIN_TOKEN}`},
	{key: "logging", title: "logging", example: `logging: {level: info, access_log: true}`},
	{key: "tracing", title: "tracing", intro: "Present means export; absent means none.", example: `tracing:
  otlp_endpoint: http://127.0.0.1:4318
  sample_ratio: 0.1`},
	{key: "upstreams", title: "upstreams", intro: "Each upstream is a pool of targets with its balancer, timeouts, retries, load shedding and (when configured) health checks, passive ejection and a circuit breaker. `health_check: {}` turns checks on with all defaults. `max_inflight: 0` (like any zero number here) means the default.", example: `upstreams:
  posts:
    targets: [{url: "http://10.0.1.5:8080"}, {url: "http://10.0.1.6:8080", weight: 2}]
    balance: least_request
    timeout: 5s
    retries: 2
    health_check: {path: /healthz, interval: 5s}
    circuit_breaker: {}`},
	{key: "auth", title: "auth", intro: "Providers are `type: jwt` (exactly one of `jwks_url`, `jwks_file`, `secret`) or `type: api_key`. Keys of the other type are errors.", example: `auth:
  users-jwt:
    type: jwt
    jwks_url: https://id.example.com/.well-known/jwks.json
    issuer: https://id.example.com
    audiences: [portico]
    forward_claims: {sub: X-User-Id}
  partner-keys:
    type: api_key
    keys: [{id: acme, sha256: "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae", scopes: [posts:read]}]
    forward_id: X-Consumer-Id`},
	{key: "rate_limits", title: "rate_limits", intro: "Window algorithms (`fixed_window`, `sliding_window_log`, `sliding_window_counter`) take `limit` and `window`; bucket algorithms (`token_bucket`, `leaky_bucket`) take `rate`, `per` and `burst`; `max_delay` is for `leaky_bucket` only. Each policy's `mode` and `on_store_error` default to the global ones. Overrides take the numbers of their policy's algorithm.", example: `rate_limits:
  store: {type: redis, url: "rediss://portico:${REDIS_PASSWORD}@redis:6379/0"}
  mode: lease
  policies:
    per-user: {algorithm: sliding_window_counter, limit: 100, window: 1m, key: claim:sub}
    per-ip:   {algorithm: token_bucket, rate: 50, per: 1s, burst: 100, key: ip}
    partners: {algorithm: fixed_window, limit: 100, window: 1m, key: consumer, overrides: {acme: {limit: 1000}}}`},
	{key: "routes", title: "routes", intro: "A route needs `name`, `match.path`, exactly one of `upstream`/`upstreams`, and `auth` or `public: true` (not both). Two routes (or a route and a BFF endpoint) with the same host, path and method are an error naming both; a route without `methods` takes every method but CONNECT and TRACE (those get 405 unless a route lists them).", example: `routes:
  - name: posts-api
    match: {host: api.example.com, path: "/api/posts/{id}", methods: [GET]}
    upstream: posts
    rewrite: {path: "/v1/posts/{id}"}
    auth: [users-jwt]
    scopes: [posts:read]
    rate_limit: [per-user]
  - name: static
    match: {path: /assets/*}
    upstreams: [{name: cdn, weight: 90}, {name: cdn-next, weight: 10}]
    rewrite: {strip_prefix: /assets}
    public: true`},
	{key: "bffs", title: "bffs", intro: "A BFF groups aggregated endpoints under a `prefix` and/or `host`. An endpoint's path is prefix + path. Backends run in parallel unless `after` names another backend of the same endpoint (no cycles); names default to `into`, else the upstream, and are unique within the endpoint. Shaping runs `fields`, `drop`, `rename`, `pick`, then `into`. Field paths are dot paths with `[]` for every array item.", example: `bffs:
  mobile:
    prefix: /mobile
    auth: [users-jwt]
    endpoints:
      - name: feed
        path: /feed
        timeout: 800ms
        backends:
          - {upstream: users, path: "/users/{claims.sub}", into: user, fields: [name, avatar_url]}
          - {upstream: posts, path: "/feed/{claims.sub}?limit=20", into: posts, fields: ["items[].id", "items[].text"]}
          - {name: ads, upstream: ads, path: "/slots?user={user.id}", after: user, into: ads, optional: true}`},
	{key: "slos", title: "slos", example: `slos:
  - name: mobile-feed-availability
    route: mobile/feed
    objective: 99.9
    latency: 300ms`},
}

func genDoc(t *testing.T) []byte {
	var rows []docRow
	docRows(t, reflect.TypeFor[Config](), "", &rows)
	var b bytes.Buffer
	b.WriteString(`# Portico configuration reference

<!-- Generated by go test ./internal/config -update from internal/config/types.go
     and internal/config/docgen_test.go; edit those, not this file. -->

Portico reads YAML: ` + "`portico run -c FILE_OR_DIR [-c ...]`" + `. This page lists every key, its type, its
default and what it does. ` + "`docs/portico.schema.json`" + ` is the same schema for editors (JSON Schema 2020-12;
with the YAML language server add ` + "`# yaml-language-server: $schema=../docs/portico.schema.json`" + `).

## Files and merging

- A directory loads every ` + "`*.yaml`" + ` and ` + "`*.yml`" + ` file directly in it, in lexical order: no recursion, names
  starting with ` + "`.`" + ` skipped, symlinks followed (as Kubernetes mounts ConfigMaps).
- Every file says ` + "`version: 1`" + `. All files merge into one configuration:
  ` + "`server`, `admin`, `logging`, `tracing`" + ` and the ` + "`rate_limits`" + ` settings other than ` + "`policies`" + ` may appear in
  at most one file; names of upstreams, auth providers, policies, routes, BFFs and SLOs are unique across
  files (a duplicate is an error naming both places); a name defined in one file can be used from any other.
- Two routes or BFF endpoints with the same host, path and method are an error naming both.
- Top-level keys starting with ` + "`x-`" + ` are ignored: use them to hold YAML anchors (` + "`&name`" + `, ` + "`*name`" + `, ` + "`<<: *name`" + `).

## Values

- ` + "`${VAR}`" + ` expands from the environment inside scalar values (never keys); an unset ` + "`VAR`" + ` is an error at
  that value. ` + "`${VAR:-default}`" + ` uses the default when ` + "`VAR`" + ` is unset or empty; the default is plain
  text (` + "`${...}`" + ` inside it is an error). ` + "`$$`" + ` is a literal ` + "`$`" + `, in a default too; a ` + "`$`" + `
  before anything else stays as it is. Expanded text is never parsed as YAML. Inside a flow collection
  (` + "`{...}`" + ` or ` + "`[...]`" + `) quote such values: ` + "`{token: \"${TOKEN}\"}`" + `, since braces end the collection.
- **duration**: a number with a unit, ` + "`ms`, `s`, `m`, `h`, `d`" + ` (24h) or ` + "`w`" + ` (7d), combinable (` + "`1m30s`" + `), or ` + "`0`" + `. A
  bare number is an error, so a forgotten unit never means nanoseconds.
- **size**: an integer byte count, or a number with ` + "`KiB`, `MiB`, `GiB`" + ` (binary) or ` + "`KB`, `MB`, `GB`" + ` (decimal).
- A number written as zero means "not set" and takes the default (` + "`max_inflight: 0`" + ` is 1000), except where
  zero is meaningful and documented (` + "`retries: 0`" + ` means no retries, ` + "`retry_budget: 0`" + ` none, ` + "`sample_ratio: 0`" + ` none).
- Names (upstreams, auth providers, policies, routes, BFFs, endpoints, SLOs) use letters, digits, ` + "`.`, `_`" + ` and ` + "`-`" + `.

## Validation

Unknown keys and wrong types are errors. ` + "`portico validate -c ...`" + ` prints every problem at once, one per line:

` + "```" + `
FILE:LINE:COL: FIELD: message
mobile.yaml:12:9: bffs.mobile.endpoints[0].backends[1].upstream: unknown upstream "post"
platform.yaml:3:5: routes[0].name: duplicate route "x" (first defined at team.yaml:7:5)
` + "```" + `

A YAML syntax error has ` + "`YAML syntax`" + ` for its FIELD; a problem with a whole file or path (unreadable, missing, a
directory without YAML files) names only it: ` + "`FILE: message`" + `. A valid configuration gets exit status 0 and a
one-line summary (` + "`ok: 3 file(s), 6 route(s), ...`" + `); an invalid one exit status 1.

## Reload

SIGHUP or ` + "`POST /admin/reload`" + ` loads the files again; a configuration with errors is refused and the running
one stays. Everything applies on reload except ` + "`server.listen`" + `, enabling or disabling ` + "`server.tls`" + `,
` + "`server.tls.min_version`" + `, ` + "`server.h2c`" + `, ` + "`server.http_redirect_listen`" + `, ` + "`server.proxy_protocol`" + `, ` + "`admin.listen`" + ` and
` + "`rate_limits.store`" + `, which need a restart (certificates themselves reload). A reload that changes
` + "`server.read_header_timeout`" + `, ` + "`server.idle_timeout`" + ` or ` + "`server.max_header_bytes`" + ` applies them to new
connections and closes idle keep-alive ones (docs/operations.md).

FIELD paths below use ` + "`[]`" + ` for list items and ` + "`<name>`" + ` for map keys; error messages show the key, or the
index within the file (the first route of ` + "`team.yaml`" + ` is ` + "`routes[0]`" + ` however many routes other files hold).
`)
	for _, s := range docSections {
		fmt.Fprintf(&b, "\n## %s\n\n", s.title)
		if s.intro != "" {
			b.WriteString(s.intro + "\n\n")
		}
		if s.example != "" {
			b.WriteString("```yaml\n" + s.example + "\n```\n\n")
		}
		b.WriteString("| key | type | default | meaning |\n|---|---|---|---|\n")
		for _, r := range rows {
			if r.path != s.key && !strings.HasPrefix(r.path, s.key+".") && !strings.HasPrefix(r.path, s.key+"[") {
				continue
			}
			meaning := r.doc.desc
			if len(r.doc.enum) > 0 && r.path != "version" {
				meaning += " One of: `" + strings.Join(r.doc.enum, "`, `") + "`."
			}
			def := ""
			if r.doc.def != "" {
				def = "`" + r.doc.def + "`"
				if strings.Contains(r.doc.def, " ") && !strings.HasPrefix(r.doc.def, "[") && !strings.HasPrefix(r.doc.def, "{") {
					def = r.doc.def
				}
			}
			fmt.Fprintf(&b, "| `%s` | %s | %s | %s |\n", r.path, r.typ, def, strings.ReplaceAll(meaning, "|", `\|`))
		}
	}
	return b.Bytes()
}

func TestDocsUpToDate(t *testing.T) {
	for _, f := range []struct {
		path string
		gen  func(*testing.T) []byte
	}{
		{"../../docs/portico.schema.json", genSchema},
		{"../../docs/configuration.md", genDoc},
	} {
		want := f.gen(t)
		if *update {
			if err := os.MkdirAll("../../docs", 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(f.path, want, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(f.path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s is out of date: run go test ./internal/config -update", f.path)
		}
	}
	for k := range fieldDocs {
		typ, key, _ := strings.Cut(k, ".")
		if !slices.ContainsFunc(configTypes(), func(t reflect.Type) bool { return t.Name() == typ && hasYAMLKey(t, key) }) {
			t.Errorf("fieldDocs has %q, which is no yaml key", k)
		}
	}
}

// configTypes returns every struct type reachable from Config.
func configTypes() []reflect.Type {
	var out []reflect.Type
	var walk func(reflect.Type)
	walk = func(t reflect.Type) {
		for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Map {
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct || t == durationType || t == sizeType || slices.Contains(out, t) {
			return
		}
		out = append(out, t)
		for i := range t.NumField() {
			walk(t.Field(i).Type)
		}
	}
	walk(reflect.TypeFor[Config]())
	return out
}

func hasYAMLKey(t reflect.Type, key string) bool {
	for i := range t.NumField() {
		if name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ","); name == key {
			return true
		}
	}
	return false
}
