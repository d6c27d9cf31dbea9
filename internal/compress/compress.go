// Package compress is the response compression stage: it negotiates a
// content coding (zstd, br or gzip, in the order the config prefers) and
// compresses eligible responses on the fly.
//
// A response is compressed when the client accepts one of the configured
// codings, the body reaches the configured minimum size, the handler did
// not encode it already, the status carries a body (not 1xx, 204, 206 or
// 304), the request is not HEAD, the content type is compressible (JSON,
// text, JavaScript, XML, ...; never text/event-stream, whose events must
// reach the client one by one) and Cache-Control does not say
// no-transform. Up to the minimum size the body is buffered; past it, it
// streams through the encoder. Encoders are pooled, so a request costs no
// encoder allocation in the steady state.
package compress

import (
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"sync"

	"github.com/andybalholm/brotli"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// Codings, as they appear in Accept-Encoding and in the config.
const (
	Zstd   = "zstd"
	Brotli = "br"
	Gzip   = "gzip"
)

// Levels: chosen for speed on the request path; the ratio gained by higher
// levels costs several times the CPU.
const (
	gzipLevel   = 5
	brotliLevel = 5
	// zstdWindow stays within the 8 MiB that RFC 9659 lets HTTP clients
	// limit a window to, and keeps pooled encoders small.
	zstdWindow = 1 << 20
)

// Deps are the stage's dependencies.
type Deps struct {
	// Logger receives encoder failures (the response is already under
	// way by then). Nil discards.
	Logger *slog.Logger
}

// encoder is what the three codecs have in common.
type encoder interface {
	io.Writer
	Flush() error
	Close() error
	Reset(io.Writer)
}

// zstdEncoder adapts Reset, which has no result in the interface.
type zstdEncoder struct{ *zstd.Encoder }

func (z zstdEncoder) Reset(w io.Writer) { z.Encoder.Reset(w) }

type stage struct {
	prefs    []string
	minBytes int
	log      *slog.Logger
	pools    map[string]*sync.Pool // coding -> encoder
	writers  sync.Pool             // *writer
}

// Middleware returns the compression stage for the codings encodings (in
// order of preference; "zstd", "br", "gzip") and bodies of at least
// minBytes (0 compresses every non-empty eligible body). No codings gives a
// stage that passes everything through.
func Middleware(encodings []string, minBytes int64, deps Deps) (func(http.Handler) http.Handler, error) {
	if minBytes < 0 {
		return nil, fmt.Errorf("compress: negative minimum size %d", minBytes)
	}
	if minBytes > 64<<20 {
		return nil, fmt.Errorf("compress: minimum size %d is larger than 64MiB, which would be buffered per response", minBytes)
	}
	if len(encodings) == 0 {
		return func(next http.Handler) http.Handler { return next }, nil
	}
	s := &stage{
		prefs:    make([]string, 0, len(encodings)),
		minBytes: int(minBytes),
		log:      deps.Logger,
		pools:    make(map[string]*sync.Pool, len(encodings)),
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	for _, enc := range encodings {
		if _, dup := s.pools[enc]; dup {
			return nil, fmt.Errorf("compress: %q listed twice", enc)
		}
		var newEnc func() encoder
		switch enc {
		case Gzip:
			newEnc = func() encoder {
				w, _ := gzip.NewWriterLevel(io.Discard, gzipLevel) // the level is valid
				return w
			}
		case Brotli:
			newEnc = func() encoder { return brotli.NewWriterLevel(io.Discard, brotliLevel) }
		case Zstd:
			opts := []zstd.EOption{
				zstd.WithEncoderConcurrency(1),
				zstd.WithEncoderLevel(zstd.SpeedDefault),
				zstd.WithLowerEncoderMem(true),
				zstd.WithWindowSize(zstdWindow),
			}
			// Build one now so that an option error surfaces here.
			first, err := zstd.NewWriter(io.Discard, opts...)
			if err != nil {
				return nil, fmt.Errorf("compress: zstd: %w", err)
			}
			_ = first.Close()
			p := &sync.Pool{}
			p.Put(zstdEncoder{first})
			p.New = func() any {
				z, _ := zstd.NewWriter(io.Discard, opts...)
				return zstdEncoder{z}
			}
			s.pools[enc] = p
			s.prefs = append(s.prefs, enc)
			continue
		default:
			return nil, fmt.Errorf("compress: unknown coding %q (want zstd, br or gzip)", enc)
		}
		s.pools[enc] = &sync.Pool{New: func() any { return newEnc() }}
		s.prefs = append(s.prefs, enc)
	}
	return s.wrap, nil
}

func (s *stage) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cw, _ := s.writers.Get().(*writer)
		if cw == nil {
			cw = &writer{s: s}
		}
		cw.rw = w
		cw.coding = Negotiate(acceptEncoding(r.Header), s.prefs)
		cw.head = r.Method == http.MethodHead
		cw.req = r
		next.ServeHTTP(cw, r)
		// Not deferred: after a panic the response is the recover stage's
		// business, and flushing a half-written body would only get in its
		// way. The writer is then simply not reused.
		cw.finish()
		cw.reset()
		s.writers.Put(cw)
	})
}

