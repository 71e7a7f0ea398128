package hostcheck

import (
	"os"
	"path/filepath"
	"testing"
)

// TestFactsPersist: a fact set by one command is read by the next (a new
// process reloads the file); without a cache folder nothing is kept.
func TestFactsPersist(t *testing.T) {
	t.Cleanup(func() { SetCacheDir(""); facts.path = "" })
	if _, ok := fact("k"); ok {
		t.Fatal("a fact without a cache folder")
	}
	dir := t.TempDir()
	SetCacheDir(dir)
	if _, ok := fact("version /usr/bin/qemu 1 2 3"); ok {
		t.Fatal("fact before it was set")
	}
	setFact("version /usr/bin/qemu 1 2 3", "7.2.22")
	SetCacheDir(dir) // as a new process would
	if v, ok := fact("version /usr/bin/qemu 1 2 3"); !ok || v != "7.2.22" {
		t.Fatalf("fact = %q, %v", v, ok)
	}
	if _, err := os.Stat(filepath.Join(dir, "host-facts.json")); err != nil {
		t.Fatal(err)
	}
}
