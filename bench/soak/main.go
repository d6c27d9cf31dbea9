// Command soak runs the gateway for a long time under mixed traffic and
// faults, and fails when its resources grow without bound or too many
// requests fail. It is not part of `go test ./...`:
//
//	go run ./bench/soak -duration 10m            # soak: leak detection
//	go run ./bench/soak -scenario storm          # 200 clients, 60 s, faults
//	go run ./bench/soak -scenario both -out docs/benchmarks.md
//
// Soak: mixed traffic (a plain route, a JWT route, a BFF endpoint, a
// rate-limited route) from -clients workers; one upstream target killed
// every 30 s and restarted 5 s later; a reload every 10 s (each changes
// idle_timeout too, so the socket passes to a new server). Once a second it
// records the portico process's RSS, open file descriptors (/proc/PID/fd)
// and go_goroutines (from /metrics), and fails when the median of the last
// quarter exceeds the median of the second quarter by more than 20 % (RSS)
// or 10 % plus 50 (goroutines, fds).
//
// Storm: 200 clients for 60 s; one target killed at 15 s and restarted at
// 25 s, Redis (a private redis-server) killed at 30 s and restarted at 40 s,
// a reload every second. Fails when more than 0.1 % of requests fail or any
// error the gateway answered is not well-formed problem+json.
//
// Everything runs on loopback: the portico binary built from this tree, the
// upstreams, the JWKS server and redis-server.
package main

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/portico-gw/portico/test/faults"
)

func main() {
	os.Exit(run())
}

type options struct {
	scenario string
	duration time.Duration
	clients  int
	out      string
}

