package listener

import (
	"net/http"
	"sync"
	"testing"

	"github.com/portico-gw/portico/internal/config"
)

// Certificates reloaded over and over while clients keep handshaking: each
// handshake gets the old certificate for its name or the new one, verified,
// never the default one or a failure.
func TestCertReloadDuringHandshakes(t *testing.T) {
	ca := newTestCA(t)
	dir := t.TempDir()
	def := ca.issue(t, dir, "default", "gw.example.test")
	sets := [2]*config.ServerTLS{
		{Cert: def.Cert, Key: def.Key, Certificates: []config.CertKey{ca.issue(t, dir, "api-a", "api.example.test")}},
		{Cert: def.Cert, Key: def.Key, Certificates: []config.CertKey{ca.issue(t, dir, "api-b", "api.example.test")}},
	}
	store, tc, err := TLSConfig(sets[0])
	if err != nil {
		t.Fatal(err)
	}
	addr := serveTLS(t, tc, http.NotFoundHandler())

	const clients, each = 4, 20
	done := make(chan struct{})
	reloaded := make(chan int)
	go func() {
		n := 0
		defer func() { reloaded <- n }()
		for {
			select {
			case <-done:
				return
			default:
			}
			n++
			if err := store.Reload(sets[n%2]); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			for range each {
				cn, _, err := handshake(t, addr, "api.example.test", ca, 0)
				if err != nil || (cn != "api-a" && cn != "api-b") {
					t.Errorf("handshake during reload: cn %q, err %v", cn, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(done)
	if n := <-reloaded; n < 2 {
		t.Fatalf("only %d reloads ran during the handshakes", n)
	}
}
