package upstream

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/portico-gw/portico/internal/config"
)

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "portico test ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue returns a leaf certificate for cn, valid for dnsNames and 127.0.0.1.
func (ca *testCA) issue(t *testing.T, cn string, usage x509.ExtKeyUsage, dnsNames ...string) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		DNSNames: dnsNames, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

func writeFile(t *testing.T, dir, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestH2CUpstreamSpeaksHTTP2(t *testing.T) {
	env := newEnv(t, nil)
	protos := make(chan int, 4)
	s := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		protos <- r.ProtoMajor
	}))
	s.Config.Protocols = new(http.Protocols)
	s.Config.Protocols.SetHTTP1(true)
	s.Config.Protocols.SetUnencryptedHTTP2(true)
	s.Start()
	defer s.Close()
	p := env.apply(t, &config.Upstream{Targets: targets("h2c://" + s.Listener.Addr().String())})
	for range 2 {
		if status, _, err := send(p, http.MethodGet, ""); err != nil || status != 200 {
			t.Fatalf("status %d err %v", status, err)
		}
		if got := <-protos; got != 2 {
			t.Fatalf("upstream saw HTTP/%d, want HTTP/2", got)
		}
	}
}

func TestHTTPSUpstreamWithCAAndMTLS(t *testing.T) {
	env := newEnv(t, nil)
	ca := newTestCA(t)
	dir := t.TempDir()
	srvCert, srvKey := ca.issue(t, "upstream", x509.ExtKeyUsageServerAuth, "posts.internal")
	cliCert, cliKey := ca.issue(t, "portico-client", x509.ExtKeyUsageClientAuth)
	pair, err := tls.X509KeyPair(srvCert, srvKey)
	if err != nil {
		t.Fatal(err)
	}
	clientCAs := x509.NewCertPool()
	clientCAs.AppendCertsFromPEM(ca.pem)

	type seen struct {
		proto int
		cn    string
		sni   string
	}
	got := make(chan seen, 4)
	start := func(auth tls.ClientAuthType) *httptest.Server {
		s := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			sv := seen{proto: r.ProtoMajor, sni: r.TLS.ServerName}
			if len(r.TLS.PeerCertificates) > 0 {
				sv.cn = r.TLS.PeerCertificates[0].Subject.CommonName
			}
			got <- sv
		}))
		s.EnableHTTP2 = true
		s.TLS = &tls.Config{Certificates: []tls.Certificate{pair}, ClientCAs: clientCAs, ClientAuth: auth}
		s.Config.ErrorLog = log.New(io.Discard, "", 0) // the failing cases log handshake errors
		s.StartTLS()
		t.Cleanup(s.Close)
		return s
	}
	s := start(tls.VerifyClientCertIfGiven)
	strict := start(tls.RequireAndVerifyClientCert)

	caFile := writeFile(t, dir, "ca.pem", ca.pem)
	tests := []struct {
		name    string
		tls     *config.UpstreamTLS
		wantCN  string
		wantErr bool
	}{
		{"ca and server name", &config.UpstreamTLS{CA: caFile, ServerName: "posts.internal"}, "", false},
		{"mtls", &config.UpstreamTLS{CA: caFile, ServerName: "posts.internal",
			Cert: writeFile(t, dir, "c.crt", cliCert), Key: writeFile(t, dir, "c.key", cliKey)}, "portico-client", false},
		{"unknown ca", nil, "", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := env.apply(t, &config.Upstream{Targets: targets(s.URL), TLS: tc.tls, Retries: ptr(0)})
			status, _, err := send(p, http.MethodGet, "")
			if tc.wantErr {
				if err == nil {
					t.Fatal("an untrusted server certificate was accepted")
				}
				return
			}
			if err != nil || status != 200 {
				t.Fatalf("status %d err %v", status, err)
			}
			sv := <-got
			if sv.proto != 2 || sv.cn != tc.wantCN || sv.sni != "posts.internal" {
				t.Fatalf("upstream saw %+v, want HTTP/2, client cert %q, SNI posts.internal", sv, tc.wantCN)
			}
		})
	}
	t.Run("required client cert", func(t *testing.T) {
		p := env.apply(t, &config.Upstream{Targets: targets(strict.URL), Retries: ptr(0),
			TLS: &config.UpstreamTLS{CA: caFile, ServerName: "posts.internal"}})
		if _, _, err := send(p, http.MethodGet, ""); err == nil {
			t.Fatal("server requiring a client certificate accepted none")
		}
	})
	t.Run("rotated cert file gives a new transport", func(t *testing.T) {
		up := &config.Upstream{Targets: targets(s.URL), TLS: &config.UpstreamTLS{CA: caFile}}
		p1 := env.apply(t, up)
		if err := os.WriteFile(caFile, append(append([]byte{}, ca.pem...), newTestCA(t).pem...), 0o600); err != nil {
			t.Fatal(err)
		}
		if p2 := env.apply(t, up); p2.tr == p1.tr {
			t.Fatal("CA file content changed but the transport was kept")
		}
	})
}
