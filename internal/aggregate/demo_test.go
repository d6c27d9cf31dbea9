package aggregate

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/portico-gw/portico/examples/socialfeed"
	"github.com/portico-gw/portico/internal/config"
	"github.com/portico-gw/portico/internal/reqctx"
)

// TestDemoBFFs compiles the demo's mobile and web BFF files (with the
// platform file they rely on) against the real example services and checks
// the shapes the clients get, and that the mobile feed is at least five
// times smaller than the web one before compression.
func TestDemoBFFs(t *testing.T) {
	dir := t.TempDir()
	if err := socialfeed.WriteConfigs(dir); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(dir)
	if err != nil {
		t.Fatalf("loading the demo config: %v", err)
	}
	handlers := map[string]http.HandlerFunc{}
	for _, s := range socialfeed.Services(socialfeed.Latency{}) {
		handlers[s.Name] = s.Handler.ServeHTTP
	}
	rts := serve(t, handlers)
	bodies := map[string][]byte{}
	for _, name := range []string{"mobile", "web"} {
		bff := cfg.BFFs[name]
		if bff == nil || len(bff.Endpoints) != 1 {
			t.Fatalf("bff %s missing or not one endpoint", name)
		}
		h, err := NewEndpoint(bff, bff.Endpoints[0], Deps{Upstreams: rts})
		if err != nil {
			t.Fatalf("bff %s: %v", name, err)
		}
		// The demo's optional backends have short timeouts (300ms); on a
		// loaded machine one may miss it, which the endpoint answers as a
		// partial response. A few tries must give one whole response.
		var rec *httptest.ResponseRecorder
		for range 3 {
			r := gatewayRequest("GET", "/"+name+"/feed")
			reqctx.From(r.Context()).Identity.Claims["sub"] = "alice" // the demo's user
			rec = do(h, r)
			if rec.Code != 200 || rec.Header().Get("Portico-Partial") == "" {
				break
			}
		}
		if rec.Code != 200 || rec.Header().Get("Portico-Partial") != "" {
			t.Fatalf("%s feed: status %d partial %q: %s", name, rec.Code, rec.Header().Get("Portico-Partial"), rec.Body)
		}
		bodies[name] = rec.Body.Bytes()
	}

	var mobile struct {
		User   map[string]json.RawMessage   `json:"user"`
		Posts  []map[string]json.RawMessage `json:"posts"`
		Unread *json.Number                 `json:"unread"`
	}
	dec := json.NewDecoder(bytes.NewReader(bodies["mobile"]))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&mobile); err != nil {
		t.Fatalf("mobile feed: %v: %s", err, bodies["mobile"])
	}
	if len(mobile.User) != 2 || mobile.User["name"] == nil || mobile.User["avatar_url"] == nil {
		t.Errorf("mobile user %v, want name and avatar_url only", mobile.User)
	}
	if len(mobile.Posts) != 20 {
		t.Fatalf("mobile posts: %d, want 20", len(mobile.Posts))
	}
	for _, p := range mobile.Posts {
		if len(p) != 3 || p["id"] == nil || p["body"] == nil || string(p["author"]) == "" {
			t.Fatalf("mobile post %s, want id, body and author", mustJSON(p))
		}
		// The ids are above 2^60: they must arrive digit for digit.
		if len(p["id"]) < 19 || p["id"][0] == '"' {
			t.Fatalf("mobile post id %s is not the 64-bit number", p["id"])
		}
	}
	if mobile.Unread == nil {
		t.Error("mobile feed lacks the unread count")
	}

	var web map[string]json.RawMessage
	if err := json.Unmarshal(bodies["web"], &web); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"user", "posts", "recommendations", "notifications", "ads"} {
		if web[k] == nil {
			t.Errorf("web feed lacks %s", k)
		}
	}
	if json.Unmarshal(web["ads"], &map[string]json.RawMessage{}) != nil || containsKey(web["ads"], "tracking") {
		t.Errorf("web ads %s: want an object without tracking", web["ads"])
	}
	ratio := float64(len(bodies["web"])) / float64(len(bodies["mobile"]))
	t.Logf("mobile %d bytes, web %d bytes: %.1fx", len(bodies["mobile"]), len(bodies["web"]), ratio)
	if ratio < 5 {
		t.Errorf("web/mobile size ratio %.2f, want at least 5", ratio)
	}
}

func containsKey(obj json.RawMessage, key string) bool {
	var m map[string]json.RawMessage
	_ = json.Unmarshal(obj, &m)
	_, ok := m[key]
	return ok
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
