package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	"github.com/portico-gw/portico/internal/config"
	"github.com/portico-gw/portico/internal/reqctx"
	upstreampkg "github.com/portico-gw/portico/internal/upstream"
)

// healthService is grpc's standard health service with one extra service
// name: a Check of "slow" never answers; it waits for the call to be
// cancelled and reports how it ended. Watch reports how each stream ended.
type healthService struct {
	*health.Server
	checkEnded chan error
	watchEnded chan error
}

func (s *healthService) Check(ctx context.Context, in *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	if in.GetService() == "slow" {
		<-ctx.Done()
		s.checkEnded <- ctx.Err()
		return nil, status.Error(codes.Aborted, "the upstream gave up")
	}
	return s.Server.Check(ctx, in)
}

func (s *healthService) Watch(in *healthpb.HealthCheckRequest, stream healthpb.Health_WatchServer) error {
	err := s.Server.Watch(in, stream)
	s.watchEnded <- stream.Context().Err()
	return err
}

// grpcUpstream serves the health service (and reflection, whose
// ServerReflectionInfo is a bidirectional stream) with grpc's own HTTP/2
// transport on a cleartext listener: what an h2c:// upstream is.
func grpcUpstream(t *testing.T) (*healthService, string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &healthService{Server: health.NewServer(), checkEnded: make(chan error, 16), watchEnded: make(chan error, 16)}
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, hs)
	reflection.Register(gs)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = gs.Serve(l)
	}()
	t.Cleanup(func() {
		hs.Shutdown()
		gs.Stop()
		<-done
	})
	return hs, l.Addr().String()
}

func h2cProtocols() *http.Protocols {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	return &p
}

// h2cBackend reaches addr as the upstream package does for an h2c://
// target: an http.Transport speaking HTTP/2 with prior knowledge.
func h2cBackend(t *testing.T, addr string) Backend {
	t.Helper()
	tr := &http.Transport{Protocols: h2cProtocols()}
	t.Cleanup(tr.CloseIdleConnections)
	return Backend{Name: "grpc", Weight: 1, Transport: tr, Target: &url.URL{Scheme: "http", Host: addr}}
}

// grpcFront puts the proxy behind a listener that speaks HTTP/1.1 and h2c
// (server.h2c: true) and returns its address.
func grpcFront(t *testing.T, cfg Config, deps Deps) string {
	t.Helper()
	h, err := New(cfg, deps)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(w, r.WithContext(reqctx.With(r.Context(), &reqctx.Info{RequestID: "rid-1"})))
	}))
	p := h2cProtocols()
	p.SetHTTP1(true)
	srv.Config.Protocols = p
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

func grpcClient(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func wantCode(t *testing.T, err error, code codes.Code, msg string) {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok || st.Code() != code || (msg != "" && st.Message() != msg) {
		t.Fatalf("got %v, want %v %q", err, code, msg)
	}
}

// waitErr receives from ch or fails after a generous bound (the machine is
// shared; nothing here depends on the bound for correctness).
func waitErr(t *testing.T, ch <-chan error, what string) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: nothing after 10s", what)
		return nil
	}
}

func TestGRPCUnary(t *testing.T) {
	_, addr := grpcUpstream(t)
	cc := grpcClient(t, grpcFront(t, Config{Route: "grpc", Backends: []Backend{h2cBackend(t, addr)}}, Deps{}))
	hc := healthpb.NewHealthClient(cc)
	ctx := context.Background()

	t.Run("ok", func(t *testing.T) {
		resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("Check: %v %v", resp, err)
		}
	})
	t.Run("status error from the upstream", func(t *testing.T) {
		_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "nope"})
		wantCode(t, err, codes.NotFound, "unknown service")
	})
	t.Run("unknown method", func(t *testing.T) {
		_, err := hc.List(ctx, &healthpb.HealthListRequest{})
		if err != nil {
			// List exists in this grpc version; any answer must be the
			// upstream's own.
			wantCode(t, err, codes.Unimplemented, "")
		}
	})
}

