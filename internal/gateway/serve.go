package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/portico-gw/portico/internal/admin"
	"github.com/portico-gw/portico/internal/config"
	"github.com/portico-gw/portico/internal/listener"
)

// Listeners are the gateway's bound sockets, opened before serving so that
// a caller (the demo, tests) learns the real addresses of ":0" listens.
type Listeners struct {
	Public   net.Listener
	Admin    net.Listener
	Redirect net.Listener
}

// Listen binds the listeners of the running config.
func (g *Gateway) Listen() (*Listeners, error) {
	cfg := g.Config()
	var ls Listeners
	var err error
	if ls.Public, err = net.Listen("tcp", cfg.Server.Listen); err != nil {
		return nil, fmt.Errorf("server.listen: %w", err)
	}
	if ls.Admin, err = net.Listen("tcp", cfg.Admin.Listen); err != nil {
		ls.Public.Close()
		return nil, fmt.Errorf("admin.listen: %w", err)
	}
	if cfg.Server.HTTPRedirectListen != "" {
		if ls.Redirect, err = net.Listen("tcp", cfg.Server.HTTPRedirectListen); err != nil {
			ls.Public.Close()
			ls.Admin.Close()
			return nil, fmt.Errorf("server.http_redirect_listen: %w", err)
		}
	}
	return &ls, nil
}

// Serve serves on ls until ctx is done, then drains: /readyz turns 503 at
// once, traffic is still served for server.drain_delay (with
// Connection: close, and GOAWAY on HTTP/2), then the listeners close and
// in-flight requests get up to server.shutdown_timeout to finish. It returns
// nil after a clean drain.
func (g *Gateway) Serve(ctx context.Context, ls *Listeners) error {
	cfg := g.Config()
	// Every request context derives from base; cancelling it after the
	// drain ends upgraded connections (WebSockets), which http.Server's
	// Shutdown does not track once they are hijacked.
	base, cancelBase := context.WithCancel(context.Background())
	defer cancelBase()
	pub := ls.Public
	var connState func(net.Conn, http.ConnState)
	if g.tlsCfg == nil && !cfg.Server.ProxyProtocol {
		// Releasing needs the plain socket; see listener.ReleaseIdle for
		// why TLS and PROXY protocol listeners keep their connections whole.
		// The listener is wrapped even with a delay of 0, so that a reload
		// can turn releasing on.
		rel, err := listener.ReleaseIdle(pub, idleReleaseAfter(cfg))
		if err != nil {
			// Not an operator error: the platform has no poller (not Linux).
			g.log.Info("idle connections are not released", "reason", err.Error())
		} else {
			pub = rel
			connState = rel.ConnState
			g.released.Store(rel)
			defer g.released.Store(nil)
		}
	}
	if cfg.Server.ProxyProtocol {
		pub = listener.ProxyProtocol(pub, func() []netip.Prefix { return g.current.Load().trusted })
	}
	if g.tlsCfg != nil {
		pub = tls.NewListener(pub, g.tlsCfg)
	}
	protocols := listener.Protocols(g.tlsCfg != nil, cfg.Server.H2C)
	handoff := listener.NewHandoff(pub)

	errc := make(chan error, 3)
	var wg sync.WaitGroup
	var stopping atomic.Bool
	serve := func(name string, s *http.Server, ln net.Listener) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := s.Serve(ln)
			// A server a reload replaced ends with net.ErrClosed (its view
			// of the socket retired); closing the public socket at the
			// drain ends every Serve before Shutdown marks it.
			if err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) && !stopping.Load() {
				select {
				case errc <- fmt.Errorf("%s listener: %w", name, err):
				default: // one error is enough to stop
				}
			}
		}()
	}
	servers := &publicServers{
		build: func(cfg *config.Config) *http.Server {
			return &http.Server{
				BaseContext:       func(net.Listener) context.Context { return base },
				Handler:           g,
				ReadHeaderTimeout: cfg.Server.ReadHeaderTimeout.D(),
				IdleTimeout:       cfg.Server.IdleTimeout.D(),
				MaxHeaderBytes:    int(cfg.Server.MaxHeaderBytes),
				ConnState:         connState,
				TLSConfig:         g.tlsCfg,
				Protocols:         protocols,
			}
		},
		serve: func(s *http.Server) { serve("public", s, handoff.Next()) },
		log:   g.log,
	}
	servers.start(cfg)
	g.servers.Store(servers)
	defer g.servers.Store(nil)

	adminSrv := &http.Server{Handler: g.AdminHandler(), ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 60 * time.Second}
	var redirectSrv *http.Server
	if ls.Redirect != nil {
		_, port, _ := net.SplitHostPort(ls.Public.Addr().String())
		// The public server's idle timeout and header limit (as at start):
		// a client redirected to HTTPS leaves this connection idle, and
		// without a bound it would be held until the client closes it.
		redirectSrv = &http.Server{Handler: listener.RedirectHandler(port), ReadHeaderTimeout: 5 * time.Second,
			IdleTimeout: cfg.Server.IdleTimeout.D(), MaxHeaderBytes: int(cfg.Server.MaxHeaderBytes)}
	}
	serve("admin", adminSrv, ls.Admin)
	if redirectSrv != nil {
		serve("redirect", redirectSrv, ls.Redirect)
	}
	g.log.Info("portico serving", "listen", ls.Public.Addr().String(), "admin", ls.Admin.Addr().String(),
		"tls", cfg.Server.TLS != nil, "routes", len(g.Routes()))

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
	}

	// Drain. Read the settings of the config in force now, which a reload
	// may have changed since start.
	cur := g.Config()
	g.draining.Store(true)
	g.log.Info("draining", "drain_delay", cur.Server.DrainDelay.D().String(), "shutdown_timeout", cur.Server.ShutdownTimeout.D().String())
	if d := cur.Server.DrainDelay.D(); d > 0 && serveErr == nil {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case serveErr = <-errc:
			t.Stop()
		}
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout(cur))
	defer cancel()
	// The socket closes first, as http.Server.Shutdown would close it, so
	// that no connection waits in the kernel for a server that is leaving;
	// the released connections close with it.
	stopping.Store(true)
	_ = handoff.Close()
	if !servers.shutdown(sctx) {
		g.log.Warn("shutdown timeout passed with requests in flight; closing them")
	}
	cancelBase()
	if redirectSrv != nil {
		_ = redirectSrv.Shutdown(sctx)
	}
	// The admin listener goes last so probes see /readyz 503 until the end.
	actx, acancel := context.WithTimeout(context.Background(), time.Second)
	_ = adminSrv.Shutdown(actx)
	acancel()
	wg.Wait()
	g.log.Info("stopped")
	return serveErr
}

