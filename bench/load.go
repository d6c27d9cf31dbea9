package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
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
// it, so a slow server shows as latency instead of a lower send rate. conns
// bounds the connections (and outstanding requests).
func openLoop(ctx context.Context, url string, rate int, d time.Duration, conns int) openLoopResult {
	tr := &http.Transport{MaxIdleConnsPerHost: conns, MaxConnsPerHost: conns, DisableCompression: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	total := int(float64(rate) * d.Seconds())
	interval := time.Second / time.Duration(rate)
	lat := make([]time.Duration, total)
	errs := make([]bool, total)
	jobs := make(chan int, total)
	start := time.Now().Add(50 * time.Millisecond)
	var wg sync.WaitGroup
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				at := start.Add(time.Duration(i) * interval)
				if w := time.Until(at); w > 0 {
					time.Sleep(w)
				}
				resp, err := client.Get(url)
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode >= 400 {
						err = fmt.Errorf("status %d", resp.StatusCode)
					}
				}
				lat[i] = time.Since(at)
				errs[i] = err != nil
			}
		}()
	}
	for i := 0; i < total && ctx.Err() == nil; i++ {
		jobs <- i
	}
	close(jobs)
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
