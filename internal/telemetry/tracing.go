package telemetry

import (
	"context"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/portico-gw/portico/internal/config"
	"github.com/portico-gw/portico/internal/reqctx"
	"github.com/portico-gw/portico/internal/upstream"
)

// tracer is the tracing mode in force. Without export (provider nil) the
// middleware still continues an inbound W3C trace or starts one, with ids
// from the runtime's cheap per-thread generator, so upstreams and logs share
// a trace id; no span is recorded. With export every request gets a server
// span through the OpenTelemetry SDK, sampled by ParentBased(ratio).
type tracer struct {
	cfg      config.Tracing
	ratio    float64
	provider *sdktrace.TracerProvider
	tr       trace.Tracer
}

var propagator = propagation.TraceContext{}

func lightTracer() *tracer { return &tracer{} }

// flushTimeout bounds the flush of a replaced or closed exporter (a
// variable for tests).
var flushTimeout = 5 * time.Second

func (tr *tracer) shutdown() error {
	if tr.provider == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), flushTimeout)
	defer cancel()
	return tr.provider.Shutdown(ctx)
}

// ApplyTracing follows the tracing section of a (re)loaded config. nil
// stops export (trace context is still propagated). A changed config
// replaces the exporter; the old one is flushed (bounded by 5 s) after.
// It fails only on a config it cannot use, and then changes nothing; a
// flush that fails (a collector down) is logged, since the new settings
// are in force by then and the reload must not be reported as refused.
func (t *Telemetry) ApplyTracing(cfg *config.Tracing) error {
	if cfg == nil {
		t.retireTracer(t.tracing.Swap(lightTracer()))
		return nil
	}
	ratio := 1.0
	if cfg.SampleRatio != nil {
		ratio = *cfg.SampleRatio
	}
	if ratio < 0 || ratio > 1 {
		return fmt.Errorf("tracing.sample_ratio: %v is not between 0 and 1", ratio)
	}
	if cur := t.tracing.Load(); cur.provider != nil && cur.ratio == ratio &&
		cur.cfg.OTLPEndpoint == cfg.OTLPEndpoint && cur.cfg.ServiceName == cfg.ServiceName {
		return nil
	}
	u, err := url.Parse(cfg.OTLPEndpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("tracing.otlp_endpoint: %q is not an http(s) URL", cfg.OTLPEndpoint)
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = "/v1/traces" // the OTLP/HTTP signal path under a base endpoint
	}
	exp, err := otlptracehttp.New(context.Background(), otlptracehttp.WithEndpointURL(u.String()))
	if err != nil {
		return fmt.Errorf("tracing: %w", err)
	}
	name := cfg.ServiceName
	if name == "" {
		name = "portico"
	}
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(ratio))),
		sdktrace.WithResource(resource.NewSchemaless(attribute.String("service.name", name))),
	)
	nt := &tracer{cfg: *cfg, ratio: ratio, provider: tp, tr: tp.Tracer("github.com/portico-gw/portico")}
	t.retireTracer(t.tracing.Swap(nt))
	return nil
}

// retireTracer flushes and stops a replaced tracer.
func (t *Telemetry) retireTracer(old *tracer) {
	if err := old.shutdown(); err != nil {
		t.logger.Warn("tracing: flushing the replaced exporter failed; its unsent spans are lost", "err", err.Error())
	}
}

// start continues or starts the request's trace and returns the request
// carrying it; the span is nil without export.
func (tr *tracer) start(r *http.Request, route string, info *reqctx.Info) (*http.Request, trace.Span) {
	if tr.provider == nil {
		// Without export nobody sees the gateway's span, only the trace's
		// continuity matters: write the continued (or new) traceparent into
		// the inbound headers, which the proxy and the aggregation backends
		// copy upstream. That saves a request copy and a context value per
		// request, and lets TraceTransport pass requests through untouched.
		tp := formatTraceparent(lightSpanContext(r.Header, info))
		r.Header["Traceparent"] = []string{tp}
		if info != nil {
			info.TraceID = tp[3:35]
		}
		return r, nil
	}
	if ts := r.Header["Tracestate"]; len(ts) > 1 {
		// Several header lines are one list (W3C Trace Context, section
		// 3.3); the propagator reads the first line only, and the
		// upstream would lose the others' entries.
		r.Header["Tracestate"] = []string{strings.Join(ts, ",")}
	}
	ctx := propagator.Extract(r.Context(), propagation.HeaderCarrier(r.Header))
	if !trace.SpanContextFromContext(ctx).IsValid() {
		// A new trace: the client's tracestate belongs to no trace the
		// upstream sees, and Inject only replaces a non-empty one.
		delete(r.Header, "Tracestate")
	}
	ctx, span := tr.tr.Start(ctx, route, trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(attribute.String("http.route", route), attribute.String("http.request.method", r.Method)))
	r = r.WithContext(ctx)
	if info != nil {
		info.TraceID = span.SpanContext().TraceID().String()
	}
	return r, span
}

