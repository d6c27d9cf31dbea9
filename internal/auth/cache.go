package auth

import (
	"hash/maphash"
	"strings"
	"sync"
	"time"
)

const (
	cacheShards = 16
	// maxCachedToken is the longest token the cache keeps; longer ones are
	// checked in full every time. Typical JWTs are 0.5-2 KiB; the bound keeps
	// a full cache under about 40 MiB per provider in the worst case.
	maxCachedToken = 4 << 10
)

// tokenCache maps a raw token to the outcome of its full check: a verified
// identity (until the token's exp, at most cacheMaxTTL) or a signature
// failure (for negativeTTL).
//
// The map key is a 64-bit maphash of the token under a per-cache random
// seed, and each entry keeps the token itself, which a hit must equal. So a
// hash collision can never let one token pass as another, and the hit path
// costs one fast hash and one string comparison rather than a
// cryptographic hash (SHA-256 of an 800-byte token is several times
// slower). Plain == is fine for that comparison: reaching it needs the same
// hash under a seed the client cannot learn, so its timing reveals nothing.
//
// It is sharded by the hash so concurrent requests rarely share a lock; each
// shard holds at most max/cacheShards entries. When a shard is full, entries
// that are dead (expired, or of an older key generation) go first, then an
// arbitrary one (Go's map iteration order is randomised): cheap, and an
// attacker filling the cache with valid tokens of their own only costs
// legitimate callers one signature check each. The search for dead entries
// is bounded (see evict): when every request brings a new token the cache
// stays full of live entries, and a pass over the shard on each insertion
// cost more than the rest of the insertion.
//
// Every entry records the key-set generation it was checked under; a lookup
// under another generation misses, which flushes the cache in O(1) when the
// provider's keys change.
type tokenCache struct {
	seed     maphash.Seed
	perShard int
	shards   [cacheShards]cacheShard
}

type cacheShard struct {
	mu sync.RWMutex
	m  map[uint64]cacheEntry
	// sweepAt is when evict may next pass over the whole shard (unix
	// nanoseconds).
	sweepAt int64
	_       [32]byte // keep shards on separate cache lines
}

const (
	// sweepInterval is the least time between two passes of evict over a
	// full shard in search of dead entries.
	sweepInterval = time.Second
	// evictSample is how many entries evict looks at between passes.
	evictSample = 8
)

type cacheEntry struct {
	tok    string
	v      *verified // nil: a cached failure
	reason reason
	until  int64 // unix nanoseconds
	gen    uint64
}

func newTokenCache(max int) *tokenCache {
	c := &tokenCache{seed: maphash.MakeSeed(), perShard: max / cacheShards}
	if c.perShard < 1 {
		c.perShard = 1
	}
	for i := range c.shards {
		c.shards[i].m = make(map[uint64]cacheEntry)
	}
	return c
}

// hash returns the cache key of a token.
func (c *tokenCache) hash(tok string) uint64 { return maphash.String(c.seed, tok) }

// get returns the cached outcome for tok (whose hash is h), if one is live
// under generation gen at now.
func (c *tokenCache) get(h uint64, tok string, now int64, gen uint64) (*verified, reason, bool) {
	sh := &c.shards[h%cacheShards]
	sh.mu.RLock()
	e, ok := sh.m[h]
	sh.mu.RUnlock()
	if !ok || e.gen != gen || now >= e.until || e.tok != tok {
		return nil, reasonNone, false
	}
	return e.v, e.reason, true
}

// put stores an outcome with a copy of tok, so the entry does not pin the
// memory tok is a slice of.
func (c *tokenCache) put(h uint64, tok string, v *verified, r reason, now, until int64, gen uint64) {
	if len(tok) > maxCachedToken {
		return
	}
	c.putOwned(h, strings.Clone(tok), v, r, now, until, gen)
}

// putOwned stores an outcome keeping tok itself, which must not be a slice
// of something much larger.
func (c *tokenCache) putOwned(h uint64, tok string, v *verified, r reason, now, until int64, gen uint64) {
	if len(tok) > maxCachedToken {
		return
	}
	sh := &c.shards[h%cacheShards]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if _, exists := sh.m[h]; !exists && len(sh.m) >= c.perShard {
		c.evict(sh, now, gen)
	}
	sh.m[h] = cacheEntry{tok: tok, v: v, reason: r, until: until, gen: gen}
}

// evict makes room in a full shard (locked). At most once per
// sweepInterval it removes every dead entry; otherwise, or when none was
// dead, it removes the first dead entry among a few it looks at, else the
// first of them, an arbitrary live one.
func (c *tokenCache) evict(sh *cacheShard, now int64, gen uint64) {
	if now >= sh.sweepAt {
		sh.sweepAt = now + int64(sweepInterval)
		for k, e := range sh.m {
			if e.until <= now || e.gen != gen {
				delete(sh.m, k)
			}
		}
		if len(sh.m) < c.perShard {
			return
		}
	}
	var victim uint64
	n := 0
	for k, e := range sh.m {
		if e.until <= now || e.gen != gen {
			victim = k
			break
		}
		if n == 0 {
			victim = k
		}
		if n++; n == evictSample {
			break
		}
	}
	delete(sh.m, victim)
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