// publicServers serve the public listener. net/http reads the timeouts and
// the header limit from its Server for the life of the process, so a reload
// that changes them starts a new Server on the same socket (a
// listener.Handoff) and retires the old one gracefully: new connections get
// the new settings at once, requests in flight finish, and the old server's
// connections close after their current request; idle keep-alive ones close
// at once (clients open new ones), as in a reload of nginx.
type publicServers struct {
	build func(*config.Config) *http.Server
	serve func(*http.Server)
	log   *slog.Logger

	mu       sync.Mutex
	current  *http.Server
	retiring map[*http.Server]struct{}
	retirers sync.WaitGroup
	stop     chan struct{} // closed by shutdown
}

func (p *publicServers) start(cfg *config.Config) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stop = make(chan struct{})
	p.current = p.build(cfg)
	p.serve(p.current)
}

// apply starts a new server when next changes a setting the running server
// holds, and retires the old one.
func (p *publicServers) apply(old, next *config.Config) {
	if !serverSettingsChanged(old, next) {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.stop:
		return // a reload during the drain: the servers are going anyway
	default:
	}
	prev := p.current
	p.current = p.build(next)
	p.serve(p.current) // from here on, prev gets no new connection
	if p.retiring == nil {
		p.retiring = make(map[*http.Server]struct{})
	}
	p.retiring[prev] = struct{}{}
	// Without keep-alives, each of prev's connections closes after its
	// current request (HTTP/2 ones with a GOAWAY), and idle ones now.
	prev.SetKeepAlivesEnabled(false)
	// Shutdown would drop a request that prev reads after it begins; a
	// connection accepted just before the swap may not have sent its
	// request yet, but read_header_timeout bounds how long it may take.
	grace, timeout := prev.ReadHeaderTimeout, shutdownTimeout(next)
	p.retirers.Go(func() {
		t := time.NewTimer(grace)
		select {
		case <-t.C:
		case <-p.stop:
			t.Stop()
			return // shutdown takes prev from here
		}
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		if err := prev.Shutdown(ctx); errors.Is(err, context.DeadlineExceeded) {
			p.log.Warn("the server replaced by a reload still had requests in flight after shutdown_timeout; closing them")
			_ = prev.Close()
		}
		p.mu.Lock()
		delete(p.retiring, prev)
		p.mu.Unlock()
	})
	p.log.Info("server settings changed: new connections use them, idle ones are closed")
}

