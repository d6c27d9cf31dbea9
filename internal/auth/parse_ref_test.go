package auth

import (
	"encoding/base64"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// parseTokenRef is parseToken as it was with encoding/json. It is the
// reference the hand-written decoding must match, reason for reason.
func parseTokenRef(tok string, allowed algSet) (parsedToken, reason) {
	var pt parsedToken
	if len(tok) == 0 || len(tok) > maxTokenBytes {
		return pt, reasonMalformed
	}
	d1 := strings.IndexByte(tok, '.')
	if d1 <= 0 {
		return pt, reasonMalformed
	}
	d2 := strings.IndexByte(tok[d1+1:], '.')
	if d2 <= 0 {
		return pt, reasonMalformed
	}
	d2 += d1 + 1
	if d2 == len(tok)-1 || strings.IndexByte(tok[d2+1:], '.') >= 0 {
		return pt, reasonMalformed
	}
	hdrJSON, err := b64.DecodeString(tok[:d1])
	if err != nil {
		return pt, reasonMalformed
	}
	var hdr map[string]json.RawMessage
	if err := json.Unmarshal(hdrJSON, &hdr); err != nil || hdr == nil {
		return pt, reasonMalformed
	}
	if _, crit := hdr["crit"]; crit {
		return pt, reasonMalformed
	}
	var algName, kid string
	if raw, ok := hdr["alg"]; !ok || json.Unmarshal(raw, &algName) != nil {
		return pt, reasonMalformed
	}
	if raw, ok := hdr["kid"]; ok && json.Unmarshal(raw, &kid) != nil {
		return pt, reasonMalformed
	}
	payload, err := b64.DecodeString(tok[d1+1 : d2])
	if err != nil {
		return pt, reasonMalformed
	}
	sig, err := b64.DecodeString(tok[d2+1:])
	if err != nil || len(sig) == 0 {
		return pt, reasonMalformed
	}
	a, ok := algByName(algName)
	if !ok || !allowed.has(a.id) {
		return pt, reasonBadSignature
	}
	var claims map[string]any
	if err := json.Unmarshal(payload, &claims); err != nil || claims == nil {
		return pt, reasonMalformed
	}
	exp, ok := numClaim(claims, "exp")
	if !ok {
		return pt, reasonMalformed
	}
	pt.nbf, pt.hasNBF = numClaim(claims, "nbf")
	if _, present := claims["nbf"]; present && !pt.hasNBF {
		return pt, reasonMalformed
	}
	pt.iat, pt.hasIAT = numClaim(claims, "iat")
	if _, present := claims["iat"]; present && !pt.hasIAT {
		return pt, reasonMalformed
	}
	pt.alg, pt.kid, pt.sig, pt.claims, pt.exp = a, kid, sig, claims, exp
	pt.signingInput = tok[:d2]
	return pt, reasonNone
}

func checkParseMatchesRef(t *testing.T, tok string, allowed algSet) {
	t.Helper()
	got, r := parseToken(tok, allowed)
	want, wr := parseTokenRef(tok, allowed)
	if r != wr {
		t.Fatalf("%s: reason %v, reference %v", short(tok), r, wr)
	}
	got.claims = claimsAsFloats(t, got.claims)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%s:\n got %+v\nwant %+v", short(tok), got, want)
	}
	// The path the gateway takes, in a stack-sized buffer.
	buf := make([]byte, len(tok))
	pt, n, r := parseTokenBuf(tok, allowed, buf)
	if r != wr {
		t.Fatalf("%s: parseTokenBuf reason %v, reference %v", short(tok), r, wr)
	}
	if r != reasonNone {
		return
	}
	if string(buf[:n]) != string(want.sig) || string(buf[n:n+len(pt.signingInput)]) != want.signingInput {
		t.Fatalf("%s: signature or signing input in the buffer differ", short(tok))
	}
	pt.sig = want.sig
	pt.claims = claimsAsFloats(t, pt.claims)
	if !reflect.DeepEqual(pt, want) {
		t.Fatalf("%s: parseTokenBuf\n got %+v\nwant %+v", short(tok), pt, want)
	}
}

// claimsAsFloats is c as encoding/json decodes it (see numbersAsFloats).
func claimsAsFloats(t *testing.T, c map[string]any) map[string]any {
	t.Helper()
	if c == nil {
		return nil
	}
	return numbersAsFloats(t, c).(map[string]any)
}