func run() int {
	var o options
	flag.StringVar(&o.scenario, "scenario", "soak", "soak | storm | both")
	flag.DurationVar(&o.duration, "duration", 10*time.Minute, "soak duration")
	flag.IntVar(&o.clients, "clients", 32, "concurrent clients of the soak (the storm always uses 200)")
	flag.StringVar(&o.out, "out", "", "append the results to this markdown file (under \"## Soak and fault runs\")")
	flag.Parse()

	work, err := os.MkdirTemp("", "portico-soak-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(work)
	fmt.Fprintln(os.Stderr, "soak: building portico")
	bin, err := faults.BuildPortico(work)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var reports []string
	failed := false
	if o.scenario == "soak" || o.scenario == "both" {
		rep, ok, err := runScenario(bin, work, soakPlan(o.duration, o.clients))
		if err != nil {
			fmt.Fprintln(os.Stderr, "soak:", err)
			return 1
		}
		reports = append(reports, rep)
		failed = failed || !ok
	}
	if o.scenario == "storm" || o.scenario == "both" {
		rep, ok, err := runScenario(bin, work, stormPlan())
		if err != nil {
			fmt.Fprintln(os.Stderr, "storm:", err)
			return 1
		}
		reports = append(reports, rep)
		failed = failed || !ok
	}
	text := strings.Join(reports, "\n")
	fmt.Print(text)
	if o.out != "" {
		if err := appendReport(o.out, text, strings.Join(os.Args[1:], " ")); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	if failed {
		return 1
	}
	return 0
}

// plan is one scenario: its length, its clients and its fault schedule.
type plan struct {
	name         string
	duration     time.Duration
	clients      int
	reloadEvery  time.Duration
	targetKill   func(elapsed time.Duration) bool // true while target b must be down
	redisKill    func(elapsed time.Duration) bool // true while Redis must be down
	checkGrowth  bool
	maxFailRatio float64
}

func soakPlan(d time.Duration, clients int) plan {
	return plan{
		name: "soak", duration: d, clients: clients, reloadEvery: 10 * time.Second,
		// Down for 5 s out of every 30 s.
		targetKill:   func(e time.Duration) bool { s := e % (30 * time.Second); return s >= 25*time.Second },
		redisKill:    func(time.Duration) bool { return false },
		checkGrowth:  true,
		maxFailRatio: 0.001,
	}
}

func stormPlan() plan {
	return plan{
		name: "storm", duration: 60 * time.Second, clients: 200, reloadEvery: time.Second,
		targetKill:   func(e time.Duration) bool { return e >= 15*time.Second && e < 25*time.Second },
		redisKill:    func(e time.Duration) bool { return e >= 30*time.Second && e < 40*time.Second },
		maxFailRatio: 0.001,
	}
}

// counters are one request kind's outcomes.
type counters struct {
	total, ok, limited, failed, malformed atomic.Int64
}

type kind struct {
	name  string
	path  string
	auth  bool
	limit bool // 429 is an expected answer
}

var kinds = []kind{
	{name: "plain", path: "/plain/x"},
	{name: "jwt", path: "/secure/x", auth: true},
	{name: "bff", path: "/app/feed"},
	{name: "limited", path: "/limited/x", limit: true},
}

func runScenario(bin, work string, pl plan) (string, bool, error) {
	dir := filepath.Join(work, pl.name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", false, err
	}
	fmt.Fprintf(os.Stderr, "%s: %v with %d clients\n", pl.name, pl.duration, pl.clients)

	// Upstreams: two plain targets (b gets killed) and the BFF's backend.
	a, err := faults.StartTarget("127.0.0.1:0", plainHandler("a"))
	if err != nil {
		return "", false, err
	}
	defer a.Kill()
	b, err := faults.StartTarget("127.0.0.1:0", plainHandler("b"))
	if err != nil {
		return "", false, err
	}
	defer b.Kill()
	api, err := faults.StartTarget("127.0.0.1:0", apiHandler())
	if err != nil {
		return "", false, err
	}
	defer api.Kill()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return "", false, err
	}
	jwks := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/jwk-set+json")
		_, _ = w.Write(jwksDoc(&key.PublicKey))
	}))
	defer jwks.Close()
	rds, err := faults.StartRedis(0)
	store := `{type: memory}`
	if err == nil {
		defer rds.Kill()
		store = fmt.Sprintf(`{type: redis, url: "redis://%s", timeout: 100ms}`, rds.Addr())
	} else if pl.name == "storm" {
		return "", false, fmt.Errorf("the storm needs redis-server: %w", err)
	} else {
		fmt.Fprintln(os.Stderr, "soak: no redis-server; the rate-limited route uses the memory store")
		rds = nil
	}
	// The two configs differ in a route's header and in idle_timeout, so
	// that every reload also hands the socket to a new server.
	config := func(tag string) string {
		idle := map[string]string{"a": "60s", "b": "90s"}[tag]
		return fmt.Sprintf(`version: 1
server: {listen: "127.0.0.1:0", shutdown_timeout: 10s, idle_timeout: %s}
admin: {listen: "127.0.0.1:0"}
logging: {level: info, access_log: true}
upstreams:
  plain:
    targets: [{url: %q}, {url: %q}]
    timeout: 5s
    passive: {consecutive_failures: 3, ejection: 3s}
  api: {targets: [{url: %q}], timeout: 5s}
auth:
  idp: {type: jwt, jwks_url: %q, issuer: "https://id.soak", audiences: [portico]}
rate_limits:
  store: %s
  on_store_error: local
  policies:
    per-client: {algorithm: sliding_window_counter, limit: 40, window: 1s, key: "header:X-Client"}
routes:
  - {name: plain, match: {path: "/plain/*"}, upstream: plain, public: true, response_headers: {set: {X-Config: %s}}}
  - {name: jwt, match: {path: "/secure/*"}, upstream: plain, auth: [idp]}
  - {name: limited, match: {path: "/limited/*"}, upstream: plain, public: true, rate_limit: [per-client]}
bffs:
  app:
    prefix: /app
    public: true
    endpoints:
      - name: feed
        path: /feed
        timeout: 3s
        backends:
          - {upstream: api, path: "/users/42", into: user, fields: [id, name]}
          - {upstream: api, path: "/posts?user=42", into: posts, fields: ["items[].id", "items[].text"]}
          - {name: ads, upstream: api, path: "/ads", into: ads, optional: true}
`, idle, a.URL(), b.URL(), api.URL(), jwks.URL+"/jwks.json", store, tag)
	}
	p, err := faults.StartProcess(bin, dir, config("a"), faults.ProcessOptions{DiscardStdout: true})
	if err != nil {
		return "", false, err
	}
	defer p.Kill()

	tokens := make([]string, 64)
	for i := range tokens {
		if tokens[i], err = signRS256(key, i); err != nil {
			return "", false, err
		}
	}

	tr := &http.Transport{MaxIdleConns: 1024, MaxIdleConnsPerHost: 1024, DisableCompression: true}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 15 * time.Second}
	stats := make([]counters, len(kinds))
	var samplesMu sync.Mutex
	var failures []string
	ctx, cancel := context.WithTimeout(context.Background(), pl.duration)
	defer cancel()
	begin := time.Now()

	var wg sync.WaitGroup
	for c := 0; c < pl.clients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				k := kinds[(c+i)%len(kinds)]
				st := &stats[(c+i)%len(kinds)]
				req, _ := http.NewRequest(http.MethodGet, p.Base+k.path, nil)
				if k.limit && i%10 == 0 {
					// One hot key shared by every client, so the limit is
					// reached and 429s are part of the mix.
					req.Header.Set("X-Client", "hot")
				} else {
					req.Header.Set("X-Client", "c"+strconv.Itoa((c*7919+i)%2000))
				}
				if k.auth {
					req.Header.Set("Authorization", "Bearer "+tokens[(c+i)%len(tokens)])
				}
				st.total.Add(1)
				resp, err := hc.Do(req)
				if err != nil {
					if ctx.Err() != nil {
						st.total.Add(-1) // cut by the end of the run, not by the gateway
						return
					}
					st.failed.Add(1)
					samplesMu.Lock()
					if len(failures) < 20 {
						failures = append(failures, fmt.Sprintf("%v %s: %v", time.Since(begin).Round(time.Millisecond), k.name, err))
					}
					samplesMu.Unlock()
					continue
				}
				body, rerr := io.ReadAll(resp.Body)
				resp.Body.Close()
				switch {
				case rerr != nil:
					st.failed.Add(1)
					samplesMu.Lock()
					if len(failures) < 20 {
						failures = append(failures, fmt.Sprintf("%v %s: body: %v", time.Since(begin).Round(time.Millisecond), k.name, rerr))
					}
					samplesMu.Unlock()
				case resp.StatusCode == http.StatusOK:
					st.ok.Add(1)
				case resp.StatusCode == http.StatusTooManyRequests && k.limit:
					st.limited.Add(1)
					if problemErr(resp, body) != nil {
						st.malformed.Add(1)
					}
				default:
					st.failed.Add(1)
					perr := problemErr(resp, body)
					if perr != nil {
						st.malformed.Add(1)
					}
					samplesMu.Lock()
					if len(failures) < 20 {
						failures = append(failures, fmt.Sprintf("%v %s: %d %.200s (problem: %v)", time.Since(begin).Round(time.Millisecond), k.name, resp.StatusCode, body, perr))
					}
					samplesMu.Unlock()
				}
			}
		}()
	}

	// Faults, reloads and resource samples, once per tick.
	var rss, fds, gor []float64
	var reloadsOK, reloadsBad, targetKills, redisKills int
	nextReload := pl.reloadEvery
	tick := time.NewTicker(250 * time.Millisecond)
	lastSample := time.Duration(0)
	tag := "a"
	targetUp, redisUp := true, true // Target and Redis do not say
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-tick.C:
		}
		e := time.Since(begin)
		if pl.targetKill(e) {
			if targetUp {
				b.Kill()
				targetUp = false
				targetKills++
			}
		} else if !targetUp {
			if err := b.Restart(); err != nil {
				fmt.Fprintln(os.Stderr, "restart target:", err)
			} else {
				targetUp = true
			}
		}
		if rds != nil {
			if pl.redisKill(e) {
				if redisUp {
					rds.Kill()
					redisUp = false
					redisKills++
				}
			} else if !redisUp {
				if err := rds.Restart(); err != nil {
					fmt.Fprintln(os.Stderr, "restart redis:", err)
				} else {
					redisUp = true
				}
			}
		}
		if e >= nextReload {
			nextReload += pl.reloadEvery
			if tag == "a" {
				tag = "b"
			} else {
				tag = "a"
			}
			if err := p.WriteConfig(config(tag)); err == nil {
				rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
				status, _, err := p.Reload(rctx)
				rcancel()
				if err == nil && status == http.StatusOK {
					reloadsOK++
				} else {
					reloadsBad++
				}
			}
		}
		if e-lastSample >= time.Second {
			lastSample = e
			if v, err := procRSS(p.PID()); err == nil {
				rss = append(rss, v)
			}
			if v, err := procFDs(p.PID()); err == nil {
				fds = append(fds, v)
			}
			mctx, mcancel := context.WithTimeout(context.Background(), 5*time.Second)
			if m, err := p.Metrics(mctx); err == nil {
				gor = append(gor, m.Sum("go_goroutines", nil))
			}
			mcancel()
		}
	}
	tick.Stop()
	wg.Wait()
	elapsed := time.Since(begin)

	var w strings.Builder
	ok := true
	fmt.Fprintf(&w, "### %s: %v, %d clients\n\n", pl.name, pl.duration, pl.clients)
	fmt.Fprintf(&w, "Faults: target killed %d times, Redis killed %d times; reloads %d applied, %d refused.\n\n",
		targetKills, redisKills, reloadsOK, reloadsBad)
	fmt.Fprintln(&w, "| traffic | requests | 200 | 429 | failed | failed % | malformed errors |")
	fmt.Fprintln(&w, "|---|---:|---:|---:|---:|---:|---:|")
	var total, failed, malformed int64
	for i, k := range kinds {
		st := &stats[i]
		t, f := st.total.Load(), st.failed.Load()
		total += t
		failed += f
		malformed += st.malformed.Load()
		fmt.Fprintf(&w, "| %s | %d | %d | %d | %d | %.3f | %d |\n", k.name, t, st.ok.Load(), st.limited.Load(), f, pct(f, t), st.malformed.Load())
	}
	fmt.Fprintf(&w, "| all | %d (%.0f/s) | | | %d | %.3f | %d |\n\n", total, float64(total)/elapsed.Seconds(), failed, pct(failed, total), malformed)
	if float64(failed) > pl.maxFailRatio*float64(total) {
		ok = false
		fmt.Fprintf(&w, "FAIL: %.3f%% failed, limit %.1f%%.\n\n", pct(failed, total), 100*pl.maxFailRatio)
	}
	if malformed > 0 {
		ok = false
		fmt.Fprintf(&w, "FAIL: %d gateway errors were not well-formed problem+json.\n\n", malformed)
	}
	if len(failures) > 0 {
		fmt.Fprintf(&w, "First failures:\n\n```\n%s\n```\n\n", strings.Join(failures, "\n"))
	}
	fmt.Fprintln(&w, "| resource | min | q2 median | q4 median | max | verdict |")
	fmt.Fprintln(&w, "|---|---:|---:|---:|---:|---|")
	for _, r := range []struct {
		name  string
		s     []float64
		ratio float64
		plus  float64
		unit  float64
		fmt   string
	}{
		{"RSS (MiB)", rss, 1.20, 0, 1 << 20, "%.1f"},
		{"goroutines", gor, 1.10, 50, 1, "%.0f"},
		{"open fds", fds, 1.10, 50, 1, "%.0f"},
	} {
		lo, q2, q4, hi := quarters(r.s)
		verdict := "ok"
		if pl.checkGrowth {
			if len(r.s) < 8 {
				verdict = "too few samples"
				ok = false
			} else if q4 > q2*r.ratio+r.plus {
				verdict = "GROWTH"
				ok = false
			}
		} else {
			verdict = "(not judged)"
		}
		f := func(v float64) string { return fmt.Sprintf(r.fmt, v/r.unit) }
		fmt.Fprintf(&w, "| %s | %s | %s | %s | %s | %s |\n", r.name, f(lo), f(q2), f(q4), f(hi), verdict)
	}
	fmt.Fprintln(&w)
	mctx, mcancel := context.WithTimeout(context.Background(), 5*time.Second)
	if m, err := p.Metrics(mctx); err == nil {
		fmt.Fprintf(&w, "Counted by portico: upstream attempts failed %.0f (killed target %.0f), retries %.0f, ejections %.0f; "+
			"rate-limit decisions allowed %.0f, limited %.0f, error %.0f, fallback %.0f; reloads success %.0f, failure %.0f.\n\n",
			m.Sum("portico_upstream_requests_total", map[string]string{"code": "error"}),
			m.Sum("portico_upstream_requests_total", map[string]string{"code": "error", "target": b.URL()}),
			m.Sum("portico_upstream_retries_total", nil),
			m.Sum("portico_upstream_ejections_total", nil),
			m.Sum("portico_ratelimit_decisions_total", map[string]string{"decision": "allowed"}),
			m.Sum("portico_ratelimit_decisions_total", map[string]string{"decision": "limited"}),
			m.Sum("portico_ratelimit_decisions_total", map[string]string{"decision": "error"}),
			m.Sum("portico_ratelimit_decisions_total", map[string]string{"decision": "fallback"}),
			m.Sum("portico_config_reloads_total", map[string]string{"result": "success"}),
			m.Sum("portico_config_reloads_total", map[string]string{"result": "failure"}))
	}
	mcancel()
	if fails := p.Stderr.Find("rate-limit store failed", nil); len(fails) > 0 {
		fmt.Fprintf(&w, "Rate-limit store failures logged: %d, the first: %.160s.\n\n", len(fails), fmt.Sprint(fails[0]["error"]))
	}
	fmt.Fprintf(&w, "Access-log lines written: %d. Result: **%s**.\n", p.Stdout.Count(), map[bool]string{true: "pass", false: "FAIL"}[ok])

	// Shut down as in production, and require a clean exit.
	_ = p.Signal(os.Interrupt)
	if code, err := p.Wait(20 * time.Second); err != nil || code != 0 {
		fmt.Fprintf(&w, "\nFAIL: portico exit code %d, %v\n", code, err)
		ok = false
	}
	return w.String(), ok, nil
}

