package ratelimit

// table is an open-addressing hash table of slots keyed by a 64-bit hash,
// with linear probing and backward-shift deletion (no tombstones). The state
// sits inline in the probed array, so a decision on a key costs one cache
// miss where a Go map plus a side array costs two or three; the slots hold
// no pointers, so the garbage collector never scans them.
//
// Key 0 marks an empty slot; callers never pass it (see fixKey). A key's
// home slot is (low32(key) * size) >> 32 (multiply-shift), so the size need
// not be a power of two (the low bits: the memory store picks the shard from
// the top ones, which are therefore alike within a shard): the table grows by half when more than 13/16 full, up to
// limit slots, which keeps probe runs short and memory at 40 B / load per
// key: 49 - 74 B, and 49 B at the store's bound.
type table struct {
	slots []slot
	n     int
	limit int // largest size; 0: unbounded
}

// home returns key's home slot in a table of size slots.
func home(key uint64, size int) int {
	return int((key & 0xffffffff) * uint64(size) >> 32)
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
	size := len(t.slots)
	for i := home(key, size); ; {
		switch t.slots[i].key {
		case key:
			return i
		case 0:
			return -1
		}
		if i++; i == size {
			i = 0
		}
	}
}

// insert adds key (absent) and returns its index; the slot's state is zero.
// It may grow the table, which moves every slot.
func (t *table) insert(key uint64) int {
	if (t.n+1)*16 > len(t.slots)*13 && (t.limit == 0 || len(t.slots) < t.limit) {
		t.grow()
	}
	size := len(t.slots)
	i := home(key, size)
	for t.slots[i].key != 0 {
		if i++; i == size {
			i = 0
		}
	}
	t.slots[i] = slot{key: key}
	t.n++
	return i
}

func (t *table) grow() {
	old := t.slots
	size := max(8, len(old)+len(old)/2)
	if t.limit > 0 && size > t.limit {
		size = t.limit
	}
	t.slots = make([]slot, size)
	for _, s := range old {
		if s.key == 0 {
			continue
		}
		i := home(s.key, size)
		for t.slots[i].key != 0 {
			if i++; i == size {
				i = 0
			}
		}
		t.slots[i] = s
	}
}

// remove deletes the slot at index i, shifting later members of its probe
// run back so that every remaining key stays reachable from its home slot.
func (t *table) remove(i int) {
	size := len(t.slots)
	j := i
	for {
		if j++; j == size {
			j = 0
		}
		k := t.slots[j].key
		if k == 0 {
			break
		}
		h := home(k, size)
		// Move slot j into the hole at i unless its home lies cyclically
		// in (i, j], in which case it is still reachable where it is.
		if (j > i && (h <= i || h > j)) || (j < i && h <= i && h > j) {
			t.slots[i] = t.slots[j]
			i = j
		}
	}
	t.slots[i] = slot{}
	t.n--
}
