package proxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"net/url"
	"strings"
	"sync/atomic"

	"golang.org/x/net/http/httpguts"
)

// forward is the proxy's own path for the common HTTP/1.x exchange: no
// protocol upgrade and no Expect. It does what ReverseProxy.ServeHTTP does
// for such a request, step for step (see canForward for what it leaves to
// ReverseProxy), without what made ReverseProxy the largest cost of a plain
// request: a second and third copy of the request (Clone, then WithContext
// for the client trace), a deep copy of the header, a new slice per
// response header, and mime.ParseMediaType on every answer. The gateway's
// BenchmarkPlainRoute makes 70 allocations per request instead of 82.
//
// The outbound header map is new but shares the inbound value slices. That
// is safe because nothing writes into a value slice of either map: the
// stages after this one (the upstream pool, the tracer) replace or delete
// whole entries, and nothing touches the inbound header once the outbound
// one is built. (An Add on the outbound map could append into a shared
// array with spare capacity, which textproto leaves after three or more
// lines of one field, but never over a value the inbound map can see.)
func (h *handler) forward(w http.ResponseWriter, r *http.Request, ex *exchange, body io.ReadCloser) {
	b := ex.b
	out := r.WithContext(httptrace.WithClientTrace(ex, &ex.trace))
	ex.url = *r.URL
	out.URL = &ex.url
	out.RequestURI = ""
	out.Close = false
	if r.ContentLength == 0 {
		out.Body = nil // as ReverseProxy: a nil body can be retried by any transport
	} else if body != nil {
		ex.reqBody.rc = body
		out.Body = &ex.reqBody
		defer func() {
			ex.reqBody.Close()
			// With full duplex the server leaves the rest of the body to
			// finishRequest, which discards it only after it stopped its
			// background read; the discard reaching the end then starts
			// one again, and the next request's read panics ("invalid
			// concurrent Body.Read call", the connection dropped). Closed
			// here, while the handler runs, the rest is discarded as it
			// is without full duplex. (A read the transport still has in
			// flight finishes first: the body serialises them.)
			_ = r.Body.Close()
		}()
		// The transport may still be sending the body when the answer
		// starts (an upstream that answers as it reads). Without full
		// duplex the server would read up to 256 KiB of what is left of
		// the body into the void as it writes the answer's header, and
		// the upstream would get a body with a hole in it. (A body sent
		// with Expect: 100-continue, which ReverseProxy carries, is not
		// read so.)
		_ = http.NewResponseController(w).EnableFullDuplex()
	}

	hdr := make(http.Header, len(r.Header)+5)
	for k, v := range r.Header {
		hdr[k] = v
	}
	removeHopByHop(hdr)
	if httpguts.HeaderValuesContainsToken(r.Header["Te"], "trailers") {
		hdr["Te"] = teTrailers
	}
	delete(hdr, "Forwarded")
	delete(hdr, "X-Forwarded-For")
	delete(hdr, "X-Forwarded-Host")
	delete(hdr, "X-Forwarded-Proto")
	out.Header = hdr
	ex.url.RawQuery = cleanQuery(ex.url.RawQuery)
	h.buildOutbound(ex, r, out)
	if _, ok := hdr["User-Agent"]; !ok {
		hdr["User-Agent"] = noUserAgent // keep the transport from adding its own
	}

	res, err := b.transport.RoundTrip(out)
	ex.endRoundTrip()
	if err != nil {
		h.handleError(w, out, err)
		return
	}
	if res.StatusCode == http.StatusSwitchingProtocols {
		// Nothing asked for an upgrade (those requests go through
		// ReverseProxy), so a 101 is the upstream's error.
		res.Body.Close()
		h.handleError(w, out, errUnaskedUpgrade)
		return
	}
	removeHopByHop(res.Header)
	if err := h.shapeResponse(ex, res); err != nil {
		res.Body.Close()
		h.handleError(w, out, err)
		return
	}

	wh := w.Header()
	for k, vv := range res.Header {
		if prior, ok := wh[k]; ok {
			wh[k] = append(prior, vv...)
		} else {
			wh[k] = vv // the response is ours alone: no copy needed
		}
	}
	announced := len(res.Trailer)
	if announced > 0 {
		keys := make([]string, 0, announced)
		for k := range res.Trailer {
			keys = append(keys, k)
		}
		wh.Add("Trailer", strings.Join(keys, ", "))
	}
	w.WriteHeader(res.StatusCode)

	if err := h.copyBody(w, res, ex); err != nil {
		res.Body.Close()
		// Part of the answer is out; all that is left is to break the
		// client's connection (as ReverseProxy does, and the server
		// expects of http.ErrAbortHandler).
		panic(http.ErrAbortHandler)
	}
	res.Body.Close() // now, so that res.Trailer is filled in
	if len(res.Trailer) == 0 {
		return
	}
	// Trailers force chunking, even for a body short enough to be sent
	// with a Content-Length.
	_ = http.NewResponseController(w).Flush()
	if len(res.Trailer) == announced {
		for k, vv := range res.Trailer {
			wh[k] = vv
		}
		return
	}
	for k, vv := range res.Trailer {
		for _, v := range vv {
			wh.Add(http.TrailerPrefix+k, v)
		}
	}
}

