package proxy

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"

	"github.com/portico-gw/portico/internal/problem"
	"github.com/portico-gw/portico/internal/reqctx"
)

// grpcFrame is one length-prefixed gRPC message of n bytes; declared, when
// not negative, replaces the length in its prefix.
func grpcFrame(n int, declared int64) []byte {
	b := make([]byte, 5+n)
	if declared < 0 {
		declared = int64(n)
	}
	binary.BigEndian.PutUint32(b[1:5], uint32(declared))
	for i := range n {
		b[5+i] = byte('a' + i%26)
	}
	return b
}

// allowedPrefix is the reference for grpcMessageLimit: how much of stream
// passes, and whether a message over max stops it there.
func allowedPrefix(stream []byte, max int64) (int, bool) {
	for i := 0; i < len(stream); {
		if len(stream)-i < 5 {
			return len(stream), false
		}
		n := int64(binary.BigEndian.Uint32(stream[i+1 : i+5]))
		if n > max {
			return i, true
		}
		i += 5 + int(min(n, int64(len(stream)-i-5)))
	}
	return len(stream), false
}

// chunkReader returns at most size bytes per Read.
type chunkReader struct {
	r    io.Reader
	size int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(p) > c.size {
		p = p[:c.size]
	}
	return c.r.Read(p)
}

// readAllBy reads r with buffers of psize bytes until an error.
func readAllBy(r io.Reader, psize int) ([]byte, error) {
	var out []byte
	buf := make([]byte, psize)
	for range 1 << 20 {
		n, err := r.Read(buf)
		out = append(out, buf[:n]...)
		if err != nil {
			return out, err
		}
	}
	return out, errors.New("no progress")
}

// checkMessageLimit reads stream through a grpcMessageLimit, the stream
// arriving in rsize chunks and read in psize buffers, and holds it to the
// reference.
func checkMessageLimit(t *testing.T, stream []byte, max int64, rsize, psize int) {
	t.Helper()
	over := problem.New(413, "grpc_message_too_large", "over")
	g := &grpcMessageLimit{rc: io.NopCloser(&chunkReader{bytes.NewReader(stream), rsize}), max: max, err: over}
	got, err := readAllBy(g, psize)
	n, exceeded := allowedPrefix(stream, max)
	wantErr := error(io.EOF)
	if exceeded {
		wantErr = over
	}
	if err != wantErr || !bytes.Equal(got, stream[:n]) || g.exceeded.Load() != exceeded {
		t.Fatalf("max %d, chunks %d, reads %d: got %d bytes %v (exceeded %v), want %d bytes %v",
			max, rsize, psize, len(got), err, g.exceeded.Load(), n, wantErr)
	}
	if _, err := g.Read(make([]byte, 8)); exceeded && err != over {
		t.Fatalf("read after the limit: %v", err)
	}
}

func TestGRPCMessageLimitReader(t *testing.T) {
	const max = 100
	small := bytes.Repeat(grpcFrame(60, -1), 10) // 650 bytes, far over max in all
	for _, tc := range []struct {
		name   string
		stream []byte
	}{
		{"small messages", small},
		{"empty messages", bytes.Repeat(grpcFrame(0, -1), 7)},
		{"at the limit", append(grpcFrame(max, -1), grpcFrame(max, -1)...)},
		{"one over", append(append(append([]byte{}, small...), grpcFrame(max+1, -1)...), grpcFrame(1, -1)...)},
		{"first over", grpcFrame(max+1, -1)},
		{"declares 4 GiB", append(grpcFrame(3, -1), grpcFrame(3, 1<<32-1)...)},
		{"ends inside a prefix", append(grpcFrame(3, -1), 0, 0, 0)},
		{"ends inside a message", grpcFrame(50, 80)},
		{"compressed flag", append([]byte{1}, grpcFrame(max+1, -1)[1:]...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, rsize := range []int{1, 2, 3, 5, 7, 64, 1 << 16} {
				for _, psize := range []int{1, 4, 5, 6, 9, 512, 1 << 16} {
					checkMessageLimit(t, tc.stream, max, rsize, psize)
				}
			}
		})
	}
}

