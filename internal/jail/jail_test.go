package jail

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

func TestMain(m *testing.M) {
	if IsHelper(os.Args) {
		os.Exit(Main())
	}
	os.Exit(m.Run())
}

func run(t *testing.T, spec Spec) (string, error) {
	t.Helper()
	cmd, err := Command(spec)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	return out.String(), err
}

// No file made in the jail carries a set-id bit, by any call the shell's
// tools make; the same script outside the jail does make them (control).
func TestNoSetIDFiles(t *testing.T) {
	dir := t.TempDir()
	script := `cd "$1"; : > f; chmod u+s f; chmod g+s f; chmod 6755 f; install -m 4755 /dev/null g; mkdir -m 4755 d; mknod p p; chmod 4755 p; mknod c c 0 0; mknod b b 0 0; mkdir e && echo mkdir-ok
for x in f g p; do [ -e $x ] && stat -c '%n %a' $x; done; true`
	spec := Spec{Argv: []string{"/bin/sh", "-c", script, "sh", dir}, Env: []string{"PATH=/usr/bin:/bin"}}
	out, err := run(t, spec)
	if err != nil || !strings.Contains(out, "mkdir-ok") {
		t.Fatalf("%v: %s", err, out)
	}
	if _, err := os.Stat(filepath.Join(dir, "d")); err == nil {
		t.Error("a set-uid folder was made")
	}
	// Devices: since Linux 5.8 anyone may make a 0:0 character device.
	for _, name := range []string{"c", "b"} {
		if fi, err := os.Lstat(filepath.Join(dir, name)); err == nil {
			t.Errorf("a device was made in the jail's folder: %s %v", name, fi.Mode())
		}
	}
	for _, name := range []string{"f", "g", "p"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			continue
		}
		if fi.Mode()&(os.ModeSetuid|os.ModeSetgid) != 0 {
			t.Errorf("%s has mode %v in the jail's folder", name, fi.Mode())
		}
	}
	// Control: outside the jail the same calls succeed, so the test can fail.
	ctl := t.TempDir()
	if err := os.WriteFile(filepath.Join(ctl, "f"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(ctl, "f"), 0o4755|os.ModeSetuid); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(filepath.Join(ctl, "f")); fi.Mode()&os.ModeSetuid == 0 {
		t.Skip("this file system drops set-uid bits by itself; the test cannot tell")
	}
}

// A jail with a root sees only the system folders and what it was given,
// as the uid it was given.
func TestRootJail(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("a jail root needs root")
	}
	base := t.TempDir()
	root := filepath.Join(base, "root")
	rw := filepath.Join(base, "rw")
	ro := filepath.Join(base, "ro.txt")
	for _, d := range []string{root, rw} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chown(rw, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ro, []byte("given\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	script := `id -u; id -G; cat "$2"; echo w > "$1/new" && echo wrote; { echo x > "$2"; } 2>/dev/null || echo ro-refused
ls /proc | grep -c '^[0-9]'; for p in /etc/passwd /root /home ` + base + `/root; do [ -e $p ] && echo "sees $p"; done; true`
	out, err := run(t, Spec{
		Argv: []string{"/bin/sh", "-c", script, "sh", rw, ro}, Env: []string{"PATH=/usr/bin:/bin"},
		Root: root, ReadOnly: []string{ro}, ReadWrite: []string{rw}, UID: 65534, GID: 65534,
	})
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	want := []string{"65534", "65534", "given", "wrote", "ro-refused"}
	if len(lines) < 6 || strings.Join(lines[:5], ",") != strings.Join(want, ",") {
		t.Fatalf("jail output:\n%s\nwant first lines %v", out, want)
	}
	// The shell, the subshell of the pipe: only the jail's own processes.
	if lines[5] == "" || len(lines[5]) > 1 {
		t.Errorf("the jail sees %s processes", lines[5])
	}
	for _, l := range lines[6:] {
		t.Errorf("the jail %s", l)
	}
	if b, _ := os.ReadFile(filepath.Join(rw, "new")); string(b) != "w\n" {
		t.Errorf("write through the jail: %q", b)
	}
	if ents, _ := os.ReadDir(root); len(ents) != 0 {
		t.Errorf("the jail root on the host is not empty: %v", ents)
	}
	// Root is never kept.
	if _, err := run(t, Spec{Argv: []string{"/bin/true"}, Root: root, UID: 0, GID: 0}); err == nil {
		t.Error("a jail as uid 0 ran")
	}
}

// A user-namespace jail (the file server's) runs as its one mapped id
// with the capabilities it was given, which reach only that id's files:
// a root-only file bound into it stays unreadable, a chown to another id
// fails, set-id calls are no-ops, and what it makes is the uid's.
func TestUserNSJail(t *testing.T) {
	uid, gid := os.Getuid(), os.Getgid()
	if uid == 0 {
		uid, gid = 4242, 4242
	}
	// Below a folder only root enters, as the workspace and the socket
	// folders of a sandbox may be: the jail gets them by descriptor.
	base := t.TempDir()
	root, err := os.MkdirTemp("", "sbx-jail-test-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(root)
	rw := filepath.Join(base, "rw")
	secret := filepath.Join(base, "secret")
	for _, d := range []string{rw} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(secret, []byte("root only\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if os.Getuid() == 0 {
		if err := os.Chown(rw, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	// CAP_DAC_OVERRIDE (1) and CAP_CHOWN (0) kept; setpriv's setresuid
	// is faked, so it "becomes" 7 and is still uid.
	script := `id -u; grep CapEff /proc/self/status; cat "$2" 2>/dev/null || echo secret-refused
echo w > "$1/new" && echo wrote; chown 7 "$1/new" 2>/dev/null || echo chown-refused
echo r > /run/x/f && echo run-writable; setpriv --reuid=7 --regid=7 --keep-groups id -u 2>&1; true`
	out, err := run(t, Spec{
		Argv: []string{"/bin/sh", "-c", script, "sh", rw, secret}, Env: []string{"PATH=/usr/bin:/bin"},
		Root: root, ReadOnly: []string{secret}, ReadWrite: []string{rw}, Tmpfs: []string{"/run/x"},
		UID: uid, GID: gid, UserNS: true, Caps: []uintptr{0, 1}, FakeSetID: true,
	})
	if err != nil {
		if strings.Contains(out, "operation not permitted") && strings.Contains(out, "clone") {
			t.Skip("this host refuses user namespaces")
		}
		t.Fatalf("%v: %s", err, out)
	}
	want := strconv.Itoa(uid) + "\nCapEff:\t0000000000000003\n"
	if os.Getuid() == 0 {
		want += "secret-refused\n"
	} else {
		want += "secret-refused\n" // not even bound readable: it is 0600 and ours, but the jail reads it as uid
	}
	want += "wrote\nchown-refused\nrun-writable\n" + strconv.Itoa(uid) + "\n"
	if os.Getuid() != 0 {
		// our own file: cat works, the first check differs
		want = strings.Replace(want, "secret-refused\n", "root only\n", 1)
	}
	if out != want {
		t.Fatalf("jail output:\n%s\nwant:\n%s", out, want)
	}
	fi, err := os.Stat(filepath.Join(rw, "new"))
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != uid || int(st.Gid) != gid {
		t.Errorf("the jail's file is %d:%d, want %d:%d", st.Uid, st.Gid, uid, gid)
	}
	if ents, _ := os.ReadDir(root); len(ents) != 0 {
		t.Errorf("the jail root on the host is not empty: %v", ents)
	}
}
