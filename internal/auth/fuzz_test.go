package auth

import (
	"encoding/base64"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

func FuzzParseToken(f *testing.F) {
	enc := base64.RawURLEncoding.EncodeToString
	f.Add(enc([]byte(`{"alg":"RS256","kid":"k"}`)) + "." + enc([]byte(`{"exp":1e10,"sub":"a"}`)) + "." + enc([]byte("sig")))
	f.Add(enc([]byte(`{"alg":"none"}`)) + "." + enc([]byte(`{"exp":1}`)) + ".")
	f.Add(enc([]byte(`{"alg":"HS256","crit":["b64"],"b64":false}`)) + "." + enc([]byte(`{"exp":1}`)) + ".AA")
	f.Add(enc([]byte(`{"alg":"ES256"}`)) + "." + enc([]byte(`[1,2]`)) + ".AA")
	f.Add(enc([]byte(`{"alg":"EdDSA"}`)) + "." + enc([]byte(`{"exp":"x","nbf":null}`)) + ".AA")
	f.Add("a.b.c")
	f.Add("..")
	f.Add("")
	var all algSet
	for i := range algs {
		all = all.with(algs[i].id)
	}
	f.Fuzz(func(t *testing.T, tok string) {
		pt, r := parseToken(tok, all)
		if r != reasonNone {
			if r != reasonMalformed && r != reasonBadSignature {
				t.Fatalf("parse failed with reason %v", r)
			}
			return
		}
		// What parsed is consistent with the input: the signing input is
		// the first two parts, the signature decodes from the third, and
		// the algorithm is a real one (never none).
		if pt.alg == nil || pt.alg.name == "none" {
			t.Fatal("accepted without a known algorithm")
		}
		if strings.Count(tok, ".") != 2 || !strings.HasPrefix(tok, pt.signingInput+".") {
			t.Fatalf("signing input %q not a prefix of %q", pt.signingInput, tok)
		}
		sig, err := b64.DecodeString(tok[len(pt.signingInput)+1:])
		if err != nil || string(sig) != string(pt.sig) || len(sig) == 0 {
			t.Fatal("signature bytes differ from the third part")
		}
		if pt.claims == nil {
			t.Fatal("no claims")
		}
		if _, ok := pt.claims["exp"].(float64); !ok {
			t.Fatal("accepted without a numeric exp")
		}
	})
}

func FuzzBearer(f *testing.F) {
	for _, s := range []string{"Bearer abc", "bearer abc", "BEARER\tabc ", "Bearer", "Bearerabc", "Basic abc", " Bearer  a.b.c", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		tok, ok := parseBearer(v)
		trimmed := strings.TrimLeft(v, " \t")
		isBearer := len(trimmed) >= 6 && strings.EqualFold(trimmed[:6], "bearer") &&
			(len(trimmed) == 6 || trimmed[6] == ' ' || trimmed[6] == '\t')
		if ok != isBearer {
			t.Fatalf("parseBearer(%q) ok=%v", v, ok)
		}
		if !ok {
			if tok != "" {
				t.Fatal("token from a non-bearer value")
			}
			return
		}
		if tok != strings.Trim(tok, " \t") {
			t.Fatalf("token %q keeps surrounding whitespace", tok)
		}
		if !strings.Contains(v, tok) {
			t.Fatalf("token %q not in %q", tok, v)
		}
	})
}

// FuzzCredentialExtraction checks the cookie and query scanners against the
// standard library's parsers, and that stripping removes exactly the named
// credential.
func FuzzCredentialExtraction(f *testing.F) {
	f.Add("a=1; session=tok; b=2", "x=1&access_token=tok&y=%20")
	f.Add(`session="q"`, "access%5Ftoken=a+b")
	f.Add(";;session=;", "&&access_token&")
	f.Fuzz(func(t *testing.T, cookie, query string) {
		r := &http.Request{Header: http.Header{"Cookie": {cookie}}, URL: &url.URL{RawQuery: query}}
		if c, err := r.Cookie("session"); err == nil && strings.Count(cookie, "session=") == 1 {
			if v, ok := cookieValue(r.Header["Cookie"], "session"); !ok || v != c.Value {
				t.Fatalf("cookie %q: ours %q, stdlib %q", cookie, v, c.Value)
			}
		}
		stripCookie(r.Header, "session")
		if _, ok := cookieValue(r.Header["Cookie"], "session"); ok {
			t.Fatalf("session cookie survived stripping: %q", r.Header["Cookie"])
		}
		vals, err := url.ParseQuery(query)
		if v, ok := queryValue(query, "access_token"); ok && err == nil {
			want := vals.Get("access_token")
			if len(vals["access_token"]) > 1 {
				want = "" // a repeated credential is refused (credSource.get)
			}
			if v != want {
				t.Fatalf("query %q: ours %q, stdlib %q", query, v, want)
			}
		}
		stripQuery(r, "access_token")
		if _, ok := queryValue(r.URL.RawQuery, "access_token"); ok {
			t.Fatalf("access_token survived stripping: %q", r.URL.RawQuery)
		}
	})
}
