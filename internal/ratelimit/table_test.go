package ratelimit

import (
	"math/rand/v2"
	"testing"
)

// TestTableMatchesMap drives the open-addressing table and a Go map with the
// same random inserts and removals. Keys share their low bits often, so probe
// runs collide and wrap around the end of the array, which is where
// backward-shift deletion can go wrong.
func TestTableMatchesMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	var tab table
	ref := map[uint64]int64{}
	var live []uint64
	for step := range 20_000 {
		switch op := rng.IntN(10); {
		case op < 6 || len(live) == 0:
			k := fixKey(rng.Uint64()&0xff<<56 | rng.Uint64N(64))
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
