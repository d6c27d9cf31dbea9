package config

// The types below are the whole configuration schema. Field names follow the
// YAML keys of DESIGN.md section 4; every stage receives these structs (never
// a map[string]any). Fields tagged yaml:"-" are filled by the loader.
//
// Pointers mark fields whose zero value is meaningful and whose default is not
// zero (retries: 0 is "no retries", default 1). After Load, defaults are
// applied and such pointers are never nil.
//
// Every key's type, default and meaning is in docs/configuration.md,
// generated from these types and the table in docgen_test.go (a test keeps
// the two in step); the defaults themselves are applied in defaults.go. After
// Load, map values and list items are never nil, Upstream, AuthProvider,
// Policy and BFF carry their map key in Name, and Backend.Name is set.

// Config is one merged, validated configuration.
type Config struct {
	Version    int                      `yaml:"version"`
	Server     Server                   `yaml:"server"`
	Admin      Admin                    `yaml:"admin"`
	Logging    Logging                  `yaml:"logging"`
	Tracing    *Tracing                 `yaml:"tracing"`
	Upstreams  map[string]*Upstream     `yaml:"upstreams"`
	Auth       map[string]*AuthProvider `yaml:"auth"`
	RateLimits RateLimits               `yaml:"rate_limits"`
	Routes     []*Route                 `yaml:"routes"`
	BFFs       map[string]*BFF          `yaml:"bffs"`
	SLOs       []*SLO                   `yaml:"slos"`

	// Files lists the files the config was loaded from, in load order.
	Files []string `yaml:"-"`
}

// Server configures the public listener.
type Server struct {
	Listen             string     `yaml:"listen"`
	TLS                *ServerTLS `yaml:"tls"`
	H2C                bool       `yaml:"h2c"`
	HTTPRedirectListen string     `yaml:"http_redirect_listen"`
	ProxyProtocol      bool       `yaml:"proxy_protocol"`
	ReadHeaderTimeout  Duration   `yaml:"read_header_timeout"`
	IdleTimeout        Duration   `yaml:"idle_timeout"`
	IdleReleaseAfter   *Duration  `yaml:"idle_release_after"`
	DrainDelay         Duration   `yaml:"drain_delay"`
	ShutdownTimeout    Duration   `yaml:"shutdown_timeout"`
	MaxHeaderBytes     Size       `yaml:"max_header_bytes"`
	MaxBodyBytes       Size       `yaml:"max_body_bytes"`
	TrustedProxies     []string   `yaml:"trusted_proxies"`
}

// ServerTLS is the listener's certificate set. Either Cert and Key, or
// Certificates (chosen by SNI), or both.
type ServerTLS struct {
	Cert         string    `yaml:"cert"`
	Key          string    `yaml:"key"`
	Certificates []CertKey `yaml:"certificates"`
	MinVersion   string    `yaml:"min_version"` // "1.2" (default) or "1.3"
}

// CertKey is one certificate and its private key, as PEM file paths.
type CertKey struct {
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
}

// Admin configures the admin listener.
type Admin struct {
	Listen string `yaml:"listen"`
	Token  string `yaml:"token"`
}

// Logging configures the process log and the access log.
type Logging struct {
	Level     string `yaml:"level"`
	AccessLog *bool  `yaml:"access_log"`
}

// Tracing configures OTLP export. Absent means no export.
type Tracing struct {
	OTLPEndpoint string   `yaml:"otlp_endpoint"`
	SampleRatio  *float64 `yaml:"sample_ratio"`
	ServiceName  string   `yaml:"service_name"`
}

// Upstream is a named pool of targets.
type Upstream struct {
	Name           string   `yaml:"-"`
	Targets        []Target `yaml:"targets"`
	Balance        string   `yaml:"balance"`  // round_robin | least_request | random | consistent_hash
	HashKey        string   `yaml:"hash_key"` // header:NAME | claim:NAME | ip
	Timeout        Duration `yaml:"timeout"`
	ConnectTimeout Duration `yaml:"connect_timeout"`
	// ReadIdleTimeout bounds the silence of an answer's body: nil is the
	// default (DefaultReadIdleTimeout), 0 turns it off.
	ReadIdleTimeout *Duration       `yaml:"read_idle_timeout"`
	Retries         *int            `yaml:"retries"`
	RetryBudget     *float64        `yaml:"retry_budget"`
	MaxInflight     int             `yaml:"max_inflight"`
	PreserveHost    bool            `yaml:"preserve_host"`
	HTTP1Client     string          `yaml:"http1_client"` // lean | standard
	HealthCheck     *HealthCheck    `yaml:"health_check"`
	Passive         *Passive        `yaml:"passive"`
	CircuitBreaker  *CircuitBreaker `yaml:"circuit_breaker"`
	TLS             *UpstreamTLS    `yaml:"tls"`
}

