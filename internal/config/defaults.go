package config

import (
	"slices"
	"strings"
	"time"
)

// Every default of the configuration is applied here, after all files are
// merged and before validation, so validation sees the values that will run
// and docs/configuration.md can list them from one place.
//
// A zero value means "not set" for the fields below, so writing the zero
// value in YAML (max_inflight: 0) gives the default, as documented. Fields
// whose zero is meaningful are pointers in types.go (retries: 0 means no
// retries) and only nil gets the default.

// Default values, exported for the docs and for later stages that build
// configs in code.
const (
	DefaultListen              = ":8080"
	DefaultReadHeaderTimeout   = Duration(5 * time.Second)
	DefaultIdleTimeout         = Duration(120 * time.Second)
	DefaultIdleReleaseAfter    = Duration(10 * time.Second)
	DefaultShutdownTimeout     = Duration(30 * time.Second)
	DefaultMaxHeaderBytes      = Size(65536)
	DefaultMaxBodyBytes        = Size(10 << 20)
	DefaultAdminListen         = "127.0.0.1:9901"
	DefaultLogLevel            = "info"
	DefaultServiceName         = "portico"
	DefaultBalance             = "round_robin"
	DefaultHTTP1Client         = "lean"
	DefaultUpstreamTimeout     = Duration(15 * time.Second)
	DefaultConnectTimeout      = Duration(2 * time.Second)
	DefaultReadIdleTimeout     = Duration(5 * time.Minute)
	DefaultRetries             = 1
	DefaultRetryBudget         = 0.2
	DefaultMaxInflight         = 1000
	DefaultLeeway              = Duration(30 * time.Second)
	DefaultAPIKeyHeader        = "X-API-Key"
	DefaultStoreTimeout        = Duration(20 * time.Millisecond)
	DefaultCompressionMinBytes = Size(1 << 10)
	DefaultMaxBackendBodyBytes = Size(5 << 20)
	DefaultSLOWindow           = Duration(28 * 24 * time.Hour)
)

func applyDefaults(c *Config) {
	s := &c.Server
	setStr(&s.Listen, DefaultListen)
	setDur(&s.ReadHeaderTimeout, DefaultReadHeaderTimeout)
	setDur(&s.IdleTimeout, DefaultIdleTimeout)
	if s.IdleReleaseAfter == nil {
		s.IdleReleaseAfter = ptr(DefaultIdleReleaseAfter)
	}
	// drain_delay defaults to 0: no delay.
	setDur(&s.ShutdownTimeout, DefaultShutdownTimeout)
	setSize(&s.MaxHeaderBytes, DefaultMaxHeaderBytes)
	setSize(&s.MaxBodyBytes, DefaultMaxBodyBytes)
	if s.TLS != nil {
		setStr(&s.TLS.MinVersion, "1.2")
	}

	setStr(&c.Admin.Listen, DefaultAdminListen)

	setStr(&c.Logging.Level, DefaultLogLevel)
	if c.Logging.AccessLog == nil {
		c.Logging.AccessLog = ptr(true)
	}

	if t := c.Tracing; t != nil {
		if t.SampleRatio == nil {
			t.SampleRatio = ptr(1.0)
		}
		setStr(&t.ServiceName, DefaultServiceName)
	}

	for name, u := range c.Upstreams {
		if u == nil {
			continue
		}
		u.Name = name
		defaultUpstream(u)
	}

	for name, a := range c.Auth {
		if a == nil {
			continue
		}
		a.Name = name
		defaultAuth(a)
	}

	rl := &c.RateLimits
	setStr(&rl.Store.Type, "memory")
	setDur(&rl.Store.Timeout, DefaultStoreTimeout)
	setInt(&rl.ExpectedNodes, 1)
	setStr(&rl.Mode, "exact")
	setStr(&rl.OnStoreError, "local")
	setStr(&rl.Headers, "ietf")
	for name, p := range rl.Policies {
		if p == nil {
			continue
		}
		p.Name = name
		setStr(&p.Mode, rl.Mode)
		setStr(&p.OnStoreError, rl.OnStoreError)
		setInt64(&p.Cost, 1)
		setStr(&p.OnMissingKey, "deny")
		switch p.Algorithm {
		case "token_bucket":
			setInt64(&p.Burst, p.Rate)
		case "leaky_bucket":
			setInt64(&p.Burst, 1)
		}
	}

	for _, r := range c.Routes {
		if r == nil {
			continue
		}
		setSize(&r.CompressionMinBytes, DefaultCompressionMinBytes)
	}

	for name, b := range c.BFFs {
		if b == nil {
			continue
		}
		b.Name = name
		setSize(&b.CompressionMinBytes, DefaultCompressionMinBytes)
		setSize(&b.MaxBackendBodyBytes, DefaultMaxBackendBodyBytes)
		for _, e := range b.Endpoints {
			if e == nil {
				continue
			}
			setStr(&e.Method, "GET")
			for _, be := range e.Backends {
				if be == nil {
					continue
				}
				setStr(&be.Method, "GET")
				setStr(&be.Name, be.Into)
				setStr(&be.Name, be.Upstream)
			}
		}
	}

	for _, s := range c.SLOs {
		if s == nil {
			continue
		}
		setDur(&s.Window, DefaultSLOWindow)
	}
}

