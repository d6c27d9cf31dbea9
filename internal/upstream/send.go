package upstream

import (
	"context"
	"errors"
	"net/http"
	"time"
)

// A Sender writes a request at once and reads its answer later, both on
// the caller's goroutine: a Pool, or a wrapper of one.
type Sender interface {
	// CanSend reports whether Send takes requests with method.
	CanSend(method string) bool
	// Send writes req; ok is false, and nothing happened, when it cannot.
	Send(req *http.Request) (c Pending, ok bool)
}

// Pending is a request on its way; Wait reads its answer, once.
type Pending interface {
	Wait() (*http.Response, error)
}

// A Stepper is a Pending whose retries its caller can overlap with the
// reading of other answers. Step reads the answer of the attempt on its
// way, as Wait would; when the request is to be tried again it sends the
// next attempt and reports true without waiting for its answer, which a
// later Step or Wait reads. It reports false when Wait is the next call.
//
// A caller that reads the answers of several sent requests in turn would
// otherwise make each retry wait for the answers read before it, one
// after the other: with one failing target behind six backends, a
// fan-out took six round trips instead of two.
type Stepper interface {
	Pending
	Step() bool
}

var (
	_ Sender  = (*Pool)(nil)
	_ Stepper = (*Call)(nil)
)

// Call is a request that Send wrote to an upstream; Wait reads its answer.
//
// A fan-out that hands each backend call to a goroutine of its own pays
// for the hand-off, for each goroutine's wake-up when its answer arrives
// and for the wake-up of the goroutine that waits for them all. Sending
// every request first and then reading the answers in order, all on the
// caller's goroutine, pays for none of that: measured in process
// (BenchmarkFanOut6Sleep5ms), a fan-out of six costs a fifth less CPU than
// over the same pools with each call on a worker. The answers that arrive
// while another is read wait in the kernel's socket buffers.
type Call struct {
	p     *Pool
	tr    trip
	a     attemptState // the first attempt; its body wrapper once answered
	x     h1Exchange
	probe bool
	start time.Time
	// callers: the caller's deadline (its context's) bounds the answer
	// before the attempt's does, if any.
	callers bool
	err     error // the first attempt failed before its answer could be read
	ended   bool  // the trip ended in Send: tr.res, tr.err are its result
	waited  bool
	// dialed, when set, is closed once the goroutine that dials the
	// attempt's connection and writes its request is done (err is then
	// its result).
	dialed chan struct{}
}

// CanSend reports whether Send takes requests with method: bodiless GET,
// HEAD and OPTIONS requests, when every target is a plain http:// one
// served by the lean client (http1_client: lean, the default).
func (p *Pool) CanSend(method string) bool {
	if !p.sendable {
		return false
	}
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return true
	}
	return false
}

// allLean reports whether every target of p takes the lean client.
func (p *Pool) allLean() bool {
	if p.tr == nil || p.tr.h1 == nil {
		return false
	}
	for _, t := range p.targets {
		if t.scheme != "http" || t.h2c {
			return false
		}
	}
	return true
}

// Send writes req to one of the pool's targets and returns without waiting
// for the answer, which Wait reads; so one goroutine can have all the
// requests of a fan-out on their way before it reads the first answer. A
// request that needs a new connection is written by a goroutine that
// dials it, so that a slow dial does not delay the caller's next Send.
// When req cannot be sent so (see CanSend; also a request whose header
// asks to upgrade or to expect 100-continue), ok is false and nothing
// happened: the caller uses RoundTrip.
//
// What RoundTrip does, Send and Wait do: admission (max_inflight), the
// breaker, balancing, the attempt's timeout (running from when the request
// is written), accounting and passive health. Send makes the first attempt;
// any retry is sent by Step or Wait, as RoundTrip would send it.
//
// Every Call must be waited for, once, and a response it returns has its
// body closed, as RoundTrip's: until then the request is in flight and its
// connection taken.
func (p *Pool) Send(req *http.Request) (Pending, bool) {
	if !p.sendable {
		return nil, false
	}
	// The request is scanned as it will be sent, to a target's http:// URL;
	// what the scan finds depends on the header and the path only, the
	// same for every target.
	var fields headFields
	scanned, u := *req, *req.URL
	u.Scheme = "http"
	scanned.URL = &u
	lean, invalid := scanRequest(&scanned, &fields)
	if !lean {
		return nil, false
	}
	c := &Call{p: p}
	tr := &c.tr
	if err := p.admit(tr, req); err != nil {
		tr.err, c.ended = err, true
		return c, true
	}
	c.send(&fields, invalid)
	return c, true
}

