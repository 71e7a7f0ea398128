package jail

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// The capabilities internal/vm/qemu gives virtiofsd (fileServerCaps).
var fileServerCapsForTest = []uintptr{
	unix.CAP_CHOWN, unix.CAP_DAC_OVERRIDE, unix.CAP_DAC_READ_SEARCH, unix.CAP_FOWNER, unix.CAP_FSETID,
	unix.CAP_SETGID, unix.CAP_SETUID, unix.CAP_SETPCAP, unix.CAP_SYS_ADMIN, unix.CAP_MKNOD, unix.CAP_SETFCAP,
}

// Found by the fourth outside review; fails on the code before its fix. A user-namespace jail (the file server's) holds
// CAP_SYS_ADMIN over its own mount namespace, and the binds the helper made
// there are not locked: the program can remount a read-only share, and a
// protecting read-only bind below a share (--protect-defaults'
// .git/hooks, which the supervisor makes and the jail receives through
// open_tree(AT_RECURSIVE)), read-write and write the host folder.
func TestUserNSJailReadOnlyBindsStayReadOnly(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (it makes a read-only bind on a temp folder, as the supervisor does)")
	}
	base := t.TempDir()
	os.Chmod(base, 0o755)
	root, err := os.MkdirTemp("", "sbx-jail-test-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(root)
	const uid = 4242
	ws := filepath.Join(base, "ws") // a :ro workspace
	hooks := filepath.Join(base, "rw", ".git", "hooks")
	rw := filepath.Join(base, "rw") // a writable workspace with protected .git/hooks
	for _, d := range []string{ws, hooks} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{ws, rw, filepath.Dir(hooks), hooks} {
		os.Chown(d, uid, uid)
	}
	if err := unix.Mount(hooks, hooks, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(hooks, unix.MNT_DETACH)
	if err := unix.Mount("", hooks, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, ""); err != nil {
		t.Fatal(err)
	}
	script := `mount -o remount,bind,rw "$1"; echo x > "$1/planted"
mount -o remount,bind,rw "$2/.git/hooks"; echo x > "$2/.git/hooks/pre-commit"; true`
	out, err := run(t, Spec{
		Argv: []string{"/bin/sh", "-c", script, "sh", ws, rw}, Env: []string{"PATH=/usr/bin:/bin"},
		Root: root, ReadOnly: []string{ws}, ReadWrite: []string{rw}, Guarded: []string{ws, rw},
		UID: uid, GID: uid, UserNS: true, Caps: fileServerCapsForTest, FakeSetID: true,
	})
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if _, err := os.Stat(filepath.Join(ws, "planted")); err == nil {
		t.Errorf("the jail remounted its read-only share read-write and wrote it:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(hooks, "pre-commit")); err == nil {
		t.Errorf("the jail remounted the protecting read-only bind of .git/hooks read-write and wrote a hook:\n%s", out)
	}
}

// Found by the fourth outside review; fails on the code before its fix. The jail passes on every descriptor its starter
// holds without close-on-exec (the supervisor inherits whatever the shell
// that ran sbx left open; nothing closes them): the jailed program reaches
// the host folder it names through /proc/self/fd, outside its empty root.
func TestJailClosesInheritedDescriptors(t *testing.T) {
	base := t.TempDir()
	os.Chmod(base, 0o755)
	outside := filepath.Join(base, "outside")
	if err := os.Mkdir(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(outside, "secret"), []byte("HOST-SECRET\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// As a shell's `exec 9</some/folder` leaves it: no close-on-exec.
	fd, err := syscall.Open(outside, syscall.O_RDONLY|syscall.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	root, err := os.MkdirTemp("", "sbx-jail-test-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(root)
	uid := os.Getuid()
	if uid == 0 {
		uid = 4242
	}
	script := `cat /proc/self/fd/` + strconv.Itoa(fd) + `/secret 2>/dev/null; true`
	out, err := run(t, Spec{
		Argv: []string{"/bin/sh", "-c", script}, Env: []string{"PATH=/usr/bin:/bin"},
		Root: root, UID: uid, GID: uid, UserNS: true, Caps: fileServerCapsForTest, FakeSetID: true,
	})
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if strings.Contains(out, "HOST-SECRET") {
		t.Errorf("the jailed program read a host file outside its root through an inherited descriptor: %q", out)
	}
}
