package auth

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math"
	"math/big"
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
	buf := make([]byte, len(tok))
	pt, n, r := parseTokenBuf(tok, allowed, buf)
	if r == reasonNone {
		pt.sig = buf[:n:n]
	}
	return pt, r
}

// parseTokenBuf is parseToken working in buf, which holds at least len(tok)
// bytes and may be the caller's stack array: the header and payload are
// decoded there and copied out into one string, which the claims' strings
// share. On success buf starts with the n bytes of the signature, followed
// by a copy of the signing input (for hashing without a heap copy); pt.sig
// is left nil, so that nothing in pt points into buf.
func parseTokenBuf(tok string, allowed algSet, buf []byte) (pt parsedToken, n int, r reason) {
	if len(tok) == 0 || len(tok) > maxTokenBytes || len(buf) < len(tok) {
		return pt, 0, reasonMalformed
	}
	d1 := strings.IndexByte(tok, '.')
	if d1 <= 0 {
		return pt, 0, reasonMalformed
	}
	d2 := strings.IndexByte(tok[d1+1:], '.')
	if d2 <= 0 {
		return pt, 0, reasonMalformed
	}
	d2 += d1 + 1
	if d2 == len(tok)-1 || strings.IndexByte(tok[d2+1:], '.') >= 0 {
		return pt, 0, reasonMalformed
	}
	hdr64, payload64, sig64 := tok[:d1], tok[d1+1:d2], tok[d2+1:]
	// The decoded header and payload are shorter than their base64, and
	// so are the decoded signature and the signing input together.
	hn, err := b64.Decode(buf, []byte(hdr64))
	if err != nil {
		return pt, 0, reasonMalformed
	}
	pn, err := b64.Decode(buf[hn:], []byte(payload64))
	if err != nil {
		return pt, 0, reasonMalformed
	}
	text := string(buf[:hn+pn])
	hdrJSON, payload := text[:hn], text[hn:]
	// Header names compare exactly: JOSE names are case-sensitive ("Alg"
	// is not "alg").
	hdr, ok := decodeJOSEHeader(hdrJSON)
	if !ok || hdr.crit || hdr.alg == "" {
		return pt, 0, reasonMalformed
	}
	algName, ok := headerString(hdr.alg)
	if !ok {
		return pt, 0, reasonMalformed
	}
	var kid string
	if hdr.kid != "" {
		if kid, ok = headerString(hdr.kid); !ok {
			return pt, 0, reasonMalformed
		}
	}
	sn, err := b64.Decode(buf, []byte(sig64))
	if err != nil || sn == 0 {
		return pt, 0, reasonMalformed
	}
	copy(buf[sn:], tok[:d2])
	a, ok := algByName(algName)
	if !ok || !allowed.has(a.id) {
		return pt, 0, reasonBadSignature
	}
	claims, ok := decodeJSONObject(payload)
	if !ok {
		return pt, 0, reasonMalformed
	}
	exp, ok := numClaim(claims, "exp")
	if !ok {
		return pt, 0, reasonMalformed // exp is required
	}
	pt.nbf, pt.hasNBF = numClaim(claims, "nbf")
	if _, present := claims["nbf"]; present && !pt.hasNBF {
		return pt, 0, reasonMalformed
	}
	pt.iat, pt.hasIAT = numClaim(claims, "iat")
	if _, present := claims["iat"]; present && !pt.hasIAT {
		return pt, 0, reasonMalformed
	}
	pt.alg, pt.kid, pt.claims, pt.exp = a, kid, claims, exp
	pt.signingInput = tok[:d2]
	return pt, sn, reasonNone
}

