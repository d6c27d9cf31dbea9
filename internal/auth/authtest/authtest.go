// Package authtest helps tests of the auth stage and of the stages after it:
// signing keys, a JWKS server (httptest) that counts its requests and can be
// taken down, and token signing, including deliberately broken tokens (alg
// none, HS256 signed with an RSA public key) that a verifier must refuse.
package authtest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/lestrrat-go/jwx/v3/jws/jwsbb"
)

// Key is a signing key with its JWS algorithm and key id.
type Key struct {
	KID     string
	Alg     string // RS256, PS256, ES256, EdDSA, ...
	Private crypto.Signer
}

// NewRSAKey returns a 2048-bit RSA key for alg (RS256 when empty).
func NewRSAKey(t testing.TB, kid, alg string) *Key {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatalf("authtest: rsa key: %v", err)
	}
	if alg == "" {
		alg = "RS256"
	}
	return &Key{KID: kid, Alg: alg, Private: k}
}

// NewECKey returns a P-256 key for ES256.
func NewECKey(t testing.TB, kid string) *Key {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("authtest: ec key: %v", err)
	}
	return &Key{KID: kid, Alg: "ES256", Private: k}
}

// NewEdKey returns an Ed25519 key for EdDSA.
func NewEdKey(t testing.TB, kid string) *Key {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatalf("authtest: ed25519 key: %v", err)
	}
	return &Key{KID: kid, Alg: "EdDSA", Private: k}
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// JWK returns the public JWK of k (RFC 7517) with kid, use "sig" and alg.
func (k *Key) JWK() map[string]any {
	m := map[string]any{"use": "sig", "alg": k.Alg}
	if k.KID != "" {
		m["kid"] = k.KID
	}
	switch pub := k.Private.Public().(type) {
	case *rsa.PublicKey:
		m["kty"] = "RSA"
		m["n"] = b64(pub.N.Bytes())
		m["e"] = b64(big.NewInt(int64(pub.E)).Bytes())
	case *ecdsa.PublicKey:
		ek, err := pub.ECDH()
		if err != nil {
			panic("authtest: " + err.Error()) // only P-256 keys are made here
		}
		raw := ek.Bytes() // 0x04 || X || Y
		n := (len(raw) - 1) / 2
		m["kty"] = "EC"
		m["crv"] = "P-256"
		m["x"] = b64(raw[1 : 1+n])
		m["y"] = b64(raw[1+n:])
	case ed25519.PublicKey:
		m["kty"] = "OKP"
		m["crv"] = "Ed25519"
		m["x"] = b64(pub)
	}
	return m
}

