package identity

import (
	"context"
	"encoding/json"
	"testing"
)

func TestClaim(t *testing.T) {
	id := &Identity{Subject: "alice", Scopes: []string{"feed:read"}, Claims: map[string]any{
		"sub": "alice", "tier": "gold", "n": float64(42), "admin": true,
		"groups": []any{"a", "b"}, "nested": map[string]any{"x": 1},
		"uid": json.Number("9007199254740993"), "orgs": []any{json.Number("1311417856476483584"), float64(7)},
	}}
	cases := []struct {
		name, want string
		ok         bool
	}{
		{"sub", "alice", true}, {"tier", "gold", true}, {"n", "42", true}, {"admin", "true", true},
		{"groups", "a b", true}, {"nested", "", false}, {"missing", "", false},
		{"uid", "9007199254740993", true}, {"orgs", "1311417856476483584 7", true},
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
	// As documented: an API key's consumer is a claim too, so that
	// claim:consumer and {claims.consumer} work on key-guarded routes.
	if got, ok := key.Claim("consumer"); !ok || got != "acme" {
		t.Errorf("API key consumer claim = %q, %v", got, ok)
	}
	if _, ok := id.Claim("consumer"); ok {
		t.Error("a token without consumer answered one")
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
