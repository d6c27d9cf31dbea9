package telemetry

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/portico-gw/portico/internal/reqctx"
)

// defaultRedacted are query parameter names whose values never reach the
// access log: credentials passed in URLs.
var defaultRedacted = []string{"token", "access_token", "api_key", "apikey", "key", "password", "secret", "signature", "sig"}

const redactedValue = "REDACTED"

// accessLog moves lines from requests to one writer goroutine through a
// bounded channel of pooled buffers. Requests never wait: when the channel is
// full the line is dropped and counted, so a slow stdout pipe costs log lines,
// not latency. The channel is never closed (a late sender must not panic);
// stop tells the writer to drain it and finish.
type accessLog struct {
	ch      chan *[]byte
	pool    sync.Pool
	dropped prometheus.Counter
	out     io.Writer
	stop    chan struct{}
	done    chan struct{}
	once    sync.Once
	closed  atomic.Bool
}

func newAccessLog(out io.Writer, size int, dropped prometheus.Counter) *accessLog {
	a := &accessLog{ch: make(chan *[]byte, size), dropped: dropped, out: out,
		stop: make(chan struct{}), done: make(chan struct{})}
	a.pool.New = func() any { b := make([]byte, 0, 512); return &b }
	go a.run()
	return a
}

// maxBatch is how many bytes the writer gathers into one write.
const maxBatch = 64 << 10

func (a *accessLog) run() {
	defer close(a.done)
	batch := make([]byte, 0, maxBatch)
	// Not a bufio.Writer: its first write error is final, which would stop
	// the log silently until a restart. A failed write costs the lines it
	// carried (counted as dropped); the next one is tried afresh, so a disk
	// that was full or a pipe reader that restarted gets lines again.
	torn := false // a failed write cut a line: the next batch ends it first
	flush := func() {
		if len(batch) == 0 {
			return
		}
		n, err := a.out.Write(batch)
		if err != nil || n < len(batch) {
			n = min(max(n, 0), len(batch))
			lost := bytes.Count(batch[n:], []byte{'\n'})
			if torn && n == 0 {
				lost-- // the newline that ends the torn line is no log line
			}
			a.dropped.Add(float64(lost))
			torn = (torn && n == 0) || (n > 0 && batch[n-1] != '\n')
		} else {
			torn = false
		}
		if cap(batch) > 4*maxBatch {
			batch = make([]byte, 0, maxBatch) // do not keep a huge line's batch
		}
		batch = batch[:0]
		if torn {
			batch = append(batch, '\n')
		}
	}
	write := func(b *[]byte) {
		if len(batch)+len(*b) > maxBatch && !(torn && len(batch) == 1) {
			flush()
		}
		batch = append(batch, *b...)
		a.put(b)
	}
	for {
		select {
		case b := <-a.ch:
			write(b)
			// Flush when the queue is empty so lines appear promptly at low
			// traffic and are batched into large writes at high traffic.
			if len(a.ch) == 0 {
				flush()
			}
		case <-a.stop:
			for {
				select {
				case b := <-a.ch:
					write(b)
				default:
					flush()
					return
				}
			}
		}
	}
}

func (a *accessLog) get() *[]byte {
	b := a.pool.Get().(*[]byte)
	*b = (*b)[:0]
	return b
}

func (a *accessLog) put(b *[]byte) {
	if cap(*b) > 64<<10 {
		return // do not keep a huge line's buffer alive
	}
	a.pool.Put(b)
}

// send queues b or drops it (counted). After close, lines are discarded.
func (a *accessLog) send(b *[]byte) {
	if a.closed.Load() {
		a.put(b)
		return
	}
	select {
	case a.ch <- b:
	default:
		a.dropped.Inc()
		a.put(b)
	}
}

// closeWait bounds how long close waits for the queued lines (a variable
// for tests): a stdout that nobody reads must not keep a stopping process
// from exiting.
var closeWait = 5 * time.Second

// errLogBlocked is close's answer when the writer did not finish in time.
var errLogBlocked = errors.New("access log: the writer is blocked; lines still queued are lost")

// close stops accepting lines and waits until the queued ones are written,
// or closeWait passed.
func (a *accessLog) close() error {
	err := error(nil)
	a.once.Do(func() {
		a.closed.Store(true)
		close(a.stop)
		t := time.NewTimer(closeWait)
		defer t.Stop()
		select {
		case <-a.done:
		case <-t.C:
			err = errLogBlocked
		}
	})
	return err
}

// SetAccessLog turns the access log on or off (logging.access_log, followed
// on reload).
func (t *Telemetry) SetAccessLog(enabled bool) { t.accessOn.Store(enabled) }

