package telemetry

import (
	"context"
	"net/http"
	"testing"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// TestFormatTraceparentMatchesPropagator: the hand-written traceparent is
// byte for byte what the OpenTelemetry propagator writes.
func TestFormatTraceparentMatchesPropagator(t *testing.T) {
	for _, flags := range []trace.TraceFlags{0, trace.FlagsSampled} {
		sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: newTraceID(), SpanID: newSpanID(), TraceFlags: flags})
		h := http.Header{}
		propagation.TraceContext{}.Inject(trace.ContextWithSpanContext(context.Background(), sc), propagation.HeaderCarrier(h))
		if got, want := formatTraceparent(sc), h.Get("Traceparent"); got != want {
			t.Errorf("formatTraceparent = %q, propagator wrote %q", got, want)
		}
	}
}
