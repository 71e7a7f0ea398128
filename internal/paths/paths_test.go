package paths

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Found by the sixth outside review; fails on the code before its fix.
// Under sudo (no XDG_RUNTIME_DIR) the runtime folder is /tmp/sbx-0, which
// anyone can make first, or make a link to /tmp; a sandbox's own runtime
// folder made beforehand by another user was taken as it was, and root's
// control socket landed in it. Both must be the caller's real, private
// folders.
func TestPrivateDir(t *testing.T) {
	base := t.TempDir()
	fresh := filepath.Join(base, "fresh")
	if err := PrivateDir(fresh); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(fresh); fi.Mode().Perm() != 0o700 {
		t.Errorf("made %v", fi.Mode())
	}
	open := filepath.Join(base, "open")
	os.Mkdir(open, 0o777)
	os.Chmod(open, 0o1777)
	link := filepath.Join(base, "link")
	os.Symlink(fresh, link)
	for _, dir := range []string{open, link} {
		if err := PrivateDir(dir); err == nil {
			t.Errorf("%s taken", dir)
		}
	}
	if os.Geteuid() == 0 {
		theirs := filepath.Join(base, "theirs")
		os.Mkdir(theirs, 0o700)
		os.Chown(theirs, 1000, 1000)
		if err := PrivateDir(theirs); err == nil {
			t.Error("another user's folder taken")
		}
		d := Dirs{Runtime: fresh}
		os.Mkdir(d.RuntimeDir("abc"), 0o700)
		os.Chown(d.RuntimeDir("abc"), 1000, 1000)
		if _, err := d.EnsureRuntimeDir("abc"); err == nil {
			t.Error("a sandbox runtime folder made by another user was taken")
		}
	}
}

// Found by the twelfth outside review; fails on the code before its fix.
// A folder shared by all users (sticky and world-writable, as /tmp) was
// refused with "chmod 700 it", which would break the machine. The refusal
// is an *UnsafeDirError that says the folder is shared and never suggests
// changing it.
func TestPrivateDirShared(t *testing.T) {
	base := t.TempDir()
	shared := filepath.Join(base, "tmp")
	if err := os.Mkdir(shared, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(shared, os.ModeSticky|0o777); err != nil {
		t.Fatal(err)
	}
	err := PrivateDir(shared)
	ue, ok := errors.AsType[*UnsafeDirError](err)
	if !ok || !ue.Shared || ue.Dir != shared {
		t.Fatalf("PrivateDir(sticky 1777) = %#v, want a shared *UnsafeDirError", err)
	}
	if strings.Contains(err.Error(), "chmod") || strings.Contains(err.Error(), "remove it") {
		t.Errorf("error suggests changing a shared folder: %v", err)
	}
	// A loose folder of sbx's own may be tightened.
	loose := filepath.Join(base, "loose")
	os.Mkdir(loose, 0o700)
	os.Chmod(loose, 0o777)
	err = PrivateDir(loose)
	if ue, ok := errors.AsType[*UnsafeDirError](err); !ok || ue.Shared || !strings.Contains(err.Error(), "chmod 700") {
		t.Errorf("PrivateDir(0777) = %v", err)
	}
}