// acceptEncoding returns the request's Accept-Encoding; several field
// lines are one comma-separated list (RFC 9110 section 5.3).
func acceptEncoding(h http.Header) string {
	switch v := h["Accept-Encoding"]; len(v) {
	case 0:
		return ""
	case 1:
		return v[0]
	default:
		return strings.Join(v, ",")
	}
}

type state uint8

const (
	undecided state = iota // buffering up to minBytes
	passing                // headers sent, body unchanged
	encoding               // headers sent, body through enc
)

// writer is the ResponseWriter the handler sees.
type writer struct {
	s      *stage
	rw     http.ResponseWriter
	coding string // negotiated; "" means the client gets identity
	head   bool
	req    *http.Request // read for a 304 only (see notModified)
	status int           // 0 until the handler writes a header or body
	state  state
	buf    []byte
	enc    encoder
	err    error
}

var (
	_ http.ResponseWriter                       = (*writer)(nil)
	_ http.Flusher                              = (*writer)(nil)
	_ interface{ FlushError() error }           = (*writer)(nil)
	_ interface{ Unwrap() http.ResponseWriter } = (*writer)(nil)
)

func (w *writer) reset() {
	w.rw, w.coding, w.head, w.req, w.status, w.state, w.enc, w.err = nil, "", false, nil, 0, undecided, nil, nil
	if cap(w.buf) > 64<<10 {
		w.buf = nil // do not pin a large minimum's buffer in the pool
	}
	w.buf = w.buf[:0]
}

func (w *writer) Header() http.Header { return w.rw.Header() }

// Unwrap lets http.ResponseController reach the underlying writer
// (deadlines, hijacking, full duplex).
func (w *writer) Unwrap() http.ResponseWriter { return w.rw }

func (w *writer) WriteHeader(code int) {
	if code >= 100 && code <= 199 && code != http.StatusSwitchingProtocols {
		w.rw.WriteHeader(code) // informational (103 Early Hints) passes at once
		return
	}
	if w.status != 0 {
		return // superfluous, as net/http treats it
	}
	w.status = code
	if !w.eligible() {
		w.pass()
		return
	}
	// A declared length below the minimum needs no buffering to decide.
	if cl := w.rw.Header().Get("Content-Length"); cl != "" {
		if n, err := strconv.ParseInt(cl, 10, 64); err == nil && n < int64(w.s.minBytes) {
			w.pass()
		}
	}
}

func (w *writer) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	switch w.state {
	case passing:
		return w.rw.Write(p)
	case encoding:
		if w.err != nil {
			return 0, w.err
		}
		n, err := w.enc.Write(p)
		if err != nil {
			w.err = err
		}
		return n, err
	}
	if len(w.buf)+len(p) < w.s.minBytes || len(p) == 0 {
		w.buf = append(w.buf, p...)
		return len(p), nil
	}
	// Reached the minimum: compress what was buffered and this write.
	if err := w.start(p); err != nil {
		return 0, err
	}
	return w.Write(p)
}

