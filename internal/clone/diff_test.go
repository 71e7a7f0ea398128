package clone

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sbx-dev/sbx/internal/wsdiff"
)

// fakeHelper is a git remote helper speaking "connect" to git
// upload-pack on $CLONE: what git-remote-sbx does through a sandbox.
const fakeHelper = `#!/bin/sh
while read -r line; do
  case "$line" in
  capabilities) printf 'connect\n\n' ;;
  "connect git-upload-pack") printf '\n'; exec git upload-pack "$CLONE" ;;
  *) exit 1 ;;
  esac
done
`

func changesOf(t *testing.T, root string, entries []wsdiff.GitEntry) map[string]wsdiff.Change {
	t.Helper()
	got := map[string]wsdiff.Change{}
	for _, e := range entries {
		if c, ok := wsdiff.FromGit(root, e); ok {
			got[c.Path] = c
		}
	}
	return got
}

// TestFetchBranches: the clone's branches come into a throwaway
// repository through the helper, each compared with its host branch (or
// the host HEAD) by the host's git; a branch with nothing new is left
// out; the host repository gets no ref and no object.
func TestFetchBranches(t *testing.T) {
	host := repo(t)
	run(t, host, "git", "branch", "feature")
	cl := t.TempDir()
	run(t, cl, "git", "clone", "-q", host, ".")
	run(t, cl, "git", "branch", "feature", "origin/feature")
	// On main: a workflow, an executable, a symlink out, an edit, a delete.
	os.MkdirAll(filepath.Join(cl, ".github", "workflows"), 0o755)
	os.WriteFile(filepath.Join(cl, ".github", "workflows", "ci.yml"), []byte("on: push\n"), 0o644)
	os.WriteFile(filepath.Join(cl, "run.sh"), []byte("#!/bin/sh\n"), 0o755)
	os.Symlink("/etc/passwd", filepath.Join(cl, "out"))
	os.WriteFile(filepath.Join(cl, "new.txt"), []byte("n\n"), 0o644)
	run(t, cl, "git", "add", "-A")
	run(t, cl, "git", "commit", "-qm", "agent")
	// A branch of the agent's own from main.
	run(t, cl, "git", "checkout", "-qb", "topic")
	os.WriteFile(filepath.Join(cl, "topic.txt"), []byte("t\n"), 0o644)
	run(t, cl, "git", "add", "-A")
	run(t, cl, "git", "commit", "-qm", "topic")

	bin := t.TempDir()
	helper := filepath.Join(bin, "helper")
	os.WriteFile(helper, []byte(fakeHelper), 0o755)
	t.Setenv("CLONE", cl)
	refsBefore := run(t, host, "git", "for-each-ref")
	objsBefore := run(t, host, "git", "count-objects", "-v")

	f, err := FetchBranches(context.Background(), host, "box", helper)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	byName := map[string]Branch{}
	for _, b := range f.Branches {
		byName[b.Name] = b
	}
	if _, ok := byName["feature"]; ok || len(f.Branches) != 2 {
		t.Fatalf("branches %v, want main and topic (feature has nothing new)", f.Branches)
	}
	main := changesOf(t, host, byName["main"].Entries)
	for p, want := range map[string]string{".github/workflows/ci.yml": "CI", "run.sh": "executable", "out": "outside"} {
		c, ok := main[p]
		if !ok || !c.Risky || !strings.Contains(c.Reason, want) {
			t.Errorf("main %s: %+v, want risky (%s)", p, c, want)
		}
	}
	if c := main["new.txt"]; c.Change != wsdiff.Added || c.Risky {
		t.Errorf("main new.txt: %+v", c)
	}
	if c := main["out"]; c.Kind != "symlink" || c.Target != "/etc/passwd" {
		t.Errorf("main out: %+v", c)
	}
	topic := changesOf(t, host, byName["topic"].Entries)
	if _, ok := topic["topic.txt"]; !ok || len(topic) != 5 {
		// topic forked from the host's HEAD: main's commit is in it too.
		t.Errorf("topic: %v", topic)
	}
	patch, err := f.Patch(context.Background(), byName["main"])
	if err != nil || !strings.Contains(patch, "+on: push") {
		t.Errorf("patch: %v\n%s", err, patch)
	}
	if got := run(t, host, "git", "for-each-ref"); got != refsBefore {
		t.Errorf("host refs changed:\n%s\nwas\n%s", got, refsBefore)
	}
	if got := run(t, host, "git", "count-objects", "-v"); got != objsBefore {
		t.Errorf("host objects changed:\n%s\nwas\n%s", got, objsBefore)
	}
	dir := f.dir
	f.Close()
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("the throwaway repository is left: %v", err)
	}
}

