package ratelimit

import (
	"sync"
	"sync/atomic"
)

// negCache remembers subjects the store rejected, so that a client hammering
// an exhausted limit is answered locally without a store round trip
// (envoy's over-limit cache). An entry lives for the RetryAfter the store
// returned, measured on the local monotonic clock from when the answer
// arrived: the store's own clock can only be later, so the cache never
// admits anything, and it rejects for at most one round trip longer than
// the store would have.
//
// Entries carry the generation of the config they were made under; Apply
// bumps the generation, so changed limits take effect at once.
type negCache struct {
	gen    atomic.Uint64
	shards [negShards]negShard
}

const (
	negShards   = 64
	negPerShard = 1024 // 64k subjects per node
)

type negShard struct {
	mu sync.Mutex
	m  map[uint64]negEntry
	_  [40]byte
}

type negEntry struct {
	until int64  // µs, local clock
	gen   uint64 // config generation
	mask  uint64 // violated policies, bit i = the group's i-th policy
}

func newNegCache() *negCache {
	c := &negCache{}
	for i := range c.shards {
		c.shards[i].m = make(map[uint64]negEntry)
	}
	return c
}

// get returns the violated-policy mask and expiry of a live entry.
func (c *negCache) get(key uint64, now int64) (mask uint64, until int64, ok bool) {
	sh := &c.shards[key%negShards]
	sh.mu.Lock()
	e, found := sh.m[key]
	if found && (e.until <= now || e.gen != c.gen.Load()) {
		delete(sh.m, key)
		found = false
	}
	sh.mu.Unlock()
	if !found {
		return 0, 0, false
	}
	return e.mask, e.until, true
}

// put records a rejection until the given time. A full shard first drops
// expired entries; if none expired, the new entry is not cached (the store
// still answers correctly, only less cheaply).
func (c *negCache) put(key uint64, until int64, mask uint64, now int64) {
	sh := &c.shards[key%negShards]
	gen := c.gen.Load()
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if _, exists := sh.m[key]; !exists && len(sh.m) >= negPerShard {
		for k, e := range sh.m {
			if e.until <= now || e.gen != gen {
				delete(sh.m, k)
			}
		}
		if len(sh.m) >= negPerShard {
			return
		}
	}
	sh.m[key] = negEntry{until: until, gen: gen, mask: mask}
}

// invalidate drops every entry (lazily, by generation).
func (c *negCache) invalidate() { c.gen.Add(1) }
