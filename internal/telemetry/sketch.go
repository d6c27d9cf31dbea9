package telemetry

import (
	"math"
	"sync/atomic"
	"time"
)

// The live-statistics sketch is a logarithmic histogram in the style of
// DDSketch (Masson et al., VLDB 2019): bucket i holds the latencies x (in
// microseconds) with gamma^(i-1) < x <= gamma^i, and a quantile is answered
// with the bucket's representative 2*gamma^i/(gamma+1). Every value in the
// bucket is then within a relative error of alpha = (gamma-1)/(gamma+1) of
// the answer, so a quantile is exact up to alpha = 1% for latencies between
// 1 µs and sketchBuckets' upper end (about 13 minutes). Faster requests are
// reported as 1 µs and slower ones as the last bucket.
//
// Counts are kept per slot (see stats.go); two sketches merge by adding their
// counters, which is what makes 1m and 5m windows cheap to build from slots.
const (
	sketchAlpha   = 0.01
	sketchBuckets = 1024
	// chunkSize buckets are allocated together, on first use, so a route
	// whose latencies span two decades costs a few hundred bytes per slot
	// rather than the full table.
	chunkSize = 64
	numChunks = sketchBuckets / chunkSize
)

var (
	sketchGamma    = (1 + sketchAlpha) / (1 - sketchAlpha)
	sketchInvLnGam = 1 / math.Log(sketchGamma)
)

// bucketOf returns the sketch bucket of d.
func bucketOf(d time.Duration) int {
	us := float64(d) / 1e3
	if us <= 1 {
		return 0
	}
	i := int(math.Ceil(math.Log(us) * sketchInvLnGam))
	if i >= sketchBuckets {
		return sketchBuckets - 1
	}
	return i
}

// bucketValue is the representative latency of bucket i: the point with the
// same relative distance to both bucket edges.
func bucketValue(i int) time.Duration {
	if i == 0 {
		return time.Microsecond
	}
	v := 2 * math.Pow(sketchGamma, float64(i)) / (sketchGamma + 1)
	return time.Duration(v * 1e3)
}

type chunk [chunkSize]atomic.Uint32

// sketch is the concurrent, add-only form written by requests.
type sketch struct {
	chunks [numChunks]atomic.Pointer[chunk]
}

// add counts one latency. It allocates only the first time a chunk of this
// sketch is touched; chunks are kept (and zeroed) when a slot is reused.
func (s *sketch) add(d time.Duration) {
	i := bucketOf(d)
	c := s.chunks[i/chunkSize].Load()
	if c == nil {
		nc := new(chunk)
		if !s.chunks[i/chunkSize].CompareAndSwap(nil, nc) {
			nc = s.chunks[i/chunkSize].Load()
		}
		c = nc
	}
	c[i%chunkSize].Add(1)
}

func (s *sketch) reset() {
	for k := range s.chunks {
		if c := s.chunks[k].Load(); c != nil {
			for j := range c {
				c[j].Store(0)
			}
		}
	}
}

// mergeInto adds s's counts to dst and returns how many it added.
func (s *sketch) mergeInto(dst *Histogram) {
	for k := range s.chunks {
		c := s.chunks[k].Load()
		if c == nil {
			continue
		}
		for j := range c {
			if n := c[j].Load(); n != 0 {
				dst.counts[k*chunkSize+j] += uint64(n)
				dst.total += uint64(n)
			}
		}
	}
}

// Histogram is a merged, read-only sketch: the sum of a window's slots.
type Histogram struct {
	counts [sketchBuckets]uint64
	total  uint64
}

// Add counts one latency (used by tests and offline merging).
func (h *Histogram) Add(d time.Duration) {
	h.counts[bucketOf(d)]++
	h.total++
}

// Count is the number of latencies in h.
func (h *Histogram) Count() uint64 { return h.total }

// Quantile returns the q-quantile (0 <= q <= 1) of h: the value of rank
// ceil(q*n) in sorted order, within a relative error of 1%. An empty
// histogram gives 0.
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.total == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.total)))
	if rank < 1 {
		rank = 1
	}
	var seen uint64
	for i, n := range h.counts {
		seen += n
		if seen >= rank {
			return bucketValue(i)
		}
	}
	return bucketValue(sketchBuckets - 1)
}
