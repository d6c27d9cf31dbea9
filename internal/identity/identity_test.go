package identity

import (
	"context"
	"testing"
)

func TestClaim(t *testing.T) {
	id := &Identity{Subject: "alice", Scopes: []string{"feed:read"}, Claims: map[string]any{
		"sub": "alice", "tier": "gold", "n": float64(42), "admin": true,
		"groups": []any{"a", "b"}, "nested": map[string]any{"x": 1},
	}}
	cases := []struct {
		name, want string
		ok         bool
	}{
		{"sub", "alice", true}, {"tier", "gold", true}, {"n", "42", true}, {"admin", "true", true},
		{"groups", "a b", true}, {"nested", "", false}, {"missing", "", false},
	}
	for _, c := range cases {
		if got, ok := id.Claim(c.name); got != c.want || ok != c.ok {
			t.Errorf("Claim(%q) = %q, %v; want %q, %v", c.name, got, ok, c.want, c.ok)
		}
	}
	key := &Identity{Consumer: "acme", Scopes: []string{"posts:read"}}
	if got, ok := key.Claim("scope"); !ok || got != "posts:read" {
		t.Errorf("API key scope claim = %q, %v", got, ok)
	}
	if !key.HasScope("posts:read") || key.HasScope("posts:write") {
		t.Error("HasScope")
	}
	var none *Identity
	if _, ok := none.Claim("sub"); ok || none.HasScope("x") {
		t.Error("nil identity answered")
	}
	if FromContext(NewContext(context.Background(), key)) != key {
		t.Error("context round trip")
	}
}
