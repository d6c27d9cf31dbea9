package upstream

import (
	"context"
	"errors"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/portico-gw/portico/internal/config"
)

// Calls sent under a cancel group all stop when its context is cancelled,
// the ones joining after the cancellation too, and nothing stays in flight.
func TestCancelGroupStopsEveryCall(t *testing.T) {
	srv := newConnCounter(t, func(w http.ResponseWriter, r *http.Request) {
		sleepOrDone(r.Context(), 10*time.Second)
	})
	env := newEnv(t, nil)
	p := env.apply(t, &config.Upstream{Targets: targets(srv.URL)})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	gctx, release := WithCancelGroup(ctx)
	defer release()
	var calls []Pending
	for range 3 {
		calls = append(calls, mustSend(t, p, newSendReq(t, gctx, http.MethodGet, "/")))
	}
	time.AfterFunc(50*time.Millisecond, cancel)
	start := time.Now()
	for i, c := range calls {
		if res, err := c.Wait(); !errors.Is(err, context.Canceled) {
			if res != nil {
				res.Body.Close()
			}
			t.Fatalf("call %d: err %v, want context.Canceled", i, err)
		}
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("the calls ended after %v, not when the context was cancelled", d)
	}
	late := mustSend(t, p, newSendReq(t, gctx, http.MethodGet, "/"))
	if res, err := late.Wait(); !errors.Is(err, context.Canceled) {
		if res != nil {
			res.Body.Close()
		}
		t.Fatalf("a call sent after the cancellation: err %v, want context.Canceled", err)
	}
	assertNoInflight(t, env.reg)
}

// A call that ended gave its connection back to the pool; cancelling the
// group afterwards must not touch that connection, which the next request
// (from anyone) reuses.
func TestCancelGroupLeavesFinishedConnectionsAlone(t *testing.T) {
	srv := newConnCounter(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ok")
	})
	env := newEnv(t, nil)
	p := env.apply(t, &config.Upstream{Targets: targets(srv.URL)})
	ctx, cancel := context.WithCancel(context.Background())
	gctx, release := WithCancelGroup(ctx)
	if _, body, err := waitBody(mustSend(t, p, newSendReq(t, gctx, http.MethodGet, "/"))); err != nil || body != "ok" {
		t.Fatalf("body %q err %v", body, err)
	}
	cancel()
	release()
	time.Sleep(20 * time.Millisecond) // the context's hook runs on a goroutine of its own
	if _, body, err := waitBody(mustSend(t, p, newSendReq(t, context.Background(), http.MethodGet, "/"))); err != nil || body != "ok" {
		t.Fatalf("the next call on the pooled connection: body %q err %v", body, err)
	}
	if n := srv.conns.Load(); n != 1 {
		t.Fatalf("%d connections, want 1: the finished call's connection was spoiled", n)
	}
	assertNoInflight(t, env.reg)
}

// A group reacts to cancellation only: its context's deadline is each
// call's connection deadline, so an answer that arrived before it is still
// read after it.
func TestCancelGroupIgnoresTheDeadline(t *testing.T) {
	answered := make(chan struct{}, 1)
	srv := newConnCounter(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "in time")
		w.(http.Flusher).Flush()
		answered <- struct{}{}
	})
	env := newEnv(t, nil)
	p := env.apply(t, &config.Upstream{Targets: targets(srv.URL)})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	gctx, release := WithCancelGroup(ctx)
	defer release()
	c := mustSend(t, p, newSendReq(t, gctx, http.MethodGet, "/"))
	<-answered
	<-ctx.Done()
	time.Sleep(20 * time.Millisecond) // past the deadline, as a caller busy elsewhere
	if _, body, err := waitBody(c); err != nil || body != "in time" {
		t.Fatalf("body %q err %v, want the answer that came in time", body, err)
	}
	assertNoInflight(t, env.reg)
}
