package auth

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/portico-gw/portico/internal/config"
)

// Deps are the auth stage's dependencies. Every field may be left zero.
type Deps struct {
	// Logger receives warnings about key sets (fetch failures, recoveries).
	// Nil discards them. Credentials are never logged.
	Logger *slog.Logger
	// Registerer receives portico_auth_failures_total once, in NewRegistry.
	// Nil leaves the collector unregistered (tests, tools).
	Registerer prometheus.Registerer
	// Now is the clock for token times, caches and fetch rate limits. Nil
	// means time.Now.
	Now func() time.Time
	// HTTPClient fetches JWKS documents. Nil means a private client with a
	// 5 s timeout whose idle connections Close releases.
	HTTPClient *http.Client
}

// Tunables. They are constants, not config: they bound how hard the gateway
// may press an identity provider and how stale a decision may be, which
// should not vary per deployment. Tests move the injected clock instead of
// shrinking them.
const (
	// defaultRefresh is the JWKS refresh interval when the response has no
	// Cache-Control max-age.
	defaultRefresh = 15 * time.Minute
	// minRefresh and maxRefresh clamp a max-age: an IdP that says max-age=0
	// must not be polled in a loop, one that says a week must still rotate.
	minRefresh = time.Minute
	maxRefresh = 24 * time.Hour
	// refetchInterval is the least time between two fetches of one key set
	// triggered by unknown kids, so a flood of bogus kids costs the IdP at
	// most one request per interval.
	refetchInterval = 5 * time.Second
	// fetchTimeout bounds one JWKS fetch (also the startup fetch).
	fetchTimeout = 5 * time.Second
	// maxJWKSBytes bounds a JWKS document.
	maxJWKSBytes = 1 << 20
	// cacheEntries bounds each provider's verified-token cache.
	cacheEntries = 10000
	// cacheMaxTTL caps how long a verified token is served from the cache,
	// so a revoked key stops working within it even if the IdP's max-age
	// is longer.
	cacheMaxTTL = 5 * time.Minute
	// negativeTTL is how long a token that failed its signature check is
	// refused without checking again.
	negativeTTL = 10 * time.Second
	// maxTokenBytes rejects absurd tokens before any decoding.
	maxTokenBytes = 16 << 10
)

// Registry is the process-long part of the auth stage: key sets with their
// background refreshers, verified-token caches and the failure metric. A
// config reload calls Prepare on the same Registry, which reuses every key
// set and cache whose provider did not change, and then Plan.Commit once
// the rest of the config is accepted; a refused reload drops the Plan and
// leaves the running config's key sets refreshing and its caches kept.
type Registry struct {
	log        *slog.Logger
	now        func() time.Time
	client     *http.Client
	ownClient  bool
	failures   *prometheus.CounterVec
	baseCtx    context.Context
	cancelBase context.CancelFunc

	// after is the timer of the background refreshers; tests replace it to
	// drive refreshes without sleeping.
	after func(time.Duration) <-chan time.Time

	// applyMu serialises Apply calls, so two of them never make each
	// other's plan stale.
	applyMu sync.Mutex

	mu     sync.Mutex
	closed bool
	// sources and caches are those of the committed config. Commit and
	// Close replace the maps whole and nothing changes them in place, so
	// Prepare reads them after releasing mu.
	sources map[string]*keySource  // provider name + key source
	caches  map[string]*tokenCache // provider name + fingerprint of its settings
	// gen counts commits; a plan prepared under another gen is stale.
	gen uint64
	wg  sync.WaitGroup
}

// noDowngrade lets the JWKS client follow a few redirects, never from
// https to http: keys fetched in the clear could be anyone's.
func noDowngrade(req *http.Request, via []*http.Request) error {
	if len(via) >= maxJWKSRedirects {
		return fmt.Errorf("stopped after %d redirects", maxJWKSRedirects)
	}
	if via[0].URL.Scheme == "https" && req.URL.Scheme != "https" {
		return fmt.Errorf("refusing a redirect from https to %s://%s", req.URL.Scheme, req.URL.Host)
	}
	return nil
}

const maxJWKSRedirects = 5

