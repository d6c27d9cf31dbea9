package ratelimit

import (
	"math/rand/v2"
	"testing"
)

// TestTableMatchesMap drives the open-addressing table and a Go map with the
// same random inserts and removals. Keys share their home slots often, so
// probe runs collide and wrap around the end of the array, which is where
// backward-shift deletion can go wrong.
func TestTableMatchesMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	var tab table
	ref := map[uint64]int64{}
	var live []uint64
	for step := range 20_000 {
		switch op := rng.IntN(10); {
		case op < 6 || len(live) == 0:
			// Few distinct home slots: low 32 bits drawn from 256 values.
			k := fixKey(rng.Uint64()&^0xffffffff | rng.Uint64N(256)<<24)
			if _, ok := ref[k]; ok {
				continue
			}
			i := tab.insert(k)
			tab.slots[i].a = int64(step)
			ref[k] = int64(step)
			live = append(live, k)
		default:
			n := rng.IntN(len(live))
			k := live[n]
			live[n] = live[len(live)-1]
			live = live[:len(live)-1]
			i := tab.find(k)
			if i < 0 {
				t.Fatalf("step %d: key %x lost", step, k)
			}
			tab.remove(i)
			delete(ref, k)
		}
		if step%2000 == 0 {
			if tab.n != len(ref) {
				t.Fatalf("step %d: table holds %d, map %d", step, tab.n, len(ref))
			}
			for k, v := range ref {
				i := tab.find(k)
				if i < 0 || tab.slots[i].a != v {
					t.Fatalf("step %d: key %x: index %d", step, k, i)
				}
			}
		}
	}
}

// TestTableAtLimit fills a bounded table to the load the memory store allows
// (13/16) and churns it there: every key stays reachable.
func TestTableAtLimit(t *testing.T) {
	const perShard = 100
	tab := table{limit: (perShard*16+12)/13 + 1}
	rng := rand.New(rand.NewPCG(3, 4))
	ref := map[uint64]bool{}
	var live []uint64
	for step := range 20_000 {
		if len(live) < perShard {
			k := fixKey(rng.Uint64())
			if ref[k] {
				continue
			}
			tab.insert(k)
			ref[k] = true
			live = append(live, k)
			continue
		}
		n := rng.IntN(len(live))
		k := live[n]
		live[n] = live[len(live)-1]
		live = live[:len(live)-1]
		tab.remove(tab.find(k))
		delete(ref, k)
		if step%500 == 0 {
			for k := range ref {
				if tab.find(k) < 0 {
					t.Fatalf("step %d: key %x lost", step, k)
				}
			}
		}
	}
	if len(tab.slots) > tab.limit {
		t.Fatalf("table grew to %d slots, limit %d", len(tab.slots), tab.limit)
	}
	if per := 40 * len(tab.slots) / perShard; per > 50 {
		t.Fatalf("%d B per key at the bound, want <= 50", per)
	}
}
