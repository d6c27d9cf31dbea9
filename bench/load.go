package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"
)

type openLoopResult struct {
	rps      float64
	requests int
	errors   int
	p50, p99 time.Duration
}

// openLoop sends requests at a constant rate for d, whatever the answers'
// speed: each request has a scheduled time and its latency is measured from
// it, so a slow server shows as latency instead of a lower send rate (no
// coordinated omission). Connection k of conns sends requests k, k+conns,
// k+2*conns, ... of the schedule, as wrk2 does. The client is raw HTTP/1.1
// over keep-alive sockets with one prebuilt request, so the generator's own
// CPU, which shares the two cores with the systems measured, stays small.
func openLoop(ctx context.Context, rawURL string, rate int, d time.Duration, conns int) openLoopResult {
	u, err := url.Parse(rawURL)
	if err != nil {
		return openLoopResult{errors: 1}
	}
	req := []byte("GET " + u.RequestURI() + " HTTP/1.1\r\nHost: " + u.Host + "\r\nUser-Agent: portico-bench\r\n\r\n")
	total := int(float64(rate) * d.Seconds())
	interval := time.Second / time.Duration(rate)
	lat := make([]time.Duration, total)
	errs := make([]bool, total)
	start := time.Now().Add(50 * time.Millisecond)
	var wg sync.WaitGroup
	for k := range min(conns, total) {
		wg.Go(func() {
			var c net.Conn
			var br *bufio.Reader
			defer func() {
				if c != nil {
					c.Close()
				}
			}()
			for i := k; i < total && ctx.Err() == nil; i += conns {
				at := start.Add(time.Duration(i) * interval)
				if w := time.Until(at); w > 0 {
					time.Sleep(w)
				}
				if c == nil {
					if c, err = net.DialTimeout("tcp", u.Host, 5*time.Second); err != nil {
						c = nil
						errs[i] = true
						lat[i] = time.Since(at)
						continue
					}
					br = bufio.NewReaderSize(c, 16<<10)
				}
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				status, err := roundTripRaw(c, br, req)
				lat[i] = time.Since(at)
				if err != nil || status >= 400 {
					errs[i] = true
				}
				if err != nil {
					c.Close()
					c = nil
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	var r openLoopResult
	r.requests = total
	for _, e := range errs {
		if e {
			r.errors++
		}
	}
	slices.Sort(lat)
	r.p50 = lat[len(lat)/2]
	r.p99 = lat[len(lat)*99/100]
	r.rps = float64(total) / elapsed.Seconds()
	return r
}

// roundTripRaw writes req and reads one response with a Content-Length
// body (all the bench servers send one), returning its status.
func roundTripRaw(c net.Conn, br *bufio.Reader, req []byte) (int, error) {
	if _, err := c.Write(req); err != nil {
		return 0, err
	}
	line, err := br.ReadSlice('\n')
	if err != nil {
		return 0, err
	}
	// "HTTP/1.1 200 OK"
	if len(line) < 12 {
		return 0, fmt.Errorf("short status line %q", line)
	}
	status, err := strconv.Atoi(string(line[9:12]))
	if err != nil {
		return 0, fmt.Errorf("status line %q", line)
	}
	length := -1
	for {
		h, err := br.ReadSlice('\n')
		if err != nil {
			return 0, err
		}
		h = bytes.TrimRight(h, "\r\n")
		if len(h) == 0 {
			break
		}
		if name, val, ok := bytes.Cut(h, []byte(":")); ok && bytes.EqualFold(name, []byte("Content-Length")) {
			if length, err = strconv.Atoi(string(bytes.TrimSpace(val))); err != nil {
				return 0, fmt.Errorf("content-length %q", val)
			}
		}
	}
	if length < 0 {
		return 0, errors.New("response without Content-Length")
	}
	if _, err := br.Discard(length); err != nil {
		return 0, err
	}
	return status, nil
}

// runOpenLoop is the open-loop generator on its own, for probing one
// system by hand: bench openloop -rate 5000 -d 5s URL.
func runOpenLoop(args []string) {
	fs := flag.NewFlagSet("openloop", flag.ExitOnError)
	rate := fs.Int("rate", 5000, "requests per second")
	d := fs.Duration("d", 5*time.Second, "duration (at most a minute)")
	conns := fs.Int("c", 64, "connections")
	_ = fs.Parse(args)
	if fs.NArg() != 1 || *d > time.Minute || *rate <= 0 {
		fmt.Fprintln(os.Stderr, "usage: bench openloop [-rate N] [-d 5s] [-c 64] http://127.0.0.1:PORT/path")
		os.Exit(2)
	}
	r := openLoop(context.Background(), fs.Arg(0), *rate, *d, *conns)
	fmt.Printf("%.0f req/s  p50 %.3f ms  p99 %.3f ms  errors %d of %d\n", r.rps, ms(r.p50), ms(r.p99), r.errors, r.requests)
}

// openIdle opens n connections to addr, sends one keep-alive request on each,
// reads the answer and leaves the connection open.
func openIdle(ctx context.Context, addr string, n int) ([]net.Conn, error) {
	conns := make([]net.Conn, 0, n)
	req := []byte("GET /small HTTP/1.1\r\nHost: bench\r\n\r\n")
	for i := 0; i < n; i++ {
		if ctx.Err() != nil {
			return conns, ctx.Err()
		}
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			return conns, fmt.Errorf("connection %d: %w", i, err)
		}
		conns = append(conns, c)
		if _, err := c.Write(req); err != nil {
			return conns, err
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return conns, fmt.Errorf("connection %d: %w", i, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	return conns, nil
}

func closeAll(conns []net.Conn) {
	for _, c := range conns {
		c.Close()
	}
}
