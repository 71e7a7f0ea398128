package snapshot

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sbx-dev/sbx/internal/lease"
	"github.com/sbx-dev/sbx/internal/vm"
)

func testSpec(t *testing.T) Spec {
	dir := t.TempDir()
	for _, f := range []string{"qemu", "vmlinux", "initrd.cpio", "image.ext4"} {
		os.WriteFile(filepath.Join(dir, f), []byte(f), 0o644)
	}
	return Spec{
		QEMU: filepath.Join(dir, "qemu"), QEMUVersion: "7.2.22",
		Kernel: filepath.Join(dir, "vmlinux"), Initrd: filepath.Join(dir, "initrd.cpio"),
		Cmdline: "console=ttyS0", Accel: vm.AccelTCG, TSCkHz: 2445432, CPUs: 1, MemoryMiB: 2048,
		DiskBytes: 20 << 30, DockerDiskBytes: 10 << 30,
		TemplateName: "agents", TemplateID: "abc", TemplateImage: filepath.Join(dir, "image.ext4"),
	}
}

func TestKeyCoversEveryInput(t *testing.T) {
	base := testSpec(t)
	k := base.Key()
	if base.Key() != k {
		t.Fatal("key is not stable")
	}
	changes := map[string]func(*Spec){
		"qemu version": func(s *Spec) { s.QEMUVersion = "8.0" },
		"kernel":       func(s *Spec) { s.Kernel += "2" },
		"initramfs":    func(s *Spec) { s.Initrd += "2" },
		"cmdline":      func(s *Spec) { s.Cmdline += " quiet" },
		"accel":        func(s *Spec) { s.Accel = vm.AccelKVM },
		"tsc":          func(s *Spec) { s.TSCkHz += 20000 },
		"cpus":         func(s *Spec) { s.CPUs = 2 },
		"memory":       func(s *Spec) { s.MemoryMiB = 4096 },
		"disk":         func(s *Spec) { s.DiskBytes++ },
		"docker disk":  func(s *Spec) { s.DockerDiskBytes = 0 },
		"template":     func(s *Spec) { s.TemplateID = "def" },
	}
	for name, change := range changes {
		s := base
		change(&s)
		if s.Key() == k {
			t.Errorf("changing the %s keeps the key", name)
		}
	}
	// A TSC reading that wavers by a few kHz is the same host.
	s := base
	s.TSCkHz += 3
	if s.Key() != k {
		t.Error("a TSC reading 3 kHz off changes the key")
	}
	// A kernel rewritten in place (same path) is another kernel.
	time.Sleep(10 * time.Millisecond)
	os.WriteFile(base.Kernel, []byte("another kernel"), 0o644)
	if base.Key() == k {
		t.Error("a rewritten kernel file keeps the key")
	}
	m := Meta{Parts: testSpec(t).parts()}
	if got := Changed(base, m); !strings.Contains(got, "kernel") {
		t.Errorf("Changed = %q", got)
	}
}

func TestVMConfigSlots(t *testing.T) {
	s := testSpec(t)
	d := Devices{RootDisk: "/sb/disk.qcow2", DockerDisk: "/sb/docker.img", Empty: "/snap/empty",
		Workspaces: []vm.Share{{Path: "/home/me/proj"}, {Path: "/home/me/docs", ReadOnly: true}},
		NetSocket:  "/run/net.sock", MAC: "02:00:00:00:00:02", AgentSocket: "/run/agent.sock", Monitor: "/run/qmp.sock"}
	c, err := VMConfig(s, d)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Shares) != Shares {
		t.Fatalf("%d shares, want %d slots", len(c.Shares), Shares)
	}
	want := []vm.Share{{Tag: "ws0", Path: "/home/me/proj"}, {Tag: "ws1", Path: "/home/me/docs", ReadOnly: true},
		{Tag: "ws2", Path: "/snap/empty", ReadOnly: true}, {Tag: "ws3", Path: "/snap/empty", ReadOnly: true}}
	for i := range want {
		if c.Shares[i] != want[i] {
			t.Errorf("slot %d = %+v, want %+v", i, c.Shares[i], want[i])
		}
	}
	if len(c.Disks) != 2 || c.Disks[1].Serial != DockerSerial || c.Disks[1].Path != d.DockerDisk {
		t.Errorf("disks %+v", c.Disks)
	}
	// The device set does not depend on the sandbox: another one with one
	// workspace has the same slots.
	d2 := d
	d2.Workspaces = d.Workspaces[:1]
	c2, _ := VMConfig(s, d2)
	if len(c2.Shares) != len(c.Shares) || len(c2.Disks) != len(c.Disks) {
		t.Error("device set depends on the workspaces")
	}
	d.Workspaces = make([]vm.Share, Shares+1)
	if _, err := VMConfig(s, d); !errors.Is(err, ErrNotEligible) {
		t.Errorf("too many workspaces: %v", err)
	}
	s.DockerDiskBytes = 0
	d.Workspaces = nil
	if c, _ := VMConfig(s, d); len(c.Disks) != 1 {
		t.Errorf("no docker disk in the spec, disks %+v", c.Disks)
	}
}

