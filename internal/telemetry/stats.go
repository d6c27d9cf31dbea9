package telemetry

import (
	"math"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// Live statistics are kept per route in a ring of fixed time slots. A request
// adds, with atomic operations only, to the slot of the moment it finished;
// readers merge the slots of a window. A slot is reused once the ring comes
// round, and only that rare reuse takes the route's mutex.
const (
	slotDuration = 5 * time.Second
	// ringSlots covers the 5 minute window (60 slots), the slot being filled
	// and some slack, so a slot is never reused while a window still reads it.
	ringSlots  = 64
	slots1m    = int64(time.Minute / slotDuration)
	slots5m    = int64(5 * time.Minute / slotDuration)
	seriesLen  = 60
	numClasses = 6
)

// class indexes: 1xx..5xx, then client closed (499), which is kept apart so
// it neither inflates the 4xx error rate nor counts as a server error.
const classClientClosed = 5

var classNames = [numClasses]string{"1xx", "2xx", "3xx", "4xx", "5xx", "499"}

func classOf(status int) int {
	if status == 499 {
		return classClientClosed
	}
	c := status/100 - 1
	if c < 0 || c > 4 {
		return 4 // a status outside 1xx-5xx is a server fault
	}
	return c
}

type slot struct {
	epoch   atomic.Int64 // slot number (unix nanoseconds / slotDuration)
	classes [numClasses]atomic.Uint64
	lat     sketch
}

type routeStats struct {
	mu    sync.Mutex // taken only to reuse a slot
	slots [ringSlots]slot
}

func slotNumber(t time.Time) int64 { return t.UnixNano() / int64(slotDuration) }

// record counts one request that finished at end.
func (rs *routeStats) record(end time.Time, status int, d time.Duration) {
	n := slotNumber(end)
	s := &rs.slots[n%ringSlots]
	if e := s.epoch.Load(); e != n {
		if e > n || !rs.claim(s, n) {
			return // a request finishing a full ring late: drop it
		}
	}
	s.classes[classOf(status)].Add(1)
	s.lat.add(d)
}

// claim resets slot s for slot number n. It returns false when s already
// holds a newer slot.
func (rs *routeStats) claim(s *slot, n int64) bool {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	e := s.epoch.Load()
	if e == n {
		return true
	}
	if e > n {
		return false
	}
	for i := range s.classes {
		s.classes[i].Store(0)
	}
	s.lat.reset()
	s.epoch.Store(n)
	return true
}

// window merges the k slots ending with slot cur into h and counts.
func (rs *routeStats) window(cur, k int64, h *Histogram, counts *[numClasses]uint64) {
	for n := cur - k + 1; n <= cur; n++ {
		s := &rs.slots[((n%ringSlots)+ringSlots)%ringSlots]
		if s.epoch.Load() != n {
			continue
		}
		for i := range s.classes {
			counts[i] += s.classes[i].Load()
		}
		s.lat.mergeInto(h)
	}
}

// StatsSnapshot is the live view of every route, as served by /admin/stats.
type StatsSnapshot struct {
	Time time.Time `json:"time"`
	// Routes are sorted by name; BFF endpoints appear as "bff/endpoint".
	Routes []RouteStats `json:"routes"`
	// SketchRelativeError is the bound on the error of every quantile.
	SketchRelativeError float64 `json:"sketch_relative_error"`
}

// RouteStats is one route's live statistics.
type RouteStats struct {
	Route    string      `json:"route"`
	Inflight int64       `json:"inflight"`
	Last1m   WindowStats `json:"last_1m"`
	Last5m   WindowStats `json:"last_5m"`
	Series   Series      `json:"series"`
}

// WindowStats summarises a window. Latencies are in milliseconds; rates are
// ratios of all requests in the window (0 when there were none).
type WindowStats struct {
	Seconds      float64           `json:"seconds"`
	Requests     uint64            `json:"requests"`
	Classes      map[string]uint64 `json:"classes"`
	RPS          float64           `json:"rps"`
	ErrorRate4xx float64           `json:"error_rate_4xx"`
	ErrorRate5xx float64           `json:"error_rate_5xx"`
	P50ms        float64           `json:"p50_ms"`
	P95ms        float64           `json:"p95_ms"`
	P99ms        float64           `json:"p99_ms"`
}

// Series is the recent history for a chart: one point per completed slot,
// oldest first.
type Series struct {
	StepSeconds float64   `json:"step_seconds"`
	RPS         []float64 `json:"rps"`
	P99ms       []float64 `json:"p99_ms"`
}

func ms(d time.Duration) float64 {
	return math.Round(float64(d)/1e3) / 1e3
}

func (rs *routeStats) windowStats(now time.Time, k int64, since time.Time) WindowStats {
	cur := slotNumber(now)
	var h Histogram
	var counts [numClasses]uint64
	rs.window(cur, k, &h, &counts)
	// The window spans k-1 full slots and the elapsed part of the current
	// one, but never more than the process has been recording.
	secs := float64(k-1)*slotDuration.Seconds() + float64(now.UnixNano()%int64(slotDuration))/1e9
	if up := now.Sub(since).Seconds(); up < secs {
		secs = up
	}
	ws := WindowStats{Seconds: math.Round(secs*1000) / 1000, Classes: make(map[string]uint64, numClasses)}
	var total uint64
	for i, n := range counts {
		ws.Classes[classNames[i]] = n
		total += n
	}
	ws.Requests = total
	if secs > 0 {
		ws.RPS = float64(total) / secs
	}
	if total > 0 {
		ws.ErrorRate4xx = float64(counts[3]) / float64(total)
		ws.ErrorRate5xx = float64(counts[4]) / float64(total)
	}
	ws.P50ms = ms(h.Quantile(0.50))
	ws.P95ms = ms(h.Quantile(0.95))
	ws.P99ms = ms(h.Quantile(0.99))
	return ws
}

func (rs *routeStats) series(now time.Time) Series {
	cur := slotNumber(now)
	s := Series{StepSeconds: slotDuration.Seconds(), RPS: make([]float64, seriesLen), P99ms: make([]float64, seriesLen)}
	var h Histogram
	for i := 0; i < seriesLen; i++ {
		n := cur - seriesLen + int64(i)
		h.counts, h.total = [sketchBuckets]uint64{}, 0
		var counts [numClasses]uint64
		rs.window(n, 1, &h, &counts)
		var total uint64
		for _, c := range counts {
			total += c
		}
		s.RPS[i] = float64(total) / slotDuration.Seconds()
		s.P99ms[i] = ms(h.Quantile(0.99))
	}
	return s
}

// Stats returns the live statistics of every route of the running config
// and "unmatched". A route kept across reloads keeps its history; a route a
// reload removed is gone from the next snapshot (RetainRoutes).
func (t *Telemetry) Stats() StatsSnapshot {
	now := t.now()
	t.mu.Lock()
	routes := make([]*routeState, 0, len(t.routes))
	for _, rs := range t.routes {
		routes = append(routes, rs)
	}
	t.mu.Unlock()
	sort.Slice(routes, func(i, j int) bool { return routes[i].name < routes[j].name })
	snap := StatsSnapshot{Time: now.UTC(), Routes: make([]RouteStats, 0, len(routes)), SketchRelativeError: sketchAlpha}
	for _, rs := range routes {
		snap.Routes = append(snap.Routes, RouteStats{
			Route:    rs.name,
			Inflight: rs.inflightN.Load(),
			Last1m:   rs.stats.windowStats(now, slots1m, t.started),
			Last5m:   rs.stats.windowStats(now, slots5m, t.started),
			Series:   rs.stats.series(now),
		})
	}
	return snap
}
