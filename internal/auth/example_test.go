package auth_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/portico-gw/portico/internal/auth"
	"github.com/portico-gw/portico/internal/config"
	"github.com/portico-gw/portico/internal/reqctx"
)

// Example shows the gateway's use of the package: one Registry per process,
// Apply per config, one middleware per route, identity headers stripped on
// every route first.
func Example() {
	reg := auth.NewRegistry(auth.Deps{}) // logger, metrics, clock, client: all optional
	defer reg.Close()

	secret := "an-hmac-secret-of-at-least-32-bytes!"
	set, err := reg.Apply(context.Background(), map[string]*config.AuthProvider{
		"users": {
			Type: "jwt", Secret: secret, Algorithms: []string{"HS256"},
			Issuer: "https://id.example.com", Audiences: []string{"portico"},
			ForwardClaims: map[string]string{"sub": "X-User-Id"},
		},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	protect, err := set.Middleware("posts-api", []string{"users"}, []string{"posts:read"})
	if err != nil {
		fmt.Println(err)
		return
	}
	upstream := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := reqctx.IdentityFrom(r.Context())
		fmt.Printf("upstream sees X-User-Id=%s, identity %s/%s\n", r.Header.Get("X-User-Id"), id.Provider, id.Subject)
	})
	h := auth.StripIdentityHeaders(set.IdentityHeaders())(protect(upstream))

	// An HS256 token, made by hand (RFC 7515 appendix A.1).
	enc := base64.RawURLEncoding.EncodeToString
	claims := fmt.Sprintf(`{"iss":"https://id.example.com","aud":"portico","sub":"alice","scope":"posts:read","exp":%d}`,
		time.Now().Unix()+300)
	input := enc([]byte(`{"alg":"HS256","typ":"JWT"}`)) + "." + enc([]byte(claims))
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(input))
	tok := input + "." + enc(mac.Sum(nil))
	for _, authz := range []string{"", "Bearer " + tok} {
		r := httptest.NewRequest(http.MethodGet, "/posts/1", nil)
		r.Header.Set("X-User-Id", "mallory") // spoofed: always removed
		if authz != "" {
			r.Header.Set("Authorization", authz)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		fmt.Println(rec.Code, rec.Header().Get("WWW-Authenticate"))
	}
	// Output:
	// 401 Bearer realm="portico"
	// upstream sees X-User-Id=alice, identity users/alice
	// 200
}
