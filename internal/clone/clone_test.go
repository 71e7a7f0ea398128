package clone

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func run(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.invalid", "GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@example.invalid")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %v\n%s", args, err, out)
	}
	return string(out)
}

func repo(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	run(t, dir, "git", "init", "-q", "-b", "main")
	if err := os.WriteFile(filepath.Join(dir, "a.txt"), []byte("a\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, dir, "git", "add", "a.txt")
	run(t, dir, "git", "commit", "-qm", "first")
	return dir
}

func TestCheck(t *testing.T) {
	ok := repo(t)
	run(t, ok, "git", "remote", "add", "origin", "https://example.invalid/o/r.git")
	run(t, ok, "git", "remote", "add", "fork", "git@example.invalid:me/r.git")
	run(t, ok, "git", "remote", "add", "local", "/srv/mirror/r.git")
	run(t, ok, "git", "remote", "add", "file", "file:///srv/r.git")
	run(t, ok, "git", "remote", "add", "rel", "../other")
	s, err := Check(t.Context(), ok)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, r := range s.Remotes {
		names = append(names, r.Name)
	}
	slices.Sort(names)
	if strings.Join(names, ",") != "fork,origin" {
		t.Errorf("forge remotes: %v, want fork and origin", s.Remotes)
	}

	bare := t.TempDir()
	run(t, bare, "git", "init", "-q", "--bare")
	wt := filepath.Join(t.TempDir(), "wt")
	run(t, ok, "git", "worktree", "add", "-q", wt)
	sub := filepath.Join(ok, "sub")
	os.Mkdir(sub, 0o755)
	empty := t.TempDir()
	run(t, empty, "git", "init", "-q")
	dirty := repo(t)
	os.WriteFile(filepath.Join(dirty, "a.txt"), []byte("staged\n"), 0o644)
	run(t, dirty, "git", "add", "a.txt")
	for dir, want := range map[string]error{
		t.TempDir(): ErrNotGit, bare: ErrBare, wt: ErrWorktree, sub: ErrNotTop, empty: ErrNoCommit, dirty: ErrDirtyIndex,
	} {
		if _, err := Check(t.Context(), dir); !errors.Is(err, want) {
			t.Errorf("Check(%s) = %v, want %v", dir, err, want)
		}
	}
	// Unstaged changes and untracked files are fine.
	os.WriteFile(filepath.Join(ok, "a.txt"), []byte("edited\n"), 0o644)
	if _, err := Check(t.Context(), ok); err != nil {
		t.Errorf("unstaged change: %v", err)
	}
}

func TestForgeURL(t *testing.T) {
	for u, want := range map[string]bool{
		"https://example.invalid/r.git": true, "ssh://git@example.invalid/r": true, "git://example.invalid/r": true,
		"git@example.invalid:o/r.git": true, "example.invalid:o/r": true,
		"/srv/r.git": false, "./r": false, "../r": false, "file:///srv/r": false, "ext::sh -c x": false,
		"c:/x": false, "fd::3": false,
	} {
		if got := ForgeURL(u); got != want {
			t.Errorf("ForgeURL(%q) = %v, want %v", u, got, want)
		}
	}
}

// Found by the tenth outside review: a token in a remote's URL reached
// the clone's .git/config in the guest.
func TestWithoutCredentials(t *testing.T) {
	for u, want := range map[string]string{
		"https://x-access-token:ghp_SECRET@example.invalid/o/r.git": "https://example.invalid/o/r.git",
		"https://ghp_SECRET@example.invalid/o/r.git":                "https://example.invalid/o/r.git",
		"http://oauth2:glpat-SECRET@example.invalid:8080/r":         "http://example.invalid:8080/r",
		"ssh://git:SECRET@example.invalid/r":                        "ssh://git@example.invalid/r",
		"ssh://git@example.invalid/r":                               "ssh://git@example.invalid/r",
		"git@example.invalid:o/r.git":                               "git@example.invalid:o/r.git",
		"user:SECRET@example.invalid:o/r":                           "",
		"https://example.invalid/r.git":                             "https://example.invalid/r.git",
		"https://exa mple/%zz":                                      "",
		// Found by the eleventh review: tokens in the query or fragment.
		"https://example.invalid/o/r.git?access_token=SECRET":       "https://example.invalid/o/r.git",
		"https://example.invalid/o/r.git#SECRET":                    "https://example.invalid/o/r.git",
		"https://u:SECRET@example.invalid/r?private_token=SECRET#x": "https://example.invalid/r",
		"ssh://git@example.invalid/r?SECRET":                        "ssh://git@example.invalid/r",
		"https://example.invalid/r?":                                "https://example.invalid/r",
	} {
		got, ok := WithoutCredentials(u)
		if got != want || ok != (want != "") {
			t.Errorf("WithoutCredentials(%q) = %q, %v; want %q", u, got, ok, want)
		}
		if strings.Contains(got, "SECRET") {
			t.Errorf("%q kept its secret: %q", u, got)
		}
	}
}

// The script makes a clone with the history, the forge remotes, the
// untracked files only when asked, and no file from the source's .git.
// TestScript: the clone is made from a bundle of the host repository's
// HEAD, branches and tags, made by the host's git (no hook runs, no other
// ref goes in), with the forge remotes; untracked files go only when
// asked, staged on the host without following links.
func TestScript(t *testing.T) {
	src := repo(t)
	run(t, src, "git", "config", "core.hooksPath", "/dev/null")
	os.WriteFile(filepath.Join(src, ".git", "hooks", "post-checkout"), []byte("#!/bin/sh\ntouch \"$GIT_DIR/../HOOK-RAN\"\n"), 0o755)
	os.WriteFile(filepath.Join(src, "untracked.env"), []byte("SECRET=1\n"), 0o600)
	os.Symlink("/etc/passwd", filepath.Join(src, "untracked-link"))
	run(t, src, "git", "update-ref", "refs/sandboxes/other/main", "HEAD")
	s := Source{Root: src, Remotes: []Remote{{"origin", "https://example.invalid/o/r.git"}}}
	bundle := filepath.Join(t.TempDir(), "repo.bundle")
	if err := Bundle(context.Background(), src, bundle); err != nil {
		t.Fatal(err)
	}
	if refs := run(t, "/", "git", "bundle", "list-heads", bundle); strings.Contains(refs, "refs/sandboxes/") || !strings.Contains(refs, "refs/heads/main") {
		t.Errorf("bundle refs:\n%s", refs)
	}
	// A path the shell must not expand.
	dest := filepath.Join(t.TempDir(), "it's $(touch x) `y`", "clone")
	user := run(t, "/", "id", "-un")
	run(t, "/", "sh", "-c", PrepareScript(dest, strings.TrimSpace(user)))
	run(t, "/", "sh", "-c", script(bundle, dest, s))
	if got := run(t, dest, "git", "log", "--format=%s"); got != "first\n" {
		t.Errorf("history: %q", got)
	}
	if b := strings.TrimSpace(run(t, dest, "git", "branch", "--show-current")); b != "main" {
		t.Errorf("checked out %q, want main", b)
	}
	remotes := run(t, dest, "git", "remote", "-v")
	if !strings.Contains(remotes, "origin\thttps://example.invalid/o/r.git") || !strings.Contains(remotes, SourceRemote+"\t"+bundle) {
		t.Errorf("remotes:\n%s", remotes)
	}
	if _, err := os.Stat(filepath.Join(dest, "untracked.env")); err == nil {
		t.Error("an untracked file came along")
	}
	if _, err := os.Stat(filepath.Join(dest, ".git", "hooks", "post-checkout")); err == nil {
		t.Error("the source's hook was copied into the clone")
	}
	if _, err := os.Stat(filepath.Join(dest, "HOOK-RAN")); err == nil {
		t.Error("a hook ran")
	}
	staged := filepath.Join(t.TempDir(), "untracked")
	n, err := Untracked(context.Background(), src, staged)
	if err != nil || n != 2 {
		t.Fatalf("staged %d untracked files: %v", n, err)
	}
	if b, _ := os.ReadFile(filepath.Join(staged, "untracked.env")); string(b) != "SECRET=1\n" {
		t.Errorf("staged untracked.env: %q", b)
	}
	if target, err := os.Readlink(filepath.Join(staged, "untracked-link")); err != nil || target != "/etc/passwd" {
		t.Errorf("the link was not staged as a link: %q %v", target, err)
	}
}

func TestServeHelper(t *testing.T) {
	in := strings.NewReader("capabilities\nconnect git-upload-pack\nPACKDATA")
	var out bytes.Buffer
	var got string
	err := ServeHelper(in, &out, func(service string, stdin io.Reader, stdout io.Writer) error {
		b, _ := io.ReadAll(stdin)
		got = service + ":" + string(b)
		io.WriteString(stdout, "REPLY")
		return nil
	})
	if err != nil || got != "git-upload-pack:PACKDATA" || out.String() != "connect\n\n\nREPLY" {
		t.Errorf("err %v, service saw %q, git saw %q", err, got, out.String())
	}
	err = ServeHelper(strings.NewReader("capabilities\nconnect git-receive-pack\n"), io.Discard, nil)
	if !errors.Is(err, ErrPushRefused) {
		t.Errorf("push: %v", err)
	}
}
