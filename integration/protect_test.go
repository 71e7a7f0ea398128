package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestProtect boots one sandbox with --protect-defaults and --protect and
// checks, as root in the guest, that the protected paths stay read-only
// (also after the share is mounted again and after trying to move .git
// away) while the rest of the workspace stays writable, and that the host
// files do not change.
func TestProtect(t *testing.T) {
	// A snapshot start shares the workspace over 9p (QEMU serves it), a
	// cold boot over virtio-fs (the jailed virtiofsd does): the same
	// protection either way.
	t.Run("snapshot-9p", func(t *testing.T) { testProtect(t, nil) })
	t.Run("cold-virtiofs", func(t *testing.T) { testProtect(t, []string{"--cold"}) })
}

func testProtect(t *testing.T, flags []string) {
	h := newHarness(t)
	ws := workspace(t)
	git := func(args ...string) {
		t.Helper()
		out, err := exec.Command("git", append([]string{"-C", ws}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	git("init", "-q")
	hook := filepath.Join(ws, ".git/hooks/pre-commit")
	subFile := filepath.Join(ws, "sub/dir/file")
	const hookText = "#!/bin/sh\necho host hook\n"
	if err := os.WriteFile(hook, []byte(hookText), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(subFile), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(subFile, []byte("host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if os.Getuid() == 0 {
		if out, err := exec.Command("chown", "-R", "1000:1000", ws).CombinedOutput(); err != nil {
			t.Fatalf("chown: %v\n%s", err, out)
		}
	}
	gitConfig, err := os.ReadFile(filepath.Join(ws, ".git/config"))
	if err != nil {
		t.Fatal(err)
	}

	// Bad paths are refused before anything is built.
	for _, c := range []struct{ path, want string }{
		{"/etc", "outside every workspace"},
		{"no/such/file", "does not exist"},
	} {
		res := h.sbx("create", "--protect", c.path, "--name", "bad", ws)
		if res.code == 0 || !strings.Contains(res.stderr, c.want) {
			t.Errorf("create --protect %s: exit %d, stderr %q; want a refusal with %q", c.path, res.code, res.stderr, c.want)
		}
	}

	h.mustSbx(append(append([]string{"create"}, flags...), "--protect-defaults", "--protect", "sub/dir", "--name", "t-protect", ws)...)
	// The same flags again are fine; other ones are refused.
	if res := h.sbx("run", "--protect", "sub", "--name", "t-protect", "--", "true"); res.code == 0 || !strings.Contains(res.stderr, "--protect") {
		t.Errorf("run with another --protect: exit %d, stderr %q; want a refusal", res.code, res.stderr)
	}

	// Each check prints "name: <error text or ok>"; the whole script runs
	// as root in the guest.
	script := `
cd /
W=` + ws + `
try() { name=$1; shift; if out=$("$@" 2>&1); then echo "$name: ok"; else echo "$name: failed: $out"; fi; }
checks() {
	try "$1 hook" sh -c "echo evil >> $W/.git/hooks/pre-commit"
	try "$1 new hook" sh -c "echo evil > $W/.git/hooks/post-checkout"
	try "$1 config" sh -c "echo evil >> $W/.git/config"
	try "$1 sub" sh -c "echo evil > $W/sub/dir/file"
	try "$1 mv git" mv $W/.git $W/.git2
	try "$1 mv hooks" mv $W/.git/hooks $W/.git/hooks.old
	try "$1 rm config" rm -f $W/.git/config
	try "$1 normal" sh -c "echo guest > $W/normal-$1.txt"
	try "$1 git head" sh -c "echo 'ref: refs/heads/guest' > $W/.git/HEAD"
}
checks first
line=$(awk -v w="$W" '$2 == w' /proc/mounts)
echo "mount: $line"
set -- $line
try "umount" umount "$W"
try "remount" mount -t "$3" -o "$4" "$1" "$W"
checks again
if [ -d $W/.git2 ]; then
	mkdir -p $W/.git/hooks && echo evil > $W/.git/hooks/pre-commit
fi
`
	res := h.mustSbx("exec", "-w", "/", "t-protect", "sudo", "sh", "-c", script)
	out := res.stdout
	t.Logf("guest:\n%s", out)
	for _, round := range []string{"first", "again"} {
		for _, c := range []struct{ check, want string }{
			{"hook", "Read-only file system"},
			{"new hook", "Read-only file system"},
			{"config", "Read-only file system"},
			{"sub", "Read-only file system"},
			{"mv git", "failed"},
			{"mv hooks", "failed"},
			{"rm config", "failed"},
			{"normal", "ok"},
			{"git head", "ok"},
		} {
			line := lineWith(out, round+" "+c.check+": ")
			if !strings.Contains(line, c.want) {
				t.Errorf("%s %s: got %q, want %q", round, c.check, line, c.want)
			}
		}
	}
	for _, c := range []string{"umount: ok", "remount: ok"} {
		if !strings.Contains(out, c) {
			t.Errorf("guest output lacks %q", c)
		}
	}

	// The host files are unchanged, .git is where it was, and the rest of
	// the workspace took the guest's writes.
	for path, want := range map[string]string{hook: hookText, subFile: "host\n", filepath.Join(ws, ".git/config"): string(gitConfig)} {
		if got, err := os.ReadFile(path); err != nil || string(got) != want {
			t.Errorf("%s on the host: %q, %v; want %q", path, got, err, want)
		}
	}
	for _, p := range []string{".git2", ".git/hooks.old", ".git/hooks/post-checkout"} {
		if _, err := os.Lstat(filepath.Join(ws, p)); err == nil {
			t.Errorf("%s exists on the host", p)
		}
	}
	for _, p := range []string{"normal-first.txt", "normal-again.txt"} {
		if got, err := os.ReadFile(filepath.Join(ws, p)); err != nil || string(got) != "guest\n" {
			t.Errorf("%s on the host: %q, %v", p, got, err)
		}
	}
	// git config on the host renames config.lock over .git/config, which
	// detaches the protecting mount in the supervisor's namespace (Linux
	// 3.18 and later); the supervisor makes it again on the new file.
	if out, err := exec.Command("git", "-c", "safe.directory=*", "-C", ws, "config", "sbx.test", "host").CombinedOutput(); err != nil {
		t.Fatalf("git config on the host: %v\n%s", err, out)
	}
	gitConfig, err = os.ReadFile(filepath.Join(ws, ".git/config"))
	if err != nil {
		t.Fatal(err)
	}
	// Git as root made the new file root's: give it to the guest user, so
	// only the protection (not the file's owner) can stop the write below.
	if os.Getuid() == 0 {
		if err := os.Chown(filepath.Join(ws, ".git/config"), wantUID(), wantUID()); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(1500 * time.Millisecond) // the watcher checks at least every second
	res = h.mustSbx("exec", "-w", "/", "t-protect", "sudo", "sh", "-c", "if echo evil >> "+ws+"/.git/config; then echo wrote; fi")
	if strings.Contains(res.stdout, "wrote") {
		t.Errorf("after git config on the host, the guest wrote .git/config")
	}
	if got, err := os.ReadFile(filepath.Join(ws, ".git/config")); err != nil || string(got) != string(gitConfig) {
		t.Errorf(".git/config after git config on the host and a guest write: %q, %v; want %q", got, err, gitConfig)
	}
	// The protecting mounts live in the supervisor's namespace only.
	if mi, err := os.ReadFile("/proc/self/mountinfo"); err == nil && strings.Contains(string(mi), ws) {
		t.Errorf("a protecting mount leaked into the host's namespace:\n%s", mi)
	}

	// A protected folder moved away on the host cannot be protected again:
	// the supervisor stops the VM and records why.
	if err := os.Rename(filepath.Join(ws, ".git/hooks"), filepath.Join(ws, ".git/hooks-moved")); err != nil {
		t.Fatal(err)
	}
	var ls string
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		if ls = h.sbx("ls", "--json").stdout; strings.Contains(ls, "protection of") {
			break
		}
	}
	if !strings.Contains(ls, "protection of ") || !strings.Contains(ls, ".git/hooks lost") {
		t.Errorf("sbx ls after the hooks moved on the host: %s; want the sandbox stopped for lost protection", ls)
	}
}

// lineWith returns the first line of out that contains s.
func lineWith(out, s string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, s) {
			return l
		}
	}
	return ""
}
