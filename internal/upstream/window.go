package upstream

import "sync"

// rolling counts two quantities (a and b, e.g. requests and failures) over
// the last len(buckets)*width nanoseconds. Buckets age out lazily when time
// moves on, so no goroutine is needed and an injected clock drives it fully.
type rolling struct {
	mu      sync.Mutex
	width   int64
	head    int64 // absolute bucket number (now/width) of the newest bucket
	buckets []bucket
}

type bucket struct{ a, b int64 }

func newRolling(n int, width int64) *rolling {
	return &rolling{width: width, buckets: make([]bucket, n)}
}

// advance moves the ring to now, zeroing buckets that fell out of the window.
// A clock that steps backwards keeps adding to the newest bucket.
func (w *rolling) advance(now int64) {
	idx := now / w.width
	if idx <= w.head {
		return
	}
	n := int64(len(w.buckets))
	if idx-w.head >= n {
		clear(w.buckets)
	} else {
		for i := w.head + 1; i <= idx; i++ {
			w.buckets[i%n] = bucket{}
		}
	}
	w.head = idx
}

// add adds da and db at time now.
func (w *rolling) add(now, da, db int64) {
	w.mu.Lock()
	w.advance(now)
	bk := &w.buckets[w.head%int64(len(w.buckets))]
	bk.a += da
	bk.b += db
	w.mu.Unlock()
}

// sum returns the totals over the window ending at now.
func (w *rolling) sum(now int64) (a, b int64) {
	w.mu.Lock()
	w.advance(now)
	for _, bk := range w.buckets {
		a += bk.a
		b += bk.b
	}
	w.mu.Unlock()
	return a, b
}

// addSum adds and returns the new totals under one lock.
func (w *rolling) addSum(now, da, db int64) (a, b int64) {
	w.mu.Lock()
	w.advance(now)
	bk := &w.buckets[w.head%int64(len(w.buckets))]
	bk.a += da
	bk.b += db
	for _, bk := range w.buckets {
		a += bk.a
		b += bk.b
	}
	w.mu.Unlock()
	return a, b
}

func (w *rolling) reset() {
	w.mu.Lock()
	clear(w.buckets)
	w.mu.Unlock()
}
