package hostcheck

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// Found by the fifth outside review; fails on the code before its fix.
// SBX_VIRTIOFSD (or SBX_QEMU) naming a file in a workspace let the guest
// replace it, and sbx ran the guest's file as root (virtiofsd --help,
// qemu --version) before any jail. Program refuses such a file, and one a
// user other than the caller (as root: anyone but root) owns or others
// can write.
func TestProgram(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	if _, err := Program(sh, nil); err != nil {
		t.Errorf("Program(%s): %v", sh, err)
	}
	base := t.TempDir()
	os.Chmod(base, 0o755)
	ws := filepath.Join(base, "ws")
	os.MkdirAll(filepath.Join(ws, "tools"), 0o755)
	in := filepath.Join(ws, "tools", "virtiofsd")
	os.WriteFile(in, []byte("#!/bin/sh\n"), 0o755)
	link := filepath.Join(base, "link")
	os.Symlink(in, link)
	for _, p := range []string{in, link} {
		if _, err := Program(p, []string{ws}); !errors.Is(err, ErrUntrusted) {
			t.Errorf("Program(%s) in a workspace: %v, want a refusal", p, err)
		}
	}
	if _, err := Program(in, []string{filepath.Join(base, "other")}); err != nil {
		t.Errorf("Program outside the workspaces: %v", err)
	}
	open := filepath.Join(base, "open")
	os.Mkdir(open, 0o777)
	os.Chmod(open, 0o777)
	prog := filepath.Join(open, "qemu")
	os.WriteFile(prog, []byte("#!/bin/sh\n"), 0o755)
	if _, err := Program(prog, nil); !errors.Is(err, ErrUntrusted) {
		t.Errorf("Program in a world-writable folder: %v, want a refusal", err)
	}
	if os.Geteuid() == 0 {
		own := filepath.Join(base, "users")
		os.WriteFile(own, []byte("#!/bin/sh\n"), 0o755)
		os.Chown(own, 1000, 1000)
		if _, err := Program(own, nil); !errors.Is(err, ErrUntrusted) {
			t.Errorf("Program of uid 1000 as root: %v, want a refusal", err)
		}
	}
}