// eligible says whether this response may be compressed for this client.
func (w *writer) eligible() bool {
	return w.coding != "" && !w.head && w.varies()
}

// varies says whether the response would be compressed for a client that
// accepts a coding, so that caches must key it by Accept-Encoding.
func (w *writer) varies() bool {
	switch s := w.status; {
	case s < 200, s == http.StatusNoContent, s == http.StatusPartialContent, s == http.StatusNotModified:
		return false
	}
	h := w.rw.Header()
	if h.Get("Content-Encoding") != "" || h.Get("Content-Range") != "" {
		return false
	}
	if ct := h.Get("Content-Type"); ct != "" && !Compressible(ct) {
		return false
	}
	return !hasToken(h.Values("Cache-Control"), "no-transform")
}

// start decides for compression (re-checking the content type if the
// handler left it to sniffing), sends the headers and feeds the buffer to
// the encoder.
func (w *writer) start(next []byte) error {
	h := w.rw.Header()
	if h.Get("Content-Type") == "" {
		// Sniff as net/http would: the first 512 bytes of the body.
		sample := w.buf
		if len(sample) < 512 && len(next) > 0 {
			sample = append(sample, next[:min(len(next), 512-len(sample))]...)
		}
		if _, typed := h["Content-Type"]; typed || len(sample) == 0 {
			// Sniffing suppressed (a nil or empty Content-Type), or a
			// flush before any byte: the type is unknown, and net/http
			// would send none. Labelled text/plain and encoded, a binary
			// stream would arrive mislabelled.
			w.pass()
			return w.flushBuf()
		}
		ct := http.DetectContentType(sample)
		h.Set("Content-Type", ct)
		if !Compressible(ct) {
			w.pass()
			return w.flushBuf()
		}
	}
	addVary(h)
	h.Del("Content-Length")
	h.Del("Accept-Ranges") // byte ranges of the encoded body are not offered
	// Digests of the upstream's bytes (RFC 9530, and RFC 3230's Digest)
	// would not match the encoded ones: a client checking them would
	// refuse a sound body.
	h.Del("Content-Digest")
	h.Del("Repr-Digest")
	h.Del("Digest")
	h.Set("Content-Encoding", w.coding)
	// The encoded representation is another one: a strong validator of
	// the identity body must not claim byte equality with it.
	if et := h.Get("Etag"); et != "" && !strings.HasPrefix(et, "W/") {
		h.Set("Etag", "W/"+et)
	}
	w.rw.WriteHeader(w.status)
	w.state = encoding
	w.enc = w.s.pools[w.coding].Get().(encoder)
	w.enc.Reset(w.rw)
	if len(w.buf) > 0 {
		if _, err := w.enc.Write(w.buf); err != nil {
			w.err = err
			return err
		}
		w.buf = w.buf[:0]
	}
	return nil
}

// pass sends the headers for an unchanged body.
func (w *writer) pass() {
	if w.status == http.StatusNotModified {
		w.notModified(w.rw.Header())
	} else if w.varies() {
		addVary(w.rw.Header())
	}
	w.rw.WriteHeader(w.status)
	w.state = passing
}

// notModified gives a 304 the Vary and ETag the 200 would have carried
// (RFC 9110 section 15.4.5): Vary: Accept-Encoding unless the response
// could not have been compressed, and the weak form of a strong ETag when
// the client revalidates with it, since only the compressed variant
// carries it. Left strong, the cache would store a strong validator for
// the compressed body.
func (w *writer) notModified(h http.Header) {
	if h.Get("Content-Encoding") != "" || hasToken(h.Values("Cache-Control"), "no-transform") {
		return
	}
	if ct := h.Get("Content-Type"); ct != "" && !Compressible(ct) {
		return
	}
	addVary(h)
	et := h.Get("Etag")
	if et == "" || strings.HasPrefix(et, "W/") || w.req == nil {
		return
	}
	for _, v := range w.req.Header.Values("If-None-Match") {
		for tag := range strings.SplitSeq(v, ",") {
			if strings.TrimSpace(tag) == "W/"+et {
				h.Set("Etag", "W/"+et)
				return
			}
		}
	}
}

