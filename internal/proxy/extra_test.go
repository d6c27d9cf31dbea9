package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptrace"
	"net/textproto"
	"sync/atomic"
	"time"

	"github.com/portico-gw/portico/internal/config"
	"github.com/portico-gw/portico/internal/problem"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/portico-gw/portico/internal/reqctx"
)

func TestForwardedProtoHTTPS(t *testing.T) {
	var s seen
	be := upstream(t, "u", s.handler(200, ""))
	h, err := New(Config{Backends: []Backend{be}}, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewTLSServer(h)
	defer srv.Close()
	c := srv.Client()
	defer c.CloseIdleConnections()
	resp, err := c.Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	r, _ := s.get()
	if got := r.Header.Get("X-Forwarded-Proto"); got != "https" {
		t.Fatalf("X-Forwarded-Proto %q, want https", got)
	}
}

func TestTrailersPassThrough(t *testing.T) {
	be := upstream(t, "u", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Checksum")
		_, _ = io.WriteString(w, "body")
		w.Header().Set("X-Checksum", "abc")
	})
	srv, _ := front(t, Config{Backends: []Backend{be}}, nil)
	resp, err := client(t).Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "body" || resp.Trailer.Get("X-Checksum") != "abc" {
		t.Fatalf("body %q trailer %v", b, resp.Trailer)
	}
}

