package aggregate

import (
	"context"
	"sync"
	"time"
)

// Backend calls that the request's own goroutine does not make run on
// workers: parked goroutines that take one call after another. A goroutine
// started per call begins on a small stack and grows it, copying it each
// time, deep inside the HTTP client, on every request; a worker grows its
// stack once. Parked workers are taken last in, first out, so the busy
// ones stay warm while the others idle and exit; their number is bounded,
// and past the bound a call gets a goroutine of its own, as it would
// without workers.
//
// Each endpoint has a pool of its own, none is shared by the process: so
// an endpoint built and run inside a testing/synctest bubble keeps its
// goroutines, channels and timer in the bubble, as the bubble requires.

const (
	// maxWorkers bounds an endpoint's parked goroutines, and the stacks
	// they keep, that a burst leaves behind.
	maxWorkers = 1024
	// workerSweep is the idle sweep's period: a worker exits after idling
	// one to two periods, so a stopped gateway leaves none behind for long.
	workerSweep = 50 * time.Millisecond
)

// task is one backend run: backend i of the request st, under ctx.
type task struct {
	e   *endpoint
	ctx context.Context
	st  *runState
	i   int
}

func (t *task) run() {
	defer t.st.wg.Done()
	t.e.run(t.ctx, t.st, t.i)
}

// workerPool hands tasks to parked workers.
type workerPool struct {
	max        int
	sweepEvery time.Duration

	mu     sync.Mutex
	parked []*worker // most recently parked last
	live   int       // workers started that have not exited
	epoch  uint64    // sweeps so far
	sweep  *time.Timer
	armed  bool // the sweep is scheduled: some worker is parked
}

type worker struct {
	tasks chan task // capacity 1: a hand-off never waits for the worker
	epoch uint64    // the pool's epoch when the worker parked
}

// do runs t on a parked worker, a new one, or past the bound on a goroutine
// of its own; a nil pool gives every task a goroutine of its own. The
// caller has added t to t.st.wg.
func (p *workerPool) do(t task) {
	if p == nil {
		p.start(t, true)
		return
	}
	p.mu.Lock()
	if n := len(p.parked); n > 0 {
		w := p.parked[n-1]
		p.parked[n-1] = nil
		p.parked = p.parked[:n-1]
		p.mu.Unlock()
		w.tasks <- t
		return
	}
	own := p.live >= p.max
	if !own {
		p.live++
	}
	p.mu.Unlock()
	p.start(t, own)
}

// start is apart from do so that only a new goroutine moves t to the heap,
// not every hand-off.
func (p *workerPool) start(t task, own bool) {
	if own {
		go t.run()
	} else {
		go p.work(t)
	}
}

func (p *workerPool) work(t task) {
	w := &worker{tasks: make(chan task, 1)}
	for {
		t.run()
		t = task{} // a parked worker pins no request
		p.mu.Lock()
		w.epoch = p.epoch
		p.parked = append(p.parked, w)
		if !p.armed {
			p.armed = true
			if p.sweep == nil {
				p.sweep = time.AfterFunc(p.sweepEvery, p.sweepIdle)
			} else {
				p.sweep.Reset(p.sweepEvery)
			}
		}
		p.mu.Unlock()
		var ok bool
		if t, ok = <-w.tasks; !ok {
			return
		}
	}
}

// sweepIdle lets the workers that stayed parked through a whole period
// exit. They are the oldest, at the front of parked.
func (p *workerPool) sweepIdle() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.epoch++
	n := 0
	for n < len(p.parked) && p.parked[n].epoch+1 < p.epoch {
		close(p.parked[n].tasks)
		n++
	}
	if n > 0 {
		k := copy(p.parked, p.parked[n:])
		clear(p.parked[k:])
		p.parked = p.parked[:k]
		p.live -= n
	}
	if len(p.parked) > 0 {
		p.sweep.Reset(p.sweepEvery)
	} else {
		p.armed = false
	}
}