func numClaim(claims map[string]any, name string) (float64, bool) {
	var f float64
	switch v := claims[name].(type) {
	case float64:
		f = v
	case json.Number: // an integer too long for a float64 (see inexactInteger)
		var err error
		if f, err = v.Float64(); err != nil {
			return 0, false
		}
	default:
		return 0, false
	}
	if math.IsNaN(f) || math.IsInf(f, 0) {
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

// scratchSize is the stack buffer of one cold verification (see
// parseTokenBuf): tokens longer than it take a heap buffer.
const scratchSize = 4 << 10

// verifyCold is the full check: parse, claims, key, signature.
func (p *jwtProvider) verifyCold(ctx context.Context, tok string, h uint64, now time.Time, ks *keySet) (*verified, failure) {
	var scratch [scratchSize]byte
	buf := scratch[:]
	if len(tok) > len(buf) {
		buf = make([]byte, len(tok))
	}
	pt, n, r := parseTokenBuf(tok, p.algs, buf)
	if r != reasonNone {
		return nil, failure{reason: r}
	}
	sig, input := buf[:n:n], buf[n:n+len(pt.signingInput)]
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
	key := p.cacheKey(tok)
	if k == nil || verifySignature(k, pt.alg, input, sig) != nil {
		p.cache.putOwned(h, key, nil, reasonBadSignature, now.UnixNano(), now.Add(negativeTTL).UnixNano(), ks.gen)
		return nil, failure{reason: reasonBadSignature}
	}
	v := p.build(pt.claims)
	until := now.Add(cacheMaxTTL).UnixNano()
	if e := (pt.exp + p.leeway.Seconds()) * 1e9; e < float64(until) {
		until = int64(e)
	}
	p.cache.putOwned(h, key, v, reasonNone, now.UnixNano(), until, ks.gen)
	return v, failure{}
}

// cacheKey is tok as the verified-token cache keeps it. A token read from
// a header is kept as it came: net/http gives each header value a string of
// its own, so the entry pins only that, and the copy would be one more
// allocation per new token. A cookie or query credential is a slice of the
// whole Cookie header or URL, which is not pinned.
func (p *jwtProvider) cacheKey(tok string) string {
	if p.from.kind == fromHeader || len(tok) > maxCachedToken {
		return tok
	}
	return strings.Clone(tok)
}

// verifySignature checks sig over input with k, which fits a (keySet.find
// checked the family, curve and the key's own alg). It calls the standard
// library directly, with the digest on the stack, as RFC 7518 section 3
// defines each algorithm: PKCS #1 v1.5 and PSS with a salt as long as the
// hash (section 3.5), ECDSA with R and S as two fixed-size halves
// (section 3.4), Ed25519 over the input itself (RFC 8037 section 3.1).
func verifySignature(k *vkey, a *alg, input, sig []byte) error {
	switch a.family {
	case famHMAC:
		// What a hash.Hash is given escapes, so the HMAC gets a heap copy
		// and input can stay on the caller's stack for the others.
		if len(k.hmac) == 0 {
			return errors.New("empty HMAC key")
		}
		mac := hmac.New(a.hash.New, k.hmac)
		mac.Write(bytes.Clone(input))
		if !hmac.Equal(sig, mac.Sum(nil)) {
			return errBadSignature
		}
		return nil
	case famRSA:
		var sum [sha512.Size]byte
		return rsa.VerifyPKCS1v15(k.rsa, a.hash, digest(a.hash, input, &sum), sig)
	case famRSAPSS:
		var sum [sha512.Size]byte
		return rsa.VerifyPSS(k.rsa, a.hash, digest(a.hash, input, &sum), sig,
			&rsa.PSSOptions{Hash: a.hash, SaltLength: rsa.PSSSaltLengthEqualsHash})
	case famEC:
		var r, s big.Int
		if err := jwsbb.UnpackECDSASignature(sig, k.ec, &r, &s); err != nil {
			return err
		}
		var sum [sha512.Size]byte
		if !ecdsa.Verify(k.ec, digest(a.hash, input, &sum), &r, &s) {
			return errBadSignature
		}
		return nil
	case famEd:
		if !ed25519.Verify(k.ed, input, sig) {
			return errBadSignature
		}
		return nil
	}
	return errors.New("unsupported algorithm family")
}

var errBadSignature = errors.New("signature does not verify")

// digest hashes input into sum with one of the JWS hashes (the alg table
// uses no other), without the allocations of hash.Hash.
func digest(h crypto.Hash, input []byte, sum *[sha512.Size]byte) []byte {
	switch h {
	case crypto.SHA256:
		d := sha256.Sum256(input)
		return append(sum[:0], d[:]...)
	case crypto.SHA384:
		d := sha512.Sum384(input)
		return append(sum[:0], d[:]...)
	case crypto.SHA512:
		d := sha512.Sum512(input)
		return append(sum[:0], d[:]...)
	}
	return nil
}

// maxInlineHeaders is how many forwarded claim headers a verified token
// holds without another allocation; most providers forward one or two.
const maxInlineHeaders = 2

// verifiedJWT is a verified token's identity and header values in one
// allocation, so a cache entry is few objects for the collector to trace.
type verifiedJWT struct {
	v    verified
	id   identity.Identity
	hdrs [maxInlineHeaders]headerValue
	vals [maxInlineHeaders]string
}

// build makes the identity and the forwarded header values of a verified
// token once, so cache hits reuse them.
func (p *jwtProvider) build(claims map[string]any) *verified {
	vj := &verifiedJWT{id: identity.Identity{Provider: p.name, Claims: claims}}
	id := &vj.id
	id.Subject, _ = claims["sub"].(string)
	id.Scopes = scopesOf(claims)
	v := &vj.v
	v.id = id
	v.headers = vj.hdrs[:0]
	for _, ch := range p.claimHeaders {
		s, ok := id.Claim(ch.claim)
		if !ok || s == "" || !validHeaderValue(s) {
			continue
		}
		// vals has length and capacity 1 (see headerValue).
		var vals []string
		if n := len(v.headers); n < maxInlineHeaders {
			vj.vals[n] = s
			vals = vj.vals[n : n+1 : n+1]
		} else {
			vals = []string{s}
		}
		v.headers = append(v.headers, headerValue{name: ch.header, vals: vals})
	}
	if len(v.headers) == 0 {
		v.headers = nil
	}
	return v
}

// scopesOf reads granted scopes from "scope" (RFC 8693 section 4.2: a
// space-separated string) and "scp" (a string or an array, as Azure AD and
// Okta send), merged without duplicates.
func scopesOf(claims map[string]any) []string {
	scope, _ := claims["scope"].(string)
	var out []string
	if scope != "" {
		// Usually the only source: one allocation of the right size.
		out = make([]string, 0, strings.Count(scope, " ")+1)
	}
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
	add(scope)
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
	if len(out) == 0 {
		return nil
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
