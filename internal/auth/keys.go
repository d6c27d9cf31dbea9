package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"

	"github.com/lestrrat-go/jwx/v3/jwk"
)

// family is a key family; an algorithm verifies only with a key of its own
// family, which is what defeats the RS256-to-HS256 confusion attack (an RSA
// public key can never become an HMAC secret here).
type family uint8

const (
	famNone family = iota
	famHMAC
	famRSA
	famRSAPSS // same keys as famRSA, another padding
	famEC
	famEd
)

// alg describes one JWS algorithm (RFC 7518 section 3.1, RFC 8037).
type alg struct {
	id     uint8
	name   string
	family family
	hash   crypto.Hash
	curve  elliptic.Curve // famEC only
}

var algs = [...]alg{
	{1, "HS256", famHMAC, crypto.SHA256, nil},
	{2, "HS384", famHMAC, crypto.SHA384, nil},
	{3, "HS512", famHMAC, crypto.SHA512, nil},
	{4, "RS256", famRSA, crypto.SHA256, nil},
	{5, "RS384", famRSA, crypto.SHA384, nil},
	{6, "RS512", famRSA, crypto.SHA512, nil},
	{7, "PS256", famRSAPSS, crypto.SHA256, nil},
	{8, "PS384", famRSAPSS, crypto.SHA384, nil},
	{9, "PS512", famRSAPSS, crypto.SHA512, nil},
	{10, "ES256", famEC, crypto.SHA256, elliptic.P256()},
	{11, "ES384", famEC, crypto.SHA384, elliptic.P384()},
	{12, "ES512", famEC, crypto.SHA512, elliptic.P521()},
	{13, "EdDSA", famEd, 0, nil},
}

// algByName looks an algorithm up by its exact JWS name. "none" is absent
// on purpose: an unsigned token is never accepted (RFC 8725 section 3.1).
func algByName(name string) (*alg, bool) {
	for i := range algs {
		if algs[i].name == name {
			return &algs[i], true
		}
	}
	return nil, false
}

// algSet is a bit set of alg ids.
type algSet uint32

func (s algSet) with(id uint8) algSet { return s | 1<<id }
func (s algSet) has(id uint8) bool    { return s&(1<<id) != 0 }

// vkey is one verification key, already converted to its Go type.
type vkey struct {
	kid    string
	alg    string // the JWK's "alg", if it named one: then only that algorithm
	family family
	rsa    *rsa.PublicKey
	ec     *ecdsa.PublicKey
	ed     ed25519.PublicKey
	hmac   []byte
}

// fits reports whether k may verify a token signed with a.
func (k *vkey) fits(a *alg) bool {
	if k.alg != "" && k.alg != a.name {
		return false
	}
	switch a.family {
	case famHMAC:
		return k.family == famHMAC
	case famRSA, famRSAPSS:
		return k.family == famRSA
	case famEC:
		return k.family == famEC && k.ec.Curve == a.curve
	case famEd:
		return k.family == famEd
	}
	return false
}

// keySet is an immutable set of keys; a new fetch makes a new one.
type keySet struct {
	byKID map[string][]*vkey
	all   []*vkey
	// fingerprint identifies the keys (not their order), so a refetch that
	// returns the same keys does not flush the verified-token cache.
	fingerprint [32]byte
	// gen increases whenever the keys change; cache entries carry the gen
	// they were verified under.
	gen uint64
}

// find returns the key for kid and alg. found is false when no key has this
// kid, which may be a rotation the gateway has not seen yet; found is true
// with a nil key when the kid exists but its key cannot verify alg (an
// RSA kid on an HS256 token, say), which no refetch can fix.
//
// Keys without a kid (an HMAC secret, a one-key JWKS) serve tokens whatever
// their kid, but only when exactly one of them fits the algorithm; likewise
// a token without kid needs exactly one fitting key. Trying several keys
// would multiply the signature work an attacker can cause.
func (ks *keySet) find(kid string, a *alg) (k *vkey, found bool) {
	if ks == nil {
		return nil, false
	}
	if kid != "" {
		if cands, ok := ks.byKID[kid]; ok {
			for _, c := range cands {
				if c.fits(a) {
					return c, true
				}
			}
			return nil, true
		}
	}
	var only *vkey
	n := 0
	for _, c := range ks.all {
		if kid != "" && c.kid != "" {
			continue
		}
		if c.fits(a) {
			only = c
			n++
		}
	}
	if n == 1 {
		return only, true
	}
	return nil, false
}

