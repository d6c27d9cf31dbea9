package telemetry

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// logBuffer collects access log lines; read them after Telemetry.Close.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuffer) lines(t *testing.T) []map[string]any {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(l.b.Bytes()))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("not JSON: %q: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

// sloStatuses records what the SLO hook of each route was called with.
type sloStatuses struct {
	mu  sync.Mutex
	got map[string][]int
}

func (s *sloStatuses) Observer(route string) func(int, time.Duration, time.Time) {
	return func(status int, _ time.Duration, _ time.Time) {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.got == nil {
			s.got = map[string][]int{}
		}
		s.got[route] = append(s.got[route], status)
	}
}

func (s *sloStatuses) ForgetRoute(string) {}

func (s *sloStatuses) of(route string) []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]int(nil), s.got[route]...)
}

// servedOnce wraps h as net/http would run it and reports, once the
// middleware has finished counting, the panic that came out of it (nil for
// none), which it then hands on to net/http unchanged.
func servedOnce(h http.Handler) (http.Handler, chan any) {
	out := make(chan any, 1)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			v := recover()
			out <- v
			if v != nil {
				panic(v)
			}
		}()
		h.ServeHTTP(w, r)
	}), out
}

func discardLog() *log.Logger { return log.New(io.Discard, "", 0) }

func proxyTo(t *testing.T, tel *Telemetry, upstreamURL string) *httputil.ReverseProxy {
	t.Helper()
	target, err := url.Parse(upstreamURL)
	if err != nil {
		t.Fatal(err)
	}
	return &httputil.ReverseProxy{
		Rewrite:       func(pr *httputil.ProxyRequest) { pr.SetURL(target) },
		Transport:     tel.TraceTransport("up", http.DefaultTransport),
		FlushInterval: -1,
		ErrorLog:      discardLog(),
	}
}

// proxyRig is a gateway-like server for one route: the telemetry stage in
// front of a reverse proxy to upstreamURL, with its access log, SLO hook and
// the panic that came out of the stage. Everything closes with the test.
type proxyRig struct {
	tel    *Telemetry
	logs   logBuffer
	slo    sloStatuses
	panics chan any
	gw     *httptest.Server
}

func newProxyRig(t *testing.T, route, upstreamURL string) *proxyRig {
	t.Helper()
	r := &proxyRig{}
	r.tel = New(Deps{AccessLog: &r.logs})
	t.Cleanup(func() { _ = r.tel.Close() })
	r.tel.SetSLO(&r.slo)
	var h http.Handler
	h, r.panics = servedOnce(r.tel.Middleware(route)(proxyTo(t, r.tel, upstreamURL)))
	r.gw = httptest.NewServer(h)
	t.Cleanup(r.gw.Close)
	return r
}

// checkCut checks what a user sees of a response whose 200 header went out
// but whose body was cut: /metrics counts the route once as want and never
// as 200, and the one access log line (read after closing tel) keeps the 200
// sent, marked aborted with want as its outcome.
func checkCut(t *testing.T, tel *Telemetry, logs *logBuffer, route string, want int) {
	t.Helper()
	got, _ := scrape(t, tel)
	wantKey := fmt.Sprintf(`portico_requests_total{code="%d",method="GET",route=%q}`, want, route)
	okKey := fmt.Sprintf(`portico_requests_total{code="200",method="GET",route=%q}`, route)
	if got[wantKey] != 1 || got[okKey] != 0 {
		t.Errorf("%s = %v, %s = %v", wantKey, got[wantKey], okKey, got[okKey])
	}
	tel.Close()
	lines := logs.lines(t)
	if len(lines) != 1 {
		t.Fatalf("%d log lines, want 1", len(lines))
	}
	if l := lines[0]; l["status"] != float64(200) || l["aborted"] != true || l["outcome_status"] != float64(want) {
		t.Errorf("log line %v", l)
	}
}

// TestUpstreamCutMidBodyCountsAs502: the upstream promises 1000 bytes,
// sends 100 and closes. The client must not get a whole-looking response,
// and the request counts as 502 everywhere but the log's status, which
// keeps the 200 that went out.
func TestUpstreamCutMidBodyCountsAs502(t *testing.T) {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		_, _ = brw.WriteString("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n")
		_, _ = brw.WriteString(strings.Repeat("x", 100))
		_ = brw.Flush()
	}))
	defer upstream.Close()
	r := newProxyRig(t, "cut", upstream.URL)
	tel, logs, slo, panics, gw := r.tel, &r.logs, &r.slo, r.panics, r.gw

	resp, err := http.Get(gw.URL + "/file")
	if err == nil {
		body, rerr := io.ReadAll(resp.Body)
		resp.Body.Close()
		if rerr == nil {
			t.Fatalf("the client read a whole-looking body of %d bytes", len(body))
		}
		if resp.StatusCode != 200 {
			t.Fatalf("status on the wire %d", resp.StatusCode)
		}
	}
	if v := <-panics; v != http.ErrAbortHandler {
		t.Fatalf("panic out of the middleware = %v, want http.ErrAbortHandler unchanged", v)
	}

	got, _ := scrape(t, tel)
	if got[`portico_inflight_requests{route="cut"}`] != 0 {
		t.Errorf("inflight %v", got[`portico_inflight_requests{route="cut"}`])
	}
	if s := tel.Stats().Routes[0].Last1m; s.Classes["5xx"] != 1 || s.Classes["2xx"] != 0 {
		t.Errorf("stats classes %v", s.Classes)
	}
	if s := slo.of("cut"); len(s) != 1 || s[0] != 502 {
		t.Errorf("SLO hook saw %v, want [502]", s)
	}
	checkCut(t, tel, logs, "cut", 502)
}

