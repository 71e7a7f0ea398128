package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestCloneMode: `sbx create --clone` on a host repository; the agent
// works in a clone on the VM's disk at the repository's path, with its
// forge remotes and without its untracked files, cannot write the host's
// .git through the read-only share (root in the guest included, remount
// tried); `git fetch sandbox-NAME` on the host brings the agent's branch
// home through the remote helper, `sbx fetch-into` brings a new host
// commit in, and `sbx rm` keeps the fetched refs; `sbx diff` lists what the
// agent committed and left uncommitted, risky paths flagged.
func TestCloneMode(t *testing.T) {
	h := newHarness(t)
	repo := workspace(t)
	hostGit := func(args ...string) string {
		t.Helper()
		cmd := exec.Command("git", append([]string{"-c", "safe.directory=*", "-C", repo}, args...)...)
		cmd.Env = append(os.Environ(), "PATH="+binDir+":"+os.Getenv("PATH"), "SBX_HOME="+h.home,
			"GIT_AUTHOR_NAME=h", "GIT_AUTHOR_EMAIL=h@example.invalid", "GIT_COMMITTER_NAME=h", "GIT_COMMITTER_EMAIL=h@example.invalid")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("host git %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	hostGit("init", "-q", "-b", "main")
	os.WriteFile(filepath.Join(repo, "README"), []byte("hello\n"), 0o644)
	hostGit("add", "README")
	hostGit("commit", "-qm", "first on the host")
	hostGit("remote", "add", "origin", "https://example.invalid/o/r.git")
	hostGit("remote", "add", "mirror", "/srv/mirror.git")
	hook := filepath.Join(repo, ".git", "hooks", "pre-commit")
	os.WriteFile(hook, []byte("#!/bin/sh\necho host hook\n"), 0o755)
	os.WriteFile(filepath.Join(repo, ".env"), []byte("TOKEN=host-only\n"), 0o600)
	if os.Getuid() == 0 {
		exec.Command("chown", "-R", "1000:1000", repo).Run()
	}

	// Refusals first.
	sub := filepath.Join(repo, "sub")
	os.Mkdir(sub, 0o755)
	for dir, want := range map[string]string{t.TempDir(): "not a git repository", sub: "not the top folder"} {
		if res := h.sbx("create", "--clone", "--name", "bad", dir); res.code == 0 || !strings.Contains(res.stderr, want) {
			t.Errorf("create --clone %s: exit %d, %q; want %q", dir, res.code, res.stderr, want)
		}
	}

	h.mustSbx("create", "--clone", "--name", "cl", repo)
	if row := h.status("cl"); row.Mode != "clone" {
		t.Errorf("sbx ls mode %q, want clone", row.Mode)
	}
	out := h.mustSbx("exec", "cl", "sh", "-c", `cd "$1" && git log --format=%s && git remote && ls -A`, "sh", repo).stdout
	for _, want := range []string{"first on the host", "origin", "sbx-host", "README"} {
		if !strings.Contains(out, want) {
			t.Errorf("the clone lacks %q:\n%s", want, out)
		}
	}
	for _, unwanted := range []string{"mirror", ".env"} {
		if strings.Contains(out, unwanted) {
			t.Errorf("the clone has %q:\n%s", unwanted, out)
		}
	}

	// The host's .git is out of reach, whoever tries and however.
	// Nothing of the host folder is shared: the clone came from a bundle
	// (the seventh review read .env and untracked files through the old
	// read-only share).
	if out := h.mustSbx("exec", "-u", "root", "cl", "sh", "-c", "cat /run/sbx/source/.env 2>/dev/null; grep -rl host-only /run /mnt 2>/dev/null; grep -c ' /run/sbx/source ' /proc/mounts; true").stdout; strings.Contains(out, "host-only") || strings.TrimSpace(out) != "0" {
		t.Errorf("the guest reads the host folder:\n%s", out)
	}
	attack := `for p in /run/sbx/source/.git/hooks/pre-commit /run/sbx/source/.git/config; do echo evil >> $p && echo "wrote $p"; done
mount -o remount,rw /run/sbx/source 2>/dev/null; echo evil >> /run/sbx/source/.git/hooks/pre-commit && echo "wrote after remount"; true`
	if out := h.mustSbx("exec", "-u", "root", "cl", "sh", "-c", attack).stdout; strings.Contains(out, "wrote") {
		t.Errorf("the guest wrote the host's .git:\n%s", out)
	}
	if b, _ := os.ReadFile(hook); string(b) != "#!/bin/sh\necho host hook\n" {
		t.Errorf("host hook now %q", b)
	}

	// The agent's branch comes home.
	h.mustSbx("exec", "cl", "sh", "-c", `cd "$1" && git checkout -qb work && echo x > agent.txt && mkdir -p .github/workflows && echo "on: push" > .github/workflows/ci.yml &&
git add -A && git -c user.name=a -c user.email=a@example.invalid commit -qm "by the agent" && git tag main && git tag v9 &&
echo edited >> README && echo n > notes.txt && printf '#!/bin/sh\n' > run.sh && chmod +x run.sh`, "sh", repo)

	// sbx diff: what it committed (by the host's git, nothing written to
	// the repository) and what it left uncommitted or untracked.
	refsBefore := hostGit("for-each-ref")
	var changes []struct {
		Path, Change, State, Ref string
		Risky                    bool
	}
	if err := json.Unmarshal([]byte(h.mustSbx("diff", "cl", "--json").stdout), &changes); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"agent.txt": "committed work added false", ".github/workflows/ci.yml": "committed work added true",
		"README": "uncommitted work modified false", "notes.txt": "untracked work added false", "run.sh": "untracked work added true"}
	for _, c := range changes {
		got := fmt.Sprintf("%s %s %s %v", c.State, c.Ref, c.Change, c.Risky)
		if w, ok := want[c.Path]; !ok || w != got {
			t.Errorf("sbx diff: %s %s, want %q", c.Path, got, w)
		}
		delete(want, c.Path)
	}
	if len(want) > 0 {
		t.Errorf("sbx diff lacks %v", want)
	}
	if p := h.mustSbx("diff", "cl", "--patch").stdout; !strings.Contains(p, "+on: push") || !strings.Contains(p, "+edited") || !strings.Contains(p, "untracked file: notes.txt") {
		t.Errorf("sbx diff --patch:\n%s", p)
	}
	if got := hostGit("for-each-ref"); got != refsBefore {
		t.Errorf("sbx diff changed the host's refs:\n%s", got)
	}
	if res := h.sbx("diff", "cl", "--since-create"); res.code == 0 || !strings.Contains(res.stderr, "clone mode") {
		t.Errorf("diff --since-create in clone mode: exit %d %q", res.code, res.stderr)
	}
	// Found by the eighth outside review: guest root's packObjectsHook
	// wrote escape sequences as sideband progress, which the host's git
	// printed raw as "remote: ...". They arrive escaped.
	h.mustSbx("exec", "-u", "root", "cl", "sh", "-c", `printf '#!/bin/sh\nprintf "\\033]0;PWNED\\007\\033[2Jhooked\\n" >&2\nexec "$@"\n' > /usr/local/bin/hook && chmod 755 /usr/local/bin/hook && git config --system uploadpack.packObjectsHook /usr/local/bin/hook`)
	h.mustSbx("exec", "cl", "sh", "-c", "cd "+repo+` && git branch hooked "$(git -c user.name=a -c user.email=a@example.invalid commit-tree -p HEAD -m more 'HEAD^{tree}')"`)
	if out := hostGit("fetch", "sandbox-cl"); strings.ContainsAny(out, "\x1b\a") || !strings.Contains(out, "hooked") {
		t.Errorf("git fetch output with the guest's hook: %q", out)
	}
	hostGit("fetch", "-q", "sandbox-cl")
	// No tag comes along (a tag main would shadow the branch main).
	if tags := hostGit("tag", "-l"); tags != "" {
		t.Errorf("the fetch brought the guest's tags: %q", tags)
	}
	if got := hostGit("log", "-1", "--format=%s", "refs/sandboxes/cl/work"); strings.TrimSpace(got) != "by the agent" {
		t.Errorf("fetched branch: %q", got)
	}

	// A new host commit goes in.
	os.WriteFile(filepath.Join(repo, "later"), []byte("later\n"), 0o644)
	hostGit("add", "later")
	hostGit("commit", "-qm", "second on the host")
	h.mustSbx("fetch-into", "cl")
	if out := h.mustSbx("exec", "cl", "git", "-C", repo, "log", "-1", "--format=%s", "sbx-host/main").stdout; strings.TrimSpace(out) != "second on the host" {
		t.Errorf("after fetch-into: %q", out)
	}

	h.mustSbx("rm", "-f", "cl")
	if got := hostGit("log", "-1", "--format=%s", "refs/sandboxes/cl/work"); strings.TrimSpace(got) != "by the agent" {
		t.Errorf("after rm, the fetched branch: %q", got)
	}
	if cfg := hostGit("config", "--get-regexp", "^remote\\."); strings.Contains(cfg, "sandbox-cl") {
		t.Errorf("after rm the host still has the remote:\n%s", cfg)
	}
}
