package main

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// watchFiles calls onChange when any config file under paths changes (added,
// removed, renamed, rewritten). It polls: portable, no extra dependency, and
// it sees through the symlink swaps Kubernetes uses for ConfigMaps, which
// inotify watches miss.
func watchFiles(ctx context.Context, paths []string, every time.Duration, onChange func()) {
	last := fingerprint(paths)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if fp := fingerprint(paths); fp != last {
				last = fp
				onChange()
			}
		}
	}
}

func fingerprint(paths []string) [32]byte {
	var b strings.Builder
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			fmt.Fprintf(&b, "%s:missing\n", p)
			continue
		}
		files := []string{p}
		if fi.IsDir() {
			files = files[:0]
			entries, _ := os.ReadDir(p)
			for _, e := range entries {
				n := e.Name()
				if strings.HasPrefix(n, ".") || !(strings.HasSuffix(n, ".yaml") || strings.HasSuffix(n, ".yml")) {
					continue
				}
				files = append(files, filepath.Join(p, n))
			}
			slices.Sort(files)
		}
		for _, f := range files {
			data, err := os.ReadFile(f)
			if err != nil {
				fmt.Fprintf(&b, "%s:unreadable\n", f)
				continue
			}
			fmt.Fprintf(&b, "%s:%x\n", f, sha256.Sum256(data))
		}
	}
	return sha256.Sum256([]byte(b.String()))
}