// PublicPEM returns the PKIX PEM of the public key: the "secret" of the
// classic RS256-to-HS256 confusion attack.
func (k *Key) PublicPEM() []byte {
	der, err := x509.MarshalPKIXPublicKey(k.Private.Public())
	if err != nil {
		panic("authtest: " + err.Error())
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

// JWKS returns the JSON key set of keys.
func JWKS(keys ...*Key) []byte {
	list := make([]any, 0, len(keys))
	for _, k := range keys {
		list = append(list, k.JWK())
	}
	b, _ := json.Marshal(map[string]any{"keys": list})
	return b
}

// Compact assembles header, claims and a signature made by sign over the
// signing input. sign may be nil for an unsigned token.
func Compact(t testing.TB, header, claims map[string]any, sign func(input []byte) []byte) string {
	t.Helper()
	hb, err := json.Marshal(header)
	if err != nil {
		t.Fatalf("authtest: header: %v", err)
	}
	cb, err := json.Marshal(claims)
	if err != nil {
		t.Fatalf("authtest: claims: %v", err)
	}
	input := b64(hb) + "." + b64(cb)
	var sig []byte
	if sign != nil {
		sig = sign([]byte(input))
	}
	return input + "." + b64(sig)
}

// Sign returns a token signed by k with header {"alg", "kid", "typ":"JWT"}.
func Sign(t testing.TB, k *Key, claims map[string]any) string {
	t.Helper()
	h := map[string]any{"alg": k.Alg, "typ": "JWT"}
	if k.KID != "" {
		h["kid"] = k.KID
	}
	return SignHeader(t, k, h, claims)
}

// SignHeader signs with k under an arbitrary header (k.Alg picks the
// signature algorithm whatever the header says).
func SignHeader(t testing.TB, k *Key, header, claims map[string]any) string {
	t.Helper()
	return Compact(t, header, claims, func(input []byte) []byte {
		sig, err := jwsbb.Sign(k.Private, k.Alg, input, rand.Reader)
		if err != nil {
			t.Fatalf("authtest: sign %s: %v", k.Alg, err)
		}
		return sig
	})
}

// SignHMAC returns a token signed with secret under alg (HS256, HS384,
// HS512) and the given kid (omitted when empty).
func SignHMAC(t testing.TB, alg string, secret []byte, kid string, claims map[string]any) string {
	t.Helper()
	h := map[string]any{"alg": alg, "typ": "JWT"}
	if kid != "" {
		h["kid"] = kid
	}
	return Compact(t, h, claims, func(input []byte) []byte {
		sig, err := jwsbb.Sign(secret, alg, input, nil)
		if err != nil {
			t.Fatalf("authtest: sign %s: %v", alg, err)
		}
		return sig
	})
}

// KeyHash returns the hex SHA-256 of an API key, as config stores it.
func KeyHash(key string) string {
	s := sha256.Sum256([]byte(key))
	return hex.EncodeToString(s[:])
}

// JWKSServer serves a JWKS document from a real listener on 127.0.0.1 and
// counts the requests it gets. It is closed by t.Cleanup.
type JWKSServer struct {
	*httptest.Server
	mu       sync.Mutex
	body     []byte
	maxAge   int
	requests atomic.Int64
	down     atomic.Bool
	// Fetched receives (without blocking) one value per request served, so
	// tests can wait for a background fetch instead of sleeping.
	Fetched chan struct{}
}

// NewJWKSServer starts a server publishing keys.
func NewJWKSServer(t testing.TB, keys ...*Key) *JWKSServer {
	t.Helper()
	s := &JWKSServer{body: JWKS(keys...), maxAge: -1, Fetched: make(chan struct{}, 64)}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.Close)
	return s
}

func (s *JWKSServer) serve(w http.ResponseWriter, _ *http.Request) {
	s.requests.Add(1)
	defer func() {
		select {
		case s.Fetched <- struct{}{}:
		default:
		}
	}()
	if s.down.Load() {
		http.Error(w, "down", http.StatusServiceUnavailable)
		return
	}
	s.mu.Lock()
	body, age := s.body, s.maxAge
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/jwk-set+json")
	if age >= 0 {
		w.Header().Set("Cache-Control", "max-age="+strconv.Itoa(age))
	}
	_, _ = w.Write(body)
}

// URL returns the JWKS URL.
func (s *JWKSServer) URL() string { return s.Server.URL + "/.well-known/jwks.json" }

// SetKeys replaces the published keys (a rotation).
func (s *JWKSServer) SetKeys(keys ...*Key) {
	b := JWKS(keys...)
	s.mu.Lock()
	s.body = b
	s.mu.Unlock()
}

// SetBody replaces the published document verbatim.
func (s *JWKSServer) SetBody(b []byte) {
	s.mu.Lock()
	s.body = b
	s.mu.Unlock()
}

// SetMaxAge makes responses carry Cache-Control: max-age=secs (negative:
// no header).
func (s *JWKSServer) SetMaxAge(secs int) {
	s.mu.Lock()
	s.maxAge = secs
	s.mu.Unlock()
}

// SetDown makes the server answer 503 (true) or serve keys again (false).
func (s *JWKSServer) SetDown(down bool) { s.down.Store(down) }

// Requests returns how many requests the server has received.
func (s *JWKSServer) Requests() int64 { return s.requests.Load() }