// SetRedactedQueryParams adds query parameter names (case-insensitive) whose
// values are replaced in logged paths, e.g. the query names API-key and JWT
// providers read credentials from. It replaces the previous extra names; the
// built-in ones always apply.
func (t *Telemetry) SetRedactedQueryParams(names []string) {
	all := append(append([]string(nil), defaultRedacted...), names...)
	t.redact.Store(&all)
}

func (t *Telemetry) redacted(name string) bool {
	names := defaultRedacted
	if p := t.redact.Load(); p != nil {
		names = *p
	}
	for _, n := range names {
		if strings.EqualFold(n, name) {
			return true
		}
	}
	return false
}

func (t *Telemetry) logAccess(route string, r *http.Request, info *reqctx.Info, o outcome, bytes int64, d time.Duration, end time.Time) {
	bp := t.alog.get()
	b := *bp
	b = append(b, `{"time":"`...)
	b = end.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","route":`...)
	b = appendJSONString(b, route)
	b = append(b, `,"method":`...)
	b = appendJSONString(b, r.Method)
	b = append(b, `,"path":`...)
	b = t.appendPath(b, r)
	// status is what went out on the wire; outcome_status, present only
	// when it differs, is what the metrics counted.
	sent := o.sent
	if sent == 0 {
		sent = o.status
	}
	b = append(b, `,"status":`...)
	b = strconv.AppendInt(b, int64(sent), 10)
	if o.aborted {
		b = append(b, `,"aborted":true`...)
	}
	switch o.grpc {
	case grpcStatus:
		b = append(b, `,"grpc_status":`...)
		b = strconv.AppendInt(b, int64(o.grpcCode), 10)
	case grpcMissing:
		b = append(b, `,"grpc_status":null`...)
	}
	if o.status != sent {
		b = append(b, `,"outcome_status":`...)
		b = strconv.AppendInt(b, int64(o.status), 10)
	}
	b = append(b, `,"bytes":`...)
	b = strconv.AppendInt(b, bytes, 10)
	b = append(b, `,"duration_ms":`...)
	b = strconv.AppendFloat(b, float64(d.Microseconds())/1e3, 'f', 3, 64)
	var upstream, requestID, traceID string
	if info != nil {
		upstream, requestID, traceID = info.Upstream, info.RequestID, info.TraceID
	}
	b = append(b, `,"upstream":`...)
	b = appendJSONString(b, upstream)
	b = append(b, `,"request_id":`...)
	b = appendJSONString(b, requestID)
	b = append(b, `,"trace_id":`...)
	b = appendJSONString(b, traceID)
	b = append(b, `,"client_ip":"`...)
	if info != nil && info.ClientIP.IsValid() {
		b = info.ClientIP.AppendTo(b)
	} else if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		b = appendJSONBody(b, host)
	}
	b = append(b, "\"}\n"...)
	*bp = b
	t.alog.send(bp)
}

// appendPath writes the escaped path and the query with the values of
// credential parameters replaced, as a JSON string.
func (t *Telemetry) appendPath(b []byte, r *http.Request) []byte {
	b = append(b, '"')
	b = appendJSONBody(b, r.URL.EscapedPath())
	q := r.URL.RawQuery
	if q == "" {
		return append(b, '"')
	}
	b = append(b, '?')
	first := true
	for q != "" {
		var part string
		part, q, _ = strings.Cut(q, "&")
		if !first {
			b = append(b, '&')
		}
		first = false
		name, _, hasValue := strings.Cut(part, "=")
		if hasValue && t.redacted(queryName(name)) {
			b = appendJSONBody(b, name)
			b = append(b, "="+redactedValue...)
			continue
		}
		b = appendJSONBody(b, part)
	}
	return append(b, '"')
}

// queryName decodes an escaped parameter name (so "api%5Fkey" is caught);
// names without escapes are returned without allocating.
func queryName(s string) string {
	if !strings.ContainsAny(s, "%+") {
		return s
	}
	if u, err := url.QueryUnescape(s); err == nil {
		return u
	}
	return s
}

// appendJSONString appends s as a quoted JSON string.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	b = appendJSONBody(b, s)
	return append(b, '"')
}

const hexDigits = "0123456789abcdef"

// appendJSONBody appends s escaped for the inside of a JSON string; invalid
// UTF-8 becomes U+FFFD so every line stays valid JSON.
func appendJSONBody(b []byte, s string) []byte {
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != 0x7f {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i++
			start = i
			continue
		}
		i += size
	}
	return append(b, s[start:]...)
}