func TestGRPCServerStreaming(t *testing.T) {
	hs, addr := grpcUpstream(t)
	hs.SetServingStatus("feed", healthpb.HealthCheckResponse_SERVING)
	// A route timeout shorter than the stream's life must not cut it.
	cfg := Config{Route: "grpc", Backends: []Backend{h2cBackend(t, addr)}, Timeout: config.Duration(300 * time.Millisecond)}
	hc := healthpb.NewHealthClient(grpcClient(t, grpcFront(t, cfg, Deps{})))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Connections are dialled first, so that the stream's headers arrive
	// well within the route timeout on a loaded machine.
	if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	stream, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{Service: "feed"})
	if err != nil {
		t.Fatal(err)
	}
	// The first message arrives while the stream is open (nothing is
	// buffered until the end), and so does each later one.
	want := []healthpb.HealthCheckResponse_ServingStatus{
		healthpb.HealthCheckResponse_SERVING,
		healthpb.HealthCheckResponse_NOT_SERVING,
		healthpb.HealthCheckResponse_SERVING,
	}
	for i, w := range want {
		if i == 1 {
			// The timer under test is a real one: outlive it.
			time.Sleep(cfg.Timeout.D() + 50*time.Millisecond)
		}
		if i > 0 {
			hs.SetServingStatus("feed", w)
		}
		msg, err := stream.Recv()
		if err != nil || msg.GetStatus() != w {
			t.Fatalf("message %d: %v %v, want %v", i, msg, err, w)
		}
	}
	cancel()
	if _, err := stream.Recv(); status.Code(err) != codes.Canceled {
		t.Fatalf("after cancel: %v", err)
	}
	// The client's cancellation reaches the upstream's stream.
	if err := waitErr(t, hs.watchEnded, "upstream watch end"); !errors.Is(err, context.Canceled) {
		t.Fatalf("upstream stream ended with %v, want Canceled", err)
	}
}

func TestGRPCBidirectionalStreaming(t *testing.T) {
	_, addr := grpcUpstream(t)
	cc := grpcClient(t, grpcFront(t, Config{Route: "grpc", Backends: []Backend{h2cBackend(t, addr)}}, Deps{}))
	stream, err := reflectionpb.NewServerReflectionClient(cc).ServerReflectionInfo(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// Each answer is read before the next request is sent and while the
	// client's side is still open: both bodies stream at once.
	for i := range 3 {
		req := &reflectionpb.ServerReflectionRequest{
			MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{ListServices: strconv.Itoa(i)},
		}
		if err := stream.Send(req); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("recv %d: %v", i, err)
		}
		var names []string
		for _, s := range resp.GetListServicesResponse().GetService() {
			names = append(names, s.GetName())
		}
		if !slices.Contains(names, "grpc.health.v1.Health") {
			t.Fatalf("recv %d: services %v", i, names)
		}
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != io.EOF {
		t.Fatalf("after CloseSend: %v, want io.EOF (grpc-status 0 in the trailers)", err)
	}
}

func TestGRPCDeadlines(t *testing.T) {
	hs, addr := grpcUpstream(t)

	t.Run("client deadline", func(t *testing.T) {
		hc := healthpb.NewHealthClient(grpcClient(t, grpcFront(t, Config{Route: "grpc", Backends: []Backend{h2cBackend(t, addr)}}, Deps{})))
		if _, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil {
			t.Fatal(err) // dial first: the slow call must reach the upstream
		}
		ctx, cancel := context.WithTimeout(context.Background(), 400*time.Millisecond)
		defer cancel()
		_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "slow"})
		wantCode(t, err, codes.DeadlineExceeded, "")
		if err := waitErr(t, hs.checkEnded, "upstream check end"); err == nil {
			t.Fatal("the upstream call was not cancelled")
		}
	})
	t.Run("route timeout shorter than the client's", func(t *testing.T) {
		cfg := Config{Route: "grpc", Backends: []Backend{h2cBackend(t, addr)}, Timeout: config.Duration(300 * time.Millisecond)}
		hc := healthpb.NewHealthClient(grpcClient(t, grpcFront(t, cfg, Deps{})))
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		// Dial first, so that the slow call surely reaches the upstream
		// within the route timeout.
		if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
			t.Fatal(err)
		}
		_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "slow"})
		// The gateway's answer, not the client's own deadline.
		wantCode(t, err, codes.DeadlineExceeded, "the upstream did not answer within the route timeout")
		if err := waitErr(t, hs.checkEnded, "upstream check end"); !errors.Is(err, context.Canceled) {
			t.Fatalf("upstream call ended with %v, want Canceled", err)
		}
	})
}