func endSpan(span trace.Span, status int) {
	span.SetAttributes(attribute.Int("http.response.status_code", status))
	if status >= 500 {
		span.SetStatus(codes.Error, "")
	}
	span.End()
}

// endServerSpan records how the request counted: the outcome status (502 or
// 499 for a response cut short, the mapped grpc-status for gRPC; not the 200
// the header may have carried).
func endServerSpan(span trace.Span, o outcome) {
	if o.aborted {
		span.SetAttributes(attribute.Bool("portico.response.aborted", true))
	}
	if o.grpc == grpcStatus {
		span.SetAttributes(attribute.Int("rpc.grpc.status_code", o.grpcCode))
	}
	endSpan(span, o.status)
}

// lightSpanContext continues the inbound traceparent (W3C Trace Context
// level 1, section 3.2) with a new span id, or starts a trace: with the trace
// id the gateway already put in info when it is valid hex, else a random one.
// Starting a trace deletes the inbound tracestate from h, which the proxy
// would otherwise send on beside the new traceparent (section 4.2: a
// tracestate without a usable traceparent is discarded).
func lightSpanContext(h http.Header, info *reqctx.Info) trace.SpanContext {
	cfg := trace.SpanContextConfig{SpanID: newSpanID()}
	if tid, flags, ok := parseTraceparent(h.Get("Traceparent")); ok {
		cfg.TraceID, cfg.TraceFlags, cfg.Remote = tid, flags, false
		if ts := h.Get("Tracestate"); ts != "" {
			if st, err := trace.ParseTraceState(ts); err == nil {
				cfg.TraceState = st
			}
		}
		return trace.NewSpanContext(cfg)
	}
	delete(h, "Tracestate")
	if info != nil && len(info.TraceID) == 32 {
		if tid, err := trace.TraceIDFromHex(info.TraceID); err == nil {
			cfg.TraceID = tid
			return trace.NewSpanContext(cfg)
		}
	}
	cfg.TraceID = newTraceID()
	return trace.NewSpanContext(cfg)
}

// formatTraceparent renders sc as a version-00 traceparent (W3C Trace
// Context level 1, section 3.2) in one allocation.
func formatTraceparent(sc trace.SpanContext) string {
	const hexdigits = "0123456789abcdef"
	var b [55]byte
	b[0], b[1], b[2] = '0', '0', '-'
	tid, sid := sc.TraceID(), sc.SpanID()
	for i, c := range tid {
		b[3+2*i], b[4+2*i] = hexdigits[c>>4], hexdigits[c&0xf]
	}
	b[35] = '-'
	for i, c := range sid {
		b[36+2*i], b[37+2*i] = hexdigits[c>>4], hexdigits[c&0xf]
	}
	b[52] = '-'
	f := byte(sc.TraceFlags())
	b[53], b[54] = hexdigits[f>>4], hexdigits[f&0xf]
	return string(b[:])
}

