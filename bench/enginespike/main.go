// Command enginespike measures how far a tuned net/http proxy path goes
// against one built on github.com/valyala/fasthttp, for the same route and
// the same edge work: request id (kept or generated, sent upstream and
// returned), X-Forwarded-For/-Proto/-Host, hop-by-hop header removal both
// ways, an upstream timeout (504), streaming of large bodies, a 502 on dial
// failure. It is a separate module so that the gateway itself does not
// depend on fasthttp; `go run ./bench -scenarios engine-spike` builds and
// runs it beside nginx and the direct call.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

func main() {
	engine := flag.String("engine", "nethttp", "nethttp | fasthttp | hybrid")
	listen := flag.String("listen", "127.0.0.1:0", "listen address (loopback)")
	upstream := flag.String("upstream", "127.0.0.1:9001", "upstream host:port")
	flag.Parse()
	host, _, _ := net.SplitHostPort(*listen)
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		log.Fatalf("listen on loopback only, not %s", *listen)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(ln.Addr().String())
	switch *engine {
	case "nethttp":
		log.Fatal(serveNetHTTP(ln, *upstream))
	case "fasthttp":
		log.Fatal(serveFastHTTP(ln, *upstream))
	case "hybrid":
		log.Fatal(serveHybrid(ln, *upstream))
	default:
		log.Fatalf("unknown engine %q", *engine)
	}
}

var idSeq atomic.Uint64

func nextID(buf []byte) []byte {
	buf = append(buf, "spike-"...)
	return strconv.AppendUint(buf, idSeq.Add(1), 36)
}

type bufferPool struct{ p sync.Pool }

func (b *bufferPool) Get() []byte {
	if v := b.p.Get(); v != nil {
		return *(v.(*[]byte))
	}
	return make([]byte, 32<<10)
}
func (b *bufferPool) Put(v []byte) { b.p.Put(&v) }

// serveNetHTTP is the tuned standard-library path, as the gateway's proxy
// stage uses it: ReverseProxy with Rewrite, a BufferPool and a large idle pool.
func serveNetHTTP(ln net.Listener, upstream string) error {
	target := &url.URL{Scheme: "http", Host: upstream}
	tr := &http.Transport{
		MaxIdleConns: 4096, MaxIdleConnsPerHost: 1024, IdleConnTimeout: 90 * time.Second,
		DisableCompression: true, ResponseHeaderTimeout: 15 * time.Second,
		DialContext: (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
	}
	rp := &httputil.ReverseProxy{
		Transport:  tr,
		BufferPool: &bufferPool{},
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = upstream
			pr.SetXForwarded()
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			w.Header().Set("Content-Type", "application/problem+json")
			w.WriteHeader(http.StatusBadGateway)
			_, _ = w.Write([]byte(`{"status":502,"title":"Bad Gateway"}`))
		},
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get("X-Request-Id")
		if id == "" {
			var buf [32]byte
			id = string(nextID(buf[:0]))
			r.Header["X-Request-Id"] = []string{id}
		}
		w.Header()["X-Request-Id"] = []string{id}
		rp.ServeHTTP(w, r)
	})
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 120 * time.Second}
	return srv.Serve(ln)
}

var hopHeaders = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