// The cases below send gRPC by hand over an h2c client, to see exactly
// what the gateway answers: a grpc client applies its own deadline and
// would hide whether the status came from the gateway.

func h2cClient(t *testing.T) *http.Client {
	tr := &http.Transport{Protocols: h2cProtocols()}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// healthRequest is one length-prefixed gRPC message holding a
// HealthCheckRequest{service} in protobuf wire format.
func healthRequest(service string) []byte {
	var msg []byte
	if service != "" {
		msg = append([]byte{0x0a, byte(len(service))}, service...) // field 1, bytes
	}
	frame := make([]byte, 5, 5+len(msg))
	binary.BigEndian.PutUint32(frame[1:], uint32(len(msg)))
	return append(frame, msg...)
}

// readMessage reads one length-prefixed gRPC message.
func readMessage(r io.Reader) ([]byte, error) {
	var prefix [5]byte
	if _, err := io.ReadFull(r, prefix[:]); err != nil {
		return nil, err
	}
	msg := make([]byte, binary.BigEndian.Uint32(prefix[1:]))
	_, err := io.ReadFull(r, msg)
	return msg, err
}

func rawCall(t *testing.T, c *http.Client, addr, method, service string, hdr ...string) *http.Response {
	t.Helper()
	req, err := http.NewRequest("POST", "http://"+addr+"/grpc.health.v1.Health/"+method, bytes.NewReader(healthRequest(service)))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("Te", "trailers")
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.ProtoMajor != 2 || resp.StatusCode != 200 {
		t.Fatalf("proto %s status %d", resp.Proto, resp.StatusCode)
	}
	return resp
}

// servingMessage is HealthCheckResponse{status: SERVING} on the wire.
var servingMessage = []byte{0x08, 0x01}

func TestGRPCTrailersArriveAsTrailers(t *testing.T) {
	_, addr := grpcUpstream(t)
	front := grpcFront(t, Config{Route: "grpc", Backends: []Backend{h2cBackend(t, addr)}}, Deps{})
	resp := rawCall(t, h2cClient(t), front, "Check", "")
	if resp.Header.Get("Grpc-Status") != "" {
		t.Fatalf("grpc-status in the headers of a successful call: %v", resp.Header)
	}
	msg, err := readMessage(resp.Body)
	if err != nil || !bytes.Equal(msg, servingMessage) {
		t.Fatalf("message %x %v", msg, err)
	}
	if rest, err := io.ReadAll(resp.Body); err != nil || len(rest) != 0 {
		t.Fatalf("after the message: %q %v", rest, err)
	}
	if got := resp.Trailer.Get("Grpc-Status"); got != "0" {
		t.Fatalf("trailers %v, want grpc-status 0", resp.Trailer)
	}
	if resp.Header.Get("X-Request-Id") != "rid-1" {
		t.Fatalf("headers %v", resp.Header)
	}
}

func TestGRPCTimeoutHeader(t *testing.T) {
	hs, addr := grpcUpstream(t)
	hs.SetServingStatus("feed", healthpb.HealthCheckResponse_SERVING)
	var logs lockedBuffer
	log := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	// The upstream does not get grpc-timeout here, so only the gateway
	// enforces it and the outcome does not depend on which timer wins.
	cfg := Config{Route: "grpc", Backends: []Backend{h2cBackend(t, addr)},
		RequestHeaders: &config.HeaderRules{Remove: []string{"Grpc-Timeout"}}}
	front := grpcFront(t, cfg, Deps{Logger: log})
	c := h2cClient(t)
	_, _ = io.Copy(io.Discard, rawCall(t, c, front, "Check", "").Body) // dial first

	t.Run("passes before the upstream answers", func(t *testing.T) {
		start := time.Now()
		resp := rawCall(t, c, front, "Check", "slow", "Grpc-Timeout", "300m")
		// Trailers-only: the status is in the headers, the body empty.
		if got := resp.Header.Get("Grpc-Status"); got != "4" {
			t.Fatalf("headers %v, want grpc-status 4", resp.Header)
		}
		if got := resp.Header.Get("Grpc-Message"); got != "the upstream did not answer within the call's grpc-timeout" {
			t.Fatalf("grpc-message %q", got)
		}
		if d := time.Since(start); d < 300*time.Millisecond {
			t.Fatalf("answered after %v, before the deadline", d)
		}
		if err := waitErr(t, hs.checkEnded, "upstream check end"); !errors.Is(err, context.Canceled) {
			t.Fatalf("upstream call ended with %v, want Canceled", err)
		}
	})
	t.Run("passes mid-stream", func(t *testing.T) {
		start := time.Now()
		resp := rawCall(t, c, front, "Watch", "feed", "Grpc-Timeout", "400m")
		msg, err := readMessage(resp.Body)
		if err != nil || !bytes.Equal(msg, servingMessage) {
			t.Fatalf("first message %x %v", msg, err)
		}
		if rest, err := io.ReadAll(resp.Body); err != nil || len(rest) != 0 {
			t.Fatalf("after the message: %q %v", rest, err)
		}
		if d := time.Since(start); d < 400*time.Millisecond {
			t.Fatalf("stream ended after %v, before the deadline", d)
		}
		if resp.Trailer.Get("Grpc-Status") != grpcDeadlineExceeded || resp.Trailer.Get("Grpc-Message") != grpcDeadlineMessage {
			t.Fatalf("trailers %v, want DEADLINE_EXCEEDED from the gateway", resp.Trailer)
		}
		if err := waitErr(t, hs.watchEnded, "upstream watch end"); !errors.Is(err, context.Canceled) {
			t.Fatalf("upstream stream ended with %v, want Canceled", err)
		}
	})
	t.Run("stream outlives the route timeout, not its deadline", func(t *testing.T) {
		cfg := cfg
		cfg.Timeout = config.Duration(300 * time.Millisecond)
		front := grpcFront(t, cfg, Deps{})
		_, _ = io.Copy(io.Discard, rawCall(t, c, front, "Check", "").Body) // dial first
		start := time.Now()
		resp := rawCall(t, c, front, "Watch", "feed", "Grpc-Timeout", "700m")
		if msg, err := readMessage(resp.Body); err != nil || !bytes.Equal(msg, servingMessage) {
			t.Fatalf("first message %x %v", msg, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		if d := time.Since(start); d < 700*time.Millisecond {
			t.Fatalf("stream ended after %v, before its deadline", d)
		}
		if resp.Trailer.Get("Grpc-Status") != grpcDeadlineExceeded {
			t.Fatalf("trailers %v, want DEADLINE_EXCEEDED", resp.Trailer)
		}
		waitErr(t, hs.watchEnded, "upstream watch end")
	})
	t.Run("malformed is ignored", func(t *testing.T) {
		for _, v := range []string{"123456789m", "1x", "-1S", "S"} {
			resp := rawCall(t, c, front, "Check", "", "Grpc-Timeout", v)
			_, _ = io.Copy(io.Discard, resp.Body)
			if got := resp.Trailer.Get("Grpc-Status"); got != "0" {
				t.Fatalf("grpc-timeout %q: trailers %v headers %v", v, resp.Trailer, resp.Header)
			}
			if !strings.Contains(logs.String(), `"grpc_timeout":"`+v+`"`) {
				t.Fatalf("grpc-timeout %q not logged: %s", v, logs.String())
			}
		}
	})
	t.Run("zero is already past", func(t *testing.T) {
		resp := rawCall(t, c, front, "Check", "", "Grpc-Timeout", "0n")
		if got := resp.Header.Get("Grpc-Status"); got != "4" {
			t.Fatalf("headers %v, want grpc-status 4", resp.Header)
		}
	})
	t.Run("longer than the route timeout", func(t *testing.T) {
		cfg := cfg
		cfg.Timeout = config.Duration(300 * time.Millisecond)
		front := grpcFront(t, cfg, Deps{})
		_, _ = io.Copy(io.Discard, rawCall(t, c, front, "Check", "").Body) // dial first
		resp := rawCall(t, c, front, "Check", "slow", "Grpc-Timeout", "1H")
		if resp.Header.Get("Grpc-Status") != "4" ||
			resp.Header.Get("Grpc-Message") != "the upstream did not answer within the route timeout" {
			t.Fatalf("headers %v, want the route timeout's DEADLINE_EXCEEDED", resp.Header)
		}
		waitErr(t, hs.checkEnded, "upstream check end")
	})
}

func TestGRPCUpstreamDown(t *testing.T) {
	cc := grpcClient(t, grpcFront(t, Config{Route: "grpc", Backends: []Backend{h2cBackend(t, closedAddr(t))}}, Deps{}))
	_, err := healthpb.NewHealthClient(cc).Check(context.Background(), &healthpb.HealthCheckRequest{})
	wantCode(t, err, codes.Unavailable, "the upstream refused the connection")
}

func TestGRPCOnlyOverHTTP2(t *testing.T) {
	// gRPC is HTTP/2 only; an HTTP/1.1 request that claims it is an
	// ordinary request and its grpc-timeout means nothing.
	for _, tc := range []struct {
		proto int
		ct    string
		want  bool
	}{
		{2, "application/grpc", true},
		{2, "application/grpc+proto", true},
		{2, "application/grpc-web", true},
		{2, "application/json", false},
		{2, "", false},
		{1, "application/grpc", false},
	} {
		r := httptest.NewRequest("POST", "/", nil)
		r.ProtoMajor = tc.proto
		if tc.ct != "" {
			r.Header.Set("Content-Type", tc.ct)
		}
		if got := isGRPC(r); got != tc.want {
			t.Errorf("HTTP/%d %q: isGRPC %v, want %v", tc.proto, tc.ct, got, tc.want)
		}
	}
}

func TestParseGRPCTimeout(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"1H", time.Hour, true},
		{"2M", 2 * time.Minute, true},
		{"3S", 3 * time.Second, true},
		{"100m", 100 * time.Millisecond, true},
		{"5u", 5 * time.Microsecond, true},
		{"7n", 7, true},
		{"99999999n", 99999999, true},
		{"00000001S", time.Second, true},
		{"0m", 0, true},
		{"99999999M", 99999999 * time.Minute, true},
		{"99999999H", 0, false}, // past what a Duration holds
		{"123456789n", 0, false},
		{"", 0, false},
		{"S", 0, false},
		{"10", 0, false},
		{"10s", 0, false},
		{"10h", 0, false},
		{"-1S", 0, false},
		{"+1S", 0, false},
		{" 1S", 0, false},
		{"1.5S", 0, false},
		{"1S ", 0, false},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, ok := parseGRPCTimeout(tc.in)
			if got != tc.want || ok != tc.ok {
				t.Fatalf("got %v %v, want %v %v", got, ok, tc.want, tc.ok)
			}
		})
	}
}

