package telemetry

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/portico-gw/portico/internal/problem"
)

// h2cProtocols is HTTP/1 plus unencrypted HTTP/2, what a gateway with
// server.h2c listens with.
func h2cProtocols(http1 bool) *http.Protocols {
	p := new(http.Protocols)
	p.SetHTTP1(http1)
	p.SetUnencryptedHTTP2(true)
	return p
}

// grpcHealthUpstream serves grpc's standard health service over h2c.
func grpcHealthUpstream(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, health.NewServer()) // "" is SERVING, other names NOT_FOUND
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = gs.Serve(l)
	}()
	t.Cleanup(func() {
		gs.Stop()
		<-done
	})
	return l.Addr().String()
}

// TestGRPCStatusCounts sends real gRPC calls through the middleware: a
// proxied upstream answering in trailers (OK) and trailers-only
// (NOT_FOUND), a gateway error rendered by the problem package
// (RESOURCE_EXHAUSTED in the headers), statuses set as an unannounced and
// as an announced trailer, and a response without any grpc-status. Each counts as the HTTP
// status of its gRPC code, not as the 200 every one of them carried.
func TestGRPCStatusCounts(t *testing.T) {
	upstreamAddr := grpcHealthUpstream(t)
	var logs logBuffer
	tel := New(Deps{AccessLog: &logs})
	defer tel.Close()
	var slo sloStatuses
	tel.SetSLO(&slo)

	tr := &http.Transport{Protocols: h2cProtocols(false)}
	defer tr.CloseIdleConnections()
	target, _ := url.Parse("http://" + upstreamAddr)
	rp := &httputil.ReverseProxy{
		Rewrite:   func(pr *httputil.ProxyRequest) { pr.SetURL(target) },
		Transport: tr,
		ErrorLog:  discardLog(),
	}
	h := tel.Middleware("grpc")(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.Header.Get("X-Case") {
		case "limited":
			problem.WriteStatus(w, r, http.StatusTooManyRequests, "rate_limited", "slow down")
		case "unannounced":
			w.Header().Set("Content-Type", "application/grpc")
			w.WriteHeader(200)
			_ = http.NewResponseController(w).Flush()
			w.Header().Set(http.TrailerPrefix+"Grpc-Status", "7")
			w.Header().Set(http.TrailerPrefix+"Grpc-Message", "no")
		case "announced":
			w.Header().Set("Content-Type", "application/grpc")
			w.Header().Set("Trailer", "Grpc-Status, Grpc-Message")
			w.WriteHeader(200)
			_ = http.NewResponseController(w).Flush()
			w.Header().Set("Grpc-Status", "6")
			w.Header().Set("Grpc-Message", "exists")
		case "missing":
			w.Header().Set("Content-Type", "application/grpc")
			w.WriteHeader(200)
		default:
			rp.ServeHTTP(w, r)
		}
	}))
	gw := httptest.NewUnstartedServer(h)
	gw.Config.Protocols = h2cProtocols(true)
	gw.Config.ErrorLog = discardLog()
	gw.Start()
	defer gw.Close()

	conn, err := grpc.NewClient(strings.TrimPrefix(gw.URL, "http://"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := healthpb.NewHealthClient(conn)
	cases := []struct {
		name, service string
		code          codes.Code
	}{
		{"", "", codes.OK},
		{"", "nope", codes.NotFound},
		{"limited", "", codes.ResourceExhausted},
		{"unannounced", "", codes.PermissionDenied},
		{"announced", "", codes.AlreadyExists},
		{"missing", "", codes.Unknown}, // grpc-go's reading of a stream ended without a status
	}
	for _, c := range cases {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if c.name != "" {
			ctx = metadata.AppendToOutgoingContext(ctx, "x-case", c.name)
		}
		_, err := client.Check(ctx, &healthpb.HealthCheckRequest{Service: c.service})
		cancel()
		if got := status.Code(err); got != c.code {
			t.Fatalf("case %q: the client got %v (%v), want %v", c.name, got, err, c.code)
		}
	}

	got, _ := scrape(t, tel)
	for code, n := range map[string]float64{"200": 1, "404": 1, "429": 1, "403": 1, "409": 1, "500": 1} {
		if v := got[`portico_requests_total{code="`+code+`",method="POST",route="grpc"}`]; v != n {
			t.Errorf("code %s counted %v times, want %v", code, v, n)
		}
	}
	st := tel.Stats().Routes[0].Last1m
	if st.Classes["2xx"] != 1 || st.Classes["4xx"] != 4 || st.Classes["5xx"] != 1 {
		t.Errorf("stats classes %v", st.Classes)
	}
	if s := slo.of("grpc"); len(s) != 6 || s[0] != 200 || s[1] != 404 || s[2] != 429 || s[3] != 403 || s[4] != 409 || s[5] != 500 {
		t.Errorf("SLO hook saw %v", s)
	}
	tel.Close()
	lines := logs.lines(t)
	if len(lines) != 6 {
		t.Fatalf("%d log lines", len(lines))
	}
	want := []struct {
		grpc    any // float64 code, or nil for null
		outcome any // float64, or nil when absent
	}{{float64(0), nil}, {float64(5), float64(404)}, {float64(8), float64(429)}, {float64(7), float64(403)}, {float64(6), float64(409)}, {nil, float64(500)}}
	for i, l := range lines {
		g, ok := l["grpc_status"]
		if !ok || g != want[i].grpc || l["outcome_status"] != want[i].outcome || l["status"] != float64(200) {
			t.Errorf("line %d: status=%v grpc_status=%v (present %v) outcome_status=%v, want 200/%v/%v",
				i, l["status"], g, ok, l["outcome_status"], want[i].grpc, want[i].outcome)
		}
	}
}

// TestGRPCOnlyForGRPCCalls: the grpc-status of other exchanges is not read.
// gRPC-Web carries its status in the body, and over HTTP/1 the problem
// package answers a gRPC content type with problem+json, not grpc-status.
func TestGRPCOnlyForGRPCCalls(t *testing.T) {
	for _, c := range []struct {
		proto int
		ct    string
		grpc  bool
	}{
		{2, "application/grpc", true},
		{2, "application/grpc+proto", true},
		{2, "application/grpc;charset=utf-8", true},
		{2, "application/grpc-web", false},
		{2, "application/grpc-web+proto", false},
		{2, "application/json", false},
		{2, "", false},
		{1, "application/grpc", false},
	} {
		r := httptest.NewRequest("POST", "/svc/Method", nil)
		r.ProtoMajor = c.proto
		if c.ct != "" {
			r.Header.Set("Content-Type", c.ct)
		}
		if got := problem.IsGRPC(r); got != c.grpc {
			t.Errorf("HTTP/%d %q: IsGRPC = %v", c.proto, c.ct, got)
		}
	}

	// A gRPC-Web style answer with a grpc-status header over h2c is counted
	// by its HTTP status.
	tel := New(Deps{AccessLog: io.Discard})
	defer tel.Close()
	gw := httptest.NewUnstartedServer(tel.Middleware("web")(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Grpc-Status", "5")
		w.WriteHeader(200)
	})))
	gw.Config.Protocols = h2cProtocols(true)
	gw.Start()
	defer gw.Close()
	tr := &http.Transport{Protocols: h2cProtocols(false)}
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequest("POST", gw.URL, strings.NewReader(""))
	req.Header.Set("Content-Type", "application/grpc-web")
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.ProtoMajor != 2 {
		t.Fatalf("HTTP/%d, want h2c", resp.ProtoMajor)
	}
	got, _ := scrape(t, tel)
	if got[`portico_requests_total{code="200",method="POST",route="web"}`] != 1 {
		t.Errorf("grpc-web counted by its grpc-status: %v", got)
	}
}

func TestGRPCHTTPStatus(t *testing.T) {
	want := map[int]int{0: 200, 1: 499, 2: 500, 3: 400, 4: 504, 5: 404, 6: 409, 7: 403, 8: 429, 9: 400,
		10: 409, 11: 400, 12: 501, 13: 500, 14: 503, 15: 500, 16: 401, 17: 500, 1000: 500}
	for code, status := range want {
		if got := grpcHTTPStatus(code); got != status {
			t.Errorf("grpc %d -> %d, want %d", code, got, status)
		}
	}
	for _, s := range []string{"", "-1", "1x", " 1", "1234567890"} {
		if _, ok := parseGRPCStatus(s); ok {
			t.Errorf("parseGRPCStatus(%q) accepted", s)
		}
	}
	if n, ok := parseGRPCStatus("14"); !ok || n != 14 {
		t.Errorf("parseGRPCStatus(14) = %d %v", n, ok)
	}
}
