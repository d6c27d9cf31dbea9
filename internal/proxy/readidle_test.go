package proxy

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/portico-gw/portico/internal/config"
	upstreampkg "github.com/portico-gw/portico/internal/upstream"
)

// idleFront is a gateway route to one upstream of a real upstream.Registry,
// behind a listener that speaks HTTP/1.1 and h2c. It returns the front's
// URL, the log and the Prometheus registry.
func idleFront(t *testing.T, u *config.Upstream, route time.Duration) (string, *lockedBuffer, *prometheus.Registry) {
	t.Helper()
	logs := new(lockedBuffer)
	log := slog.New(slog.NewTextHandler(logs, nil))
	prom := prometheus.NewRegistry()
	reg := upstreampkg.NewRegistry(upstreampkg.Deps{Logger: log, Registerer: prom})
	t.Cleanup(reg.Close)
	pools, err := reg.Apply(map[string]*config.Upstream{"app": u})
	if err != nil {
		t.Fatal(err)
	}
	target, _ := url.Parse("http://app.invalid")
	h, err := New(Config{Route: "r", Timeout: config.Duration(route),
		Backends: []Backend{{Name: "app", Weight: 1, Transport: pools["app"], Target: target}}}, Deps{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	front := httptest.NewUnstartedServer(h)
	p := h2cProtocols()
	p.SetHTTP1(true)
	front.Config.Protocols = p
	front.Config.ErrorLog = slog.NewLogLogger(slog.DiscardHandler, slog.LevelError)
	front.Start()
	t.Cleanup(front.Close)
	return front.URL, logs, prom
}

// upstreamErrors sums portico_upstream_requests_total{code="error"}.
func upstreamErrors(t *testing.T, prom *prometheus.Registry) float64 {
	t.Helper()
	mfs, err := prom.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n float64
	for _, mf := range mfs {
		if mf.GetName() != "portico_upstream_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "code" && l.GetValue() == "error" {
					n += m.GetCounter().GetValue()
				}
			}
		}
	}
	return n
}

func h2Client(t *testing.T) *http.Client {
	tr := &http.Transport{Protocols: h2cProtocols()}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// An upstream that sends its headers and part of its body, then stalls:
// through the lean client (an HTTP/1.1 client, forward) and through Go's
// transport (an h2c upstream, an HTTP/2 client, ReverseProxy), the client
// sees a broken response about the idle timeout later, never a clean
// truncated body; the upstream sees its connection or stream closed; the
// failure is counted and logged as the read idle timeout.
func TestReadIdleTimeoutAbortsExchange(t *testing.T) {
	for _, tc := range []struct {
		name   string
		h2c    bool
		client func(*testing.T) *http.Client
	}{
		{"lean, HTTP/1.1 client", false, func(*testing.T) *http.Client { return &http.Client{} }},
		{"transport, HTTP/2 client", true, h2Client},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gone := make(chan bool, 1)
			up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Length", "100")
				_, _ = io.WriteString(w, "0123456789")
				w.(http.Flusher).Flush()
				select {
				case <-r.Context().Done():
					gone <- true
				case <-time.After(5 * time.Second):
					gone <- false
				}
			}))
			target := ""
			if tc.h2c {
				up.Config.Protocols = h2cProtocols()
			}
			up.Start()
			t.Cleanup(up.Close)
			target = up.URL
			if tc.h2c {
				target = "h2c://" + up.Listener.Addr().String()
			}
			front, logs, prom := idleFront(t, &config.Upstream{Targets: []config.Target{{URL: target, Weight: 1}},
				Timeout: config.Duration(5 * time.Second), ReadIdleTimeout: ptrTo(config.Duration(200 * time.Millisecond))}, 0)
			start := time.Now()
			res, err := tc.client(t).Get(front + "/x")
			var body []byte
			if err == nil {
				body, err = io.ReadAll(res.Body)
				res.Body.Close()
			}
			if err == nil {
				t.Fatalf("the client read %q cleanly", body)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("the client waited %v", d)
			}
			if !<-gone {
				t.Error("the upstream's connection stayed open")
			}
			if n := upstreamErrors(t, prom); n != 1 {
				t.Errorf(`requests_total{code="error"} = %v, want 1`, n)
			}
			waitFor(t, func() bool { return strings.Count(logs.String(), "read idle timeout") >= 2 })
		})
	}
}

// A client-streaming request through Go's transport: the upstream answers
// its headers at once, then reads a request body that trickles for several
// idle timeouts before it sends its body. The request's bytes count as
// activity, so the exchange completes.
func TestReadIdleTimeoutCountsRequestBody(t *testing.T) {
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		b, _ := io.ReadAll(r.Body)
		_, _ = io.WriteString(w, "got "+string(b))
	}))
	up.Config.Protocols = h2cProtocols()
	up.Start()
	t.Cleanup(up.Close)
	front, _, prom := idleFront(t, &config.Upstream{Targets: []config.Target{{URL: "h2c://" + up.Listener.Addr().String(), Weight: 1}},
		Timeout: config.Duration(5 * time.Second), ReadIdleTimeout: ptrTo(config.Duration(300 * time.Millisecond))}, 0)
	pr, pw := io.Pipe()
	go func() {
		for range 10 {
			time.Sleep(100 * time.Millisecond)
			_, _ = io.WriteString(pw, "x")
		}
		pw.Close()
	}()
	req, _ := http.NewRequestWithContext(context.Background(), http.MethodPost, front+"/stream", pr)
	res, err := h2Client(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil || string(b) != "got xxxxxxxxxx" {
		t.Fatalf("body %q, err %v", b, err)
	}
	if n := upstreamErrors(t, prom); n != 0 {
		t.Errorf(`requests_total{code="error"} = %v, want 0`, n)
	}
}

// The route timeout still bounds the wait for the headers, whatever the
// read idle timeout.
func TestReadIdleTimeoutLeavesRouteTimeout(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
	}))
	t.Cleanup(up.Close)
	front, _, _ := idleFront(t, &config.Upstream{Targets: []config.Target{{URL: up.URL, Weight: 1}},
		Timeout: config.Duration(5 * time.Second), ReadIdleTimeout: ptrTo(config.Duration(time.Minute))}, 150*time.Millisecond)
	start := time.Now()
	res, err := http.Get(front + "/x")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusGatewayTimeout || !strings.Contains(string(b), "route_timeout") {
		t.Fatalf("status %d body %s", res.StatusCode, b)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("took %v", d)
	}
}

func ptrTo[T any](v T) *T { return &v }

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(3 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 3s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