// TestStatus: the guest's git status (run here by the host's git on a
// repository set up like a clone) parses into changed and untracked
// paths, with modes and symlink targets from StatScript.
func TestStatus(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	dir := repo(t)
	os.WriteFile(filepath.Join(dir, "a.txt"), []byte("edited\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "with space.sh"), []byte("x"), 0o700)
	os.WriteFile(filepath.Join(dir, "line\nbreak"), []byte("x"), 0o644)
	os.Symlink("../../.ssh", filepath.Join(dir, "lnk"))
	os.MkdirAll(filepath.Join(dir, ".claude"), 0o755)
	os.WriteFile(filepath.Join(dir, ".claude", "settings.json"), []byte("{}"), 0o644)
	out, err := exec.Command("sh", "-c", StatusScript, "sh", dir).Output()
	if err != nil {
		t.Fatal(err)
	}
	st, err := ParseStatus(out)
	if err != nil {
		t.Fatal(err)
	}
	if st.Branch != "main" || len(st.Head) < 40 {
		t.Errorf("head %q branch %q", st.Head, st.Branch)
	}
	if len(st.Changed) != 1 || st.Changed[0].Path != "a.txt" {
		t.Fatalf("changed %+v", st.Changed)
	}
	paths, stdin := StatPaths(st)
	cmd := exec.Command("bash", "-c", StatScript, "bash", dir)
	cmd.Stdin = strings.NewReader(string(stdin))
	sout, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	if err := ApplyStat(&st, paths, sout); err != nil {
		t.Fatal(err)
	}
	got := changesOf(t, dir, append(st.Changed, st.Untracked...))
	if c := got["a.txt"]; c.Change != wsdiff.Modified || c.Risky {
		t.Errorf("a.txt: %+v", c)
	}
	if c := got["with space.sh"]; c.Change != wsdiff.Added || !c.Risky || c.Mode != "0700" {
		t.Errorf("with space.sh: %+v", c)
	}
	if c := got["line\nbreak"]; c.Change != wsdiff.Added {
		t.Errorf("line break: %+v", c)
	}
	if c := got["lnk"]; c.Kind != "symlink" || c.Target != "../../.ssh" || !c.Outside || !c.Risky {
		t.Errorf("lnk: %+v", c)
	}
	if c := got[".claude/settings.json"]; !c.Risky {
		t.Errorf(".claude/settings.json: %+v", c)
	}
}

// TestParseStatusHostile: records a guest could forge fail to parse or
// parse as paths, never panic.
func TestParseStatusHostile(t *testing.T) {
	for _, in := range []string{"1 M", "u XY", "2 R. N... 100644", "x", "1 .M N... zz 100644 100644 a b p"} {
		if _, err := ParseStatus([]byte(in + "\x00")); err == nil {
			t.Errorf("%q parsed", in)
		}
	}
	st, err := ParseStatus([]byte("? ../../etc/passwd\x00? a/\x00"))
	if err != nil || len(st.Untracked) != 2 || st.Untracked[1].Path != "a" {
		t.Errorf("%+v %v", st, err)
	}
	if err := ApplyStat(&st, []string{"a"}, []byte("zz\x00\x00")); err == nil {
		t.Error("a bad mode was taken")
	}
	if _, err := ParseRaw([]byte(":100644 100644 a b\x00p\x00")); err == nil {
		t.Error("a short raw record parsed")
	}
}

// Found by the sixth outside review; fails on the code before its fix.
// A megabyte of pack can hold a blob of gigabytes: sbx diff read host
// git's whole output (a 1 GiB symlink blob took 5 GB of memory, a patch
// of 300 MB text blobs 23 GB). Output past the cap stops git with an
// error, a large blob is not read as a link target, and big files diff
// as binary.
func TestGitOutputCapped(t *testing.T) {
	dir := repo(t)
	big := strings.Repeat("line of text\n", 200000) // 2.6 MB
	os.WriteFile(filepath.Join(dir, "big.txt"), []byte(big), 0o644)
	run(t, dir, "git", "add", "big.txt")
	run(t, dir, "git", "commit", "-qm", "big")
	id := strings.TrimSpace(run(t, dir, "git", "rev-parse", "HEAD:big.txt"))
	saved := MaxGitOutput
	MaxGitOutput = 1 << 20
	defer func() { MaxGitOutput = saved }()
	if _, err := git(context.Background(), dir, "cat-file", "blob", id); !errors.Is(err, ErrGitOutput) {
		t.Errorf("reading a 2.6 MB blob under a 1 MiB cap: %v", err)
	}
	f := &Fetched{dir: t.TempDir()}
	if got := f.blob(context.Background(), dir, id); got != "" {
		t.Errorf("a %d-byte blob was read as a link target", len(big))
	}
	os.Symlink(dir, filepath.Join(f.dir, "repo.git"))
	base := strings.TrimSpace(run(t, dir, "git", "rev-parse", "HEAD~1"))
	patch, err := f.Patch(context.Background(), Branch{Base: base, Tip: "HEAD"})
	if err != nil || !strings.Contains(patch, "Binary files") || len(patch) > 4096 {
		t.Errorf("patch of a big file: %d bytes, %v", len(patch), err)
	}
}
