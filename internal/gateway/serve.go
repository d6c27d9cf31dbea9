package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"strconv"
	"sync"
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
	srv := &http.Server{
		BaseContext:       func(net.Listener) context.Context { return base },
		Handler:           g,
		ReadHeaderTimeout: cfg.Server.ReadHeaderTimeout.D(),
		IdleTimeout:       cfg.Server.IdleTimeout.D(),
		MaxHeaderBytes:    int(cfg.Server.MaxHeaderBytes),
		ErrorLog:          nil,
	}
	pub := ls.Public
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
			srv.ConnState = rel.ConnState
			g.released.Store(rel)
			defer g.released.Store(nil)
		}
	}
	if cfg.Server.ProxyProtocol {
		pub = listener.ProxyProtocol(pub, g.current.Load().trusted)
	}
	if g.tlsCfg != nil {
		srv.TLSConfig = g.tlsCfg
		pub = tls.NewListener(pub, g.tlsCfg)
	}
	srv.Protocols = listener.Protocols(g.tlsCfg != nil, cfg.Server.H2C)

	adminSrv := &http.Server{Handler: g.AdminHandler(), ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 60 * time.Second}
	var redirectSrv *http.Server
	if ls.Redirect != nil {
		_, port, _ := net.SplitHostPort(ls.Public.Addr().String())
		redirectSrv = &http.Server{Handler: listener.RedirectHandler(port), ReadHeaderTimeout: 5 * time.Second}
	}

	errc := make(chan error, 3)
	var wg sync.WaitGroup
	serve := func(name string, s *http.Server, ln net.Listener) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("%s listener: %w", name, err)
			}
		}()
	}
	serve("public", srv, pub)
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
	timeout := cur.Server.ShutdownTimeout.D()
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	sctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	shutdownErr := srv.Shutdown(sctx)
	if errors.Is(shutdownErr, context.DeadlineExceeded) {
		g.log.Warn("shutdown timeout passed with requests in flight; closing them")
		_ = srv.Close()
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
