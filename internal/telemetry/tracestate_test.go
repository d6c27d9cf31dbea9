package telemetry

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/portico-gw/portico/internal/config"
)

// TestTracestateFollowsTraceparent proxies requests through the telemetry
// stage and a reverse proxy with TraceTransport, and checks the trace context
// the upstream gets. A continued trace keeps the client's tracestate; a
// restarted one (no traceparent, or one that does not parse) must not carry
// it: the entries describe a trace the upstream never sees (W3C Trace Context
// level 1, section 4.2: a tracestate without a usable traceparent is
// discarded).
func TestTracestateFollowsTraceparent(t *testing.T) {
	const state = "vendor=opaque,other=v"
	const tid = "4bf92f3577b34da6a3ce929d0e0e4736"
	cases := []struct {
		name, traceparent string
		continued         bool
	}{
		{"valid", inbound, true},
		{"absent", "", false},
		{"uppercase hex", "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", false},
		{"zero trace id", "00-00000000000000000000000000000000-00f067aa0ba902b7-01", false},
		{"version ff", "ff-" + tid + "-00f067aa0ba902b7-01", false},
	}
	for _, export := range []bool{false, true} {
		t.Run(map[bool]string{false: "no export", true: "export"}[export], func(t *testing.T) {
			var mu sync.Mutex
			var seenTP, seenTS []string
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				seenTP = append(seenTP, r.Header.Get("Traceparent"))
				seenTS = append(seenTS, strings.Join(r.Header.Values("Tracestate"), ","))
				mu.Unlock()
			}))
			defer up.Close()
			tel := New(Deps{AccessLog: io.Discard})
			if export {
				recv := httptest.NewServer(&otlpReceiver{})
				defer recv.Close()
				if err := tel.ApplyTracing(&config.Tracing{OTLPEndpoint: recv.URL}); err != nil {
					t.Fatal(err)
				}
			}
			gw := httptest.NewServer(tel.Middleware("posts-api")(proxyTo(t, tel, up.URL)))
			defer gw.Close()
			for _, c := range cases {
				req, _ := http.NewRequest("GET", gw.URL, nil)
				if c.traceparent != "" {
					req.Header.Set("Traceparent", c.traceparent)
				}
				req.Header.Set("Tracestate", state)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			if err := tel.Close(); err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			defer mu.Unlock()
			for i, c := range cases {
				tp, ts := seenTP[i], seenTS[i]
				if _, _, ok := parseTraceparent(tp); !ok {
					t.Errorf("%s: upstream traceparent %q is not valid", c.name, tp)
					continue
				}
				if got := tp[3:35] == tid; got != c.continued {
					t.Errorf("%s: upstream traceparent %q, continued=%v, want %v", c.name, tp, got, c.continued)
				}
				want := ""
				if c.continued {
					want = state
				}
				if ts != want {
					t.Errorf("%s: upstream tracestate %q, want %q", c.name, ts, want)
				}
			}
		})
	}
}

// TestTracestateSplitOverHeaderLines: a tracestate sent as several header
// lines is one list (W3C Trace Context level 1, section 3.3; RFC 9110
// section 5.3), and a continued trace passes all its entries on, in order,
// with export on or off.
func TestTracestateSplitOverHeaderLines(t *testing.T) {
	for _, export := range []bool{false, true} {
		t.Run(map[bool]string{false: "no export", true: "export"}[export], func(t *testing.T) {
			got := make(chan string, 1)
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				got <- strings.Join(r.Header.Values("Tracestate"), ",")
			}))
			defer up.Close()
			tel := New(Deps{AccessLog: io.Discard})
			if export {
				recv := httptest.NewServer(&otlpReceiver{})
				defer recv.Close()
				if err := tel.ApplyTracing(&config.Tracing{OTLPEndpoint: recv.URL}); err != nil {
					t.Fatal(err)
				}
			}
			gw := httptest.NewServer(tel.Middleware("posts-api")(proxyTo(t, tel, up.URL)))
			defer gw.Close()
			req, _ := http.NewRequest("GET", gw.URL, nil)
			req.Header.Set("Traceparent", inbound)
			req.Header.Add("Tracestate", "vendor=opaque,other=v")
			req.Header.Add("Tracestate", "third=3")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if err := tel.Close(); err != nil {
				t.Fatal(err)
			}
			if ts := <-got; ts != "vendor=opaque,other=v,third=3" {
				t.Errorf("upstream tracestate %q, want all three entries", ts)
			}
		})
	}
}
