package main

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"
)

// The floors are what net/http itself costs, measured in the same run as
// Portico so that "at the level of a bare stdlib proxy" is a measured ratio,
// not a figure from another machine. Each runs as its own process (a
// subcommand of this binary), like the upstream, so its CPU is its own.

// floorTransport is tuned like Portico's upstream transport: an idle pool
// large enough for every client connection (the default of 2 per host
// would make most requests dial).
func floorTransport() *http.Transport {
	return &http.Transport{MaxIdleConnsPerHost: 1024, DisableCompression: true, IdleConnTimeout: 90 * time.Second}
}

type floorBufferPool struct{ p sync.Pool }

func (b *floorBufferPool) Get() []byte {
	if v, ok := b.p.Get().(*[]byte); ok {
		return *v
	}
	return make([]byte, 32<<10)
}

func (b *floorBufferPool) Put(v []byte) { b.p.Put(&v) }

// runStdProxy is httputil.ReverseProxy with a BufferPool and a tuned
// transport, doing nothing else: no routing, request ids, metrics or
// timeouts.
func runStdProxy(args []string) {
	fs := flag.NewFlagSet("stdproxy", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:0", "listen address (loopback)")
	upstream := fs.String("upstream", "", "upstream host:port")
	_ = fs.Parse(args)
	target := &url.URL{Scheme: "http", Host: *upstream}
	rp := &httputil.ReverseProxy{
		Rewrite:    func(r *httputil.ProxyRequest) { r.SetURL(target); r.SetXForwarded() },
		Transport:  floorTransport(),
		BufferPool: &floorBufferPool{},
	}
	serveLoopback(*addr, rp)
}

// runFanout is the least a net/http fan-out can do: six concurrent
// RoundTrips (one goroutine each), each body read whole, written out as
// one JSON object. No shaping, validation, timeouts or metrics. With
// -sequential it prices another design instead of a floor: the handler's
// goroutine writes all six requests, then reads the six answers in order.
func runFanout(args []string) {
	fs := flag.NewFlagSet("fanout", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:0", "listen address (loopback)")
	upstream := fs.String("upstream", "", "upstream host:port")
	n := fs.Int("n", 6, "backends per request")
	sequential := fs.Bool("sequential", false, "write all requests from the handler's goroutine, then read the answers in order, over sockets of its own (no goroutine per call)")
	_ = fs.Parse(args)
	tr := floorTransport()
	var seq *connSets
	if *sequential {
		seq = newConnSets(*upstream, *n)
	}
	urls := make([]string, *n)
	keys := make([][]byte, *n)
	for i := range urls {
		urls[i] = fmt.Sprintf("http://%s/small?delay=5&b=%d", *upstream, i+1)
		keys[i] = []byte(fmt.Sprintf(`"b%d":`, i+1))
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		bodies := make([][]byte, len(urls))
		errs := make([]error, len(urls))
		if seq != nil {
			seq.fetch(bodies, errs)
		} else {
			var wg sync.WaitGroup
			for i, u := range urls {
				wg.Go(func() {
					req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, u, nil)
					if err != nil {
						errs[i] = err
						return
					}
					resp, err := tr.RoundTrip(req)
					if err != nil {
						errs[i] = err
						return
					}
					defer resp.Body.Close()
					bodies[i], errs[i] = io.ReadAll(resp.Body)
				})
			}
			wg.Wait()
		}
		var out bytes.Buffer
		out.WriteByte('{')
		for i, b := range bodies {
			if errs[i] != nil {
				http.Error(w, errs[i].Error(), http.StatusBadGateway)
				return
			}
			if i > 0 {
				out.WriteByte(',')
			}
			out.Write(keys[i])
			out.Write(bytes.TrimSpace(b))
		}
		out.WriteByte('}')
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", strconv.Itoa(out.Len()))
		_, _ = w.Write(out.Bytes())
	})
	serveLoopback(*addr, h)
}

// startFloor runs one of the floor subcommands against the upstream and
// waits until path answers.
func (e *env) startFloor(ctx context.Context, name, sub, path string, extra ...string) (*system, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	return e.startPrinting(ctx, name, path, self, append([]string{sub, "-addr", "127.0.0.1:0", "-upstream", e.upAddr}, extra...)...)
}

// startPrinting runs a server that prints its address as its first line
// of output (the floors, the engine spike) and waits until path answers.
func (e *env) startPrinting(ctx context.Context, name, path, bin string, args ...string) (*system, error) {
	logPath := filepath.Join(e.work, name+".log")
	p, err := startProc(ctx, name, logPath, nil, bin, args...)
	if err != nil {
		return nil, err
	}
	addr, err := firstLine(logPath, 5*time.Second)
	if err == nil {
		err = waitHTTP(ctx, "http://"+addr+path, 5*time.Second)
	}
	if err != nil {
		p.stop()
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &system{name: name, base: "http://" + addr, proc: p}, nil
}

// connSets keeps sets of n keep-alive sockets to the upstream, one socket
// per backend, for the sequential fan-out: a request takes a set, writes
// all n requests, then reads the n answers in order, so that it never hands
// a call to another goroutine nor parks more than while the first answer is
// on its way. Plain HTTP/1.1 only; a set that saw an error is closed.
type connSets struct {
	upstream string
	reqs     [][]byte // the request to backend i, written as is
	mu       sync.Mutex
	free     []*connSet
}

type connSet struct {
	conns []net.Conn
	r     []*bufio.Reader
}

func newConnSets(upstream string, n int) *connSets {
	cs := &connSets{upstream: upstream}
	for i := range n {
		cs.reqs = append(cs.reqs, fmt.Appendf(nil, "GET /small?delay=5&b=%d HTTP/1.1\r\nHost: %s\r\n\r\n", i+1, upstream))
	}
	return cs
}

func (cs *connSets) get() (*connSet, error) {
	cs.mu.Lock()
	if k := len(cs.free); k > 0 {
		set := cs.free[k-1]
		cs.free = cs.free[:k-1]
		cs.mu.Unlock()
		return set, nil
	}
	cs.mu.Unlock()
	set := &connSet{}
	for range cs.reqs {
		c, err := net.Dial("tcp", cs.upstream)
		if err != nil {
			set.close()
			return nil, err
		}
		set.conns = append(set.conns, c)
		set.r = append(set.r, bufio.NewReader(c))
	}
	return set, nil
}

func (set *connSet) close() {
	for _, c := range set.conns {
		c.Close()
	}
}

func (cs *connSets) fetch(bodies [][]byte, errs []error) {
	set, err := cs.get()
	if err != nil {
		errs[0] = err
		return
	}
	for i, c := range set.conns {
		if _, errs[i] = c.Write(cs.reqs[i]); errs[i] != nil {
			set.close()
			return
		}
	}
	for i, r := range set.r {
		resp, err := http.ReadResponse(r, nil)
		if err == nil {
			bodies[i], err = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		if err != nil {
			errs[i] = err
			set.close()
			return
		}
	}
	cs.mu.Lock()
	cs.free = append(cs.free, set)
	cs.mu.Unlock()
}
