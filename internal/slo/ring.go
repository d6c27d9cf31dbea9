package slo

import (
	"sync"
	"sync/atomic"
	"time"
)

// minuteRing holds one SLO's good/bad counts per minute for its window (at
// least 3 days, the longest burn-rate window). Requests add with atomics; a
// bucket is reset under the mutex only when the ring comes round to it.
type minuteRing struct {
	mu sync.Mutex
	b  []mbucket
}

type mbucket struct {
	minute    atomic.Int64
	good, bad atomic.Uint64
	// What Flush has already added to Redis for this minute.
	fGood, fBad atomic.Uint64
}

func ringMinutes(window time.Duration) int {
	span := window
	if span < windows[len(windows)-1] {
		span = windows[len(windows)-1]
	}
	return int(span/time.Minute) + 10
}

func newMinuteRing(n int) *minuteRing { return &minuteRing{b: make([]mbucket, n)} }

func (r *minuteRing) bucket(m int64) *mbucket { return &r.b[m%int64(len(r.b))] }

func (r *minuteRing) add(m int64, bad bool) {
	b := r.bucket(m)
	if cur := b.minute.Load(); cur != m {
		if cur > m || !r.claim(b, m) {
			return // older than the ring: nothing to add it to
		}
	}
	if bad {
		b.bad.Add(1)
	} else {
		b.good.Add(1)
	}
}

func (r *minuteRing) claim(b *mbucket, m int64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	cur := b.minute.Load()
	if cur == m {
		return true
	}
	if cur > m {
		return false
	}
	b.good.Store(0)
	b.bad.Store(0)
	b.fGood.Store(0)
	b.fBad.Store(0)
	b.minute.Store(m)
	return true
}

// get returns the counts of minute m (zero when the ring holds another).
func (r *minuteRing) get(m int64) (good, bad uint64) {
	b := r.bucket(m)
	if b.minute.Load() != m {
		return 0, 0
	}
	return b.good.Load(), b.bad.Load()
}

// ensureRing sizes st's ring for window, keeping the counts it has (a few
// requests counted into the old ring while it is copied may be lost).
func (st *sloState) ensureRing(window time.Duration) {
	n := ringMinutes(window)
	old := st.ring.Load()
	if old != nil && len(old.b) == n {
		return
	}
	nr := newMinuteRing(n)
	if old != nil {
		for i := range old.b {
			ob := &old.b[i]
			m := ob.minute.Load()
			if m == 0 {
				continue
			}
			nb := nr.bucket(m)
			if nb.minute.Load() > m {
				continue
			}
			nb.minute.Store(m)
			nb.good.Store(ob.good.Load())
			nb.bad.Store(ob.bad.Load())
			nb.fGood.Store(ob.fGood.Load())
			nb.fBad.Store(ob.fBad.Load())
		}
	}
	st.ring.Store(nr)
}

// sums are the good/bad counts over each burn-rate window and the budget
// window, all ending with minute nowMin (included).
type sums struct {
	win    [numWindows][2]uint64
	budget [2]uint64
}

func windowSums(get func(int64) (uint64, uint64), nowMin int64, window time.Duration) sums {
	var s sums
	span := int64(ringMinutes(window) - 10)
	budgetMin := int64(window / time.Minute)
	var g, b uint64
	wi := 0
	for k := int64(1); k <= span; k++ {
		mg, mb := get(nowMin - k + 1)
		g += mg
		b += mb
		for wi < numWindows && int64(windows[wi]/time.Minute) == k {
			s.win[wi] = [2]uint64{g, b}
			wi++
		}
		if k == budgetMin {
			s.budget = [2]uint64{g, b}
		}
	}
	return s
}
