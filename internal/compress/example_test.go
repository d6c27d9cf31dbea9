package compress_test

import (
	"fmt"

	"github.com/portico-gw/portico/internal/compress"
)

func ExampleNegotiate() {
	prefs := []string{compress.Zstd, compress.Brotli, compress.Gzip}
	fmt.Printf("%q\n", compress.Negotiate("gzip, deflate, br", prefs))    // br before gzip: the config's order
	fmt.Printf("%q\n", compress.Negotiate("gzip;q=1, br;q=0.5", prefs))   // the client's q-values first
	fmt.Printf("%q\n", compress.Negotiate("*;q=0.1, zstd;q=0", prefs))    // zstd refused, br by wildcard
	fmt.Printf("%q\n", compress.Negotiate("identity, gzip;q=0.2", prefs)) // identity rated higher
	fmt.Printf("%q\n", compress.Negotiate("", prefs))                     // no header: no coding
	// Output:
	// "br"
	// "gzip"
	// "br"
	// ""
	// ""
}