// tokenCases are header and payload JSON pairs around the rules parseToken
// enforces; each is checked against the reference.
var tokenCases = []struct{ hdr, payload string }{
	{`{"alg":"RS256","kid":"k"}`, `{"exp":1e10,"sub":"a"}`},
	{`{"alg":"RS256"}`, `{"exp":1e10,"iat":1,"nbf":2,"aud":["a"],"iss":"i"}`},
	{`{"alg":"RS256"}`, `{"exp":90071992547409930001,"nbf":9007199254740993,"uid":[1311417856476483584]}`},
	{`{"alg":"none"}`, `{"exp":1}`},
	{`{"alg":null}`, `{"exp":1}`},
	{`{"alg":null}`, `{"exp":"x"}`},
	{`{"alg":5}`, `{"exp":1}`},
	{`{"alg":["RS256"]}`, `{"exp":1}`},
	{`{"Alg":"RS256"}`, `{"exp":1}`},
	{`{"\u0061lg":"RS256"}`, `{"exp":1}`},
	{`{"alg":"RS\u0032\u00356"}`, `{"exp":1}`},
	{`{"alg":"RS256\u0000"}`, `{"exp":1}`},
	{"{\"alg\":\"RS256\xff\"}", `{"exp":1}`},
	{`{"alg":"RS256","alg":"HS256"}`, `{"exp":1}`},
	{`{"alg":"RS256","alg":7}`, `{"exp":1}`},
	{`{"alg":7,"alg":"RS256"}`, `{"exp":1}`},
	{`{"alg":"RS256","kid":7}`, `{"exp":1}`},
	{`{"alg":"RS256","kid":null}`, `{"exp":1}`},
	{`{"alg":"RS256","kid":""}`, `{"exp":1}`},
	{`{"alg":"RS256","kid":"a\"b\\c\u00e9"}`, `{"exp":1}`},
	{"{\"alg\":\"RS256\",\"kid\":\"k\xff\"}", `{"exp":1}`},
	{`{"alg":"RS256","kid":"k","kid":"j"}`, `{"exp":1}`},
	{`{"alg":"RS256","crit":["b64"],"b64":false}`, `{"exp":1}`},
	{`{"alg":"RS256","crit":null}`, `{"exp":1}`},
	{`{"alg":"RS256","cri\u0074":[]}`, `{"exp":1}`},
	{`{"alg":"RS256","x":1e400,"y":[{"z":null}],"w":-0.5E-7}`, `{"exp":1}`},
	{`{"alg":"RS256","x":01}`, `{"exp":1}`},
	{`{"alg":"RS256"} `, ` {"exp":1} `},
	{`{"alg":"RS256"}x`, `{"exp":1}`},
	{`null`, `{"exp":1}`},
	{`[]`, `{"exp":1}`},
	{`{"alg":"RS256"}`, `null`},
	{`{"alg":"RS256"}`, `[1,2]`},
	{`{"alg":"RS256"}`, `{}`},
	{`{"alg":"RS256"}`, `{"exp":null}`},
	{`{"alg":"RS256"}`, `{"exp":"1"}`},
	{`{"alg":"RS256"}`, `{"exp":true}`},
	{`{"alg":"RS256"}`, `{"exp":[1]}`},
	{`{"alg":"RS256"}`, `{"exp":1e400}`},
	{`{"alg":"RS256"}`, `{"exp":1,"exp":"x"}`},
	{`{"alg":"RS256"}`, `{"exp":"x","exp":1}`},
	{`{"alg":"RS256"}`, `{"exp":1,"nbf":"x"}`},
	{`{"alg":"RS256"}`, `{"exp":1,"nbf":null}`},
	{`{"alg":"RS256"}`, `{"exp":1,"iat":{}}`},
	{`{"alg":"RS256"}`, `{"exp":1,"aud":5,"iss":["x"]}`},
	{`{"alg":"RS256"}`, `{"exp":1,"aud":"a","aud":["b"]}`},
	{`{"alg":"RS256"}`, `{"exp":1,"sub":"\ud83d\ude00\ud83d"}`},
	{`{"alg":"RS256"}`, "{\"exp\":1,\"sub\":\"a\xffb\"}"},
	{`{"alg":"RS256"}`, `{"\u0065xp":1}`},
	{`{"alg":"RS256"}`, `{"exp":1,}`},
	{`{"alg":"HS512"}`, `{"exp":"x"}`},
	{`{"alg":"EdDSA"}`, `{"exp":"x","nbf":null}`},
	{`{"alg":"ES256"}`, `[1,2]`},
}

func encTok(hdr, payload string, sig []byte) string {
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(hdr)) + "." + enc([]byte(payload)) + "." + enc(sig)
}

// TestParseTokenMatchesReference checks parseToken against the
// encoding/json reference on the cases above and on broken shapes.
func TestParseTokenMatchesReference(t *testing.T) {
	var all algSet
	for i := range algs {
		all = all.with(algs[i].id)
	}
	rsOnly := algSet(0).with(4)
	for _, tc := range tokenCases {
		for _, allowed := range []algSet{all, rsOnly} {
			checkParseMatchesRef(t, encTok(tc.hdr, tc.payload, []byte("sig")), allowed)
		}
	}
	good := encTok(`{"alg":"RS256"}`, `{"exp":1}`, []byte("sig"))
	for _, tok := range []string{
		"", ".", "..", "...", "a.b.c", "e30.e30.!!!", good + ".x", "." + good, good + "=", strings.Replace(good, ".", "..", 1),
		good[:len(good)-1], good[:len(good)-2], good + "A", strings.Replace(good, "e", "\n", 1),
		encTok(`{"alg":"RS256"}`, `{"exp":1}`, nil), encTok(`{"alg":"RS256"}`, `{"exp":1}`, []byte{0}),
		good + strings.Repeat("A", maxTokenBytes), strings.TrimSuffix(good, "ZWc") + "ZWd",
	} {
		checkParseMatchesRef(t, tok, all)
	}
}

// FuzzParseTokenMatchesReference checks parseToken against the
// encoding/json reference, from JSON texts (most inputs reach the JSON)
// and from raw tokens (the split and the base64).
func FuzzParseTokenMatchesReference(f *testing.F) {
	for _, tc := range tokenCases {
		f.Add(tc.hdr, tc.payload, []byte("sig"), "")
	}
	f.Add("", "", []byte(nil), "e30.e30.!!!")
	f.Add("", "", []byte(nil), "eyJhbGciOiJSUzI1NiJ9.eyJleHAiOjF9.c2ln")
	var all algSet
	for i := range algs {
		all = all.with(algs[i].id)
	}
	f.Fuzz(func(t *testing.T, hdr, payload string, sig []byte, raw string) {
		checkParseMatchesRef(t, encTok(hdr, payload, sig), all)
		checkParseMatchesRef(t, raw, all)
	})
}