func TestWithoutRequestInfo(t *testing.T) {
	// Outside the gateway (no reqctx.Info) the proxy still works and
	// leaves the client's X-Request-Id alone.
	var s seen
	be := upstream(t, "u", s.handler(200, "ok"))
	h, err := New(Config{Backends: []Backend{be}}, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	resp, body := do(t, client(t), "GET", srv.URL+"/x", nil, "X-Request-Id", "abc")
	r, _ := s.get()
	if resp.StatusCode != 200 || body != "ok" || r.Header.Get("X-Request-Id") != "abc" {
		t.Fatalf("%d %q, upstream id %q", resp.StatusCode, body, r.Header.Get("X-Request-Id"))
	}
}

func FuzzRewrite(f *testing.F) {
	f.Add("/v1/{id}/{*}", "/api/a%2Fb/c", "a/b", "c/d%2F")
	f.Add("/{", "/", "", "")
	f.Add("/x/{a}}", "//", "%zz", "")
	f.Fuzz(func(t *testing.T, tmpl, path, param, rest string) {
		info := &reqctx.Info{Params: []reqctx.Param{{Key: "id", Value: param}, {Key: "*", Value: rest}}}
		if tp, err := parseTemplate(tmpl); err == nil {
			out := tp.expand(info)
			if !strings.HasPrefix(out, "/") {
				t.Fatalf("template %q expanded to %q", tmpl, out)
			}
			if strings.Count(out, "/") < strings.Count(tmpl, "/")-strings.Count(tmpl, "{*}") {
				t.Fatalf("a parameter removed separators: %q -> %q", tmpl, out)
			}
		}
		if strings.HasPrefix(path, "/") {
			got := stripPrefix(path, []string{"api"})
			if !strings.HasPrefix(got, "/") || !strings.HasSuffix(path, strings.TrimPrefix(got, "/")) {
				t.Fatalf("stripPrefix(%q) = %q", path, got)
			}
		}
	})
}

func TestFailureIsLoggedWithCause(t *testing.T) {
	var buf strings.Builder
	var mu sync.Mutex
	logger := slog.New(slog.NewJSONHandler(writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return buf.Write(p)
	}), nil))
	be := backendFor(t, "dead", "http://"+closedAddr(t))
	h, err := New(Config{Route: "posts-api", Backends: []Backend{be}}, Deps{Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	r := httptest.NewRequest("GET", "/", nil)
	h.ServeHTTP(rec, r.WithContext(reqctx.With(r.Context(), &reqctx.Info{RequestID: "rid-9"})))
	mu.Lock()
	line := buf.String()
	mu.Unlock()
	for _, want := range []string{`"route":"posts-api"`, `"upstream":"dead"`, `"status":502`, `"code":"upstream_unreachable"`, `"request_id":"rid-9"`, `connection refused`} {
		if !strings.Contains(line, want) {
			t.Errorf("log line %s lacks %s", line, want)
		}
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

func TestContentLengthKept(t *testing.T) {
	var gotLen atomic.Int64
	var gotTE atomic.Value
	be := upstream(t, "u", func(w http.ResponseWriter, r *http.Request) {
		gotLen.Store(r.ContentLength)
		gotTE.Store(strings.Join(r.TransferEncoding, ","))
		_, _ = io.Copy(io.Discard, r.Body)
	})
	srv, _ := front(t, Config{Backends: []Backend{be}, MaxBodyBytes: 1 << 20}, nil)
	resp, _ := do(t, client(t), "POST", srv.URL+"/", strings.NewReader(strings.Repeat("z", 5000)))
	if resp.StatusCode != 200 || gotLen.Load() != 5000 || gotTE.Load() != "" {
		t.Fatalf("status %d, upstream Content-Length %d, Transfer-Encoding %q", resp.StatusCode, gotLen.Load(), gotTE.Load())
	}
}

// earlyHints answers 103 with a Link, then 200 "done".
func earlyHints(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Link", "</app.css>; rel=preload")
	w.WriteHeader(http.StatusEarlyHints)
	w.Header().Del("Link")
	_, _ = io.WriteString(w, "done")
}

func TestEarlyHintsPassThrough(t *testing.T) {
	be := upstream(t, "u", earlyHints)
	srv, _ := front(t, Config{Backends: []Backend{be}}, nil)
	var hints []string
	trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
		hints = append(hints, fmt.Sprint(code, " ", h.Get("Link")))
		return nil
	}}
	req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "GET", srv.URL+"/", nil)
	resp, err := client(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "done" || len(hints) != 1 || hints[0] != "103 </app.css>; rel=preload" {
		t.Fatalf("body %q, 1xx %q", b, hints)
	}
}

func TestConcurrentRequests(t *testing.T) {
	be := upstream(t, "u", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, r.URL.Path)
	})
	srv, _ := front(t, Config{Backends: []Backend{be}, Timeout: config.Duration(10 * time.Second)}, nil)
	c := client(t)
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 25; i++ {
				p := fmt.Sprintf("/g%d/%d", g, i)
				resp, err := c.Get(srv.URL + p)
				if err != nil {
					errs <- err
					return
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if string(b) != p {
					errs <- fmt.Errorf("asked %s, got %s", p, b)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestPoolErrorsPassThrough(t *testing.T) {
	// An upstream pool answers with its own *problem.Error (load shedding,
	// open breaker); the client gets exactly that.
	be := upstream(t, "u", func(http.ResponseWriter, *http.Request) {})
	be.Transport = roundTripFunc(func(*http.Request) (*http.Response, error) {
		return nil, problem.New(http.StatusServiceUnavailable, "breaker_open", "the upstream is failing; try later")
	})
	srv, _ := front(t, Config{Backends: []Backend{be}}, nil)
	resp, body := do(t, client(t), "GET", srv.URL+"/", nil)
	wantProblem(t, resp, body, http.StatusServiceUnavailable, "breaker_open")
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func TestBrokenUpstreamBodyAbortsClient(t *testing.T) {
	// The upstream dies in the middle of a chunked body. The client must
	// see an error, never a clean end of a truncated body.
	be := upstream(t, "u", func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		_, _ = brw.WriteString("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
		_ = brw.Flush()
	})
	srv, _ := front(t, Config{Backends: []Backend{be}}, nil)
	resp, err := client(t).Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil {
		t.Fatalf("read %q and a clean end; want an error", b)
	}
}

func TestRouteDeadlineVisibleToTransport(t *testing.T) {
	got := make(chan time.Duration, 1)
	be := upstream(t, "u", func(http.ResponseWriter, *http.Request) {})
	be.Transport = roundTripFunc(func(r *http.Request) (*http.Response, error) {
		d, ok := r.Context().Deadline()
		if !ok {
			got <- -1
		} else {
			got <- time.Until(d)
		}
		return nil, errors.New("stop here")
	})
	srv, _ := front(t, Config{Backends: []Backend{be}, Timeout: config.Duration(3 * time.Second)}, nil)
	do(t, client(t), "GET", srv.URL+"/", nil)
	if left := <-got; left <= 0 || left > 3*time.Second {
		t.Fatalf("the transport saw %v left before the deadline, want (0, 3s]", left)
	}
}

func TestRouteTimeoutCause(t *testing.T) {
	// The upstream pool tells a route timeout (the upstream's slowness)
	// from a client that left by the cancellation cause.
	cause := make(chan error, 1)
	be := upstream(t, "u", func(http.ResponseWriter, *http.Request) {})
	be.Transport = roundTripFunc(func(r *http.Request) (*http.Response, error) {
		<-r.Context().Done()
		cause <- context.Cause(r.Context())
		return nil, r.Context().Err()
	})
	srv, _ := front(t, Config{Backends: []Backend{be}, Timeout: config.Duration(20 * time.Millisecond)}, nil)
	resp, body := do(t, client(t), "GET", srv.URL+"/", nil)
	wantProblem(t, resp, body, http.StatusGatewayTimeout, "route_timeout")
	if err := <-cause; !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("cause %v, want a DeadlineExceeded", err)
	}
}

func TestHTTP2Client(t *testing.T) {
	var got atomic.Int64
	be := upstream(t, "u", func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		got.Store(n)
		_, _ = io.WriteString(w, r.Proto)
	})
	h, err := New(Config{Backends: []Backend{be}, MaxBodyBytes: 1000}, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(w, r.WithContext(reqctx.With(r.Context(), &reqctx.Info{RequestID: "rid-1"})))
	}))
	srv.EnableHTTP2 = true
	srv.StartTLS()
	defer srv.Close()
	c := srv.Client()
	defer c.CloseIdleConnections()

	// A body of unknown length within the limit streams through.
	resp, body := do(t, c, "POST", srv.URL+"/", io.MultiReader(strings.NewReader(strings.Repeat("a", 900))))
	if resp.ProtoMajor != 2 || resp.StatusCode != 200 || got.Load() != 900 {
		t.Fatalf("proto %s status %d body %q, upstream got %d", resp.Proto, resp.StatusCode, body, got.Load())
	}
	// Past the limit the exchange fails with 413.
	resp, body = do(t, c, "POST", srv.URL+"/", io.MultiReader(strings.NewReader(strings.Repeat("a", 5000))))
	wantProblem(t, resp, body, http.StatusRequestEntityTooLarge, "body_too_large")
}