// fakeSnapshot writes a complete snapshot folder for spec, made at t0.
func fakeSnapshot(t *testing.T, dir string, spec Spec, t0 time.Time) string {
	key := spec.Key()
	d := filepath.Join(dir, key)
	os.MkdirAll(filepath.Join(d, emptyDir), 0o755)
	os.WriteFile(filepath.Join(d, diskFile), nil, 0o600)
	os.WriteFile(filepath.Join(d, stateFile), nil, 0o600)
	os.WriteFile(filepath.Join(d, ramFile), nil, 0o400)
	b, _ := json.Marshal(Meta{Key: key, Family: spec.family(), Spec: spec, Parts: spec.parts(), Created: t0})
	os.WriteFile(filepath.Join(d, metaFile), b, 0o600)
	return key
}

func TestCollect(t *testing.T) {
	cache := t.TempDir()
	dir := Dir(cache)
	old := testSpec(t)
	newer, newest := old, old
	newer.QEMUVersion = "8.0"
	newest.QEMUVersion = "9.0"
	other := testSpec(t) // another family: other template name
	other.TemplateName = "shell"
	gone := testSpec(t)
	gone.TemplateName = "gone"
	os.Remove(gone.TemplateImage)

	t0 := time.Now()
	kOld := fakeSnapshot(t, dir, old, t0)
	kNewer := fakeSnapshot(t, dir, newer, t0.Add(time.Minute))
	kNewest := fakeSnapshot(t, dir, newest, t0.Add(2*time.Minute))
	kOther := fakeSnapshot(t, dir, other, t0)
	kGone := fakeSnapshot(t, dir, gone, t0)
	// A family with a leased old one and a pending one.
	leasedSpec := old
	leasedSpec.MemoryMiB = 1024
	kLeased := fakeSnapshot(t, dir, leasedSpec, t0)
	pendingSpec := leasedSpec
	pendingSpec.QEMUVersion = "6.0"
	kPending := fakeSnapshot(t, dir, pendingSpec, t0.Add(time.Second))
	for i := range 2 {
		s := leasedSpec
		s.QEMUVersion = "x" + string(rune('0'+i))
		fakeSnapshot(t, dir, s, t0.Add(time.Duration(i+1)*time.Minute))
	}
	disk := filepath.Join(t.TempDir(), "disk.qcow2")
	os.WriteFile(disk, nil, 0o600)
	if err := Lease(cache, kLeased, disk); err != nil {
		t.Fatal(err)
	}
	if err := pendingLease(dir, kPending); err != nil {
		t.Fatal(err)
	}

	if _, err := Collect(cache); err != nil {
		t.Fatal(err)
	}
	exists := func(k string) bool { _, err := os.Stat(filepath.Join(dir, k)); return err == nil }
	for k, want := range map[string]bool{kOld: false, kNewer: true, kNewest: true, kOther: true, kGone: false, kLeased: true, kPending: true} {
		if exists(k) != want {
			t.Errorf("snapshot %s exists=%v, want %v", k, !want, want)
		}
	}
	// A lease whose disk is not there yet (a create in progress) holds for
	// lease.Grace; after that, and once the disk is gone, it is dead.
	os.Remove(disk)
	Collect(cache)
	if !exists(kLeased) {
		t.Error("a fresh lease without its disk did not hold its snapshot")
	}
	past := time.Now().Add(-2 * lease.Grace)
	for _, k := range []string{kLeased, kPending} {
		ents, _ := os.ReadDir(leasesDir(dir, k))
		for _, e := range ents {
			os.Chtimes(filepath.Join(leasesDir(dir, k), e.Name()), past, past)
		}
	}
	Collect(cache)
	if exists(kLeased) || exists(kPending) {
		t.Error("superseded snapshots whose leases are dead were kept")
	}
	if _, err := Lookup(cache, kNewest); err != nil {
		t.Errorf("Lookup: %v", err)
	}
}