// TestClientGoneMidBodyCountsAs499: the client reads the first chunk of a
// streamed response and hangs up; the proxy aborts, and the request counts
// as 499 (client gone), not 200 and not an upstream failure.
func TestClientGoneMidBodyCountsAs499(t *testing.T) {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "first chunk\n")
		_ = http.NewResponseController(w).Flush()
		<-r.Context().Done() // the proxy gives up on us once the client left
	}))
	defer upstream.Close()
	r := newProxyRig(t, "stream", upstream.URL)
	tel, logs, slo, panics, gw := r.tel, &r.logs, &r.slo, r.panics, r.gw

	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", gw.URL, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || line != "first chunk\n" {
		t.Fatalf("first chunk %q %v", line, err)
	}
	cancel()
	resp.Body.Close()
	if v := <-panics; v != http.ErrAbortHandler {
		t.Fatalf("panic out of the middleware = %v, want http.ErrAbortHandler", v)
	}

	if s := tel.Stats().Routes[0].Last1m; s.Classes["499"] != 1 || s.Classes["2xx"] != 0 || s.ErrorRate5xx != 0 {
		t.Errorf("stats %+v", s)
	}
	if s := slo.of("stream"); len(s) != 1 || s[0] != 499 {
		t.Errorf("SLO hook saw %v, want [499]", s)
	}
	checkCut(t, tel, logs, "stream", 499)
}

// TestWriteFailureCountsAs499: a handler that does not panic but whose
// writes fail because the client hung up still counts as 499.
func TestWriteFailureCountsAs499(t *testing.T) {
	var logs logBuffer
	tel := New(Deps{AccessLog: &logs})
	defer tel.Close()
	headerSent := make(chan struct{})
	var writeErr error
	h, panics := servedOnce(tel.Middleware("big")(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		_ = http.NewResponseController(w).Flush()
		close(headerSent)
		chunk := bytes.Repeat([]byte("y"), 32<<10)
		deadline := time.Now().Add(20 * time.Second)
		for time.Now().Before(deadline) {
			if _, writeErr = w.Write(chunk); writeErr != nil {
				return
			}
		}
	})))
	gw := httptest.NewServer(h)
	defer gw.Close()
	resp, err := http.Get(gw.URL)
	if err != nil {
		t.Fatal(err)
	}
	<-headerSent
	resp.Body.Close() // unread: the transport closes the connection
	if v := <-panics; v != nil {
		t.Fatalf("panic %v", v)
	}
	if writeErr == nil {
		t.Fatal("the handler's writes never failed")
	}
	checkCut(t, tel, &logs, "big", 499)
}

// TestWholeResponsesAreNotAborted: the new fields appear only on responses
// cut short; a normal answer's line is as before.
func TestWholeResponsesAreNotAborted(t *testing.T) {
	var logs logBuffer
	tel := New(Deps{AccessLog: &logs})
	defer tel.Close()
	srv := httptest.NewServer(gatewayLike(tel, "posts"))
	defer srv.Close()
	for _, q := range []string{"", "?status=503"} {
		resp, err := http.Get(srv.URL + "/posts" + q)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	tel.Close()
	lines := logs.lines(t)
	if len(lines) != 2 {
		t.Fatalf("%d lines", len(lines))
	}
	for _, l := range lines {
		if _, ok := l["aborted"]; ok {
			t.Errorf("aborted on a whole response: %v", l)
		}
		if _, ok := l["outcome_status"]; ok {
			t.Errorf("outcome_status equal to status: %v", l)
		}
	}
}

// TestPanicAfterHeaderWithoutRecoverer: a panic that no recover stage
// turned into an abort still closes the connection (net/http does); it is
// the gateway's fault, so 500, and the line says the 200 was cut.
func TestPanicAfterHeaderWithoutRecoverer(t *testing.T) {
	var logs logBuffer
	tel := New(Deps{AccessLog: &logs})
	defer tel.Close()
	h := tel.Middleware("bug")(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		if s, ok := w.(interface{ Started() bool }); !ok || !s.Started() {
			t.Error("the writer does not say the response started")
		}
		panic("handler bug")
	}))
	func() {
		defer func() {
			if v := recover(); v != "handler bug" {
				t.Errorf("panic value %v, want it unchanged", v)
			}
		}()
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil))
	}()
	checkCut(t, tel, &logs, "bug", 500)
}

func TestStartedBeforeAnyStatus(t *testing.T) {
	sw := &statusWriter{w: httptest.NewRecorder(), rs: &routeState{}}
	if sw.Started() {
		t.Error("started before anything was written")
	}
	sw.WriteHeader(http.StatusEarlyHints)
	if sw.Started() {
		t.Error("an interim 103 is not the start of the response")
	}
	sw.WriteHeader(204)
	if !sw.Started() {
		t.Error("not started after the final status")
	}
}

func TestClientWriteErr(t *testing.T) {
	for _, c := range []struct {
		err  error
		gone bool
	}{
		{errors.New("write tcp 127.0.0.1:1->127.0.0.1:2: write: broken pipe"), true},
		{http.ErrBodyNotAllowed, false},
		{http.ErrContentLength, false},
		{http.ErrHandlerTimeout, false},
		{http.ErrNotSupported, false},
	} {
		if got := clientWriteErr(c.err); got != c.gone {
			t.Errorf("clientWriteErr(%v) = %v", c.err, got)
		}
	}
}
