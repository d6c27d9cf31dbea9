package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/portico-gw/portico/internal/gateway"
)

func TestVersion(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"version"}, &out, &errb); code != 0 || !strings.HasPrefix(out.String(), "portico ") {
		t.Fatalf("version: %d %q %q", code, out.String(), errb.String())
	}
}

func TestValidate(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(good, []byte(`version: 1
upstreams:
  a: {targets: [{url: "http://127.0.0.1:9"}]}
routes:
  - name: r
    match: {path: /x}
    upstream: a
    public: true
`), 0o644)
	os.WriteFile(bad, []byte(`version: 1
upstreams:
  a: {targets: [{url: "http://127.0.0.1:9"}], balance: fastest}
routes:
  - name: r
    match: {path: /x}
    upstream: b
`), 0o644)
	var out, errb bytes.Buffer
	if code := run([]string{"validate", "-c", good}, &out, &errb); code != 0 || !strings.HasPrefix(out.String(), "ok: 1 file(s), 1 route(s)") {
		t.Fatalf("valid config: %d %q %q", code, out.String(), errb.String())
	}
	out.Reset()
	errb.Reset()
	code := run([]string{"validate", "-c", bad}, &out, &errb)
	lines := strings.Split(strings.TrimSpace(errb.String()), "\n")
	if code != 1 || len(lines) < 3 {
		t.Fatalf("invalid config: exit %d, stderr:\n%s", code, errb.String())
	}
	for _, l := range lines {
		// FILE:LINE:COL: FIELD: message
		if !strings.HasPrefix(l, bad+":") || strings.Count(l, ": ") < 2 {
			t.Errorf("error line not FILE:LINE:COL: FIELD: message: %q", l)
		}
	}
	if code := run([]string{"validate"}, &out, &errb); code != 2 {
		t.Errorf("validate without -c: exit %d", code)
	}
}

// TestDemo runs the social-feed demo on its fixed loopback ports and checks
// what the README promises: both feeds answer, the mobile one is at least
// five times smaller before compression and comes compressed when asked.
func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("demo binds the fixed demo ports")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type started struct {
		gw    *gateway.Gateway
		token string
	}
	ready := make(chan started, 1)
	errc := make(chan error, 1)
	var stdout, stderr bytes.Buffer
	go func() {
		errc <- runDemo(ctx, &stdout, &stderr, false, func(gw *gateway.Gateway, token string) { ready <- started{gw, token} })
	}()
	var s started
	select {
	case s = <-ready:
	case err := <-errc:
		t.Fatalf("demo did not start: %v\n%s", err, stderr.String())
	case <-time.After(20 * time.Second):
		t.Fatal("demo did not start in time")
	}
	if !strings.Contains(stdout.String(), "export TOKEN=") || !strings.Contains(stdout.String(), "curl") {
		t.Errorf("demo did not print a token and curl commands:\n%s", stdout.String())
	}

	get := func(path string, hdr map[string]string) (*http.Response, []byte) {
		req, _ := http.NewRequest(http.MethodGet, "http://127.0.0.1:8080"+path, nil)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		tr := &http.Transport{DisableCompression: true}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, b
	}
	auth := map[string]string{"Authorization": "Bearer " + s.token}

	resp, mobile := get("/mobile/feed", auth)
	if resp.StatusCode != 200 || !json.Valid(mobile) {
		t.Fatalf("mobile feed: %d %s", resp.StatusCode, mobile)
	}
	resp, web := get("/web/feed", auth)
	if resp.StatusCode != 200 || !json.Valid(web) {
		t.Fatalf("web feed: %d %.300s", resp.StatusCode, web)
	}
	if len(web) < 5*len(mobile) {
		t.Errorf("mobile feed %d bytes, web feed %d bytes: want mobile at least 5x smaller", len(mobile), len(web))
	}
	t.Logf("mobile %d bytes, web %d bytes (%.1fx)", len(mobile), len(web), float64(len(web))/float64(len(mobile)))

	resp, z := get("/mobile/feed", map[string]string{"Authorization": "Bearer " + s.token, "Accept-Encoding": "zstd"})
	if resp.Header.Get("Content-Encoding") != "zstd" {
		t.Errorf("mobile feed with Accept-Encoding: zstd came %q", resp.Header.Get("Content-Encoding"))
	} else {
		dec, _ := zstd.NewReader(nil)
		plain, err := dec.DecodeAll(z, nil)
		dec.Close()
		if err != nil || !json.Valid(plain) {
			t.Errorf("zstd body does not decode to JSON: %v", err)
		}
	}

	if resp, _ := get("/mobile/feed", nil); resp.StatusCode != 401 || resp.Header.Get("WWW-Authenticate") == "" {
		t.Errorf("mobile feed without a token: %d %q", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
	}
	if resp, b := get("/api/users/alice", nil); resp.StatusCode != 200 || !strings.Contains(string(b), `"id":"alice"`) {
		t.Errorf("plain route: %d %s", resp.StatusCode, b)
	}
	for _, p := range []string{"/dashboard/", "/admin/stats", "/metrics"} {
		r, err := http.Get("http://127.0.0.1:9901" + p)
		if err != nil || r.StatusCode != 200 {
			t.Errorf("admin %s: %v %v", p, r, err)
		} else {
			r.Body.Close()
		}
	}
	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("demo stopped with %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("demo did not stop")
	}
}

// TestReadmeConfigValidates keeps the README's example config true.
func TestReadmeConfigValidates(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "```yaml\n")
	example, _, ok2 := strings.Cut(rest, "```")
	if !ok || !ok2 {
		t.Fatal("README has no yaml example")
	}
	path := filepath.Join(t.TempDir(), "readme.yaml")
	os.WriteFile(path, []byte(example), 0o644)
	var out, errb bytes.Buffer
	if code := run([]string{"validate", "-c", path}, &out, &errb); code != 0 {
		t.Fatalf("README example does not validate:\n%s", errb.String())
	}
}

// TestDemoConfigValidates: the embedded demo config passes `portico validate`.
func TestDemoConfigValidates(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"validate", "-c", "../../examples/socialfeed"}, &out, &errb); code != 0 {
		t.Fatalf("examples/socialfeed does not validate:\n%s", errb.String())
	}
}
