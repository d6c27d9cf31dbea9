package upstream

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/portico-gw/portico/internal/config"
)

// Transport tuning for a proxy. A gateway talks to few hosts with many
// concurrent requests, so the idle pool per host is large (the default of 2
// would make most requests dial); compression is left to the client and the
// upstream (the gateway must not decompress what it forwards); proxies from
// the environment never apply to upstream traffic.
const (
	defaultConnectTimeout = 2 * time.Second
	maxIdleConnsPerHost   = 1024
	idleConnTimeout       = 90 * time.Second
	tlsHandshakeTimeout   = 10 * time.Second
	keepAlive             = 30 * time.Second
)

// transports are the connection pools of one upstream: std serves http://
// and https:// targets, h2c (nil unless a target is h2c://) speaks HTTP/2
// with prior knowledge over cleartext.
type transports struct {
	std *http.Transport
	h2c *http.Transport
	h1  *h1Client // plain http:// targets (nil with http1_client: standard): the lean path, std for the rest
}

func (ts *transports) closeIdle() {
	if ts == nil {
		return
	}
	if ts.h1 != nil {
		ts.h1.CloseIdleConnections()
	}
	ts.std.CloseIdleConnections()
	if ts.h2c != nil {
		ts.h2c.CloseIdleConnections()
	}
}

// transportSpec is everything a transport is built from, read and checked
// before Prepare reads the registry. key identifies it: equal keys mean the old
// transport (and its warm connections) can stay.
type transportSpec struct {
	connectTimeout time.Duration
	hasH2C         bool
	lean           bool // http1_client: lean
	tls            *tls.Config
	key            string
}

// loadTransportSpec reads the TLS files of u (so an unreadable file fails
// the reload, not the first request) and computes the key. The key includes
// a digest of the files' contents, so a rotated certificate under the same
// path yields a new transport on reload.
func loadTransportSpec(u *config.Upstream, hasH2C bool) (transportSpec, error) {
	ct := u.ConnectTimeout.D()
	if ct <= 0 {
		ct = defaultConnectTimeout
	}
	// The lean client unless the upstream asks for Go's transport ("" is
	// an upstream built without defaults applied, as in tests).
	spec := transportSpec{connectTimeout: ct, hasH2C: hasH2C, lean: u.HTTP1Client != "standard"}
	h := sha256.New()
	if t := u.TLS; t != nil {
		tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName}
		if t.CA != "" {
			pem, err := os.ReadFile(t.CA)
			if err != nil {
				return spec, fmt.Errorf("tls.ca: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return spec, fmt.Errorf("tls.ca: %s holds no PEM certificate", t.CA)
			}
			tc.RootCAs = pool
			h.Write(pem)
		}
		if (t.Cert == "") != (t.Key == "") {
			return spec, errors.New("tls: cert and key must be set together")
		}
		if t.Cert != "" {
			certPEM, err := os.ReadFile(t.Cert)
			if err != nil {
				return spec, fmt.Errorf("tls.cert: %w", err)
			}
			keyPEM, err := os.ReadFile(t.Key)
			if err != nil {
				return spec, fmt.Errorf("tls.key: %w", err)
			}
			pair, err := tls.X509KeyPair(certPEM, keyPEM)
			if err != nil {
				return spec, fmt.Errorf("tls.cert/tls.key: %w", err)
			}
			tc.Certificates = []tls.Certificate{pair}
			h.Write(certPEM)
			h.Write(keyPEM)
		}
		spec.tls = tc
		fmt.Fprintf(h, "|sni=%s", t.ServerName)
	}
	spec.key = fmt.Sprintf("connect=%s h2c=%t lean=%t tls=%t/%s", ct, hasH2C, spec.lean, spec.tls != nil, hex.EncodeToString(h.Sum(nil)[:12]))
	return spec, nil
}

func newTransports(spec transportSpec) *transports {
	dialer := &net.Dialer{Timeout: spec.connectTimeout, KeepAlive: keepAlive}
	base := func() *http.Transport {
		return &http.Transport{
			Proxy:               nil,
			DialContext:         dialer.DialContext,
			MaxIdleConns:        0, // no global cap; the per-host cap bounds it
			MaxIdleConnsPerHost: maxIdleConnsPerHost,
			IdleConnTimeout:     idleConnTimeout,
			TLSHandshakeTimeout: tlsHandshakeTimeout,
			DisableCompression:  true,
			// ResponseHeaderTimeout stays 0: the pool's per-attempt timer
			// covers dialing too, which this field would not.
			ExpectContinueTimeout: time.Second,
		}
	}
	std := base()
	std.ForceAttemptHTTP2 = true // h2 via ALPN on https:// targets
	if spec.tls != nil {
		std.TLSClientConfig = spec.tls.Clone()
	}
	ts := &transports{std: std}
	if spec.lean {
		ts.h1 = &h1Client{
			dial: dialer.DialContext, fallback: std,
			maxIdle: maxIdleConnsPerHost, idleTimeout: idleConnTimeout,
		}
	}
	if spec.hasH2C {
		h := base()
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		h.Protocols = &p
		ts.h2c = h
	}
	return ts
}