func pct(a, b int64) float64 {
	if b == 0 {
		return 0
	}
	return 100 * float64(a) / float64(b)
}

// quarters returns the min, the medians of the second and last quarters,
// and the max. The first quarter is warm-up (pools fill, caches load).
func quarters(s []float64) (lo, q2, q4, hi float64) {
	if len(s) == 0 {
		return
	}
	lo, hi = slices.Min(s), slices.Max(s)
	n := len(s)
	q2 = median(s[n/4 : n/2])
	q4 = median(s[3*n/4:])
	return
}

func median(s []float64) float64 {
	if len(s) == 0 {
		return 0
	}
	c := slices.Clone(s)
	slices.Sort(c)
	if len(c)%2 == 1 {
		return c[len(c)/2]
	}
	return (c[len(c)/2-1] + c[len(c)/2]) / 2
}

// problemErr checks a gateway error: RFC 9457 problem+json with type,
// title, status, detail and request_id.
func problemErr(resp *http.Response, body []byte) error {
	if !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/problem+json") {
		return fmt.Errorf("content-type %q", resp.Header.Get("Content-Type"))
	}
	var pb struct {
		Type, Title, Detail string
		Status              int
		RequestID           string `json:"request_id"`
	}
	if err := json.Unmarshal(body, &pb); err != nil {
		return err
	}
	if pb.Status != resp.StatusCode || pb.Type == "" || pb.Title == "" || pb.Detail == "" || pb.RequestID == "" {
		return errors.New("incomplete problem body")
	}
	return nil
}