func FuzzGRPCMessageLimit(f *testing.F) {
	f.Add(bytes.Repeat(grpcFrame(3, -1), 4), uint16(3), uint8(2), uint8(5))
	f.Add(append(grpcFrame(3, -1), grpcFrame(10, -1)...), uint16(5), uint8(7), uint8(1))
	f.Add([]byte{0, 0, 0}, uint16(0), uint8(1), uint8(1))
	f.Fuzz(func(t *testing.T, stream []byte, max uint16, rsize, psize uint8) {
		checkMessageLimit(t, stream, int64(max), int(rsize)+1, int(psize)+1)
	})
}

// grpcSinkResult is what a hand-written gRPC upstream received of one
// call's request stream.
type grpcSinkResult struct {
	sizes []int // the messages, in order
	raw   int64 // bytes read, prefixes included
	err   error // nil when the stream ended cleanly (END_STREAM)
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// grpcSink is an h2c upstream that reads a call's request messages and
// reports them. With echo it answers at once and sends a 1-byte message
// back for each message received (a bidirectional stream); without, it
// answers once the request stream ended (a client stream). Either way it
// ends with grpc-status 0 in the trailers, unless the stream was cut.
func grpcSink(t *testing.T, echo bool) (Backend, <-chan grpcSinkResult) {
	t.Helper()
	results := make(chan grpcSinkResult, 4)
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/grpc")
		w.Header().Set("Trailer", "Grpc-Status")
		if echo {
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush()
		}
		var res grpcSinkResult
		cr := &countingReader{r: r.Body}
		for {
			msg, err := readMessage(cr)
			if err != nil {
				if err != io.EOF {
					res.err = err
				}
				break
			}
			res.sizes = append(res.sizes, len(msg))
			if echo {
				_, _ = w.Write(grpcFrame(1, -1))
				w.(http.Flusher).Flush()
			}
		}
		res.raw = cr.n
		results <- res
		if res.err == nil {
			_, _ = w.Write(grpcFrame(len(res.sizes)%100, -1))
			w.Header().Set("Grpc-Status", "0")
		}
	}))
	up.Config.Protocols = h2cProtocols()
	up.Start()
	t.Cleanup(up.Close)
	return h2cBackend(t, up.Listener.Addr().String()), results
}