// parseTraceparent accepts version 00 exactly and later versions by their
// version-00 prefix, as the spec asks; version ff and all-zero ids are
// invalid.
func parseTraceparent(v string) (trace.TraceID, trace.TraceFlags, bool) {
	var tid trace.TraceID
	if len(v) < 55 || (len(v) > 55 && (v[:2] == "00" || v[55] != '-')) {
		return tid, 0, false
	}
	if v[2] != '-' || v[35] != '-' || v[52] != '-' || v[:2] == "ff" || !isLowerHex(v[:2]) {
		return tid, 0, false
	}
	if !isLowerHex(v[3:35]) || !isLowerHex(v[36:52]) || !isLowerHex(v[53:55]) {
		return tid, 0, false
	}
	if _, err := hex.Decode(tid[:], []byte(v[3:35])); err != nil || !tid.IsValid() {
		return tid, 0, false
	}
	if strings.Trim(v[36:52], "0") == "" {
		return tid, 0, false
	}
	var f [1]byte
	_, _ = hex.Decode(f[:], []byte(v[53:55]))
	return tid, trace.TraceFlags(f[0]) & trace.FlagsSampled, true
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

func newSpanID() trace.SpanID {
	var id trace.SpanID
	for !id.IsValid() {
		putUint64(id[:], rand.Uint64())
	}
	return id
}

func newTraceID() trace.TraceID {
	var id trace.TraceID
	for !id.IsValid() {
		putUint64(id[:8], rand.Uint64())
		putUint64(id[8:], rand.Uint64())
	}
	return id
}

func putUint64(b []byte, v uint64) {
	for i := 0; i < 8; i++ {
		b[i] = byte(v >> (56 - 8*i))
	}
}

// TraceTransport wraps an upstream transport: each call gets a client span
// named name (when exporting) and carries traceparent/tracestate of the
// request's trace, replacing whatever the client sent.
func (t *Telemetry) TraceTransport(name string, rt http.RoundTripper) http.RoundTripper {
	if rt == nil {
		rt = http.DefaultTransport
	}
	return &traceTransport{t: t, name: name, rt: rt}
}

type traceTransport struct {
	t    *Telemetry
	name string
	rt   http.RoundTripper
}

func (tt *traceTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	out, span := tt.start(req)
	resp, err := tt.rt.RoundTrip(out)
	endClientSpan(span, resp, err)
	return resp, err
}

// start begins req's client span (nil when not exporting) and returns the
// request to send: req itself outside a trace, else a copy carrying the
// trace context (a RoundTripper must not modify its request).
func (tt *traceTransport) start(req *http.Request) (*http.Request, trace.Span) {
	tr := tt.t.tracing.Load()
	ctx := req.Context()
	var span trace.Span
	if tr.provider != nil {
		ctx, span = tr.tr.Start(ctx, tt.name, trace.WithSpanKind(trace.SpanKindClient),
			trace.WithAttributes(attribute.String("http.request.method", req.Method), attribute.String("server.address", req.URL.Host)))
	}
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return req, span
	}
	out := req.Clone(ctx)
	propagator.Inject(ctx, propagation.HeaderCarrier(out.Header))
	return out, span
}

func endClientSpan(span trace.Span, resp *http.Response, err error) {
	if span == nil {
		return
	}
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
		span.End()
		return
	}
	endSpan(span, resp.StatusCode)
}

// CanSend and Send pass the upstream pool's split of a request into its
// sending and the reading of its answer (upstream.Sender) through the
// tracing: the span runs from the send to the answer's header, as it does
// around a RoundTrip.
func (tt *traceTransport) CanSend(method string) bool {
	s, ok := tt.rt.(upstream.Sender)
	return ok && s.CanSend(method)
}

func (tt *traceTransport) Send(req *http.Request) (upstream.Pending, bool) {
	s, ok := tt.rt.(upstream.Sender)
	if !ok || !s.CanSend(req.Method) {
		return nil, false
	}
	out, span := tt.start(req)
	c, ok := s.Send(out)
	if !ok {
		// Past CanSend only a request that asks for an upgrade or carries
		// a body is refused, which a BFF never sends; the caller's
		// RoundTrip then has a span of its own.
		if span != nil {
			span.End()
		}
		return nil, false
	}
	if span == nil {
		return c, true
	}
	return &tracedCall{Pending: c, span: span}, true
}

// tracedCall ends its span when the answer's header is read.
type tracedCall struct {
	upstream.Pending
	span trace.Span
}

func (c *tracedCall) Wait() (*http.Response, error) {
	resp, err := c.Pending.Wait()
	endClientSpan(c.span, resp, err)
	return resp, err
}

// Step lets the caller overlap the pool's retries (upstream.Stepper); the
// span, like one around a RoundTrip, covers them all and ends in Wait.
func (c *tracedCall) Step() bool {
	s, ok := c.Pending.(upstream.Stepper)
	return ok && s.Step()
}
