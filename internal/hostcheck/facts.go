package hostcheck

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/sbx-dev/sbx/internal/safefile"
)

// Facts that cost a program run to learn (QEMU's version, the TSC
// frequency from the kernel log) are remembered across commands in
// <cache>/host-facts.json, keyed by what they depend on: the binary's
// fingerprint, the host's boot id. Without SetCacheDir nothing is kept.
var facts struct {
	mu   sync.Mutex
	path string            // guarded by mu
	m    map[string]string // guarded by mu; nil until loaded
}

// SetCacheDir makes facts persist in dir.
func SetCacheDir(dir string) {
	facts.mu.Lock()
	defer facts.mu.Unlock()
	facts.path = filepath.Join(dir, "host-facts.json")
	facts.m = nil
}

func fact(key string) (string, bool) {
	facts.mu.Lock()
	defer facts.mu.Unlock()
	if facts.path == "" {
		return "", false
	}
	if facts.m == nil {
		facts.m = map[string]string{}
		if b, err := os.ReadFile(facts.path); err == nil {
			var m map[string]string
			if json.Unmarshal(b, &m) == nil && m != nil {
				facts.m = m
			}
		}
	}
	v, ok := facts.m[key]
	return v, ok
}

func setFact(key, value string) {
	facts.mu.Lock()
	defer facts.mu.Unlock()
	if facts.path == "" || facts.m == nil {
		return
	}
	facts.m[key] = value
	if len(facts.m) > 256 { // stale keys of replaced binaries: start over
		facts.m = map[string]string{key: value}
	}
	b, err := json.Marshal(facts.m)
	if err != nil {
		return
	}
	if err := os.MkdirAll(filepath.Dir(facts.path), 0o755); err != nil {
		return
	}
	_ = safefile.Write(facts.path, b, 0o644)
}

// hostBootID identifies this boot of the host.
func hostBootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
