package listener

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
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/portico-gw/portico/internal/config"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "listener test ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

// issue writes a server certificate for names, with common name cn, and
// returns its cert and key paths.
func (ca *testCA) issue(t *testing.T, dir, cn string, names ...string) config.CertKey {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames: names,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	ck := config.CertKey{Cert: filepath.Join(dir, cn+".crt"), Key: filepath.Join(dir, cn+".key")}
	write(t, ck.Cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	write(t, ck.Key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}))
	return ck
}

func write(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// serveTLS starts an HTTP server on 127.0.0.1:0 the way the gateway does:
// tls.NewListener over a plain listener, HTTP/1.1 and HTTP/2.
func serveTLS(t *testing.T, tc *tls.Config, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, Protocols: Protocols(true, false), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(tls.NewListener(ln, tc)) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	return ln.Addr().String()
}

// handshake connects with SNI name and returns the served certificate's
// common name and the negotiated protocol.
func handshake(t *testing.T, addr, name string, ca *testCA, maxVersion uint16) (string, string, error) {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{ServerName: name, RootCAs: ca.pool,
		NextProtos: []string{"h2", "http/1.1"}, MaxVersion: maxVersion})
	if err != nil {
		return "", "", err
	}
	defer conn.Close()
	st := conn.ConnectionState()
	return st.PeerCertificates[0].Subject.CommonName, st.NegotiatedProtocol, nil
}

func TestTLSConfigPicksCertificateBySNI(t *testing.T) {
	ca := newTestCA(t)
	dir := t.TempDir()
	def := ca.issue(t, dir, "default", "gw.example.test")
	a := ca.issue(t, dir, "api", "api.example.test")
	wild := ca.issue(t, dir, "wild", "*.apps.example.test")
	store, tc, err := TLSConfig(&config.ServerTLS{Cert: def.Cert, Key: def.Key,
		Certificates: []config.CertKey{a, wild}})
	if err != nil {
		t.Fatal(err)
	}
	if tc.MinVersion != tls.VersionTLS12 {
		t.Fatalf("min version %x", tc.MinVersion)
	}
	addr := serveTLS(t, tc, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, r.Proto)
	}))
	tests := []struct{ sni, wantCN string }{
		{"api.example.test", "api"},
		{"API.Example.Test", "api"},
		{"x.apps.example.test", "wild"},
		{"a.b.apps.example.test", "default"}, // a wildcard covers one label only
		{"gw.example.test", "default"},
		{"unknown.test", "default"},
	}
	for _, tc := range tests {
		t.Run(tc.sni, func(t *testing.T) {
			cn, proto, err := handshake(t, addr, tc.sni, ca, 0)
			if tc.wantCN == "default" && tc.sni != "gw.example.test" {
				// The default certificate does not name the host: the client
				// rightly refuses it, so check which one was served.
				var ve *tls.CertificateVerificationError
				if !errors.As(err, &ve) || ve.UnverifiedCertificates[0].Subject.CommonName != "default" {
					t.Fatalf("err %v, want the default certificate (unverified for this name)", err)
				}
				return
			}
			if err != nil || cn != tc.wantCN || proto != "h2" {
				t.Fatalf("cn %q proto %q err %v, want %q over h2", cn, proto, err, tc.wantCN)
			}
		})
	}

	t.Run("http2 request", func(t *testing.T) {
		tr := &http.Transport{ForceAttemptHTTP2: true, TLSClientConfig: &tls.Config{RootCAs: ca.pool, ServerName: "api.example.test"}}
		defer tr.CloseIdleConnections()
		res, err := (&http.Client{Transport: tr}).Get("https://" + addr + "/")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.ProtoMajor != 2 || string(body) != "HTTP/2.0" {
			t.Fatalf("client %s, server saw %q; want HTTP/2", res.Proto, body)
		}
	})

	t.Run("reload", func(t *testing.T) {
		a2 := ca.issue(t, t.TempDir(), "api-rotated", "api.example.test")
		if err := store.Reload(&config.ServerTLS{Cert: def.Cert, Key: def.Key, Certificates: []config.CertKey{a2, wild}}); err != nil {
			t.Fatal(err)
		}
		if cn, _, err := handshake(t, addr, "api.example.test", ca, 0); err != nil || cn != "api-rotated" {
			t.Fatalf("after reload: cn %q err %v", cn, err)
		}
		// A bad file leaves the certificates in force.
		bad := t.TempDir() + "/missing.crt"
		err := store.Reload(&config.ServerTLS{Cert: bad, Key: def.Key})
		if err == nil {
			t.Fatal("reload with a missing file succeeded")
		}
		garbage := filepath.Join(t.TempDir(), "garbage.crt")
		write(t, garbage, []byte("not pem"))
		if err := store.Reload(&config.ServerTLS{Certificates: []config.CertKey{{Cert: garbage, Key: def.Key}}}); err == nil {
			t.Fatal("reload with a garbage certificate succeeded")
		}
		if cn, _, err := handshake(t, addr, "api.example.test", ca, 0); err != nil || cn != "api-rotated" {
			t.Fatalf("after failed reload: cn %q err %v", cn, err)
		}
	})
}

func TestTLSConfigMinVersionAndErrors(t *testing.T) {
	ca := newTestCA(t)
	dir := t.TempDir()
	c := ca.issue(t, dir, "gw", "gw.example.test")
	_, tc13, err := TLSConfig(&config.ServerTLS{Cert: c.Cert, Key: c.Key, MinVersion: "1.3"})
	if err != nil {
		t.Fatal(err)
	}
	addr := serveTLS(t, tc13, http.NotFoundHandler())
	if _, _, err := handshake(t, addr, "gw.example.test", ca, tls.VersionTLS12); err == nil {
		t.Fatal("a TLS 1.2 client was accepted with min_version 1.3")
	}
	if _, _, err := handshake(t, addr, "gw.example.test", ca, 0); err != nil {
		t.Fatalf("TLS 1.3 client: %v", err)
	}
	for _, bad := range []*config.ServerTLS{
		nil,
		{},
		{Cert: c.Cert},
		{Cert: c.Cert, Key: c.Key, MinVersion: "1.1"},
		{Cert: c.Cert, Key: filepath.Join(dir, "nope.key")},
	} {
		if _, _, err := TLSConfig(bad); err == nil {
			t.Errorf("TLSConfig(%+v) succeeded", bad)
		}
	}
	_, tc12, _ := TLSConfig(&config.ServerTLS{Cert: c.Cert, Key: c.Key})
	for _, id := range tc12.CipherSuites {
		for _, insecure := range tls.InsecureCipherSuites() {
			if id == insecure.ID {
				t.Errorf("insecure suite %s offered", insecure.Name)
			}
		}
	}
}