// canForward reports whether forward serves r. Upgrades (the 101 and the
// tunnel behind it), Expect: 100-continue (the interim answer that must
// reach the client before its body) and HTTP/2 (gRPC, its trailers and
// streams) stay with ReverseProxy.
func canForward(r *http.Request) bool {
	return r.ProtoMajor == 1 && len(r.Header["Upgrade"]) == 0 && len(r.Header["Expect"]) == 0
}

var (
	teTrailers  = []string{"trailers"}
	noUserAgent = []string{""}
)

// hopByHop are the hop-by-hop headers of RFC 9110 section 7.6.1 and those
// RFC 2616 listed, as ReverseProxy removes them.
var hopByHop = [...]string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// removeHopByHop removes the hop-by-hop headers and those named in
// Connection.
func removeHopByHop(h http.Header) {
	for _, f := range h["Connection"] {
		for sf := range strings.SplitSeq(f, ",") {
			if sf = textproto.TrimString(sf); sf != "" {
				delete(h, http.CanonicalHeaderKey(sf))
			}
		}
	}
	for _, k := range hopByHop {
		delete(h, k)
	}
}

// maxQueryParams is net/url's default bound on the parameters ParseQuery
// accepts.
const maxQueryParams = 10000

// cleanQuery re-encodes a query that an upstream could parse differently
// from us: one with a ';' (a separator to some servers, not to Go), a
// malformed escape, or more parameters than ParseQuery takes. Parameters
// that do not parse are dropped, as ReverseProxy does.
func cleanQuery(q string) string {
	if strings.Count(q, "&")+1 > maxQueryParams {
		return reencodeQuery(q)
	}
	for i := 0; i < len(q); {
		switch q[i] {
		case ';':
			return reencodeQuery(q)
		case '%':
			if i+2 >= len(q) || !isHex(q[i+1]) || !isHex(q[i+2]) {
				return reencodeQuery(q)
			}
			i += 3
		default:
			i++
		}
	}
	return q
}

