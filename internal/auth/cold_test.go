package auth

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/portico-gw/portico/internal/auth/authtest"
	"github.com/portico-gw/portico/internal/config"
)

// TestColdPathAllocations is the allocation budget of verifying a token not
// seen before (RS256): crypto/rsa's own (about ten) plus the decoded text,
// the claims map and its boxed values, and the verified identity. It was
// 72 with encoding/json and the JOSE library's verifier.
func TestColdPathAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are not meaningful under the race detector")
	}
	e := newEnv(t)
	srv := authtest.NewJWKSServer(t, rsaKey1)
	set := e.apply(map[string]*config.AuthProvider{"users": jwtProviderCfg(srv.URL(), nil)})
	p := set.providers["users"].(*jwtProvider)
	tok := authtest.Sign(t, rsaKey1, e.claims(nil))
	ctx := context.Background()
	ks := p.src.current()
	h := p.cache.hash(tok)
	allocs := testing.AllocsPerRun(50, func() {
		if _, f := p.verifyCold(ctx, tok, h, e.clk.Now(), ks); f.reason != reasonNone {
			t.Fatal(f.reason)
		}
	})
	if allocs > 26 {
		t.Fatalf("%v allocations per cold verification, want at most 26", allocs)
	}
}

// BenchmarkCacheEntryMemory reports what one verified token costs while it
// sits in the cache: live heap bytes and objects per entry (the objects
// are what each GC cycle traces). Tokens arrive as net/http delivers
// header values, each in a string of its own.
func BenchmarkCacheEntryMemory(b *testing.B) {
	_, p, _ := benchProvider(b)
	const n = 500
	now := time.Now().Unix()
	toks := make([]string, n)
	for i := range toks {
		toks[i] = authtest.Sign(b, rsaKey1, map[string]any{
			"iss": "https://id.example.com", "aud": "portico", "sub": fmt.Sprintf("user-%d", i),
			"scope": "posts:read feed:read", "iat": now, "exp": now + 3600, "jti": fmt.Sprintf("%016x", i),
		})
	}
	ctx := context.Background()
	var bytesPer, objsPer float64
	for b.Loop() {
		p.cache = newTokenCache(cacheEntries)
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		for _, tok := range toks {
			hdr := strings.Clone("Bearer " + tok)
			if _, f := p.authenticate(ctx, hdr[len("Bearer "):]); f.reason != reasonNone {
				b.Fatal(f.reason)
			}
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		if p.cache.len() != n {
			b.Fatalf("%d entries", p.cache.len())
		}
		bytesPer = float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / n
		objsPer = float64(int64(after.HeapObjects)-int64(before.HeapObjects)) / n
	}
	b.ReportMetric(bytesPer, "B/entry")
	b.ReportMetric(objsPer, "objects/entry")
}

// BenchmarkVerifyRS256ColdFullCache is BenchmarkVerifyRS256Cold with the
// verified-token cache full of live entries, as when every request brings
// a new token: each verification also makes room for its entry.
func BenchmarkVerifyRS256ColdFullCache(b *testing.B) {
	_, p, tok := benchProvider(b)
	ctx := context.Background()
	ks := p.src.current()
	now := time.Now()
	for i := range cacheEntries {
		h := uint64(i)
		p.cache.put(h, tok, &verified{}, reasonNone, now.UnixNano(), now.Add(cacheMaxTTL).UnixNano(), ks.gen)
	}
	b.ReportAllocs()
	h := uint64(cacheEntries)
	reportCPU(b, func() {
		for b.Loop() {
			// Another hash stands for another token: the entry is new.
			h++
			if _, f := p.verifyCold(ctx, tok, h, time.Now(), ks); f.reason != reasonNone {
				b.Fatal(f.reason)
			}
		}
	})
}
