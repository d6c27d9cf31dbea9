package auth

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math"
	"strings"
	"time"

	"github.com/lestrrat-go/jwx/v3/jws/jwsbb"

	"github.com/portico-gw/portico/internal/identity"
)

// b64 is base64url without padding, rejecting non-canonical encodings
// (RFC 7515 section 2): a signature whose last character was altered to an
// equivalent non-canonical one must not verify as the same bytes.
var b64 = base64.RawURLEncoding.Strict()

// parsedToken is a compact JWS split and decoded, not yet verified.
type parsedToken struct {
	alg          *alg
	kid          string
	signingInput string // BASE64URL(header) "." BASE64URL(payload)
	sig          []byte
	claims       map[string]any
	exp          float64
	nbf, iat     float64
	hasNBF       bool
	hasIAT       bool
}

// parseToken splits and decodes a compact JWT (RFC 7519 section 7.2) and
// checks everything that needs no key: three base64url parts, a JSON object
// header with a string alg that is in allowed (never "none") and a string
// kid if any, no "crit" (RFC 7515 section 4.1.11: we understand no
// extensions, so we must reject a token that requires one), a JSON
// object payload with a numeric exp and numeric nbf/iat when present.
// A disallowed or unknown alg is reasonBadSignature: the token is not
// signed in a way this provider accepts.
func parseToken(tok string, allowed algSet) (parsedToken, reason) {
	var pt parsedToken
	if len(tok) == 0 || len(tok) > maxTokenBytes {
		return pt, reasonMalformed
	}
	d1 := strings.IndexByte(tok, '.')
	if d1 <= 0 {
		return pt, reasonMalformed
	}
	d2 := strings.IndexByte(tok[d1+1:], '.')
	if d2 <= 0 {
		return pt, reasonMalformed
	}
	d2 += d1 + 1
	if d2 == len(tok)-1 || strings.IndexByte(tok[d2+1:], '.') >= 0 {
		return pt, reasonMalformed
	}
	hdrJSON, err := b64.DecodeString(tok[:d1])
	if err != nil {
		return pt, reasonMalformed
	}
	// A map, not a struct: encoding/json matches struct fields
	// case-insensitively, but JOSE header names are case-sensitive ("Alg"
	// is not "alg").
	var hdr map[string]json.RawMessage
	if err := json.Unmarshal(hdrJSON, &hdr); err != nil || hdr == nil {
		return pt, reasonMalformed
	}
	if _, crit := hdr["crit"]; crit {
		return pt, reasonMalformed
	}
	var algName, kid string
	if raw, ok := hdr["alg"]; !ok || json.Unmarshal(raw, &algName) != nil {
		return pt, reasonMalformed
	}
	if raw, ok := hdr["kid"]; ok && json.Unmarshal(raw, &kid) != nil {
		return pt, reasonMalformed
	}
	payload, err := b64.DecodeString(tok[d1+1 : d2])
	if err != nil {
		return pt, reasonMalformed
	}
	sig, err := b64.DecodeString(tok[d2+1:])
	if err != nil || len(sig) == 0 {
		return pt, reasonMalformed
	}
	a, ok := algByName(algName)
	if !ok || !allowed.has(a.id) {
		return pt, reasonBadSignature
	}
	var claims map[string]any
	if err := json.Unmarshal(payload, &claims); err != nil || claims == nil {
		return pt, reasonMalformed
	}
	exp, ok := numClaim(claims, "exp")
	if !ok {
		return pt, reasonMalformed // exp is required
	}
	pt.nbf, pt.hasNBF = numClaim(claims, "nbf")
	if _, present := claims["nbf"]; present && !pt.hasNBF {
		return pt, reasonMalformed
	}
	pt.iat, pt.hasIAT = numClaim(claims, "iat")
	if _, present := claims["iat"]; present && !pt.hasIAT {
		return pt, reasonMalformed
	}
	pt.alg, pt.kid, pt.sig, pt.claims, pt.exp = a, kid, sig, claims, exp
	pt.signingInput = tok[:d2]
	return pt, reasonNone
}

func numClaim(claims map[string]any, name string) (float64, bool) {
	f, ok := claims[name].(float64)
	if !ok || math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, false
	}
	return f, true
}

// jwtProvider verifies JWTs for one configured provider.
type jwtProvider struct {
	name         string
	src          *keySource
	cache        *tokenCache
	algs         algSet
	issuer       string
	auds         []string
	leeway       time.Duration
	now          func() time.Time
	from         credSource
	forward      bool
	claimHeaders []claimHeader
	fingerprint  string
}

type claimHeader struct {
	claim  string
	header string // canonical
}

// checkClaims checks time, issuer and audience (RFC 7519 section 4.1). It
// runs on the unverified payload to reject early; it can never accept.
func (p *jwtProvider) checkClaims(pt *parsedToken, now time.Time) reason {
	t := float64(now.UnixNano()) / 1e9
	lw := p.leeway.Seconds()
	if t >= pt.exp+lw {
		return reasonExpired
	}
	if pt.hasNBF && t+lw < pt.nbf {
		return reasonNotYetValid
	}
	if pt.hasIAT && pt.iat > t+lw {
		return reasonNotYetValid
	}
	if p.issuer != "" {
		if iss, _ := pt.claims["iss"].(string); iss != p.issuer {
			return reasonWrongIssuer
		}
	}
	if len(p.auds) > 0 && !audienceMatches(pt.claims["aud"], p.auds) {
		return reasonWrongAudience
	}
	return reasonNone
}