func grpcStreamRequest(t *testing.T, addr string, body io.Reader) *http.Request {
	t.Helper()
	req, err := http.NewRequest("POST", "http://"+addr+"/test.Sink/Collect", body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("Te", "trailers")
	return req
}

func recvSink(t *testing.T, ch <-chan grpcSinkResult) grpcSinkResult {
	t.Helper()
	errs := make(chan error, 1)
	var res grpcSinkResult
	go func() { res = <-ch; errs <- nil }()
	_ = waitErr(t, errs, "upstream stream end")
	return res
}

func TestGRPCBodyLimitIsPerMessage(t *testing.T) {
	const limit = 1000
	c := h2cClient(t)
	smalls := bytes.Repeat(grpcFrame(100, -1), 50) // 5250 bytes in 50 messages
	over := grpcFrame(limit+1, -1)

	t.Run("a stream of small messages passes in full", func(t *testing.T) {
		be, results := grpcSink(t, false)
		front := grpcFront(t, Config{Route: "grpc", Backends: []Backend{be}, MaxBodyBytes: limit}, Deps{})
		for _, tc := range []struct {
			name string
			body io.Reader
		}{
			{"streamed", io.MultiReader(bytes.NewReader(smalls))},
			{"with a content-length", bytes.NewReader(smalls)}, // not refused up front
		} {
			resp, err := c.Do(grpcStreamRequest(t, front, tc.body))
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if st := resp.Header.Get("Grpc-Status") + resp.Trailer.Get("Grpc-Status"); st != "0" {
				t.Fatalf("%s: grpc-status %q (%v %v)", tc.name, st, resp.Header, resp.Trailer)
			}
			if res := recvSink(t, results); len(res.sizes) != 50 || res.raw != int64(len(smalls)) || res.err != nil {
				t.Fatalf("%s: upstream got %d messages, %d bytes, %v", tc.name, len(res.sizes), res.raw, res.err)
			}
		}
	})

	t.Run("a message over the limit before the response", func(t *testing.T) {
		be, results := grpcSink(t, false)
		front := grpcFront(t, Config{Route: "grpc", Backends: []Backend{be}, MaxBodyBytes: limit}, Deps{})
		body := io.MultiReader(bytes.NewReader(smalls), bytes.NewReader(over), bytes.NewReader(grpcFrame(1, -1)))
		resp, err := c.Do(grpcStreamRequest(t, front, body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		// Trailers-only: the status is in the headers.
		if resp.Header.Get("Grpc-Status") != "8" || resp.Header.Get("Grpc-Message") != "a request message exceeds 1000 bytes" {
			t.Fatalf("headers %v, want grpc-status 8", resp.Header)
		}
		// The upstream got every message before it, none of it, and a
		// cut stream rather than an end.
		res := recvSink(t, results)
		if len(res.sizes) != 50 || res.raw != int64(len(smalls)) || res.err == nil {
			t.Fatalf("upstream got %d messages, %d bytes, %v; want 50, %d, a reset", len(res.sizes), res.raw, res.err, len(smalls))
		}
	})

	t.Run("a message over the limit mid-stream", func(t *testing.T) {
		be, results := grpcSink(t, true)
		front := grpcFront(t, Config{Route: "grpc", Backends: []Backend{be}, MaxBodyBytes: limit}, Deps{})
		pr, pw := io.Pipe()
		defer pw.Close()
		resp, err := c.Do(grpcStreamRequest(t, front, pr))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		// The response has started: messages go both ways, more of them
		// than the limit in all.
		for i := range 20 {
			if _, err := pw.Write(grpcFrame(100, -1)); err != nil {
				t.Fatal(err)
			}
			if _, err := readMessage(resp.Body); err != nil {
				t.Fatalf("echo %d: %v", i, err)
			}
		}
		go func() { _, _ = pw.Write(over) }() // the gateway never reads all of it
		if rest, err := io.ReadAll(resp.Body); err != nil || len(rest) != 0 {
			t.Fatalf("after the last echo: %q %v, want the end of the stream", rest, err)
		}
		if resp.Trailer.Get("Grpc-Status") != "8" || resp.Trailer.Get("Grpc-Message") != "a request message exceeds 1000 bytes" {
			t.Fatalf("trailers %v, want grpc-status 8", resp.Trailer)
		}
		res := recvSink(t, results)
		if len(res.sizes) != 20 || res.raw != 20*105 || res.err == nil {
			t.Fatalf("upstream got %d messages, %d bytes, %v; want 20, %d, a reset", len(res.sizes), res.raw, res.err, 20*105)
		}
	})

	t.Run("gRPC-Web keeps the limit on the body", func(t *testing.T) {
		be, _ := grpcSink(t, false)
		front := grpcFront(t, Config{Route: "grpc", Backends: []Backend{be}, MaxBodyBytes: limit}, Deps{})
		req := grpcStreamRequest(t, front, io.MultiReader(bytes.NewReader(smalls)))
		req.Header.Set("Content-Type", "application/grpc-web+proto")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		wantProblem(t, resp, string(body), http.StatusRequestEntityTooLarge, "body_too_large")
	})
}

func TestGRPCBodyLimitWithGRPCClient(t *testing.T) {
	// grpc-go on both sides: a bidirectional stream (reflection) carries
	// more than the limit in small messages, and a message over it ends
	// the call with RESOURCE_EXHAUSTED, after the response started or
	// before (a unary call).
	_, addr := grpcUpstream(t)
	const limit = 200
	cc := grpcClient(t, grpcFront(t, Config{Route: "grpc", Backends: []Backend{h2cBackend(t, addr)}, MaxBodyBytes: limit}, Deps{}))
	stream, err := reflectionpb.NewServerReflectionClient(cc).ServerReflectionInfo(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for i := range 30 { // about 30 * 10 bytes
		if err := stream.Send(&reflectionpb.ServerReflectionRequest{
			MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{ListServices: "x"},
		}); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
		if _, err := stream.Recv(); err != nil {
			t.Fatalf("recv %d: %v", i, err)
		}
	}
	_ = stream.Send(&reflectionpb.ServerReflectionRequest{
		MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{ListServices: strings.Repeat("x", limit)},
	})
	_, err = stream.Recv()
	wantCode(t, err, codes.ResourceExhausted, "a request message exceeds 200 bytes")

	_, err = healthpb.NewHealthClient(cc).Check(context.Background(), &healthpb.HealthCheckRequest{Service: strings.Repeat("s", limit)})
	wantCode(t, err, codes.ResourceExhausted, "a request message exceeds 200 bytes")
}

func TestFormatGRPCTimeout(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{
		{-time.Second, "1n"},
		{0, "1n"},
		{1, "1n"},
		{99999999, "99999999n"},
		{100 * time.Millisecond, "100000u"},
		{100*time.Millisecond + 1, "100001u"}, // rounded up
		{250 * time.Millisecond, "250000u"},
		{99999999 * time.Microsecond, "99999999u"},
		{100 * time.Second, "100000m"},
		{time.Hour, "3600000m"},
		{99999999 * time.Millisecond, "99999999m"},
		{99999999 * time.Second, "99999999S"},
		{100000000 * time.Second, "1666667M"},
		{2562047 * time.Hour, "2562047H"},
	} {
		if got := formatGRPCTimeout(tc.d); got != tc.want {
			t.Errorf("formatGRPCTimeout(%v) = %q, want %q", tc.d, got, tc.want)
		}
	}
}

func FuzzFormatGRPCTimeout(f *testing.F) {
	f.Add(int64(1))
	f.Add(int64(100 * time.Millisecond))
	f.Add(int64(2562047 * time.Hour))
	f.Fuzz(func(t *testing.T, n int64) {
		// What is left of a deadline is at most a parsed grpc-timeout,
		// which is at most 2562047H (the largest whole hours a Duration
		// holds).
		d := time.Duration(n % int64(2562047*time.Hour+1))
		s := formatGRPCTimeout(d)
		got, ok := parseGRPCTimeout(s)
		if !ok || len(s) > maxGRPCTimeoutDigits+1 {
			t.Fatalf("formatGRPCTimeout(%v) = %q, which does not parse", d, s)
		}
		// Never less than what is left, and at most one unit more: the
		// value has at least 5 digits past the smallest unit, so that is
		// at most 1e-5 of it.
		if want := max(d, 1); got < want || (got-want) > want/1e5 {
			t.Fatalf("formatGRPCTimeout(%v) = %q = %v", d, s, got)
		}
	})
}

func TestGRPCTimeoutForwardedAsWhatIsLeft(t *testing.T) {
	// The gateway spent 300ms on the call before the proxy (auth, rate
	// limits): a client's grpc-timeout of 1S leaves the upstream 700ms,
	// and the gateway's own deadline is the same instant.
	got := make(chan string, 2)
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.Header.Get("Grpc-Timeout")
		w.Header().Set("Content-Type", "application/grpc")
		w.Header().Set("Grpc-Status", "0")
	}))
	up.Config.Protocols = h2cProtocols()
	up.Start()
	t.Cleanup(up.Close)
	h, err := New(Config{Route: "grpc", Backends: []Backend{h2cBackend(t, up.Listener.Addr().String())}}, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	var spent time.Duration
	front := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		info := &reqctx.Info{RequestID: "rid-1", Start: time.Now().Add(-spent)}
		h.ServeHTTP(w, r.WithContext(reqctx.With(r.Context(), info)))
	}))
	front.Config.Protocols = h2cProtocols()
	front.Start()
	t.Cleanup(front.Close)
	c := h2cClient(t)
	for _, tc := range []struct {
		spent, sent time.Duration
		header      string
		status      string
	}{
		{0, time.Second, "1S", "0"},
		{300 * time.Millisecond, time.Second, "1S", "0"},
		{300 * time.Millisecond, 250 * time.Millisecond, "250m", "4"}, // already past: never forwarded
	} {
		spent = tc.spent
		resp := rawCall(t, c, front.Listener.Addr().String(), "Check", "", "Grpc-Timeout", tc.header)
		_, _ = io.Copy(io.Discard, resp.Body)
		if st := resp.Header.Get("Grpc-Status"); st != tc.status {
			t.Fatalf("spent %v of %s: grpc-status %q, want %s", tc.spent, tc.header, st, tc.status)
		}
		if tc.status != "0" {
			continue
		}
		v := <-got
		d, ok := parseGRPCTimeout(v)
		if want := tc.sent - tc.spent; !ok || d > want || d < want-200*time.Millisecond {
			t.Fatalf("spent %v of %s: upstream got grpc-timeout %q, want a little under %v", tc.spent, tc.header, v, want)
		}
	}
	select {
	case v := <-got:
		t.Fatalf("a call past its deadline reached the upstream with grpc-timeout %q", v)
	default:
	}
}