// Target is one upstream address.
type Target struct {
	URL    string `yaml:"url"` // http://, https:// or h2c://
	Weight int    `yaml:"weight"`
}

// HealthCheck configures active health checking.
type HealthCheck struct {
	Path               string   `yaml:"path"`
	Interval           Duration `yaml:"interval"`
	Timeout            Duration `yaml:"timeout"`
	ExpectStatus       int      `yaml:"expect_status"`
	UnhealthyThreshold int      `yaml:"unhealthy_threshold"`
	HealthyThreshold   int      `yaml:"healthy_threshold"`
	AllUnhealthy       string   `yaml:"all_unhealthy"` // fail | ignore
}

// Passive configures outlier ejection from live traffic.
type Passive struct {
	ConsecutiveFailures int      `yaml:"consecutive_failures"`
	Ejection            Duration `yaml:"ejection"`
}

// CircuitBreaker configures the per-upstream breaker.
type CircuitBreaker struct {
	FailureRatio float64  `yaml:"failure_ratio"`
	MinRequests  int      `yaml:"min_requests"`
	OpenFor      Duration `yaml:"open_for"`
}

// UpstreamTLS configures TLS to https:// targets.
type UpstreamTLS struct {
	CA         string `yaml:"ca"`
	Cert       string `yaml:"cert"`
	Key        string `yaml:"key"`
	ServerName string `yaml:"server_name"`
}

// AuthProvider is a JWT or API key provider; Type says which fields apply.
type AuthProvider struct {
	Name string `yaml:"-"`
	Type string `yaml:"type"` // jwt | api_key

	// jwt
	JWKSURL       string            `yaml:"jwks_url"`
	JWKSFile      string            `yaml:"jwks_file"`
	Secret        string            `yaml:"secret"`
	Issuer        string            `yaml:"issuer"`
	Audiences     []string          `yaml:"audiences"`
	Algorithms    []string          `yaml:"algorithms"`
	Leeway        Duration          `yaml:"leeway"`
	TokenFrom     *TokenSource      `yaml:"token_from"`
	ForwardToken  *bool             `yaml:"forward_token"`
	ForwardClaims map[string]string `yaml:"forward_claims"` // claim -> header

	// api_key
	Header    string   `yaml:"header"`
	Query     string   `yaml:"query"`
	Keys      []APIKey `yaml:"keys"`
	ForwardID string   `yaml:"forward_id"`
}

// TokenSource names where a JWT is read from; exactly one field is set.
type TokenSource struct {
	Header string `yaml:"header"`
	Cookie string `yaml:"cookie"`
	Query  string `yaml:"query"`
}

// APIKey is one consumer's key, stored as the hex SHA-256 of the key.
type APIKey struct {
	ID     string   `yaml:"id"`
	SHA256 string   `yaml:"sha256"`
	Scopes []string `yaml:"scopes"`
}

// RateLimits holds the store settings and the named policies.
type RateLimits struct {
	Store         Store              `yaml:"store"`
	ExpectedNodes int                `yaml:"expected_nodes"`
	Mode          string             `yaml:"mode"`           // exact | lease
	OnStoreError  string             `yaml:"on_store_error"` // local | fail_open | fail_closed
	Headers       string             `yaml:"headers"`        // ietf | legacy | none
	Policies      map[string]*Policy `yaml:"policies"`
}

// Store selects where rate-limit state lives.
type Store struct {
	Type     string     `yaml:"type"` // memory | redis
	URL      string     `yaml:"url"`
	Cluster  []string   `yaml:"cluster"`
	Username string     `yaml:"username"`
	Password string     `yaml:"password"`
	TLS      *ClientTLS `yaml:"tls"`
	Timeout  Duration   `yaml:"timeout"`
}

// ClientTLS configures TLS to a store.
type ClientTLS struct {
	CA         string `yaml:"ca"`
	Cert       string `yaml:"cert"`
	Key        string `yaml:"key"`
	ServerName string `yaml:"server_name"`
}

// Policy is one named rate-limit policy.
type Policy struct {
	Name         string                     `yaml:"-"`
	Algorithm    string                     `yaml:"algorithm"`
	Limit        int64                      `yaml:"limit"`
	Window       Duration                   `yaml:"window"`
	Rate         int64                      `yaml:"rate"`
	Per          Duration                   `yaml:"per"`
	Burst        int64                      `yaml:"burst"`
	MaxDelay     Duration                   `yaml:"max_delay"`
	Key          string                     `yaml:"key"`
	Mode         string                     `yaml:"mode"`
	OnStoreError string                     `yaml:"on_store_error"`
	Shadow       bool                       `yaml:"shadow"`
	Cost         int64                      `yaml:"cost"`
	OnMissingKey string                     `yaml:"on_missing_key"` // deny | skip | shared
	Overrides    map[string]*PolicyOverride `yaml:"overrides"`
}

