package ratelimit

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/portico-gw/portico/internal/config"
	"github.com/portico-gw/portico/internal/reqctx"
)

// TestClientIPZone: an IPv6 zone names an interface of the receiving host,
// not the client, and any text is a valid zone. The ip key ignores it: one
// address with and without zones is one bucket, and a long zone cannot
// outgrow the subject's two-digit length prefix.
func TestClientIPZone(t *testing.T) {
	e := newEnv(t, envOpt{policies: map[string]*config.Policy{"per-ip": pol("fixed_window", 2, time.Minute, "ip")}, route: []string{"per-ip"}})
	long := "2001:db8::7%" + strings.Repeat("z", 80)
	var codes []int
	for _, ip := range []string{"2001:db8::7", "2001:db8::7%eth0", long} {
		codes = append(codes, e.do("Test-IP", ip).code)
	}
	if want := []int{200, 200, 429}; !slices.Equal(codes, want) {
		t.Fatalf("codes %v, want %v (a zone opened a new bucket)", codes, want)
	}
	k, err := ParseKey("ip")
	if err != nil {
		t.Fatal(err)
	}
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	got, _, _, ok := k.appendSubject(nil, r, &reqctx.Info{ClientIP: netip.MustParseAddr(long)}, nil, "r", false)
	if !ok || string(got) != "ip=11:2001:db8::7" {
		t.Fatalf("subject %q", got)
	}
	// Outside a gateway request the peer address is read the same way.
	r.RemoteAddr = "[fe80::1%eth0]:443"
	got, _, _, ok = k.appendSubject(nil, r, nil, nil, "r", false)
	if !ok || string(got) != "ip=7:fe80::1" {
		t.Fatalf("subject from RemoteAddr %q", got)
	}
}

// TestFailClosedCountedWhileOpen: every fail_closed refusal is counted as
// fallback, also while the open breaker keeps the store out and no error is
// counted; otherwise the 503s of an outage would not show in the metrics.
func TestFailClosedCountedWhileOpen(t *testing.T) {
	fs := &failingStore{}
	fs.down.Store(true)
	e := newEnv(t, envOpt{store: fs, onErr: "fail_closed",
		policies: map[string]*config.Policy{"p": pol("fixed_window", 8, time.Minute, "ip")}, route: []string{"p"}})
	for i := range 6 {
		r := e.do()
		if r.code != http.StatusServiceUnavailable || r.header.Get("Retry-After") != "1" {
			t.Fatalf("request %d: %d Retry-After %q", i, r.code, r.header.Get("Retry-After"))
		}
	}
	if !e.svc.breakers[0].open() || fs.calls.Load() != 3 {
		t.Fatalf("breaker open %v after %d store calls, want open after 3", e.svc.breakers[0].open(), fs.calls.Load())
	}
	if errs, fb := e.count("p", "error"), e.count("p", "fallback"); errs != 3 || fb != 6 {
		t.Fatalf("error %v fallback %v, want 3 failed calls and 6 refusals", errs, fb)
	}
}

// TestMissingKeyHasNoQuotaFields: a 429 for a request that lacks a key part
// (on_missing_key: deny) consulted no quota. It must not carry a RateLimit
// field saying "r=0;t=0" (retry at once, to no avail), nor keep the
// pre-auth stage's field, whose r > 0 contradicts the 429;
// RateLimit-Policy still describes the route.
func TestMissingKeyHasNoQuotaFields(t *testing.T) {
	for _, headers := range []string{"ietf", "legacy"} {
		t.Run(headers, func(t *testing.T) {
			e := newEnv(t, envOpt{headers: headers, policies: map[string]*config.Policy{
				"per-ip":   pol("fixed_window", 10, time.Minute, "ip"),
				"per-user": pol("fixed_window", 5, time.Minute, "claim:sub"),
			}, route: []string{"per-ip", "per-user"}})
			r := e.do() // no identity: claim sub is missing
			if r.code != http.StatusTooManyRequests || !strings.Contains(r.body, "claim sub") {
				t.Fatalf("%d %s", r.code, r.body)
			}
			for _, f := range []string{"RateLimit", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "Retry-After"} {
				if v := r.header.Get(f); v != "" {
					t.Errorf("%s: %q on a 429 that consulted no quota", f, v)
				}
			}
			if r.header.Get("RateLimit-Policy") == "" {
				t.Error("RateLimit-Policy dropped")
			}
		})
	}
}