func FuzzParseGRPCTimeout(f *testing.F) {
	for _, s := range []string{"1H", "100m", "99999999H", "0n", "12345678u", "x", ""} {
		f.Add(s)
	}
	units := map[byte]time.Duration{'H': time.Hour, 'M': time.Minute, 'S': time.Second,
		'm': time.Millisecond, 'u': time.Microsecond, 'n': time.Nanosecond}
	f.Fuzz(func(t *testing.T, s string) {
		d, ok := parseGRPCTimeout(s)
		if !ok {
			if d != 0 {
				t.Fatalf("%q: not ok but %v", s, d)
			}
			return
		}
		// Accepted means: 1-8 digits and a unit, and the value read back
		// in that unit is the number written.
		digits, unit := s[:len(s)-1], units[s[len(s)-1]]
		if unit == 0 || len(digits) < 1 || len(digits) > 8 || d < 0 {
			t.Fatalf("%q accepted as %v", s, d)
		}
		n, err := strconv.ParseUint(digits, 10, 64)
		if err != nil || digits[0] == '+' || time.Duration(n)*unit != d {
			t.Fatalf("%q: got %v, digits read %d (%v)", s, d, n, err)
		}
	})
}

// lockedBuffer is a log sink safe for the handler's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestGRPCOverTLS(t *testing.T) {
	// h2 over TLS on both sides (ALPN): the public listener with tls and an
	// https:// upstream. grpc.Server serves the upstream as an
	// http.Handler here, behind net/http's own HTTP/2 server.
	hs := &healthService{Server: health.NewServer(), checkEnded: make(chan error, 16), watchEnded: make(chan error, 16)}
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, hs)
	up := httptest.NewUnstartedServer(gs)
	up.EnableHTTP2 = true
	up.StartTLS()
	t.Cleanup(func() {
		hs.Shutdown()
		up.Close()
		gs.Stop()
	})
	upTransport := up.Client().Transport.(*http.Transport).Clone()
	upTransport.ForceAttemptHTTP2 = true
	t.Cleanup(upTransport.CloseIdleConnections)
	u, _ := url.Parse(up.URL)
	h, err := New(Config{Route: "grpc", Backends: []Backend{{Name: "grpc", Weight: 1, Transport: upTransport, Target: u}}}, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	front := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(w, r.WithContext(reqctx.With(r.Context(), &reqctx.Info{RequestID: "rid-1"})))
	}))
	front.EnableHTTP2 = true
	front.StartTLS()
	t.Cleanup(front.Close)

	pool := x509.NewCertPool()
	pool.AddCert(front.Certificate())
	cc, err := grpc.NewClient("passthrough:///"+front.Listener.Addr().String(),
		grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "example.com"})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	healthCheckAndWatch(t, healthpb.NewHealthClient(cc))
	if err := waitErr(t, hs.watchEnded, "upstream watch end"); !errors.Is(err, context.Canceled) {
		t.Fatalf("upstream stream ended with %v, want Canceled", err)
	}
}

