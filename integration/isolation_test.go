package integration

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// TestWorkspaceIsolation: root in the guest tries to plant set-id
// programs, device nodes and files of other owners in the workspace
// (gap 2 of the isolation review, which as root gave a host
// `-rwsr-xr-x root` shell), and the VMM is checked from the host: not
// root, filtered, and (when sbx runs as root) in a root of its own that
// holds neither the secret store nor other users' files.
func TestWorkspaceIsolation(t *testing.T) {
	h := newHarness(t)
	ws := workspace(t)
	const secretValue = "isolation-REALVALUE-5c1d7e9a3b"
	h.mustSbx("secret", "set-custom", "--env", "MY_TOKEN", "--host", "api.test", "--value", secretValue)
	name := strings.TrimSpace(h.mustSbx("create", "--name", "t-iso", ws).stdout)

	script := `cd "$1"
cp /bin/bash sh-root; chown 0:0 sh-root; chmod 4755 sh-root
cp /bin/bash sh-gid; chmod 2755 sh-gid
install -m 6755 /bin/true inst
touch other; chown 1234:1234 other
touch world; chown 0:0 world; chmod 666 world
mknod null c 1 3; mknod blk b 8 0
mkdir dir; chmod 4775 dir; chmod g+s dir
python3 -c 'import os; fd=os.open("py", os.O_CREAT|os.O_WRONLY, 0o6755); os.close(fd)' 2>/dev/null
ls -lan; true`
	res := h.sbx("exec", "-u", "root", name, "bash", "-c", script, "bash", ws)
	if res.code != 0 {
		t.Fatalf("guest script: %+v", res)
	}
	t.Logf("guest view:\n%s%s", res.stdout, res.stderr)

	// The host's view: every entry the guest made is the workspace user's,
	// with no set-id bit, and no device node exists.
	want := wantUID()
	filepath.WalkDir(ws, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			t.Error(err)
			return nil
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return nil
		}
		st := fi.Sys().(*syscall.Stat_t)
		rel, _ := filepath.Rel(ws, p)
		if int(st.Uid) != want {
			t.Errorf("%s belongs to uid %d on the host, want %d", rel, st.Uid, want)
		}
		if fi.Mode()&os.ModeSetuid != 0 || (fi.Mode()&os.ModeSetgid != 0 && !fi.IsDir()) {
			t.Errorf("%s has mode %v on the host: a set-id program", rel, fi.Mode())
		}
		if fi.Mode()&(os.ModeDevice|os.ModeCharDevice) != 0 {
			t.Errorf("%s is a device node on the host", rel)
		}
		if fi.Mode().Perm()&0o002 != 0 && int(st.Uid) != want {
			t.Errorf("%s is world-writable and not the user's", rel)
		}
		return nil
	})

	// The VMM itself.
	pid := qemuPID(t, sandboxID(t, h, name))
	status, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	fields := map[string]string{}
	for _, l := range strings.Split(string(status), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			fields[k] = strings.TrimSpace(v)
		}
	}
	if fields["Seccomp"] != "2" || fields["NoNewPrivs"] != "1" {
		t.Errorf("qemu: Seccomp %q NoNewPrivs %q, want 2 and 1", fields["Seccomp"], fields["NoNewPrivs"])
	}
	if uid := strings.Fields(fields["Uid"]); len(uid) == 0 || uid[0] == "0" || (os.Getuid() == 0 && uid[0] != strconv.Itoa(want)) {
		t.Errorf("qemu runs as uid %q, want %d and never root", fields["Uid"], want)
	}
	if os.Getuid() != 0 {
		return // no jail root without root: the filter and the user's own uid
	}
	if fields["Groups"] != "" {
		t.Errorf("qemu keeps supplementary groups %q", fields["Groups"])
	}
	// What a QEMU escape would find: no secret store, no other sandbox,
	// no host configuration, and the secret's value in no file.
	jroot := "/proc/" + strconv.Itoa(pid) + "/root"
	for _, p := range []string{filepath.Join(h.home, "config"), "/etc", "/home", "/var", "/run/user", filepath.Join(h.home, "sandboxes", ".lock")} {
		if _, err := os.Lstat(jroot + p); err == nil {
			t.Errorf("the VMM's root shows %s", p)
		}
	}
	skip := map[string]bool{"/usr": true, "/proc": true, "/lib": true, "/lib64": true, "/bin": true, "/sbin": true, "/dev": true}
	filepath.WalkDir(jroot, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		in := strings.TrimPrefix(p, jroot)
		if d.IsDir() && skip[in] {
			return filepath.SkipDir
		}
		if !d.Type().IsRegular() || in == ws || strings.HasPrefix(in, ws+"/") {
			return nil
		}
		if fi, err := d.Info(); err == nil && fi.Size() > 64<<20 {
			return nil // disk images and guest memory: the guest's own
		}
		if data, err := os.ReadFile(p); err == nil && bytes.Contains(data, []byte(secretValue)) {
			t.Errorf("the secret's value is in %s, visible to the VMM", in)
		}
		return nil
	})
}

// TestVMAccountReach: as root (no sudo caller), a sandbox of a folder
// another account owns runs its VM as that account, which can trace it;
// so a folder that account could not read itself (behind a 0700 one) is
// not shared, and create says why (the twelfth review read such a
// folder through QEMU's /proc/PID/root). Root only: a user shares only
// what they can read.
func TestVMAccountReach(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("as a user, the VM runs as that user, who reaches every folder they share")
	}
	h := newHarness(t)
	ws := t.TempDir()
	os.Chmod(filepath.Dir(ws), 0o755)
	os.Chmod(ws, 0o755)
	const nobody = 65534
	if err := os.Chown(ws, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	closed := filepath.Join(t.TempDir(), "open-folder")
	os.MkdirAll(closed, 0o755)
	os.Chmod(filepath.Dir(closed), 0o700)
	res := h.sbx("create", "--name", "reach", ws, closed+":ro")
	if res.code == 0 || !strings.Contains(res.stderr, "cannot read "+closed) || strings.Contains(res.stderr, "goroutine") {
		t.Fatalf("create sharing a folder the VM's account cannot read: exit %d, %q; want a refusal that names it", res.code, res.stderr)
	}
	if rows := h.ls(); len(rows) != 0 {
		t.Errorf("a refused create left %v", rows)
	}
}
