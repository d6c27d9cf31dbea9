package reqctx

import (
	"context"
	"testing"

	"github.com/portico-gw/portico/internal/identity"
)

type otherKey struct{}

func TestNewContextCarriesInfo(t *testing.T) {
	parent := context.WithValue(context.Background(), otherKey{}, "kept")
	ctx, info := NewContext(parent)
	info.Route = "posts"
	info.Params = []Param{{Key: "id", Value: "7"}}
	if got := From(ctx); got != info || got.Route != "posts" {
		t.Fatalf("From = %+v, want the Info NewContext returned", got)
	}
	if v, ok := From(ctx).Param("id"); !ok || v != "7" {
		t.Errorf("Param(id) = %q, %v", v, ok)
	}
	if _, ok := info.Param("missing"); ok {
		t.Error("Param(missing) found")
	}
	if ctx.Value(otherKey{}) != "kept" {
		t.Error("parent values lost")
	}
	if From(context.Background()) != nil {
		t.Error("From(background) != nil")
	}
	if allocs := testing.AllocsPerRun(100, func() { _, _ = NewContext(parent) }); allocs > 1 {
		t.Errorf("NewContext allocates %v times, want 1", allocs)
	}
}

func TestIdentityFrom(t *testing.T) {
	id := &identity.Identity{Subject: "alice"}
	ctx, info := NewContext(context.Background())
	if IdentityFrom(ctx) != nil {
		t.Error("identity before auth")
	}
	info.Identity = id
	if IdentityFrom(ctx) != id {
		t.Error("identity from Info not found")
	}
	if IdentityFrom(identity.NewContext(context.Background(), id)) != id {
		t.Error("identity from identity.NewContext not found")
	}
}
