package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// runUpstream is the benchmark backend, run as its own process so its CPU
// is not charged to the harness: GET /small (100-byte JSON), GET /json
// (4 KB JSON), ?delay=MS sleeps first; any other path answers like /small.
func runUpstream(args []string) {
	fs := flag.NewFlagSet("upstream", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:0", "listen address (loopback)")
	_ = fs.Parse(args)

	// 99 bytes of valid JSON and a newline: the BFF scenario parses it.
	small := []byte(`{"id":12345,"name":"portico bench","ok":true,"tags":["a","b"],"note":"one hundred byte body......"}` + "\n")
	if len(small) != 100 || !json.Valid(small) {
		panic("bench: the small body must be 100 bytes of valid JSON")
	}
	var big bytes.Buffer
	big.WriteString(`{"items":[`)
	for i := 0; big.Len() < 4000; i++ {
		if i > 0 {
			big.WriteByte(',')
		}
		fmt.Fprintf(&big, `{"id":%d,"text":"item number %d of the four kilobyte body"}`, i, i)
	}
	big.WriteString(`]}`)
	bigBody := big.Bytes()
	smallLen, bigLen := strconv.Itoa(len(small)), strconv.Itoa(len(bigBody))

	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if d := r.URL.Query().Get("delay"); d != "" {
			if ms, err := strconv.Atoi(d); err == nil && ms > 0 && ms < 10000 {
				time.Sleep(time.Duration(ms) * time.Millisecond)
			}
		}
		hdr := w.Header()
		hdr["Content-Type"] = []string{"application/json"}
		if strings.HasSuffix(r.URL.Path, "/json") {
			hdr["Content-Length"] = []string{bigLen}
			_, _ = w.Write(bigBody)
			return
		}
		hdr["Content-Length"] = []string{smallLen}
		_, _ = w.Write(small)
	})
	serveLoopback(*addr, h)
}