// PolicyOverride replaces a policy's numbers for one consumer or claim value.
type PolicyOverride struct {
	Limit  int64    `yaml:"limit"`
	Window Duration `yaml:"window"`
	Rate   int64    `yaml:"rate"`
	Per    Duration `yaml:"per"`
	Burst  int64    `yaml:"burst"`
}

// Route maps a public match onto an upstream.
type Route struct {
	Name            string             `yaml:"name"`
	Match           Match              `yaml:"match"`
	Upstream        string             `yaml:"upstream"`
	Upstreams       []WeightedUpstream `yaml:"upstreams"`
	Rewrite         *Rewrite           `yaml:"rewrite"`
	Auth            []string           `yaml:"auth"`
	Public          bool               `yaml:"public"`
	Scopes          []string           `yaml:"scopes"`
	RateLimit       []string           `yaml:"rate_limit"`
	Timeout         Duration           `yaml:"timeout"`
	WebSocket       bool               `yaml:"websocket"`
	CORS            *CORS              `yaml:"cors"`
	MaxBodyBytes    Size               `yaml:"max_body_bytes"`
	RequestHeaders  *HeaderRules       `yaml:"request_headers"`
	ResponseHeaders *HeaderRules       `yaml:"response_headers"`
	Compression     []string           `yaml:"compression"` // zstd | br | gzip, in order of preference
	// CompressionMinBytes is the smallest body compressed; default 1KiB.
	CompressionMinBytes Size `yaml:"compression_min_bytes"`
}

// Match says which requests a route takes.
type Match struct {
	Host    string            `yaml:"host"`
	Path    string            `yaml:"path"`
	Methods []string          `yaml:"methods"`
	Headers map[string]string `yaml:"headers"`
	Query   map[string]string `yaml:"query"`
}

// WeightedUpstream is one side of a weighted split.
type WeightedUpstream struct {
	Name   string `yaml:"name"`
	Weight int    `yaml:"weight"`
}

// Rewrite changes the path sent upstream.
type Rewrite struct {
	Path        string `yaml:"path"`
	StripPrefix string `yaml:"strip_prefix"`
}

// CORS configures cross-origin handling; preflights are answered by the gateway.
type CORS struct {
	Origins          []string `yaml:"origins"`
	Methods          []string `yaml:"methods"`
	Headers          []string `yaml:"headers"`
	ExposeHeaders    []string `yaml:"expose_headers"`
	AllowCredentials bool     `yaml:"allow_credentials"`
	MaxAge           Duration `yaml:"max_age"`
}

// HeaderRules sets and removes headers.
type HeaderRules struct {
	Set    map[string]string `yaml:"set"`
	Remove []string          `yaml:"remove"`
}

// BFF is one client team's backend for frontend.
type BFF struct {
	Name                string      `yaml:"-"`
	Owner               string      `yaml:"owner"`
	Prefix              string      `yaml:"prefix"`
	Host                string      `yaml:"host"`
	Auth                []string    `yaml:"auth"`
	Public              bool        `yaml:"public"`
	Scopes              []string    `yaml:"scopes"`
	RateLimit           []string    `yaml:"rate_limit"`
	Compression         []string    `yaml:"compression"`
	CompressionMinBytes Size        `yaml:"compression_min_bytes"`
	CORS                *CORS       `yaml:"cors"`
	MaxBackendBodyBytes Size        `yaml:"max_backend_body_bytes"`
	Endpoints           []*Endpoint `yaml:"endpoints"`
}

// Endpoint is one aggregated BFF call; its metrics name is "BFF/ENDPOINT".
type Endpoint struct {
	Name     string     `yaml:"name"`
	Path     string     `yaml:"path"`
	Method   string     `yaml:"method"` // default GET
	Timeout  Duration   `yaml:"timeout"`
	Backends []*Backend `yaml:"backends"`
}

// Backend is one upstream call of an endpoint and how its body is shaped.
type Backend struct {
	Name     string            `yaml:"name"` // default: Into, else Upstream
	Upstream string            `yaml:"upstream"`
	Method   string            `yaml:"method"` // default GET
	Path     string            `yaml:"path"`
	Into     string            `yaml:"into"`
	Fields   []string          `yaml:"fields"`
	Drop     []string          `yaml:"drop"`
	Rename   map[string]string `yaml:"rename"`
	Pick     string            `yaml:"pick"`
	After    string            `yaml:"after"`
	Optional bool              `yaml:"optional"`
	Timeout  Duration          `yaml:"timeout"`
}

// SLO is one service level objective on a route or BFF endpoint.
type SLO struct {
	Name         string   `yaml:"name"`
	Route        string   `yaml:"route"`     // route name or BFF/ENDPOINT
	Objective    float64  `yaml:"objective"` // percent, e.g. 99.9
	Window       Duration `yaml:"window"`
	Latency      Duration `yaml:"latency"`
	AlertWebhook string   `yaml:"alert_webhook"`
}
