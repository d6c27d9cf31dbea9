package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"testing"

	"github.com/lestrrat-go/jwx/v3/jws/jwsbb"
)

// TestVerifySignatureMatchesJWX checks the direct standard-library
// verification against the JOSE library's, for every algorithm, on good
// signatures and on damaged ones: both accept exactly the same.
func TestVerifySignatureMatchesJWX(t *testing.T) {
	keys(t)
	rsaPriv := rsaKey1.Private.(*rsa.PrivateKey)
	ecPriv := map[string]*ecdsa.PrivateKey{}
	for name, c := range map[string]elliptic.Curve{"ES256": elliptic.P256(), "ES384": elliptic.P384(), "ES512": elliptic.P521()} {
		k, err := ecdsa.GenerateKey(c, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		ecPriv[name] = k
	}
	edPriv := edKey1.Private.(ed25519.PrivateKey)
	input := []byte("eyJhbGciOiJSUzI1NiJ9.eyJleHAiOjF9")
	for i := range algs {
		a := &algs[i]
		t.Run(a.name, func(t *testing.T) {
			var signer any
			var pub any
			var k *vkey
			switch a.family {
			case famHMAC:
				signer, pub, k = hsSecret, hsSecret, &vkey{family: famHMAC, hmac: hsSecret}
			case famRSA, famRSAPSS:
				signer, pub, k = rsaPriv, &rsaPriv.PublicKey, &vkey{family: famRSA, rsa: &rsaPriv.PublicKey}
			case famEC:
				p := ecPriv[a.name]
				signer, pub, k = p, &p.PublicKey, &vkey{family: famEC, ec: &p.PublicKey}
			case famEd:
				signer, pub, k = edPriv, edPriv.Public(), &vkey{family: famEd, ed: edPriv.Public().(ed25519.PublicKey)}
			}
			if !k.fits(a) {
				t.Fatal("test key does not fit")
			}
			sig, err := jwsbb.Sign(signer, a.name, input, rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			if err := verifySignature(k, a, input, sig); err != nil {
				t.Fatalf("good signature refused: %v", err)
			}
			type variant struct {
				name       string
				input, sig []byte
			}
			flip := func(i int, bit byte) []byte {
				b := append([]byte(nil), sig...)
				b[i] ^= bit
				return b
			}
			vs := []variant{
				{"first bit", input, flip(0, 0x80)},
				{"last bit", input, flip(len(sig)-1, 1)},
				{"middle byte", input, flip(len(sig)/2, 0xff)},
				{"truncated", input, sig[:len(sig)-1]},
				{"extended", input, append(append([]byte(nil), sig...), 0)},
				{"leading zero", input, append([]byte{0}, sig...)},
				{"empty", input, nil},
				{"zeros", input, make([]byte, len(sig))},
				{"other input", append([]byte("x"), input...), sig},
				{"empty input", nil, sig},
			}
			for _, v := range vs {
				got := verifySignature(k, a, v.input, v.sig) == nil
				want := jwsbb.Verify(pub, a.name, v.input, v.sig) == nil
				if got != want || got {
					t.Errorf("%s: accepted %v, JOSE library %v", v.name, got, want)
				}
			}
		})
	}
}

// TestDigest checks the stack digests against crypto.Hash.
func TestDigest(t *testing.T) {
	in := []byte("signing input")
	for _, h := range []crypto.Hash{crypto.SHA256, crypto.SHA384, crypto.SHA512} {
		var sum [64]byte
		hh := h.New()
		hh.Write(in)
		if got, want := digest(h, in, &sum), hh.Sum(nil); string(got) != string(want) {
			t.Errorf("%v: %x, want %x", h, got, want)
		}
	}
}