// parseKeySet converts a JWKS document (RFC 7517 section 5) into a keySet.
// Each key is parsed on its own (jwk.Parse would refuse the whole set for
// one bad key), so a key the gateway cannot use (encryption-only, an
// unsupported type, RSA shorter than 2048 bits) is skipped with a log line
// and the others still work. A set without any usable key is an error.
func parseKeySet(b []byte, log *slog.Logger, provider string) (*keySet, error) {
	var doc struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("invalid JWKS: %w", err)
	}
	ks := &keySet{byKID: map[string][]*vkey{}}
	var prints []string
	for i, raw := range doc.Keys {
		key, err := jwk.ParseKey(raw)
		if err != nil {
			log.Warn("auth: skipping JWKS key", "provider", provider, "index", i, "error", err)
			continue
		}
		kid, _ := key.KeyID()
		if use, ok := key.KeyUsage(); ok && use != "sig" {
			continue
		}
		// RFC 7517 section 4.3: key_ops without "verify" is a key for
		// something else (encryption, say), as use other than sig is.
		if ops, ok := key.KeyOps(); ok && !slices.Contains(ops, jwk.KeyOpVerify) {
			continue
		}
		vk, err := convertKey(key)
		if err != nil {
			log.Warn("auth: skipping JWKS key", "provider", provider, "kid", kid, "error", err)
			continue
		}
		vk.kid = kid
		if a, ok := key.Algorithm(); ok {
			vk.alg = a.String()
		}
		tp, err := key.Thumbprint(crypto.SHA256)
		if err != nil {
			continue
		}
		prints = append(prints, fmt.Sprintf("%s|%s|%x", kid, vk.alg, tp))
		ks.all = append(ks.all, vk)
		if kid != "" {
			ks.byKID[kid] = append(ks.byKID[kid], vk)
		}
	}
	if len(ks.all) == 0 {
		return nil, errors.New("no usable signature verification key in JWKS")
	}
	sort.Strings(prints)
	h := sha256.New()
	for _, p := range prints {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	copy(ks.fingerprint[:], h.Sum(nil))
	return ks, nil
}

// convertKey turns a JWK into a typed public key.
func convertKey(key jwk.Key) (*vkey, error) {
	var raw any
	if err := jwk.Export(key, &raw); err != nil {
		return nil, err
	}
	switch k := raw.(type) {
	case *rsa.PublicKey:
		return rsaKey(k)
	case *rsa.PrivateKey:
		return rsaKey(&k.PublicKey)
	case *ecdsa.PublicKey:
		return &vkey{family: famEC, ec: k}, nil
	case *ecdsa.PrivateKey:
		return &vkey{family: famEC, ec: &k.PublicKey}, nil
	case ed25519.PublicKey:
		return &vkey{family: famEd, ed: k}, nil
	case ed25519.PrivateKey:
		return &vkey{family: famEd, ed: k.Public().(ed25519.PublicKey)}, nil
	case []byte:
		if len(k) == 0 {
			return nil, errors.New("empty symmetric key")
		}
		return &vkey{family: famHMAC, hmac: k}, nil
	}
	return nil, fmt.Errorf("unsupported key type %T", raw)
}

func rsaKey(k *rsa.PublicKey) (*vkey, error) {
	// RFC 7518 section 3.3: keys of 2048 bits or larger MUST be used.
	if k.N.BitLen() < 2048 {
		return nil, fmt.Errorf("RSA key of %d bits is shorter than 2048", k.N.BitLen())
	}
	return &vkey{family: famRSA, rsa: k}, nil
}
