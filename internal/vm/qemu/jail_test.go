package qemu

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/sbx-dev/sbx/internal/disk"
	"github.com/sbx-dev/sbx/internal/vm"
)

// TestJailRefusesForeignBacking: a VMM that escaped QEMU owns its disk
// and can rewrite the header to name any host file as its backing. The
// next start, prepared by root, must refuse that disk, and must neither
// open the named file to others nor bind it into the jail.
func TestJailRefusesForeignBacking(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("a jail with its own root is prepared by root only")
	}
	qemuImg, err := exec.LookPath("qemu-img")
	if err != nil {
		if os.Getenv("SBX_TEST_REQUIRE_VM") != "" {
			t.Fatal("qemu-img is not installed (SBX_TEST_REQUIRE_VM is set)")
		}
		t.Skip("qemu-img is not installed")
	}
	dir := t.TempDir()
	cache := filepath.Join(dir, "cache")
	os.MkdirAll(filepath.Join(cache, "templates"), 0o700)
	secret := filepath.Join(dir, "shadow")
	kernel := filepath.Join(dir, "vmlinuz")
	initrd := filepath.Join(dir, "initrd")
	for _, f := range []string{secret, kernel, initrd} {
		if err := os.WriteFile(f, make([]byte, 4096), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	rootDisk := filepath.Join(dir, "disk.qcow2")
	if out, err := exec.Command(qemuImg, "create", "-q", "-f", "qcow2", "-u", "-b", secret, "-F", "raw", rootDisk, "1M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v: %s", err, out)
	}
	cfg := vm.Config{
		Kernel: kernel, Initrd: initrd,
		Disks: []vm.Disk{{Path: rootDisk, Format: "qcow2"}},
		Jail:  &vm.Jail{NewRoot: true, UID: vm.Nobody, GID: vm.Nobody, Backing: []string{filepath.Join(cache, "templates")}},
	}
	j, err := prepareJail(cfg, "/usr/bin/qemu-system-x86_64", nil)
	if err == nil {
		j.cleanup()
		t.Fatal("prepareJail accepted a disk whose backing file is outside the cache")
	}
	if !errors.Is(err, disk.ErrUntrusted) {
		t.Fatalf("prepareJail: %v; want disk.ErrUntrusted", err)
	}
	t.Log(err)
	fi, err := os.Stat(secret)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("the named file is now %v: root opened it to others", fi.Mode().Perm())
	}
}
