package authtest

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jws/jwsbb"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestSignedTokensVerify(t *testing.T) {
	keys := []*Key{NewRSAKey(t, "r", "RS256"), NewRSAKey(t, "p", "PS384"), NewECKey(t, "e"), NewEdKey(t, "d")}
	set, err := jwk.Parse(JWKS(keys...))
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		t.Run(k.Alg, func(t *testing.T) {
			tok := Sign(t, k, map[string]any{"sub": "x"})
			parts := strings.Split(tok, ".")
			var hdr map[string]any
			b, _ := base64.RawURLEncoding.DecodeString(parts[0])
			if err := json.Unmarshal(b, &hdr); err != nil || hdr["alg"] != k.Alg || hdr["kid"] != k.KID {
				t.Fatalf("header %s", b)
			}
			jk, ok := set.LookupKeyID(k.KID)
			if !ok {
				t.Fatal("kid not in the JWKS")
			}
			var pub any
			if err := jwk.Export(jk, &pub); err != nil {
				t.Fatal(err)
			}
			sig, _ := base64.RawURLEncoding.DecodeString(parts[2])
			if err := jwsbb.Verify(pub, k.Alg, []byte(parts[0]+"."+parts[1]), sig); err != nil {
				t.Fatalf("verify: %v", err)
			}
		})
	}
}

func TestJWKSServer(t *testing.T) {
	k := NewEdKey(t, "d")
	s := NewJWKSServer(t, k)
	s.SetMaxAge(60)
	c := &http.Client{Transport: &http.Transport{}}
	defer c.CloseIdleConnections()
	get := func() (int, string, string) {
		resp, err := c.Get(s.URL())
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header.Get("Cache-Control"), string(b)
	}
	if code, cc, body := get(); code != 200 || cc != "max-age=60" || !strings.Contains(body, `"kid":"d"`) {
		t.Fatalf("%d %q %s", code, cc, body)
	}
	s.SetDown(true)
	if code, _, _ := get(); code != http.StatusServiceUnavailable {
		t.Fatalf("down: %d", code)
	}
	if s.Requests() != 2 {
		t.Fatalf("requests %d", s.Requests())
	}
	if KeyHash("abc") != "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" {
		t.Fatal("KeyHash is not hex SHA-256")
	}
}