// NewRegistry returns a Registry. Call it once per process and Close it on
// shutdown; it registers portico_auth_failures_total on deps.Registerer (an
// already registered identical collector is reused).
func NewRegistry(deps Deps) *Registry {
	r := &Registry{
		log:     deps.Logger,
		now:     deps.Now,
		client:  deps.HTTPClient,
		after:   time.After,
		sources: map[string]*keySource{},
		caches:  map[string]*tokenCache{},
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	if r.now == nil {
		r.now = time.Now
	}
	if r.client == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		r.client = &http.Client{Timeout: fetchTimeout, Transport: tr, CheckRedirect: noDowngrade}
		r.ownClient = true
	}
	r.baseCtx, r.cancelBase = context.WithCancel(context.Background())
	r.failures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "portico_auth_failures_total",
		Help: "Requests refused by authentication, by route and reason.",
	}, []string{"route", "reason"})
	if deps.Registerer != nil {
		if err := deps.Registerer.Register(r.failures); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				if cv, ok := are.ExistingCollector.(*prometheus.CounterVec); ok {
					r.failures = cv
				}
			} else {
				r.log.Warn("auth: cannot register metrics", "error", err)
			}
		}
	}
	return r
}

// Close stops the background refreshers and aborts fetches under way. Sets
// built earlier keep working with the keys they have. Close is idempotent.
func (r *Registry) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	srcs := r.sources
	r.sources = map[string]*keySource{}
	r.caches = map[string]*tokenCache{}
	r.mu.Unlock()
	r.cancelBase()
	for _, s := range srcs {
		s.stop()
	}
	r.wg.Wait()
	if r.ownClient {
		r.client.CloseIdleConnections()
	}
	return nil
}

// Apply compiles the auth providers of one config into a Set and puts it
// in force: it is Prepare followed by Commit, for callers that have nothing
// else that could refuse the config. Calls of Apply are serialised with
// each other; on error nothing changes.
func (r *Registry) Apply(ctx context.Context, providers map[string]*config.AuthProvider) (*Set, error) {
	r.applyMu.Lock()
	defer r.applyMu.Unlock()
	p, err := r.Prepare(ctx, providers)
	if err != nil {
		return nil, err
	}
	if err := p.Commit(); err != nil {
		return nil, err
	}
	return p.Set(), nil
}

// Plan is a config's auth stage prepared by Registry.Prepare and not yet in
// force. Its Set may be used at once; Commit makes the Registry keep its
// key sets refreshed and its caches for the next reload. A Plan that is
// dropped instead (the reload was refused elsewhere) leaves the Registry
// as it was, and needs no release: its new key sets have no refresher yet
// and hold nothing but memory.
type Plan struct {
	reg *Registry
	set *Set
	// gen is Registry.gen when the plan was prepared: the sources and
	// caches it reuses are those in force then.
	gen     uint64
	sources map[string]*keySource
	caches  map[string]*tokenCache
	// created are the key sets the plan made rather than reused; Commit
	// starts the refreshers of those fetched from a URL.
	created []*keySource
	// committed is guarded by reg.mu.
	committed bool
}

// Prepare compiles the auth providers of one config into a Plan without
// touching what is in force: no key set stops refreshing and no refresher
// starts until Plan.Commit, and the caches kept for the next reload stay
// those of the running config. Key sets and caches of providers that did
// not change are reused (shared with the running Set, which Prepare does
// not modify), so a reload neither refetches keys nor re-verifies tokens.
//
// A JWKS URL that cannot be fetched is not an error (the provider answers
// 503 for unknown key ids until the keys arrive, and a warning is logged);
// an unreadable or invalid jwks_file, an unusable algorithm list or an
// invalid API key hash is.
//
// The first fetch of each new JWKS URL runs inside Prepare, all in
// parallel, each bounded by ctx and by a 5 s timeout. The Registry is not
// locked meanwhile: running Sets, Close and Commit do not wait for it.
//
// Prepare may be called while Sets are serving, but the caller serialises
// reloads: a Plan can only be committed if no other Plan was committed
// since it was prepared (see Plan.Commit).
func (r *Registry) Prepare(ctx context.Context, providers map[string]*config.AuthProvider) (*Plan, error) {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil, errors.New("auth: registry is closed")
	}
	// Both maps are replaced whole by Commit and Close, never changed in
	// place, so these references are a snapshot that needs no lock.
	running, runningCaches, gen := r.sources, r.caches, r.gen
	r.mu.Unlock()

	names := make([]string, 0, len(providers))
	for name := range providers {
		names = append(names, name)
	}
	sort.Strings(names)

	plan := &Plan{
		reg:     r,
		set:     &Set{reg: r, providers: make(map[string]provider, len(providers))},
		gen:     gen,
		sources: map[string]*keySource{},
		caches:  map[string]*tokenCache{},
	}
	set := plan.set
	var errs []error
	for _, name := range names {
		pc := providers[name]
		if pc == nil {
			errs = append(errs, fmt.Errorf("auth.%s: empty provider", name))
			continue
		}
		switch pc.Type {
		case "jwt":
			p, src, isNew, err := r.buildJWT(name, pc, running, plan.sources)
			if err != nil {
				errs = append(errs, fmt.Errorf("auth.%s: %w", name, err))
				continue
			}
			if isNew {
				plan.created = append(plan.created, src)
			}
			cacheKey := name + "\x00" + p.fingerprint
			c := runningCaches[cacheKey]
			if c == nil {
				c = newTokenCache(cacheEntries)
			}
			plan.caches[cacheKey] = c
			p.cache = c
			set.providers[name] = p
		case "api_key":
			p, err := buildAPIKey(name, pc)
			if err != nil {
				errs = append(errs, fmt.Errorf("auth.%s: %w", name, err))
				continue
			}
			set.providers[name] = p
		default:
			errs = append(errs, fmt.Errorf("auth.%s: type %q is not jwt or api_key", name, pc.Type))
		}
	}
	errs = append(errs, checkIdentityHeaders(set.providers)...)
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}

	// First fetch of new URL sources, in parallel: startup waits for the
	// slowest IdP once, not for the sum of them. Each fetch has ended when
	// wg.Wait returns and leaves nothing running (fetchIf releases its
	// timeout and its hook on ctx), so a plan that is never committed
	// holds no goroutine.
	var wg sync.WaitGroup
	for _, s := range plan.created {
		if s.url == "" {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			// A failure is logged by fetch and is not fatal: the
			// refresher keeps trying and unknown kids get 503 meanwhile.
			_ = s.fetchIf(ctx, 0, true)
		}()
	}
	wg.Wait()
	set.identityHeaders = set.collectIdentityHeaders()
	return plan, nil
}