func defaultUpstream(u *Upstream) {
	setStr(&u.Balance, DefaultBalance)
	setStr(&u.HTTP1Client, DefaultHTTP1Client)
	for i := range u.Targets {
		setInt(&u.Targets[i].Weight, 1)
	}
	setDur(&u.Timeout, DefaultUpstreamTimeout)
	setDur(&u.ConnectTimeout, DefaultConnectTimeout)
	if u.ReadIdleTimeout == nil {
		u.ReadIdleTimeout = ptr(DefaultReadIdleTimeout)
	}
	if u.Retries == nil {
		u.Retries = ptr(DefaultRetries)
	}
	if u.RetryBudget == nil {
		u.RetryBudget = ptr(DefaultRetryBudget)
	}
	setInt(&u.MaxInflight, DefaultMaxInflight)
	if h := u.HealthCheck; h != nil {
		setStr(&h.Path, "/healthz")
		setDur(&h.Interval, Duration(5*time.Second))
		setDur(&h.Timeout, Duration(time.Second))
		setInt(&h.ExpectStatus, 200)
		setInt(&h.UnhealthyThreshold, 3)
		setInt(&h.HealthyThreshold, 2)
		setStr(&h.AllUnhealthy, "fail")
	}
	if p := u.Passive; p != nil {
		setInt(&p.ConsecutiveFailures, 5)
		setDur(&p.Ejection, Duration(30*time.Second))
	}
	if b := u.CircuitBreaker; b != nil {
		if b.FailureRatio == 0 {
			b.FailureRatio = 0.5
		}
		setInt(&b.MinRequests, 20)
		setDur(&b.OpenFor, Duration(10*time.Second))
	}
}

func defaultAuth(a *AuthProvider) {
	switch a.Type {
	case "jwt":
		if len(a.Algorithms) == 0 {
			if a.Secret != "" {
				a.Algorithms = []string{"HS256"}
			} else {
				a.Algorithms = []string{"RS256", "ES256", "EdDSA"}
			}
		}
		setDur(&a.Leeway, DefaultLeeway)
		if a.TokenFrom == nil {
			a.TokenFrom = &TokenSource{Header: "Authorization"}
		}
		if a.ForwardToken == nil {
			a.ForwardToken = ptr(true)
		}
	case "api_key":
		if a.Header == "" && a.Query == "" {
			a.Header = DefaultAPIKeyHeader
		}
	}
}

// IsHMAC reports whether a JWT algorithm is an HMAC one (HS256, HS384,
// HS512), which needs a shared secret rather than a key set.
func IsHMAC(alg string) bool { return strings.HasPrefix(alg, "HS") }

// jwtAlgorithms are the JWS algorithms a jwt provider may list.
var jwtAlgorithms = []string{
	"HS256", "HS384", "HS512",
	"RS256", "RS384", "RS512",
	"PS256", "PS384", "PS512",
	"ES256", "ES384", "ES512",
	"EdDSA",
}

func isJWTAlgorithm(s string) bool { return slices.Contains(jwtAlgorithms, s) }

func ptr[T any](v T) *T { return &v }

func setStr(p *string, v string) {
	if *p == "" {
		*p = v
	}
}

func setDur(p *Duration, v Duration) {
	if *p == 0 {
		*p = v
	}
}

func setSize(p *Size, v Size) {
	if *p == 0 {
		*p = v
	}
}

func setInt(p *int, v int) {
	if *p == 0 {
		*p = v
	}
}

func setInt64(p *int64, v int64) {
	if *p == 0 {
		*p = v
	}
}
