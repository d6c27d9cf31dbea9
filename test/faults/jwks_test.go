package faults

import (
	"fmt"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/portico-gw/portico/internal/auth/authtest"
)

// Fault 7: the identity provider's JWKS endpoint is down when the gateway
// starts, comes up, then goes away for good. Known keys keep working from
// the cache; an unknown kid while the key set cannot be fetched is the
// gateway's problem (503 with Retry-After), not the client's (401).
func TestJWKSDown(t *testing.T) {
	t.Parallel()
	known := authtest.NewRSAKey(t, "known", "RS256")
	unknown := authtest.NewRSAKey(t, "rotated-in", "RS256")
	jwks := authtest.NewJWKSServer(t, known)
	jwks.SetDown(true)
	up := okTarget(t, "up")
	p := start(t, header+fmt.Sprintf(`upstreams:
  up: {targets: [{url: %q}]}
auth:
  idp: {type: jwt, jwks_url: %q, issuer: "https://id.test", audiences: [portico]}
routes:
  - {name: jwt, match: {path: "/*"}, upstream: up, auth: [idp]}
`, up.URL(), jwks.URL()))
	c := client(t)
	seq := 0
	token := func(k *authtest.Key) string {
		seq++ // a new token each time, so the verified-token cache never answers
		now := time.Now()
		return authtest.Sign(t, k, map[string]any{"iss": "https://id.test", "aud": "portico",
			"sub": "user-" + strconv.Itoa(seq), "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()})
	}
	call := func(k *authtest.Key) (*http.Response, []byte) {
		return get(t, c, p.Base+"/x", map[string]string{"Authorization": "Bearer " + token(k)})
	}
	unavailable := func(t *testing.T, resp *http.Response, body []byte) int {
		t.Helper()
		if _, err := checkProblem(resp, body, http.StatusServiceUnavailable); err != nil {
			t.Fatal(err)
		}
		ra, err := strconv.Atoi(resp.Header.Get("Retry-After"))
		if err != nil || ra < 1 || ra > 60 {
			t.Fatalf("Retry-After %q", resp.Header.Get("Retry-After"))
		}
		return ra
	}

	t.Run("down at start", func(t *testing.T) {
		if len(p.Stderr.Find("auth: JWKS not available; tokens whose key id is unknown get 503 with Retry-After until the key set is fetched", nil)) == 0 {
			t.Error("the failed startup fetch was not logged")
		}
		resp, body := call(known)
		ra := unavailable(t, resp, body)
		// The IdP recovers; after Retry-After the same kind of token passes.
		jwks.SetDown(false)
		time.Sleep(time.Duration(ra)*time.Second + 100*time.Millisecond) // the wait the gateway asked for
		if resp, body := call(known); resp.StatusCode != http.StatusOK {
			t.Fatalf("after Retry-After %ds: %d %s", ra, resp.StatusCode, body)
		}
	})

	t.Run("down later", func(t *testing.T) {
		jwks.Close()
		// Cached keys keep verifying new tokens.
		for i := 0; i < 5; i++ {
			if resp, body := call(known); resp.StatusCode != http.StatusOK {
				t.Fatalf("known kid with the IdP gone: %d %s", resp.StatusCode, body)
			}
		}
		// An unknown kid makes the gateway refetch (at most once per few
		// seconds); once that fetch failed the answer is 503.
		deadline := time.Now().Add(15 * time.Second)
		for {
			resp, body := call(unknown)
			if resp.StatusCode == http.StatusServiceUnavailable {
				unavailable(t, resp, body)
				break
			}
			if resp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("unknown kid: %d %s", resp.StatusCode, body)
			}
			if resp.Header.Get("WWW-Authenticate") == "" {
				t.Error("401 without WWW-Authenticate")
			}
			if time.Now().After(deadline) {
				t.Fatal("unknown kid never got 503 while the JWKS server is gone")
			}
			time.Sleep(250 * time.Millisecond)
		}
		// And known keys still work after the failed refetch.
		if resp, body := call(known); resp.StatusCode != http.StatusOK {
			t.Fatalf("known kid after a failed refetch: %d %s", resp.StatusCode, body)
		}
		m := scrape(t, p)
		if v := m.Sum("portico_auth_failures_total", map[string]string{"route": "jwt", "reason": "unavailable"}); v < 2 {
			t.Errorf("auth failures {reason=unavailable} = %v, want at least 2:\n%s", v, m.Series("portico_auth_failures_total"))
		}
		if v := m.Sum("portico_requests_total", map[string]string{"route": "jwt", "code": "200"}); v != 7 {
			t.Errorf("portico_requests_total{code=200} = %v, want 7", v)
		}
	})
}