func (w *writer) flushBuf() error {
	if len(w.buf) == 0 {
		return nil
	}
	_, err := w.rw.Write(w.buf)
	w.buf = w.buf[:0]
	return err
}

// FlushError sends what the handler wrote so far. A streaming handler
// that flushes before the minimum size is reached gets compression at
// once: a stream's total size is unknown, and its later chunks gain.
func (w *writer) FlushError() error {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	switch w.state {
	case undecided:
		if err := w.start(nil); err != nil {
			return err
		}
		if w.state == passing {
			break
		}
		fallthrough
	case encoding:
		if w.err != nil {
			return w.err
		}
		if err := w.enc.Flush(); err != nil {
			w.err = err
			return err
		}
	}
	return http.NewResponseController(w.rw).Flush()
}

// Flush implements http.Flusher.
func (w *writer) Flush() { _ = w.FlushError() }

// finish completes the response after the handler returned.
func (w *writer) finish() {
	switch w.state {
	case undecided:
		if w.status == 0 && len(w.buf) == 0 {
			return // nothing written: net/http sends its empty 200
		}
		if w.status == 0 {
			w.status = http.StatusOK
		}
		// Below the minimum: send as is, with its exact length.
		h := w.rw.Header()
		if _, typed := h["Content-Type"]; !typed && len(w.buf) > 0 {
			h.Set("Content-Type", http.DetectContentType(w.buf))
		}
		if h.Get("Content-Length") == "" && !w.head {
			h.Set("Content-Length", strconv.Itoa(len(w.buf)))
		}
		w.pass()
		if err := w.flushBuf(); err != nil {
			w.s.log.Debug("compress: writing a small body", slog.Any("error", err))
		}
	case encoding:
		if err := w.enc.Close(); err != nil && w.err == nil {
			w.s.log.Debug("compress: closing the encoder", slog.String("coding", w.coding), slog.Any("error", err))
		}
		w.enc.Reset(io.Discard) // drop the reference to the response
		w.s.pools[w.coding].Put(w.enc)
	}
}

// Compressible reports whether a media type gains from compression:
// text (except event streams), JSON, JavaScript, XML and a few more.
func Compressible(contentType string) bool {
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil {
		mt = strings.ToLower(strings.TrimSpace(strings.SplitN(contentType, ";", 2)[0]))
	}
	if strings.HasPrefix(mt, "text/") {
		return mt != "text/event-stream"
	}
	if strings.HasPrefix(mt, "application/grpc") {
		// gRPC frames its own (optionally compressed) messages; an HTTP
		// Content-Encoding would break every client.
		return false
	}
	if strings.HasSuffix(mt, "+json") || strings.HasSuffix(mt, "+xml") {
		return true
	}
	switch mt {
	case "application/json", "application/javascript", "application/ecmascript", "application/x-javascript",
		"application/xml", "application/x-ndjson", "application/yaml", "application/x-yaml", "application/toml",
		"application/x-www-form-urlencoded", "application/wasm", "image/svg+xml", "image/x-icon",
		"font/ttf", "font/otf", "application/vnd.ms-fontobject":
		return true
	}
	return false
}

func addVary(h http.Header) {
	if !hasToken(h.Values("Vary"), "Accept-Encoding") && !hasToken(h.Values("Vary"), "*") {
		h.Add("Vary", "Accept-Encoding")
	}
}

// hasToken reports whether a comma-separated header field lists token
// (case-insensitively).
func hasToken(values []string, token string) bool {
	for _, v := range values {
		for v != "" {
			var t string
			t, v, _ = strings.Cut(v, ",")
			t = strings.TrimSpace(t)
			if k, _, _ := strings.Cut(t, "="); strings.EqualFold(strings.TrimSpace(k), token) {
				return true
			}
		}
	}
	return false
}
