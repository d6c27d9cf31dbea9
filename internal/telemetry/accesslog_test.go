package telemetry

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// flakyWriter fails its first fail writes (a full disk, a pipe the reader
// is restarting), after writing partial bytes of each, and then accepts
// everything; each call is signalled.
type flakyWriter struct {
	mu      sync.Mutex
	fail    int
	partial int
	calls   chan struct{}
	out     strings.Builder
}

func (f *flakyWriter) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer func() {
		f.mu.Unlock()
		select {
		case f.calls <- struct{}{}:
		default:
		}
	}()
	if f.fail > 0 {
		f.fail--
		n, _ := f.out.Write(p[:min(f.partial, len(p))])
		return n, syscall.ENOSPC
	}
	return f.out.Write(p)
}

func (f *flakyWriter) lines() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return strings.Split(strings.TrimSuffix(f.out.String(), "\n"), "\n")
}

// TestAccessLogRecoversAfterWriteError: one failed write costs the lines it
// carried (counted as dropped), not every line until the next restart; a
// line a failed write cut is ended, so the next ones stay whole.
func TestAccessLogRecoversAfterWriteError(t *testing.T) {
	for _, partial := range []int{0, 40} {
		t.Run(fmt.Sprintf("%d bytes written", partial), func(t *testing.T) {
			fw := &flakyWriter{fail: 1, partial: partial, calls: make(chan struct{}, 1)}
			tel := New(Deps{AccessLog: fw})
			srv := httptest.NewServer(gatewayLike(tel, "posts"))
			defer srv.Close()
			get := func(q string) {
				t.Helper()
				resp, err := http.Get(srv.URL + "/posts?n=" + q)
				if err != nil {
					t.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			get("1")
			select { // the writer tried, and failed, to write the first line
			case <-fw.calls:
			case <-time.After(10 * time.Second):
				t.Fatal("the access log never wrote")
			}
			get("2")
			get("3")
			if err := tel.Close(); err != nil {
				t.Fatal(err)
			}
			lines := fw.lines()
			if partial > 0 {
				if len(lines) == 0 || len(lines[0]) != partial {
					t.Fatalf("the torn line is not ended: %q", lines)
				}
				lines = lines[1:]
			}
			if len(lines) != 2 || !strings.Contains(lines[0], "n=2") || !strings.Contains(lines[1], "n=3") {
				t.Fatalf("written after the failed write: %q, want the lines of n=2 and n=3", lines)
			}
			for _, l := range lines {
				if !json.Valid([]byte(l)) {
					t.Errorf("torn line %q", l)
				}
			}
			got, _ := scrape(t, tel)
			if d := got["portico_access_log_dropped_total"]; d != 1 {
				t.Errorf("portico_access_log_dropped_total = %v, want 1 (the line the failed write carried)", d)
			}
		})
	}
}

// TestCloseWithBlockedLogWriter: a stdout nobody reads costs the queued
// lines at shutdown, not the process's exit.
func TestCloseWithBlockedLogWriter(t *testing.T) {
	defer func(d time.Duration) { closeWait = d }(closeWait)
	closeWait = 50 * time.Millisecond
	bw := &blockingWriter{release: make(chan struct{})}
	tel := New(Deps{AccessLog: bw})
	srv := httptest.NewServer(gatewayLike(tel, "posts"))
	resp, err := http.Get(srv.URL + "/posts")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	srv.Close()
	closed := make(chan error, 1)
	go func() { closed <- tel.Close() }()
	select {
	case err := <-closed:
		if !errors.Is(err, errLogBlocked) {
			t.Errorf("Close = %v, want %v", err, errLogBlocked)
		}
	case <-time.After(10 * time.Second):
		close(bw.release)
		t.Fatal("Close still waits for a blocked access-log writer")
	}
	close(bw.release) // lets the writer goroutine end (goleak)
	<-tel.alog.done
}
