package auth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	"github.com/portico-gw/portico/internal/auth/authtest"
	"github.com/portico-gw/portico/internal/config"
)

// TestKeyFits is the algorithm-to-key table that stops algorithm confusion:
// a key verifies only algorithms of its own family (and curve, and its own
// JWK alg when it names one).
func TestKeyFits(t *testing.T) {
	rk := &vkey{family: famRSA, rsa: &rsa.PublicKey{}}
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	ec256 := &vkey{family: famEC, ec: &p256.PublicKey}
	ec384 := &vkey{family: famEC, ec: &p384.PublicKey}
	hk := &vkey{family: famHMAC, hmac: []byte("s")}
	ed := &vkey{family: famEd}
	pinned := &vkey{family: famRSA, rsa: &rsa.PublicKey{}, alg: "PS256"}
	tests := []struct {
		key  *vkey
		alg  string
		want bool
	}{
		{rk, "RS256", true}, {rk, "PS512", true}, {rk, "HS256", false}, {rk, "ES256", false}, {rk, "EdDSA", false},
		{hk, "HS256", true}, {hk, "HS512", true}, {hk, "RS256", false},
		{ec256, "ES256", true}, {ec256, "ES384", false}, {ec384, "ES384", true}, {ec256, "HS256", false},
		{ed, "EdDSA", true}, {ed, "ES256", false}, {ed, "HS256", false},
		{pinned, "PS256", true}, {pinned, "RS256", false},
	}
	for _, tc := range tests {
		a, ok := algByName(tc.alg)
		if !ok {
			t.Fatal(tc.alg)
		}
		if got := tc.key.fits(a); got != tc.want {
			t.Errorf("family %d (alg %q) fits %s = %v, want %v", tc.key.family, tc.key.alg, tc.alg, got, tc.want)
		}
	}
	if _, ok := algByName("none"); ok {
		t.Fatal("none is an algorithm")
	}
}

func TestParseKeySetSkipsUnusableKeys(t *testing.T) {
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	keys(t)
	weak := &authtest.Key{KID: "weak", Alg: "RS256", Private: small}
	enc := ecKey1.JWK()
	enc["use"] = "enc"
	enc["kid"] = "enc-1"
	doc := `{"keys":[` + string(mustJSON(weak.JWK())) + `,` + string(mustJSON(enc)) + `,` + string(mustJSON(edKey1.JWK())) + `]}`
	var logs logBuf
	ks, err := parseKeySet([]byte(doc), slog.New(slog.NewTextHandler(&logs, nil)), "p")
	if err != nil {
		t.Fatal(err)
	}
	if len(ks.all) != 1 || ks.all[0].kid != "ed-1" {
		t.Fatalf("kept %d keys", len(ks.all))
	}
	if !strings.Contains(logs.String(), "2048") {
		t.Fatalf("no log for the weak key: %s", logs.String())
	}
	if _, err := parseKeySet([]byte(`{"keys":[`+string(mustJSON(weak.JWK()))+`]}`), slog.New(slog.DiscardHandler), "p"); err == nil {
		t.Fatal("a set of only unusable keys was accepted")
	}
	if _, err := parseKeySet([]byte(`not json`), slog.New(slog.DiscardHandler), "p"); err == nil {
		t.Fatal("garbage accepted")
	}
}

func TestForwardedClaims(t *testing.T) {
	e := newEnv(t)
	srv := authtest.NewJWKSServer(t, rsaKey1)
	set := e.apply(map[string]*config.AuthProvider{"users": jwtProviderCfg(srv.URL(), func(p *config.AuthProvider) {
		p.ForwardClaims = map[string]string{"groups": "X-Groups", "tenant": "X-Tenant", "evil": "X-Evil", "admin": "X-Admin", "obj": "X-Obj"}
	})})
	var s seen
	h := e.chain(set, "claims", []string{"users"}, nil, s.handler())
	tok := authtest.Sign(t, rsaKey1, e.claims(map[string]any{
		"groups": []string{"eng", "ops"}, "tenant": 42, "evil": "a\r\nX-Injected: 1", "admin": true,
		"obj": map[string]any{"a": 1},
	}))
	if rec := do(h, bearer(tok)); rec.Code != 200 {
		t.Fatalf("status %d", rec.Code)
	}
	want := map[string]string{"X-Groups": "eng ops", "X-Tenant": "42", "X-Admin": "true"}
	for k, v := range want {
		if got := s.header.Get(k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	for _, k := range []string{"X-Evil", "X-Obj", "X-Injected"} {
		if _, ok := s.header[k]; ok {
			t.Errorf("%s set: %q", k, s.header[k])
		}
	}
}

func mustJSON(m map[string]any) []byte {
	b, err := json.Marshal(m)
	if err != nil {
		panic(err)
	}
	return b
}