// healthCheckAndWatch makes a unary call that succeeds, one that fails
// with NotFound, and a server stream that delivers its first message and
// is then cancelled by the client.
func healthCheckAndWatch(t *testing.T, hc healthpb.HealthClient) {
	t.Helper()
	if resp, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("Check: %v %v", resp, err)
	}
	_, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{Service: "nope"})
	wantCode(t, err, codes.NotFound, "unknown service")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if msg, err := stream.Recv(); err != nil || msg.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("first message: %v %v", msg, err)
	}
}

func TestGRPCThroughUpstreamPool(t *testing.T) {
	// The production path: an h2c:// target of an upstream.Registry pool.
	_, addr := grpcUpstream(t)
	reg := upstreampkg.NewRegistry(upstreampkg.Deps{})
	t.Cleanup(reg.Close)
	zero := 0
	pools, err := reg.Apply(map[string]*config.Upstream{
		"grpc": {Targets: []config.Target{{URL: "h2c://" + addr, Weight: 1}}, Timeout: config.Duration(5 * time.Second)},
		"down": {Targets: []config.Target{{URL: "h2c://" + closedAddr(t), Weight: 1}}, Retries: &zero},
	})
	if err != nil {
		t.Fatal(err)
	}
	backend := func(name string) Backend {
		u, _ := url.Parse("http://" + name + ".invalid") // the pool picks the target
		return Backend{Name: name, Weight: 1, Transport: pools[name], Target: u}
	}
	hc := healthpb.NewHealthClient(grpcClient(t, grpcFront(t, Config{Route: "grpc", Backends: []Backend{backend("grpc")}}, Deps{})))
	healthCheckAndWatch(t, hc)

	down := healthpb.NewHealthClient(grpcClient(t, grpcFront(t, Config{Route: "down", Backends: []Backend{backend("down")}}, Deps{})))
	_, err = down.Check(context.Background(), &healthpb.HealthCheckRequest{})
	wantCode(t, err, codes.Unavailable, "")
}

