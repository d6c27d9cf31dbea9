package redisstore

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/portico-gw/portico/internal/config"
	"github.com/portico-gw/portico/internal/ratelimit"
	"github.com/portico-gw/portico/internal/ratelimit/algo"
)

// writeCert issues a certificate signed by parent (self-signed when parent
// is nil) and writes cert and key as PEM files.
func writeCert(t *testing.T, dir, name string, tmpl *x509.Certificate, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".key"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// TestTLS runs decisions over mutual TLS (rediss:// plus the store's tls
// block: CA, client certificate, server name) against a redis-server with
// TLS only, and checks that a client without the CA is refused.
func TestTLS(t *testing.T) {
	bin := redisServerPath(t)
	dir := t.TempDir()
	now := time.Now()
	ca, caKey := writeCert(t, dir, "ca", &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "portico test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}, nil, nil)
	writeCert(t, dir, "server", &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "redis.test"},
		DNSNames: []string{"redis.test"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature,
	}, ca, caKey)
	writeCert(t, dir, "client", &x509.Certificate{
		SerialNumber: big.NewInt(3), Subject: pkix.Name{CommonName: "portico"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature,
	}, ca, caKey)

	port := freePort(t)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	cmd := exec.Command(bin, "--port", "0", "--tls-port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--tls-cert-file", filepath.Join(dir, "server.crt"), "--tls-key-file", filepath.Join(dir, "server.key"),
		"--tls-ca-cert-file", filepath.Join(dir, "ca.crt"), "--tls-auth-clients", "yes",
		"--save", "", "--appendonly", "no", "--dir", dir, "--logfile", filepath.Join(dir, "redis.log"))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-done })
	// Ready when it accepts TCP (the TLS handshake is the test itself).
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			_ = c.Close()
			break
		}
		select {
		case <-done:
			log, _ := os.ReadFile(filepath.Join(dir, "redis.log"))
			skipOrFail(t, "redis-server without TLS support? %s", log)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("TLS redis-server not ready: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}

	tlsCfg := &config.ClientTLS{CA: filepath.Join(dir, "ca.crt"), Cert: filepath.Join(dir, "client.crt"),
		Key: filepath.Join(dir, "client.key"), ServerName: "redis.test"}
	s, err := New(config.Store{URL: "rediss://" + addr, TLS: tlsCfg, Timeout: config.Duration(2 * time.Second)}, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	out := make([]algo.Decision, 1)
	checks := []ratelimit.Check{{Policy: "p", Params: fixed(2, time.Minute), Cost: 1}}
	for i := range 3 {
		if err := s.Decide(context.Background(), "tls", checks, out); err != nil {
			t.Fatalf("over TLS: %v", err)
		}
		if out[0].Allowed != (i < 2) {
			t.Fatalf("request %d: %+v", i, out[0])
		}
	}

	// Without the CA the server's certificate is not trusted.
	untrusted, err := New(config.Store{URL: "rediss://" + addr, TLS: &config.ClientTLS{ServerName: "redis.test"},
		Timeout: config.Duration(time.Second)}, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	defer untrusted.Close()
	err = untrusted.Decide(context.Background(), "tls", checks, out)
	var certErr *tls.CertificateVerificationError
	if err == nil {
		t.Fatal("decision succeeded without trusting the server")
	}
	if !errors.As(err, &certErr) {
		t.Fatalf("want a certificate verification error, got %v", err)
	}
}
