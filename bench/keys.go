package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jwt"
)

// signer holds an RS256 key whose public half is written as a JWKS file.
type signer struct {
	priv     jwk.Key
	jwksPath string
}

func newSigner(dir string) (*signer, error) {
	raw, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	priv, err := jwk.Import(raw)
	if err != nil {
		return nil, err
	}
	_ = priv.Set(jwk.KeyIDKey, "bench")
	_ = priv.Set(jwk.AlgorithmKey, jwa.RS256())
	pub, err := jwk.PublicKeyOf(priv)
	if err != nil {
		return nil, err
	}
	set := jwk.NewSet()
	_ = set.AddKey(pub)
	b, err := json.Marshal(set)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, "jwks.json")
	return &signer{priv: priv, jwksPath: path}, os.WriteFile(path, b, 0o644)
}

func (s *signer) token(sub string) (string, error) {
	now := time.Now()
	t, err := jwt.NewBuilder().Issuer("https://id.bench").Audience([]string{"bench"}).Subject(sub).
		IssuedAt(now).Expiration(now.Add(2 * time.Hour)).JwtID(sub).Build()
	if err != nil {
		return "", err
	}
	b, err := jwt.Sign(t, jwt.WithKey(jwa.RS256(), s.priv))
	return string(b), err
}

// tokenScript signs n distinct tokens and writes a wrk Lua script that sends
// each one once: wrk thread i of k uses tokens i, i+k, i+2k, ...
func (s *signer) tokenScript(dir string, n int) (string, error) {
	tokens := make([]string, n)
	var wg sync.WaitGroup
	var firstErr error
	var mu sync.Mutex
	workers := runtime.NumCPU()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += workers {
				t, err := s.token(fmt.Sprintf("user-%d", i))
				if err != nil {
					mu.Lock()
					firstErr = err
					mu.Unlock()
					return
				}
				tokens[i] = t
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return "", firstErr
	}
	tokPath := filepath.Join(dir, "tokens.txt")
	if err := os.WriteFile(tokPath, []byte(strings.Join(tokens, "\n")+"\n"), 0o644); err != nil {
		return "", err
	}
	script := fmt.Sprintf(`local threads = {}
local counter = 1
function setup(thread)
  thread:set("id", counter)
  table.insert(threads, thread)
  counter = counter + 1
end
function init(args)
  tokens = {}
  for line in io.lines(%q) do tokens[#tokens + 1] = line end
  i = id
  step = %d
end
function request()
  local t = tokens[((i - 1) %% #tokens) + 1]
  i = i + step
  return wrk.format(nil, nil, {["Authorization"] = "Bearer " .. t})
end
`, tokPath, 2)
	p := filepath.Join(dir, "tokens.lua")
	return p, os.WriteFile(p, []byte(script), 0o644)
}

type tlsFiles struct{ cert, key string }

// writeSelfSigned makes a throwaway certificate for 127.0.0.1.
func writeSelfSigned(dir string) (*tlsFiles, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:     []string{"localhost"},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	tf := &tlsFiles{cert: filepath.Join(dir, "bench.crt"), key: filepath.Join(dir, "bench.key")}
	if err := os.WriteFile(tf.cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return nil, err
	}
	return tf, os.WriteFile(tf.key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
}