// audienceMatches reports whether aud (a string or an array of strings, RFC
// 7519 section 4.1.3) names any of want.
func audienceMatches(aud any, want []string) bool {
	switch a := aud.(type) {
	case string:
		for _, w := range want {
			if a == w {
				return true
			}
		}
	case []any:
		for _, e := range a {
			if s, ok := e.(string); ok {
				for _, w := range want {
					if s == w {
						return true
					}
				}
			}
		}
	}
	return false
}

// authenticate verifies a token, from the cache when it can.
func (p *jwtProvider) authenticate(ctx context.Context, tok string) (*verified, failure) {
	if len(tok) == 0 || len(tok) > maxTokenBytes {
		return nil, failure{reason: reasonMalformed}
	}
	now := p.now()
	h := p.cache.hash(tok)
	ks := p.src.current()
	var gen uint64
	if ks != nil {
		gen = ks.gen
	}
	if v, r, ok := p.cache.get(h, tok, now.UnixNano(), gen); ok {
		if v != nil {
			return v, failure{}
		}
		return nil, failure{reason: r}
	}
	return p.verifyCold(ctx, tok, h, now, ks)
}

// verifyCold is the full check: parse, claims, key, signature.
func (p *jwtProvider) verifyCold(ctx context.Context, tok string, h uint64, now time.Time, ks *keySet) (*verified, failure) {
	pt, r := parseToken(tok, p.algs)
	if r != reasonNone {
		return nil, failure{reason: r}
	}
	if r := p.checkClaims(&pt, now); r != reasonNone {
		return nil, failure{reason: r}
	}
	k, found := ks.find(pt.kid, pt.alg)
	if !found && p.src.url != "" {
		// Maybe the IdP rotated keys: refetch (rate-limited, single
		// flight) and look again.
		p.src.refetchUnknown(ctx)
		ks = p.src.current()
		k, found = ks.find(pt.kid, pt.alg)
		if !found && !p.src.available() {
			return nil, failure{reason: reasonUnavailable, retryAfter: p.src.retryAfter(p.now())}
		}
	}
	if !found {
		return nil, failure{reason: reasonUnknownKey}
	}
	if k == nil || verifySignature(k, pt.alg, pt.signingInput, pt.sig) != nil {
		p.cache.put(h, tok, nil, reasonBadSignature, now.UnixNano(), now.Add(negativeTTL).UnixNano(), ks.gen)
		return nil, failure{reason: reasonBadSignature}
	}
	v := p.build(pt.claims)
	until := now.Add(cacheMaxTTL).UnixNano()
	if e := (pt.exp + p.leeway.Seconds()) * 1e9; e < float64(until) {
		until = int64(e)
	}
	p.cache.put(h, tok, v, reasonNone, now.UnixNano(), until, ks.gen)
	return v, failure{}
}

// verifySignature checks sig over input with k, which fits a (keySet.find
// checked the family, curve and the key's own alg).
func verifySignature(k *vkey, a *alg, input string, sig []byte) error {
	in := []byte(input)
	switch a.family {
	case famHMAC:
		return jwsbb.VerifyHMAC(k.hmac, in, sig, a.hash.New)
	case famRSA:
		return jwsbb.VerifyRSA(k.rsa, in, sig, a.hash, false)
	case famRSAPSS:
		return jwsbb.VerifyRSA(k.rsa, in, sig, a.hash, true)
	case famEC:
		return jwsbb.VerifyECDSA(k.ec, in, sig, a.hash)
	case famEd:
		return jwsbb.VerifyEdDSA(k.ed, in, sig)
	}
	return errors.New("unsupported algorithm family")
}

// build makes the identity and the forwarded header values of a verified
// token once, so cache hits reuse them.
func (p *jwtProvider) build(claims map[string]any) *verified {
	id := &identity.Identity{Provider: p.name, Claims: claims}
	id.Subject, _ = claims["sub"].(string)
	id.Scopes = scopesOf(claims)
	v := &verified{id: id}
	for _, ch := range p.claimHeaders {
		s, ok := id.Claim(ch.claim)
		if !ok || s == "" || !validHeaderValue(s) {
			continue
		}
		v.headers = append(v.headers, headerValue{name: ch.header, vals: []string{s}})
	}
	return v
}

// scopesOf reads granted scopes from "scope" (RFC 8693 section 4.2: a
// space-separated string) and "scp" (a string or an array, as Azure AD and
// Okta send), merged without duplicates.
func scopesOf(claims map[string]any) []string {
	var out []string
	add := func(s string) {
		for f := range strings.FieldsSeq(s) {
			dup := false
			for _, o := range out {
				if o == f {
					dup = true
					break
				}
			}
			if !dup {
				out = append(out, f)
			}
		}
	}
	if s, ok := claims["scope"].(string); ok {
		add(s)
	}
	switch s := claims["scp"].(type) {
	case string:
		add(s)
	case []any:
		for _, e := range s {
			if es, ok := e.(string); ok {
				add(es)
			}
		}
	}
	return out
}

// validHeaderValue reports whether s can be sent as a header value (RFC 9110
// section 5.5): no control characters other than horizontal tab. A claim
// that fails is not forwarded rather than failing the upstream request.
func validHeaderValue(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 0x20 && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}