// Set returns the plan's provider set. It may be wired into handlers
// before Commit: its providers verify tokens, and fetch the keys of an
// unknown kid on demand, whether or not the plan is ever committed; only
// the background refresh of its new key sets waits for Commit.
func (p *Plan) Set() *Set { return p.set }

// Commit puts the plan in force: it stops the refreshers of the key sets
// the plan no longer uses, starts those of its new JWKS URLs, and makes
// the plan's key sets and caches the ones the next Prepare reuses. Sets
// built earlier keep working with the keys they have.
//
// Commit fails, changing nothing, when the Registry is closed, when the
// plan was already committed, or when the plan is stale: another plan was
// committed after this one was prepared. A stale plan may reuse key sets
// whose refreshers that commit stopped, so it must be prepared again.
func (p *Plan) Commit() error {
	r := p.reg
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case r.closed:
		return errors.New("auth: registry is closed")
	case p.committed:
		return errors.New("auth: plan already committed")
	case p.gen != r.gen:
		return errors.New("auth: stale plan: another plan was committed after it was prepared")
	}
	for key, s := range r.sources {
		if _, kept := p.sources[key]; !kept {
			s.stop()
		}
	}
	for _, s := range p.created {
		if s.url != "" {
			r.wg.Add(1)
			go s.run(&r.wg)
		}
	}
	r.sources = p.sources
	r.caches = p.caches
	r.gen++
	p.committed = true
	return nil
}