func TestGRPCUpstreamResetMidStream(t *testing.T) {
	// An upstream that dies after its first message: the gateway cannot
	// invent a status for the upstream's failure, so it resets the stream,
	// and the client must not take the cut stream for a finished one.
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/grpc")
		w.WriteHeader(200)
		_, _ = w.Write(append([]byte{0, 0, 0, 0, 2}, servingMessage...))
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	}))
	up.Config.Protocols = h2cProtocols()
	up.Config.ErrorLog = slog.NewLogLogger(slog.DiscardHandler, slog.LevelError)
	up.Start()
	t.Cleanup(up.Close)
	hc := healthpb.NewHealthClient(grpcClient(t, grpcFront(t,
		Config{Route: "grpc", Backends: []Backend{h2cBackend(t, up.Listener.Addr().String())}}, Deps{})))
	stream, err := hc.Watch(context.Background(), &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if msg, err := stream.Recv(); err != nil || msg.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("first message: %v %v", msg, err)
	}
	// RST_STREAM INTERNAL_ERROR, which grpc clients report as INTERNAL.
	_, err = stream.Recv()
	wantCode(t, err, codes.Internal, "")
}

// grpcCannedRequest is cannedHandler's request turned into a gRPC call with
// a deadline; the canned answer is a gRPC response.
func grpcCannedRequest(tb testing.TB, cfg Config) (http.Handler, *http.Request) {
	h, r := cannedHandler(tb, cfg)
	h.(*handler).backends[0].rp.Transport = roundTripFunc(func(r *http.Request) (*http.Response, error) {
		return &http.Response{
			StatusCode: 200, ProtoMajor: 2, Request: r, ContentLength: -1,
			Header:  http.Header{"Content-Type": {"application/grpc"}},
			Body:    io.NopCloser(bytes.NewReader(append([]byte{0, 0, 0, 0, 2}, servingMessage...))),
			Trailer: http.Header{"Grpc-Status": {"0"}},
		}, nil
	})
	r.Method, r.ProtoMajor, r.ProtoMinor = "POST", 2, 0
	r.Header = http.Header{"Content-Type": {"application/grpc"}, "Te": {"trailers"}, "Grpc-Timeout": {"5S"}}
	return h, r
}

