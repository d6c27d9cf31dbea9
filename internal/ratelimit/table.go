package ratelimit

// table is an open-addressing hash table of slots keyed by a 64-bit hash,
// with linear probing and backward-shift deletion (no tombstones). The state
// sits inline in the probed array, so a decision on a key costs one cache
// miss where a Go map plus a side array costs two or three; the slots hold
// no pointers, so the garbage collector never scans them.
//
// Key 0 marks an empty slot; callers never pass it (see fixKey). The table
// grows by doubling when more than 13/16 full, which bounds probe lengths
// and keeps memory at 40 B / load factor per key (49 - 98 B).
type table struct {
	slots []slot
	n     int
}

// fixKey maps the one reserved value 0 to 1.
func fixKey(k uint64) uint64 {
	if k == 0 {
		return 1
	}
	return k
}

// find returns the index of key, or -1.
func (t *table) find(key uint64) int {
	if len(t.slots) == 0 {
		return -1
	}
	mask := uint64(len(t.slots) - 1)
	for i := key & mask; ; i = (i + 1) & mask {
		switch t.slots[i].key {
		case key:
			return int(i)
		case 0:
			return -1
		}
	}
}

// insert adds key (absent) and returns its index; the slot's state is zero.
// It may grow the table, which moves every slot.
func (t *table) insert(key uint64) int {
	if (t.n+1)*16 > len(t.slots)*13 {
		t.grow()
	}
	mask := uint64(len(t.slots) - 1)
	i := key & mask
	for t.slots[i].key != 0 {
		i = (i + 1) & mask
	}
	t.slots[i] = slot{key: key}
	t.n++
	return int(i)
}

func (t *table) grow() {
	old := t.slots
	size := 2 * len(old)
	if size == 0 {
		size = 8
	}
	t.slots = make([]slot, size)
	mask := uint64(size - 1)
	for _, s := range old {
		if s.key == 0 {
			continue
		}
		i := s.key & mask
		for t.slots[i].key != 0 {
			i = (i + 1) & mask
		}
		t.slots[i] = s
	}
}

// remove deletes the slot at index i, shifting later members of its probe
// run back so that every remaining key stays reachable from its home slot.
func (t *table) remove(i int) {
	mask := len(t.slots) - 1
	j := i
	for {
		j = (j + 1) & mask
		k := t.slots[j].key
		if k == 0 {
			break
		}
		home := int(k) & mask
		// Move slot j into the hole at i unless its home lies cyclically
		// in (i, j], in which case it is still reachable where it is.
		if (j > i && (home <= i || home > j)) || (j < i && home <= i && home > j) {
			t.slots[i] = t.slots[j]
			i = j
		}
	}
	t.slots[i] = slot{}
	t.n--
}
