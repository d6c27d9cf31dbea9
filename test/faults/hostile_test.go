package faults

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/portico-gw/portico/internal/auth/authtest"
)

// An API key, in its header or its query parameter, never reaches an
// upstream (DESIGN.md: "the key header or query parameter itself is never
// forwarded or logged"), whichever kind of route the client sends it to:
// public, API-key or JWT. The internal/gateway tests cover the first two
// with the header; this covers every route kind with both carriers, and
// the access log.
func TestAPIKeyNeverForwarded(t *testing.T) {
	t.Parallel()
	seen := make(chan string, 16)
	up, err := StartTarget("127.0.0.1:0", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := json.Marshal(map[string]any{"header": r.Header, "query": r.URL.RawQuery})
		select {
		case seen <- string(b):
		default:
		}
		w.WriteHeader(http.StatusOK)
	}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(up.Kill)
	key := authtest.NewRSAKey(t, "k", "RS256")
	jwks := authtest.NewJWKSServer(t, key)
	const secret = "portico-fault-suite-key-0123456789"
	p := start(t, fmt.Sprintf(`version: 1
server: {listen: "127.0.0.1:0"}
admin: {listen: "127.0.0.1:0"}
logging: {access_log: true}
upstreams:
  up: {targets: [{url: %q}]}
auth:
  hdr-keys: {type: api_key, header: X-API-Key, keys: [{id: acme, sha256: %q}]}
  query-keys: {type: api_key, query: partner_key, keys: [{id: acme, sha256: %q}]}
  idp: {type: jwt, jwks_url: %q, issuer: "https://id.test", audiences: [portico]}
routes:
  - {name: public, match: {path: "/public"}, upstream: up, public: true}
  - {name: keyed, match: {path: "/keyed"}, upstream: up, auth: [hdr-keys, query-keys]}
  - {name: jwt, match: {path: "/jwt"}, upstream: up, auth: [idp]}
`, up.URL(), authtest.KeyHash(secret), authtest.KeyHash(secret), jwks.URL()))
	tok := authtest.Sign(t, key, map[string]any{"iss": "https://id.test", "aud": "portico", "sub": "u1",
		"exp": time.Now().Add(time.Hour).Unix()})
	c := client(t)
	for _, route := range []string{"public", "keyed", "jwt"} {
		for _, carrier := range []string{"header", "query"} {
			t.Run(route+"/"+carrier, func(t *testing.T) {
				url := p.Base + "/" + route
				hdr := map[string]string{}
				if route == "jwt" {
					hdr["Authorization"] = "Bearer " + tok
				}
				if carrier == "header" {
					hdr["X-API-Key"] = secret
				} else {
					url += "?partner_key=" + secret
				}
				resp, body := get(t, c, url, hdr)
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("%d %s", resp.StatusCode, body)
				}
				got := <-seen
				if strings.Contains(got, secret) {
					t.Errorf("the upstream received the API key: %s", got)
				}
			})
		}
	}
	if !p.Stdout.WaitFor(5*time.Second, func(b *LineBuffer) bool { return b.Count() >= 6 }) {
		t.Fatalf("access log has %d lines, want 6", p.Stdout.Count())
	}
	if strings.Contains(p.Stdout.String(), secret) || strings.Contains(p.Stderr.String(), secret) {
		t.Errorf("a log holds the API key:\n%s", p.Stdout.String())
	}
}