// TestGRPCAllocationBudget checks that the call's deadline costs one
// allocation, the forwarded grpc-timeout's new value (the re-armed timer and
// the body wrapper live in the exchange), and bounds the whole:
// ReverseProxy's trailer copy and
// per-write flushing and this test's canned response make a gRPC call
// dearer than a plain GET.
func TestGRPCAllocationBudget(t *testing.T) {
	measure := func(grpcTimeout string) float64 {
		h, r := grpcCannedRequest(t, Config{Timeout: config.Duration(10 * time.Second)})
		if grpcTimeout == "" {
			delete(r.Header, "Grpc-Timeout")
		} else {
			r.Header.Set("Grpc-Timeout", grpcTimeout)
		}
		w := &discardWriter{h: http.Header{}}
		return testing.AllocsPerRun(200, func() {
			clear(w.h)
			h.ServeHTTP(w, r)
			if w.code != 200 || w.h.Get("Grpc-Status") != "0" {
				t.Fatalf("status %d headers %v", w.code, w.h)
			}
		})
	}
	without, with := measure(""), measure("5S")
	t.Logf("allocs per gRPC call: %v without grpc-timeout, %v with", without, with)
	if with > without+1 && !raceEnabled {
		t.Errorf("grpc-timeout costs %v allocations, want 1", with-without)
	}
	// The budget is the call's without grpc-timeout: under the race
	// detector (whose sync.Pool drops items at random) with can read one
	// over without+1.
	if without > 48 {
		t.Errorf("%v allocs per gRPC call, budget 48", without)
	}
}

// BenchmarkGRPCOverhead is BenchmarkProxyOverhead for a gRPC call with
// grpc-timeout shorter than the route timeout.
func BenchmarkGRPCOverhead(b *testing.B) {
	h, r := grpcCannedRequest(b, Config{Route: "r", Timeout: config.Duration(10 * time.Second)})
	w := &discardWriter{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		clear(w.h)
		h.ServeHTTP(w, r)
	}
}