// buildJWT compiles one jwt provider, reusing its key source from running
// or creating one, and records the source in newSources. A reused source is
// in use by the running Set and is not modified.
func (r *Registry) buildJWT(name string, pc *config.AuthProvider, running, newSources map[string]*keySource) (*jwtProvider, *keySource, bool, error) {
	nsrc := 0
	for _, s := range []string{pc.JWKSURL, pc.JWKSFile, pc.Secret} {
		if s != "" {
			nsrc++
		}
	}
	if nsrc != 1 {
		return nil, nil, false, errors.New("exactly one of jwks_url, jwks_file and secret is required")
	}
	algs := pc.Algorithms
	if len(algs) == 0 {
		if pc.Secret != "" {
			algs = []string{"HS256", "HS384", "HS512"}
		} else {
			algs = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
		}
	}
	var allowed algSet
	for _, a := range algs {
		al, ok := algByName(a)
		if !ok {
			return nil, nil, false, fmt.Errorf("algorithms: %q is not supported (none is never accepted)", a)
		}
		if pc.Secret != "" && al.family != famHMAC {
			return nil, nil, false, fmt.Errorf("algorithms: %s needs a key set, but this provider has only a secret", a)
		}
		allowed = allowed.with(al.id)
	}

	var (
		srcKey string
		src    *keySource
		isNew  bool
	)
	switch {
	case pc.JWKSURL != "":
		srcKey = name + "\x00url\x00" + pc.JWKSURL
		src = running[srcKey]
		if src == nil {
			src = newURLSource(r, name, pc.JWKSURL)
			isNew = true
		}
	case pc.JWKSFile != "":
		// A file is read at every Prepare, so a reload picks up a new file.
		b, err := os.ReadFile(pc.JWKSFile)
		if err != nil {
			return nil, nil, false, fmt.Errorf("jwks_file: %w", err)
		}
		ks, err := parseKeySet(b, r.log, name)
		if err != nil {
			return nil, nil, false, fmt.Errorf("jwks_file %s: %w", pc.JWKSFile, err)
		}
		sum := sha256.Sum256(b)
		srcKey = name + "\x00file\x00" + pc.JWKSFile + "\x00" + hex.EncodeToString(sum[:])
		src = running[srcKey]
		if src == nil {
			src = newStaticSource(r, name, ks)
			isNew = true
		}
	default:
		if len(pc.Secret) < 32 {
			r.log.Warn("auth: HMAC secret is shorter than 32 bytes; RFC 7518 section 3.2 requires at least the hash size",
				"provider", name)
		}
		sum := sha256.Sum256([]byte(pc.Secret))
		srcKey = name + "\x00secret\x00" + hex.EncodeToString(sum[:])
		src = running[srcKey]
		if src == nil {
			src = newStaticSource(r, name, &keySet{
				all: []*vkey{{family: famHMAC, hmac: []byte(pc.Secret)}},
			})
			isNew = true
		}
	}
	newSources[srcKey] = src

	p := &jwtProvider{
		name:    name,
		src:     src,
		algs:    allowed,
		issuer:  pc.Issuer,
		auds:    slices.Clone(pc.Audiences),
		leeway:  pc.Leeway.D(),
		now:     r.now,
		forward: pc.ForwardToken == nil || *pc.ForwardToken,
	}
	from := pc.TokenFrom
	switch {
	case from == nil || (from.Header == "" && from.Cookie == "" && from.Query == ""):
		p.from = credSource{kind: fromHeader, name: "Authorization", bearer: true}
	case from.Header != "":
		h := http.CanonicalHeaderKey(from.Header)
		p.from = credSource{kind: fromHeader, name: h, bearer: h == "Authorization"}
	case from.Cookie != "":
		p.from = credSource{kind: fromCookie, name: from.Cookie}
	default:
		p.from = credSource{kind: fromQuery, name: from.Query}
	}
	claims := make([]string, 0, len(pc.ForwardClaims))
	for c := range pc.ForwardClaims {
		claims = append(claims, c)
	}
	sort.Strings(claims)
	for _, c := range claims {
		h := strings.TrimSpace(pc.ForwardClaims[c])
		if h == "" {
			return nil, nil, false, fmt.Errorf("forward_claims.%s: empty header name", c)
		}
		p.claimHeaders = append(p.claimHeaders, claimHeader{claim: c, header: http.CanonicalHeaderKey(h)})
	}
	// The fingerprint names everything that decides whether a token is
	// accepted and what it yields, so a reload that changes any of it
	// starts a fresh verified-token cache.
	p.fingerprint = fmt.Sprintf("%s|%v|%s|%q|%d|%v", srcKey, algs, pc.Issuer, pc.Audiences, pc.Leeway, p.claimHeaders)
	return p, src, isNew, nil
}

// reservedHeaders may not be identity headers: every identity header is
// deleted from every inbound request, which would break framing or routing
// for these.
var reservedHeaders = map[string]bool{
	"Host": true, "Connection": true, "Content-Length": true, "Transfer-Encoding": true,
	"Cookie": true, "Upgrade": true, "Te": true, "Trailer": true,
}

// checkIdentityHeaders refuses an identity header (forward_claims,
// forward_id) that is also where some provider reads a credential: it is
// stripped from every request before auth runs, so that provider could
// never see its credential.
func checkIdentityHeaders(providers map[string]provider) []error {
	cred := map[string]string{}
	for name, p := range providers {
		var from credSource
		switch q := p.(type) {
		case *jwtProvider:
			from = q.from
		case *apiKeyProvider:
			from = q.from
		}
		if from.kind == fromHeader {
			cred[from.name] = name
		}
	}
	names := make([]string, 0, len(providers))
	for name := range providers {
		names = append(names, name)
	}
	sort.Strings(names)
	var errs []error
	for _, name := range names {
		for _, h := range providers[name].identityHeaders() {
			if other, ok := cred[h]; ok {
				errs = append(errs, fmt.Errorf("auth.%s: identity header %s is where provider %s reads its credential", name, h, other))
			}
			if reservedHeaders[h] {
				errs = append(errs, fmt.Errorf("auth.%s: %s cannot be an identity header", name, h))
			}
		}
	}
	return errs
}