func reencodeQuery(q string) string {
	v, _ := url.ParseQuery(q)
	return v.Encode()
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// copyBody streams the answer to the client. Server-sent events and
// answers of unknown length are flushed as they come, the rest goes
// through the server's buffer (ReverseProxy's rule). A failed read of the
// upstream's body is logged; either failure is returned.
func (h *handler) copyBody(w http.ResponseWriter, res *http.Response, ex *exchange) error {
	buf := h.buffers.Get()
	defer h.buffers.Put(buf)
	var rc *http.ResponseController
	if res.ContentLength == -1 || isEventStream(res.Header) {
		rc = http.NewResponseController(w)
		_ = rc.Flush() // the header now, even if the body is slow to start
	}
	for {
		n, rerr := res.Body.Read(buf)
		if n > 0 {
			if _, err := w.Write(buf[:n]); err != nil {
				return err
			}
			if rc != nil {
				_ = rc.Flush()
			}
		}
		switch {
		case rerr == io.EOF:
			return nil
		case rerr != nil:
			if !errors.Is(rerr, context.Canceled) {
				h.logBodyError(ex, rerr)
			}
			return rerr
		}
	}
}

// logBodyError logs a failed read of the upstream's body, which cuts the
// answer short ("error during body copy", as ReverseProxy words it).
func (h *handler) logBodyError(ex *exchange, err error) {
	h.logExchange(ex, slog.LevelWarn, "proxy: read error during body copy", ex, err)
}

// isEventStream reports whether the answer is text/event-stream.
func isEventStream(h http.Header) bool {
	ct := h["Content-Type"]
	if len(ct) == 0 {
		return false
	}
	mt, _, _ := strings.Cut(ct[0], ";")
	return strings.EqualFold(strings.TrimSpace(mt), "text/event-stream")
}

// noCloseBody passes reads to the client's body. Close only marks it
// closed: the transport closes the body it was given, also when it fails
// early, and the client's body must stay open for the server; a read after
// the exchange ended fails instead of touching the server's body (as
// ReverseProxy's own wrapper does).
type noCloseBody struct {
	rc     io.ReadCloser
	closed atomic.Bool
}

func (b *noCloseBody) Read(p []byte) (int, error) {
	if b.closed.Load() {
		return 0, errBodyAfterExchange
	}
	return b.rc.Read(p)
}

func (b *noCloseBody) Close() error {
	b.closed.Store(true)
	return nil
}

var errBodyAfterExchange = errors.New("proxy: request body read after the exchange ended")

// got1xx passes an informational answer (103 Early Hints, say) on to the
// client while the exchange waits for the final one. The 1xx carries the
// upstream's fields alone: what earlier stages set on w (request id, CORS
// and rate-limit headers) is set aside and kept for the final answer.
// (ReverseProxy's own hook sends those with the 1xx and then drops them;
// swapTrace keeps it from running.)
func (ex *exchange) got1xx(code int, header textproto.MIMEHeader) error {
	ex.mu.Lock()
	defer ex.mu.Unlock()
	if ex.roundTripped {
		return nil // the final answer is being written; leave its header alone
	}
	if ex.http10 {
		// An HTTP/1.0 client would take the 1xx for the final answer:
		// RFC 9110 section 15.2 forbids sending it one.
		return nil
	}
	wh := ex.w.Header()
	kept := maps.Clone(wh) // only on a 1xx, which is rare
	clear(wh)
	for k, vv := range header {
		wh[k] = vv
	}
	ex.w.WriteHeader(code)
	// WriteHeader does not clear the header after a 1xx.
	clear(wh)
	maps.Copy(wh, kept)
	return nil
}

// swapTrace is the transport ReverseProxy is given: it hands 1xx answers
// to the exchange's hook (got1xx) instead of ReverseProxy's, by sending the
// request with a context that carries the exchange's client trace instead
// of ReverseProxy's. Only what forward leaves to ReverseProxy pays the
// request copy this costs.
type swapTrace struct{ next http.RoundTripper }

func (s swapTrace) RoundTrip(req *http.Request) (*http.Response, error) {
	ex := exchangeFrom(req.Context())
	if ex == nil {
		return s.next.RoundTrip(req)
	}
	res, err := s.next.RoundTrip(req.WithContext(httptrace.WithClientTrace(ex, &ex.trace)))
	ex.endRoundTrip()
	return res, err
}

// endRoundTrip marks the final answer as arrived: a 1xx that the transport
// reports after it no longer touches the client's header.
func (ex *exchange) endRoundTrip() {
	ex.mu.Lock()
	ex.roundTripped = true
	ex.mu.Unlock()
}
