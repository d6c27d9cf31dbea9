package main

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// sample is one measured run of one system.
type sample struct {
	rps, p50ms, p99ms float64
	cpuMsPer1k        float64 // proxy CPU-ms per 1,000 requests (0: not measured, e.g. direct)
	reqPerCPUSec      float64
	rssMiB            float64
	errors            int
}

// setCPU records the proxy's CPU seconds spent on requests.
func (s *sample) setCPU(cpu, requests float64) {
	s.cpuMsPer1k = cpu * 1000 / (requests / 1000)
	if cpu > 0 {
		s.reqPerCPUSec = requests / cpu
	}
}

// table is one scenario's results: samples per system, in run order.
type table struct {
	title   string
	note    string
	systems []string
	samples map[string][]sample
	extra   []string // free-form lines under the table
}

func newTable(title, note string, systems ...string) *table {
	return &table{title: title, note: note, systems: systems, samples: map[string][]sample{}}
}

func (t *table) add(system string, s sample) {
	t.samples[system] = append(t.samples[system], s)
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func (t *table) med(system string, f func(sample) float64) float64 {
	var xs []float64
	for _, s := range t.samples[system] {
		if v := f(s); v > 0 {
			xs = append(xs, v)
		}
	}
	return median(xs)
}

func (t *table) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "### %s\n\n", t.title)
	if t.note != "" {
		fmt.Fprintf(&b, "%s\n\n", t.note)
	}
	b.WriteString("| system | runs | median req/s | p50 ms | p99 ms | ×nginx | ×direct | proxy CPU-ms / 1k req | req per proxy CPU-s | peak RSS MiB | errors |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	nginx := t.med("nginx", func(s sample) float64 { return s.rps })
	direct := t.med("direct", func(s sample) float64 { return s.rps })
	for _, sys := range t.systems {
		ss := t.samples[sys]
		if len(ss) == 0 {
			continue
		}
		rps := t.med(sys, func(s sample) float64 { return s.rps })
		errs := 0
		rss := 0.0
		for _, s := range ss {
			errs += s.errors
			rss = max(rss, s.rssMiB)
		}
		fmt.Fprintf(&b, "| %s | %d | %s | %.2f | %.2f | %s | %s | %s | %s | %s | %d |\n", sys, len(ss), num(rps),
			t.med(sys, func(s sample) float64 { return s.p50ms }), t.med(sys, func(s sample) float64 { return s.p99ms }),
			ratio(rps, nginx), ratio(rps, direct),
			opt(t.med(sys, func(s sample) float64 { return s.cpuMsPer1k }), "%.1f"),
			opt(t.med(sys, func(s sample) float64 { return s.reqPerCPUSec }), "%.0f"),
			opt(rss, "%.1f"), errs)
	}
	for _, l := range t.extra {
		fmt.Fprintf(&b, "\n%s\n", l)
	}
	for _, l := range t.errorWarnings() {
		fmt.Fprintf(&b, "\n%s\n", l)
	}
	return b.String()
}

// errorWarnings names every system that saw failed requests: its figures
// then partly measure an error path, and a reader must not take them for
// the success path's.
func (t *table) errorWarnings() []string {
	var out []string
	for _, sys := range t.systems {
		errs := 0
		for _, s := range t.samples[sys] {
			errs += s.errors
		}
		if errs > 0 {
			out = append(out, fmt.Sprintf("**Warning: %s had %d failed requests (socket errors or non-2xx/3xx answers); its figures are not those of the success path.**", sys, errs))
		}
	}
	return out
}

func num(v float64) string { return fmt.Sprintf("%.0f", v) }

func ratio(a, b float64) string {
	if a == 0 || b == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f", a/b)
}

func opt(v float64, format string) string {
	if v == 0 {
		return "–"
	}
	return fmt.Sprintf(format, v)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
