package auth

import (
	"strconv"
	"testing"
	"time"
)

// BenchmarkCachePutFull is storing a new token in a full cache of live
// entries, as every request does when each one brings a new token.
func BenchmarkCachePutFull(b *testing.B) {
	c := newTokenCache(cacheEntries)
	now := time.Now().UnixNano()
	until := now + int64(cacheMaxTTL)
	v := &verified{}
	toks := make([]string, 2*cacheEntries)
	for i := range toks {
		toks[i] = "token-" + strconv.Itoa(i)
	}
	for _, tok := range toks[:cacheEntries] {
		c.putOwned(c.hash(tok), tok, v, reasonNone, now, until, 1)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		tok := toks[i%len(toks)]
		c.putOwned(c.hash(tok), tok, v, reasonNone, now, until, 1)
		i++
	}
}

// TestCacheEviction checks which entry makes room in a full shard: dead
// ones (expired, or of an older key generation) before live ones, both in
// the periodic pass and between passes, and never more than needed.
func TestCacheEviction(t *testing.T) {
	const sec = int64(time.Second)
	v := &verified{}
	// perShard 4; hashes that are multiples of cacheShards share shard 0.
	h := func(i int) uint64 { return uint64(i * cacheShards) }
	fill := func(c *tokenCache, untils ...int64) {
		for i, u := range untils {
			c.putOwned(h(i), strconv.Itoa(i), v, reasonNone, 0, u, 1)
		}
	}
	has := func(c *tokenCache, i int, now int64, gen uint64) bool {
		_, _, ok := c.get(h(i), strconv.Itoa(i), now, gen)
		return ok
	}
	t.Run("pass removes the dead", func(t *testing.T) {
		c := newTokenCache(4 * cacheShards)
		fill(c, 10*sec, 1*sec, 10*sec, 1*sec)
		c.putOwned(h(4), "4", v, reasonNone, 2*sec, 10*sec, 1)
		if n := len(c.shards[0].m); n != 3 {
			t.Fatalf("%d entries after the pass, want 3", n)
		}
		for _, i := range []int{0, 2, 4} {
			if !has(c, i, 2*sec, 1) {
				t.Errorf("live entry %d evicted", i)
			}
		}
	})
	t.Run("between passes the dead go first", func(t *testing.T) {
		c := newTokenCache(4 * cacheShards)
		fill(c, 10*sec, 10*sec, 10*sec, 10*sec)
		c.putOwned(h(4), "4", v, reasonNone, 0, 10*sec, 1) // pass at 0: evicts one live entry
		if n := len(c.shards[0].m); n != 4 {
			t.Fatalf("%d entries, want 4", n)
		}
		// Within the interval, one entry turns dead (expires at 0.5 s).
		var dead int
		for i := range 5 {
			if has(c, i, 0, 1) {
				dead = i
				c.putOwned(h(i), strconv.Itoa(i), v, reasonNone, 0, sec/2, 1)
				break
			}
		}
		c.putOwned(h(5), "5", v, reasonNone, sec*3/4, 10*sec, 1)
		if has(c, dead, 0, 1) {
			t.Fatal("the dead entry stayed")
		}
		live := 0
		for i := range 6 {
			if has(c, i, sec*3/4, 1) {
				live++
			}
		}
		if live != 4 {
			t.Fatalf("%d live entries, want 4", live)
		}
	})
	t.Run("a new key generation", func(t *testing.T) {
		c := newTokenCache(4 * cacheShards)
		fill(c, 10*sec, 10*sec, 10*sec, 10*sec)
		c.putOwned(h(4), "4", v, reasonNone, 0, 10*sec, 2)
		if n := len(c.shards[0].m); n != 1 || !has(c, 4, 0, 2) {
			t.Fatalf("%d entries, want only the new one", n)
		}
	})
}