// shutdown shuts every server down, the current one and those a reload
// replaced, and reports whether they finished before ctx was done; when
// not, it closes them.
func (p *publicServers) shutdown(ctx context.Context) bool {
	p.mu.Lock()
	close(p.stop)
	all := []*http.Server{p.current}
	for s := range p.retiring {
		all = append(all, s)
	}
	p.mu.Unlock()
	var late atomic.Bool
	var wg sync.WaitGroup
	for _, s := range all {
		wg.Go(func() {
			if err := s.Shutdown(ctx); errors.Is(err, context.DeadlineExceeded) {
				late.Store(true)
				_ = s.Close()
			}
		})
	}
	wg.Wait()
	p.retirers.Wait()
	return !late.Load()
}

// serverSettingsChanged reports whether next changes what an http.Server
// holds. The others apply without one: max_body_bytes and trusted_proxies
// are read per request or connection, drain_delay and shutdown_timeout at
// the drain, idle_release_after by the listener.
func serverSettingsChanged(old, next *config.Config) bool {
	o, n := old.Server, next.Server
	return o.ReadHeaderTimeout != n.ReadHeaderTimeout || o.IdleTimeout != n.IdleTimeout ||
		o.MaxHeaderBytes != n.MaxHeaderBytes
}

// shutdownTimeout is server.shutdown_timeout, 30s when unset (a config
// built in code rather than loaded).
func shutdownTimeout(cfg *config.Config) time.Duration {
	if d := cfg.Server.ShutdownTimeout.D(); d > 0 {
		return d
	}
	return 30 * time.Second
}

// idleReleaseAfter is server.idle_release_after, 0 when unset (a config
// built in code rather than loaded).
func idleReleaseAfter(cfg *config.Config) time.Duration {
	if d := cfg.Server.IdleReleaseAfter; d != nil {
		return d.D()
	}
	return 0
}

// AdminHandler is the admin listener's handler: the admin API, and the Go
// profiler under /debug/pprof/ (behind the admin token when one is set), so
// an operator can profile a live gateway as the benchmarks do.
func (g *Gateway) AdminHandler() http.Handler {
	prof := http.NewServeMux()
	prof.HandleFunc("/debug/pprof/", pprof.Index)
	prof.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	prof.HandleFunc("/debug/pprof/profile", pprof.Profile)
	prof.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	prof.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return admin.New(admin.Deps{
		// Read per request, so a reload rotates the token.
		Token:     func() string { return g.Config().Admin.Token },
		Profiler:  prof,
		Metrics:   g.tel.MetricsHandler(),
		Ready:     func() bool { return !g.draining.Load() },
		Reload:    g.Reload,
		Routes:    func() any { return g.Routes() },
		Upstreams: func() any { return g.ups.Snapshot() },
		Stats:     func() any { return g.tel.Stats() },
		SLO:       func() any { return g.slo.Snapshot() },
		Logger:    g.log,
	})
}

func defaultNodeID() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		h = "node"
	}
	return h + "-" + strconv.Itoa(os.Getpid())
}
