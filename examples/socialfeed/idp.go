package socialfeed

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jwt"
)

// Demo identity provider settings; platform.yaml names the same values.
const (
	IdPAddr     = "127.0.0.1:7000"
	IdPIssuer   = "https://id.portico.demo"
	IdPAudience = "portico"
)

// IdP is a demo identity provider: an Ed25519 key made at start, published
// as a JWKS, and tokens signed with it. It is for the demo only: it hands a
// token to anyone who asks.
type IdP struct {
	priv jwk.Key
	set  jwk.Set
}

// NewIdP generates a fresh signing key.
func NewIdP() (*IdP, error) {
	_, raw, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	priv, err := jwk.Import(raw)
	if err != nil {
		return nil, err
	}
	kid := fmt.Sprintf("demo-%d", time.Now().Unix())
	if err := priv.Set(jwk.KeyIDKey, kid); err != nil {
		return nil, err
	}
	if err := priv.Set(jwk.AlgorithmKey, jwa.EdDSA()); err != nil {
		return nil, err
	}
	pub, err := jwk.PublicKeyOf(priv)
	if err != nil {
		return nil, err
	}
	set := jwk.NewSet()
	if err := set.AddKey(pub); err != nil {
		return nil, err
	}
	return &IdP{priv: priv, set: set}, nil
}

// Token signs a token for subject with the given scopes, valid for ttl.
func (p *IdP) Token(subject string, scopes string, ttl time.Duration) (string, error) {
	now := time.Now()
	tok, err := jwt.NewBuilder().
		Issuer(IdPIssuer).
		Audience([]string{IdPAudience}).
		Subject(subject).
		IssuedAt(now).
		NotBefore(now).
		Expiration(now.Add(ttl)).
		Claim("scope", scopes).
		Build()
	if err != nil {
		return "", err
	}
	signed, err := jwt.Sign(tok, jwt.WithKey(jwa.EdDSA(), p.priv))
	if err != nil {
		return "", err
	}
	return string(signed), nil
}

// Handler serves GET /.well-known/jwks.json and, for the demo,
// GET /token?sub=NAME (a fresh one-hour token).
func (p *IdP) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/jwks.json", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/jwk-set+json")
		w.Header().Set("Cache-Control", "max-age=300")
		_ = json.NewEncoder(w).Encode(p.set)
	})
	mux.HandleFunc("GET /token", func(w http.ResponseWriter, r *http.Request) {
		sub := r.URL.Query().Get("sub")
		if sub == "" {
			sub = "alice"
		}
		tok, err := p.Token(sub, "feed:read posts:read", time.Hour)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"access_token": tok, "token_type": "Bearer"})
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	return mux
}