// send makes the trip's attempt tr.attempt: it picks a target and writes
// the request to it, without waiting for the answer. When there is no
// attempt to make, the trip ends. fields and invalid are scanRequest's
// findings for the request.
func (c *Call) send(fields *headFields, invalid error) {
	p, tr := c.p, &c.tr
	i, probe, body, ok := p.begin(tr)
	if !ok {
		c.ended = true
		return
	}
	// A retry's predecessor ended in begin (its body drained and closed)
	// or in conclude: nothing refers to its state any more.
	c.a, c.x, c.err, c.callers = attemptState{}, h1Exchange{}, nil, false
	t := p.targets[i]
	out := c.a.prepare(p, tr.req, t, body, tr.rb.getBody)
	c.probe, c.start = probe, time.Now()
	// The connection's deadline enforces the caller's deadline too, rather
	// than the context's cancellation hook, which would stop every call
	// the caller has not read yet the moment its deadline passes: a
	// caller reading answers in turn could then not take the ones that
	// arrived in time (see Wait).
	x := &c.x
	x.cancelOnly = true
	x.idle = p.readIdle
	x.deadline = p.deadline(tr.ctx, c.start)
	if d, ok := tr.ctx.Deadline(); ok {
		// The caller's deadline bounds the body as well, as its context's
		// cancellation does a round trip's; the attempt's bounds only the
		// header.
		x.bodyDeadline = d
		if x.deadline.IsZero() || d.Before(x.deadline) {
			x.deadline, c.callers = d, true
		}
	}
	t.inflight.Add(1)
	if invalid != nil {
		c.err = invalid // never sent, as RoundTrip would not
		return
	}
	x.noDial = true
	c.err = p.tr.h1.send(x, out, fields)
	if c.err == errMustDial {
		// A dial takes a round trip, and up to connect_timeout when the
		// target's host went away: on a goroutine of its own, so that the
		// calls the caller sends next are not held up behind it. Warm
		// connections, the common case, never come here.
		x.noDial = false
		f := *fields
		done := make(chan struct{})
		c.dialed = done
		go func() {
			defer close(done)
			c.err = p.tr.h1.send(x, out, &f)
		}()
	}
}

// lateGrace is how long Wait, called after a deadline passed, waits for
// an answer where the socket cannot be looked at. Where it can, an answer
// of which nothing has arrived fails at once: what comes now is late.
const lateGrace = time.Millisecond

// arrivedGrace is how long Wait, called after a deadline passed, gives an
// answer that has begun to arrive to be read: its bytes are there, so
// the time is the machine's, not the upstream's. A read past its deadline
// fails without reading, so on a loaded machine lateGrace alone could
// pass before the read of an answer that came in time even starts.
const arrivedGrace = 100 * time.Millisecond

// arrivalSlack is the precision of the kernel's record of when an answer
// arrived (lastReceived): its clock ticks every 1 to 10 ms. An answer
// recorded as arriving within it after its deadline is taken.
const arrivalSlack = 10 * time.Millisecond

var errWaitedTwice = errors.New("upstream: Call.Wait called twice")

// Wait reads the answer to the request Send wrote, retrying as RoundTrip
// does, and returns what RoundTrip would have returned. Called after a
// deadline passed (the attempt's or the caller's), it takes an answer that
// arrived before the deadline (only the time the caller kept it waiting
// made it late) and fails one that arrived after it, as RoundTrip would
// have, or that has not arrived. When it comes is the kernel's record of
// the connection's last received data (Linux, within arrivalSlack); where
// there is none, an answer that is there is taken.
func (c *Call) Wait() (*http.Response, error) {
	if c.waited {
		return nil, errWaitedTwice
	}
	c.waited = true
	for !c.ended {
		c.step()
	}
	return c.tr.res, c.tr.err
}

// Step reads the answer of the attempt on its way and, when the request
// is to be tried again, sends the next attempt and reports true (see
// Stepper). Once it reported false, or after Wait, it does nothing.
func (c *Call) Step() bool {
	if c.ended || c.waited {
		return false
	}
	c.step()
	return !c.ended
}

// step reads the answer of the attempt on its way and judges it, as
// RoundTrip judges an attempt; then it ends the trip or sends its next
// attempt.
func (c *Call) step() {
	p, tr, x := c.p, &c.tr, &c.x
	if c.dialed != nil {
		<-c.dialed
		c.dialed = nil
	}
	var res *http.Response
	err := c.err
	if err == nil {
		if now := time.Now(); !x.deadline.IsZero() && !now.Before(x.deadline) && tr.ctx.Err() != context.Canceled {
			// The deadline (the attempt's or the caller's) passed while
			// the caller was busy, reading other answers: an answer that
			// arrived before it is still taken, one that came after it or
			// not at all fails at once. Past the caller's own deadline, so
			// does its body.
			late := now.Add(arrivedGrace)
			if x.pc.br.Buffered() == 0 {
				x.pc.setDeadline(late) // a look at the socket needs a deadline ahead
				if yes, known := arrived(x.pc.conn); !yes {
					late = now.Add(lateGrace)
					if known {
						// Not there: what comes from now on is late.
						late = aLongTimeAgo
					}
				} else if at, ok := lastReceived(x.pc.conn, now); ok && at.After(x.deadline.Add(arrivalSlack)) {
					// It came after the deadline, and RoundTrip would
					// have failed it there: fail it as late.
					late = aLongTimeAgo
				}
			}
			x.deadline = late
			if !x.bodyDeadline.IsZero() && !now.Before(x.bodyDeadline) {
				x.bodyDeadline = late
			}
			x.pc.setDeadline(late)
		}
		res, err = p.tr.h1.receive(x, &c.a.out, nil)
	}
	timedOut := err == errAttemptTimeout
	if timedOut && c.callers {
		// The caller's deadline, not the attempt's: its error, as from a
		// round trip that its context ended.
		timedOut, err = false, context.DeadlineExceeded
	}
	res, err = p.conclude(tr.ctx, &c.a, res, err, timedOut, c.probe, c.start)
	if p.settled(tr, res, err) {
		c.ended = true
		return
	}
	tr.attempt++
	// Listed again for this rare resend, rather than kept from Send.
	var fields headFields
	_, invalid := scanRequest(&c.a.out, &fields)
	c.send(&fields, invalid)
}
