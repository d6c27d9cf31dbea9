package auth

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"unsafe"

	"github.com/portico-gw/portico/internal/config"
	"github.com/portico-gw/portico/internal/identity"
)

// apiKeyProvider accepts API keys, configured as the hex SHA-256 of each
// key so plaintext keys never sit in config.
//
// Lookup is a map keyed by the SHA-256 of the presented key, not a
// constant-time loop over every configured hash. Timing can only reveal how
// the hash of the attacker's own input relates to stored hashes; learning
// stored hashes (which the config holds anyway) does not help find a key,
// as that needs a SHA-256 preimage. The plaintext key is never compared, so
// there is nothing secret to leak byte by byte, and the map keeps the cost
// independent of the number of keys.
type apiKeyProvider struct {
	name    string
	from    credSource
	keys    map[[32]byte]*verified
	idHdr   string // canonical forward_id header, or ""
	display string // header or query name for the challenge
}

func buildAPIKey(name string, pc *config.AuthProvider) (*apiKeyProvider, error) {
	p := &apiKeyProvider{name: name, keys: make(map[[32]byte]*verified, len(pc.Keys))}
	switch {
	case pc.Header != "" && pc.Query != "":
		return nil, errors.New("set header or query, not both")
	case pc.Header != "":
		p.from = credSource{kind: fromHeader, name: http.CanonicalHeaderKey(pc.Header)}
		p.display = `header="` + p.from.name + `"`
	case pc.Query != "":
		p.from = credSource{kind: fromQuery, name: pc.Query}
		p.display = `query="` + pc.Query + `"`
	default:
		return nil, errors.New("header or query is required")
	}
	if pc.ForwardID != "" {
		p.idHdr = http.CanonicalHeaderKey(pc.ForwardID)
	}
	seenID := map[string]bool{}
	for i, k := range pc.Keys {
		if k.ID == "" {
			return nil, fmt.Errorf("keys[%d].id: required", i)
		}
		if seenID[k.ID] {
			return nil, fmt.Errorf("keys[%d].id: %q is used twice", i, k.ID)
		}
		seenID[k.ID] = true
		raw, err := hex.DecodeString(strings.TrimSpace(k.SHA256))
		if err != nil || len(raw) != sha256.Size {
			return nil, fmt.Errorf("keys[%d].sha256: want 64 hex digits", i)
		}
		var sum [32]byte
		copy(sum[:], raw)
		if _, dup := p.keys[sum]; dup {
			return nil, fmt.Errorf("keys[%d].sha256: the same key is configured twice", i)
		}
		v := &verified{id: &identity.Identity{Provider: name, Consumer: k.ID, Scopes: slices.Clone(k.Scopes)}}
		if p.idHdr != "" && validHeaderValue(k.ID) {
			v.headers = []headerValue{{name: p.idHdr, vals: []string{k.ID}}}
		}
		p.keys[sum] = v
	}
	return p, nil
}

func (p *apiKeyProvider) credential(r *http.Request) (string, bool) { return p.from.get(r) }

func (p *apiKeyProvider) authenticate(_ context.Context, key string) (*verified, failure) {
	if key == "" || len(key) > maxTokenBytes {
		return nil, failure{reason: reasonUnknownKey}
	}
	sum := sha256.Sum256(unsafe.Slice(unsafe.StringData(key), len(key)))
	if v := p.keys[sum]; v != nil {
		return v, failure{}
	}
	return nil, failure{reason: reasonUnknownKey}
}

func (p *apiKeyProvider) scheme() string { return "APIKey" }

func (p *apiKeyProvider) challenge() string {
	return `APIKey realm="` + realm + `", ` + p.display
}

func (p *apiKeyProvider) invalidChallenge(reason) string {
	return p.challenge() + `, error="invalid_key"`
}

func (p *apiKeyProvider) invalidProblem(reason) (code, detail string) {
	return "invalid_api_key", "invalid API key"
}

// stripAfterAccept: an API key is never forwarded, whoever accepted the
// request.
func (p *apiKeyProvider) stripAfterAccept(r *http.Request, _ provider) { p.from.strip(r) }

func (p *apiKeyProvider) identityHeaders() []string {
	if p.idHdr == "" {
		return nil
	}
	return []string{p.idHdr}
}