func plainHandler(name string) http.Handler {
	body := []byte(`{"target":"` + name + `","items":[1,2,3]}`)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	})
}

func apiHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch {
		case strings.HasPrefix(r.URL.Path, "/users/"):
			_, _ = io.WriteString(w, `{"id":42,"name":"Ada","email":"ada@example.com"}`)
		case r.URL.Path == "/posts":
			_, _ = io.WriteString(w, `{"items":[{"id":1,"text":"hello","likes":3},{"id":2,"text":"world","likes":5}]}`)
		default:
			_, _ = io.WriteString(w, `{"slots":[]}`)
		}
	})
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func jwksDoc(pub *rsa.PublicKey) []byte {
	doc, _ := json.Marshal(map[string]any{"keys": []any{map[string]any{
		"kty": "RSA", "kid": "soak", "alg": "RS256", "use": "sig",
		"n": b64(pub.N.Bytes()), "e": b64(big.NewInt(int64(pub.E)).Bytes()),
	}}})
	return doc
}

func signRS256(key *rsa.PrivateKey, i int) (string, error) {
	h, _ := json.Marshal(map[string]any{"alg": "RS256", "typ": "JWT", "kid": "soak"})
	now := time.Now()
	c, _ := json.Marshal(map[string]any{"iss": "https://id.soak", "aud": "portico", "sub": "user-" + strconv.Itoa(i),
		"iat": now.Unix(), "exp": now.Add(24 * time.Hour).Unix()})
	input := b64(h) + "." + b64(c)
	sum := sha256.Sum256([]byte(input))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, sum[:])
	if err != nil {
		return "", err
	}
	return input + "." + b64(sig), nil
}