// serveFastHTTP is the same route on fasthttp: HostClient with a keep-alive
// pool, the same header work done by hand (fasthttp has no ReverseProxy).
func serveFastHTTP(ln net.Listener, upstream string) error {
	client := &fasthttp.HostClient{
		Addr: upstream, MaxConns: 4096, MaxIdleConnDuration: 90 * time.Second,
		ReadTimeout: 15 * time.Second, WriteTimeout: 15 * time.Second,
		StreamResponseBody: true, DisablePathNormalizing: true,
	}
	handler := func(ctx *fasthttp.RequestCtx) {
		req := &ctx.Request
		resp := &ctx.Response
		id := req.Header.Peek("X-Request-Id")
		if len(id) == 0 {
			var buf [32]byte
			id = nextID(buf[:0])
			req.Header.SetBytesV("X-Request-Id", id)
		}
		// Headers named in Connection are hop-by-hop too (RFC 9110 7.6.1).
		if conn := req.Header.Peek("Connection"); len(conn) > 0 {
			for _, name := range bytes.Split(conn, []byte(",")) {
				req.Header.DelBytes(bytes.TrimSpace(name))
			}
		}
		for _, h := range hopHeaders {
			req.Header.Del(h)
		}
		ip := ctx.RemoteIP().String()
		if prior := req.Header.Peek("X-Forwarded-For"); len(prior) > 0 {
			req.Header.Set("X-Forwarded-For", string(prior)+", "+ip)
		} else {
			req.Header.Set("X-Forwarded-For", ip)
		}
		req.Header.Set("X-Forwarded-Proto", "http")
		req.Header.SetBytesV("X-Forwarded-Host", req.Header.Host())
		req.SetHost(upstream)
		if err := client.DoTimeout(req, resp, 15*time.Second); err != nil {
			resp.Reset()
			status := fasthttp.StatusBadGateway
			if err == fasthttp.ErrTimeout {
				status = fasthttp.StatusGatewayTimeout
			}
			resp.SetStatusCode(status)
			resp.Header.SetContentType("application/problem+json")
			resp.SetBodyString(`{"status":` + strconv.Itoa(status) + `}`)
		}
		for _, h := range hopHeaders {
			resp.Header.Del(h)
		}
		resp.Header.SetBytesV("X-Request-Id", id)
	}
	srv := &fasthttp.Server{Handler: handler, ReadTimeout: 120 * time.Second, IdleTimeout: 120 * time.Second,
		StreamRequestBody: true, DisablePreParseMultipartForm: true, NoDefaultServerHeader: true}
	return srv.Serve(ln)
}

// serveHybrid keeps net/http's server and replaces only the upstream
// client with fasthttp's HostClient, which writes the request and reads the
// answer on the handler's own goroutine (net/http's Transport hands each
// request to a write goroutine and each answer back from a read
// goroutine). It tells how much of fasthttp's gain the client side alone
// would bring under the standard server.
func serveHybrid(ln net.Listener, upstream string) error {
	client := &fasthttp.HostClient{
		Addr: upstream, MaxConns: 4096, MaxIdleConnDuration: 90 * time.Second,
		ReadTimeout: 15 * time.Second, WriteTimeout: 15 * time.Second,
		StreamResponseBody: true, DisablePathNormalizing: true,
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req := fasthttp.AcquireRequest()
		resp := fasthttp.AcquireResponse()
		defer fasthttp.ReleaseRequest(req)
		defer fasthttp.ReleaseResponse(resp)
		id := r.Header.Get("X-Request-Id")
		if id == "" {
			var buf [32]byte
			id = string(nextID(buf[:0]))
		}
		req.Header.SetMethod(r.Method)
		req.SetRequestURI(r.URL.RequestURI())
		req.SetHost(upstream)
		hop := map[string]bool{}
		for _, v := range r.Header["Connection"] {
			for _, name := range bytes.Split([]byte(v), []byte(",")) {
				hop[http.CanonicalHeaderKey(string(bytes.TrimSpace(name)))] = true
			}
		}
		for k, vv := range r.Header {
			if hop[k] || isHop(k) {
				continue
			}
			for _, v := range vv {
				req.Header.Add(k, v)
			}
		}
		req.Header.Set("X-Request-Id", id)
		ip, _, _ := net.SplitHostPort(r.RemoteAddr)
		if prior := r.Header.Get("X-Forwarded-For"); prior != "" {
			ip = prior + ", " + ip
		}
		req.Header.Set("X-Forwarded-For", ip)
		req.Header.Set("X-Forwarded-Proto", "http")
		req.Header.Set("X-Forwarded-Host", r.Host)
		if r.ContentLength != 0 {
			req.SetBodyStream(r.Body, int(r.ContentLength))
		}
		if err := client.DoTimeout(req, resp, 15*time.Second); err != nil {
			status := http.StatusBadGateway
			if err == fasthttp.ErrTimeout {
				status = http.StatusGatewayTimeout
			}
			w.Header().Set("Content-Type", "application/problem+json")
			w.WriteHeader(status)
			_, _ = w.Write([]byte(`{"status":` + strconv.Itoa(status) + `}`))
			return
		}
		out := w.Header()
		for k, v := range resp.Header.All() {
			name := string(k)
			if isHop(http.CanonicalHeaderKey(name)) {
				continue
			}
			out.Add(name, string(v))
		}
		out.Set("X-Request-Id", id)
		w.WriteHeader(resp.StatusCode())
		_ = resp.BodyWriteTo(w)
	})
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 120 * time.Second}
	return srv.Serve(ln)
}

func isHop(name string) bool {
	for _, h := range hopHeaders {
		if h == name {
			return true
		}
	}
	return false
}
