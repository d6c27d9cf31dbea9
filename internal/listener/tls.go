package listener

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"

	"github.com/portico-gw/portico/internal/config"
)

// CertStore holds the listener's certificates and picks one per handshake
// by SNI. Reload swaps the whole set atomically, so a handshake sees either
// the old set or the new one, never a mix.
type CertStore struct {
	cur atomic.Pointer[certSet]
}

type certSet struct {
	def      *tls.Certificate
	exact    map[string]*tls.Certificate // lower-case DNS name
	wildcard map[string]*tls.Certificate // "example.com" for "*.example.com"
}

// cipherSuites are the TLS 1.2 suites offered: forward secret (ECDHE) AEADs
// only. TLS 1.3 suites are not configurable in Go and all qualify.
var cipherSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, // required by HTTP/2 (RFC 9113, 9.2.2)
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// TLSConfig loads cfg's certificates and returns their store and a server
// tls.Config that takes certificates from it: chosen by SNI (exact name,
// then a wildcard one label up), the first configured one otherwise.
// min_version is "1.2" (default) or "1.3"; ALPN offers h2 then http/1.1.
// A later min_version change needs a new listener; certificates reload
// through the store.
func TLSConfig(cfg *config.ServerTLS) (*CertStore, *tls.Config, error) {
	if cfg == nil {
		return nil, nil, errors.New("server.tls: not configured")
	}
	var minVersion uint16
	switch cfg.MinVersion {
	case "", "1.2":
		minVersion = tls.VersionTLS12
	case "1.3":
		minVersion = tls.VersionTLS13
	default:
		return nil, nil, fmt.Errorf("server.tls.min_version: %q is not 1.2 or 1.3", cfg.MinVersion)
	}
	set, err := loadCerts(cfg)
	if err != nil {
		return nil, nil, err
	}
	s := &CertStore{}
	s.cur.Store(set)
	tc := &tls.Config{
		MinVersion:     minVersion,
		CipherSuites:   cipherSuites,
		NextProtos:     []string{"h2", "http/1.1"},
		GetCertificate: s.GetCertificate,
	}
	return s, tc, nil
}

// Reload loads cfg's certificates and swaps them in. On any error the
// certificates in force stay and the error names the bad file.
func (s *CertStore) Reload(cfg *config.ServerTLS) error {
	if cfg == nil {
		return errors.New("server.tls: not configured")
	}
	set, err := loadCerts(cfg)
	if err != nil {
		return err
	}
	s.cur.Store(set)
	return nil
}

// GetCertificate implements tls.Config.GetCertificate.
func (s *CertStore) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	set := s.cur.Load()
	name := strings.ToLower(strings.TrimSuffix(hello.ServerName, "."))
	if name != "" {
		if c := set.exact[name]; c != nil {
			return c, nil
		}
		if _, parent, ok := strings.Cut(name, "."); ok {
			if c := set.wildcard[parent]; c != nil {
				return c, nil
			}
		}
	}
	return set.def, nil
}

func loadCerts(cfg *config.ServerTLS) (*certSet, error) {
	pairs := make([]config.CertKey, 0, 1+len(cfg.Certificates))
	if cfg.Cert != "" || cfg.Key != "" {
		pairs = append(pairs, config.CertKey{Cert: cfg.Cert, Key: cfg.Key})
	}
	pairs = append(pairs, cfg.Certificates...)
	if len(pairs) == 0 {
		return nil, errors.New("server.tls: no certificate configured")
	}
	set := &certSet{exact: map[string]*tls.Certificate{}, wildcard: map[string]*tls.Certificate{}}
	for i, p := range pairs {
		if p.Cert == "" || p.Key == "" {
			return nil, fmt.Errorf("server.tls certificate %d: cert and key are both required", i)
		}
		c, err := tls.LoadX509KeyPair(p.Cert, p.Key)
		if err != nil {
			return nil, fmt.Errorf("server.tls certificate %d (%s): %w", i, p.Cert, err)
		}
		leaf := c.Leaf
		if leaf == nil {
			if leaf, err = x509.ParseCertificate(c.Certificate[0]); err != nil {
				return nil, fmt.Errorf("server.tls certificate %d (%s): %w", i, p.Cert, err)
			}
		}
		cert := &c
		if set.def == nil {
			set.def = cert
		}
		names := leaf.DNSNames
		if len(names) == 0 && leaf.Subject.CommonName != "" {
			names = []string{leaf.Subject.CommonName}
		}
		for _, n := range names {
			n = strings.ToLower(n)
			// The first certificate naming a host wins, as listed.
			if parent, ok := strings.CutPrefix(n, "*."); ok {
				if set.wildcard[parent] == nil {
					set.wildcard[parent] = cert
				}
			} else if set.exact[n] == nil {
				set.exact[n] = cert
			}
		}
	}
	return set, nil
}

// Protocols returns the HTTP versions a public listener serves: HTTP/1.1
// always, HTTP/2 over TLS (negotiated by ALPN) when tls is set, and h2c
// (HTTP/2 over cleartext with prior knowledge) when h2c is set.
func Protocols(tlsOn, h2c bool) *http.Protocols {
	p := new(http.Protocols)
	p.SetHTTP1(true)
	p.SetHTTP2(tlsOn)
	p.SetUnencryptedHTTP2(h2c)
	return p
}
