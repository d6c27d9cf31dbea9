package auth

import (
	"sync"
)

const cacheShards = 16

// tokenCache maps the SHA-256 of a raw token to the outcome of its full
// check: a verified identity (until the token's exp, at most cacheMaxTTL)
// or a signature failure (for negativeTTL). SHA-256 rather than a fast
// non-cryptographic hash because the key stands for the token: a collision
// would let one token pass as another, and with SHA-NI hashing a typical
// 800-byte token costs a few hundred nanoseconds.
//
// It is sharded by the first byte of the hash (uniform, and not chosen by
// the client in any useful way) so concurrent requests rarely share a lock;
// each shard holds at most max/cacheShards entries. When a shard is full,
// expired entries go first, then an arbitrary one (Go's map iteration order
// is randomised): cheap, and an attacker filling the cache with valid tokens
// of their own only costs legitimate callers one signature check each.
//
// Every entry records the key-set generation it was checked under; a lookup
// under another generation misses, which flushes the cache in O(1) when the
// provider's keys change.
type tokenCache struct {
	perShard int
	shards   [cacheShards]cacheShard
}

type cacheShard struct {
	mu sync.RWMutex
	m  map[[32]byte]cacheEntry
	_  [40]byte // keep shards on separate cache lines
}

type cacheEntry struct {
	v      *verified // nil: a cached failure
	reason reason
	until  int64 // unix nanoseconds
	gen    uint64
}

func newTokenCache(max int) *tokenCache {
	c := &tokenCache{perShard: max / cacheShards}
	if c.perShard < 1 {
		c.perShard = 1
	}
	for i := range c.shards {
		c.shards[i].m = make(map[[32]byte]cacheEntry)
	}
	return c
}

// get returns the cached outcome for the token hash, if one is live under
// generation gen at now.
func (c *tokenCache) get(sum *[32]byte, now int64, gen uint64) (*verified, reason, bool) {
	sh := &c.shards[sum[0]%cacheShards]
	sh.mu.RLock()
	e, ok := sh.m[*sum]
	sh.mu.RUnlock()
	if !ok || e.gen != gen || now >= e.until {
		return nil, reasonNone, false
	}
	return e.v, e.reason, true
}

// put stores an outcome.
func (c *tokenCache) put(sum *[32]byte, v *verified, r reason, now, until int64, gen uint64) {
	sh := &c.shards[sum[0]%cacheShards]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if _, exists := sh.m[*sum]; !exists && len(sh.m) >= c.perShard {
		// Sweep what is dead by time or by key rotation; an entry of an
		// older generation can never be hit again.
		for k, e := range sh.m {
			if e.until <= now || e.gen != gen {
				delete(sh.m, k)
			}
		}
		if len(sh.m) >= c.perShard {
			for k := range sh.m {
				delete(sh.m, k)
				break
			}
		}
	}
	sh.m[*sum] = cacheEntry{v: v, reason: r, until: until, gen: gen}
}

// len returns the number of entries, for tests.
func (c *tokenCache) len() int {
	n := 0
	for i := range c.shards {
		c.shards[i].mu.RLock()
		n += len(c.shards[i].m)
		c.shards[i].mu.RUnlock()
	}
	return n
}