// BenchmarkGRPCUnary is a unary Check from a grpc client, through the
// proxy and directly; their difference is the gateway's share.
func BenchmarkGRPCUnary(b *testing.B) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, health.NewServer())
	done := make(chan struct{})
	go func() { defer close(done); _ = gs.Serve(l) }()
	defer func() { gs.Stop(); <-done }()
	addr := l.Addr().String()

	tr := &http.Transport{Protocols: h2cProtocols()}
	defer tr.CloseIdleConnections()
	h, err := New(Config{Route: "grpc", Backends: []Backend{{Name: "grpc", Weight: 1, Transport: tr,
		Target: &url.URL{Scheme: "http", Host: addr}}}}, Deps{BufferPool: NewBufferPool()})
	if err != nil {
		b.Fatal(err)
	}
	front := httptest.NewUnstartedServer(h)
	front.Config.Protocols = h2cProtocols()
	front.Start()
	defer front.Close()

	for _, bc := range []struct{ name, addr string }{{"gateway", front.Listener.Addr().String()}, {"direct", addr}} {
		b.Run(bc.name, func(b *testing.B) {
			cc, err := grpc.NewClient("passthrough:///"+bc.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				b.Fatal(err)
			}
			defer cc.Close()
			hc := healthpb.NewHealthClient(cc)
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func TestGRPCDeadlineIsNotTheUpstreamsFault(t *testing.T) {
	// A client picks its grpc-timeout; were a passed one counted against
	// the upstream, any client could open the circuit breaker (or eject
	// targets) with grpc-timeout: 1n. The route timeout is the operator's
	// and does count (the control).
	hs, addr := grpcUpstream(t)
	reg := upstreampkg.NewRegistry(upstreampkg.Deps{})
	t.Cleanup(reg.Close)
	ups := map[string]*config.Upstream{}
	for _, name := range []string{"by-client", "by-route"} {
		ups[name] = &config.Upstream{Targets: []config.Target{{URL: "h2c://" + addr, Weight: 1}},
			CircuitBreaker: &config.CircuitBreaker{FailureRatio: 0.5, MinRequests: 3, OpenFor: config.Duration(time.Minute)}}
	}
	pools, err := reg.Apply(ups)
	if err != nil {
		t.Fatal(err)
	}
	c := h2cClient(t)
	for _, tc := range []struct {
		name    string
		timeout time.Duration
		open    bool
	}{
		{"by-client", 0, false},
		{"by-route", 300 * time.Millisecond, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u, _ := url.Parse("http://" + tc.name + ".invalid")
			front := grpcFront(t, Config{Route: tc.name, Timeout: config.Duration(tc.timeout),
				Backends:       []Backend{{Name: tc.name, Weight: 1, Transport: pools[tc.name], Target: u}},
				RequestHeaders: &config.HeaderRules{Remove: []string{"Grpc-Timeout"}}}, Deps{})
			_, _ = io.Copy(io.Discard, rawCall(t, c, front, "Check", "").Body) // dial first
			for range 3 {
				var hdr []string
				if tc.timeout == 0 {
					hdr = []string{"Grpc-Timeout", "300m"}
				}
				resp := rawCall(t, c, front, "Check", "slow", hdr...)
				switch got := resp.Header.Get("Grpc-Status"); {
				case got == "14" && tc.open:
					continue // the breaker opened already; the call never left
				case got != "4":
					t.Fatalf("headers %v, want grpc-status 4", resp.Header)
				}
				waitErr(t, hs.checkEnded, "upstream check end")
			}
			resp := rawCall(t, c, front, "Check", "")
			_, _ = io.Copy(io.Discard, resp.Body)
			got := resp.Header.Get("Grpc-Status") + resp.Trailer.Get("Grpc-Status")
			if open := got == "14"; open != tc.open || (!open && got != "0") {
				t.Fatalf("next call's grpc-status %q; want the breaker open: %v", got, tc.open)
			}
		})
	}
}

func TestGRPCRequestReachesUpstreamIntact(t *testing.T) {
	// What a gRPC server needs of the request: te: trailers (gRPC servers
	// may refuse a call without it), grpc-timeout (what is left of it),
	// its content type and metadata, over HTTP/2.
	got := make(chan http.Header, 1)
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := r.Header.Clone()
		h.Set("X-Proto", r.Proto)
		got <- h
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/grpc")
		w.Header().Set("Trailer", "Grpc-Status")
		_, _ = w.Write(append([]byte{0, 0, 0, 0, 2}, servingMessage...))
		w.Header().Set("Grpc-Status", "0")
	}))
	up.Config.Protocols = h2cProtocols()
	up.Start()
	t.Cleanup(up.Close)
	front := grpcFront(t, Config{Route: "grpc", Backends: []Backend{h2cBackend(t, up.Listener.Addr().String())}}, Deps{})
	resp := rawCall(t, h2cClient(t), front, "Check", "", "Grpc-Timeout", "250m", "X-Tenant", "acme")
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.Trailer.Get("Grpc-Status") != "0" {
		t.Fatalf("trailers %v", resp.Trailer)
	}
	h := <-got
	for k, want := range map[string]string{
		"X-Proto": "HTTP/2.0", "Te": "trailers", "Content-Type": "application/grpc",
		"X-Tenant": "acme", "X-Forwarded-For": "127.0.0.1", "X-Request-Id": "rid-1",
	} {
		if h.Get(k) != want {
			t.Errorf("upstream got %s %q, want %q", k, h.Get(k), want)
		}
	}
	if d, ok := parseGRPCTimeout(h.Get("Grpc-Timeout")); !ok || d > 250*time.Millisecond || d < 150*time.Millisecond {
		t.Errorf("upstream got Grpc-Timeout %q, want a little under 250m", h.Get("Grpc-Timeout"))
	}
}