func procRSS(pid int) (float64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, err := strconv.ParseFloat(f[1], 64)
			return kb * 1024, err
		}
	}
	return 0, errors.New("no VmRSS")
}

func procFDs(pid int) (float64, error) {
	ents, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
	return float64(len(ents)), err
}

// appendReport appends text to path under the "## Soak and fault runs"
// heading (added once), with the date, machine and command.
func appendReport(path, text, args string) error {
	old, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	var w strings.Builder
	if !strings.Contains(string(old), "\n## Soak and fault runs\n") {
		w.WriteString("\n## Soak and fault runs\n\n" +
			"From `bench/soak` (a program, not part of `go test ./...`): the portico binary built from the tree,\n" +
			"loopback upstreams, a JWKS server and a private redis-server; failures are transport errors, unexpected\n" +
			"statuses and truncated bodies (429 on the rate-limited route is expected). Resource growth compares the\n" +
			"median of the last quarter of once-a-second samples with the median of the second quarter.\n")
	}
	fmt.Fprintf(&w, "\n%s, %s, %d cores (%s), %s: `go run ./bench/soak %s`\n\n%s",
		time.Now().UTC().Format("2006-01-02 15:04 UTC"), hostCPU(), runtime.NumCPU(), "shared with other workloads", runtime.Version(), args, text)
	_, err = f.WriteString(w.String())
	return err
}

func hostCPU() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				if i := strings.IndexByte(l, ':'); i >= 0 {
					return strings.TrimSpace(l[i+1:])
				}
			}
		}
	}
	if out, err := exec.Command("uname", "-m").Output(); err == nil {
		return strings.TrimSpace(string(out))
	}
	return "unknown CPU"
}
