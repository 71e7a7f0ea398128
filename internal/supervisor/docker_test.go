package supervisor

import (
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/sbx-dev/sbx/api/agentapi"
	"github.com/sbx-dev/sbx/internal/sandbox"
	"github.com/sbx-dev/sbx/internal/vm"
)

func needMkfs(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		if os.Getenv("SBX_TEST_REQUIRE_VM") == "1" {
			t.Fatal("mkfs.ext4 not found (apt-get install e2fsprogs)")
		}
		t.Skip("mkfs.ext4 not found (apt-get install e2fsprogs)")
	}
}

// isExt4 reports whether the file holds an ext4 superblock labelled label.
func isExt4(t *testing.T, path, label string) bool {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sb := make([]byte, 1024)
	if _, err := f.ReadAt(sb, 1024); err != nil {
		t.Fatal(err)
	}
	name := string(sb[0x78 : 0x78+len(label)])
	return binary.LittleEndian.Uint16(sb[0x38:]) == 0xEF53 && name == label
}

// TestDockerAndGitSetup: a sandbox with a docker disk size gets a sparse
// ext4 disk, attached with its serial, and a setup request naming it; the
// host's git identity goes along.
func TestDockerAndGitSetup(t *testing.T) {
	needMkfs(t)
	const size = 2 << 30
	f := startWith(t, true, func(c *sandbox.Config) {
		c.DockerDiskBytes = size
		c.Git = &sandbox.GitIdentity{Name: "Ann", Email: "ann@example.com"}
	})
	inst := f.backend.Instances()[0]
	setups := inst.Setups()
	if len(setups) != 1 {
		t.Fatalf("%d setup requests", len(setups))
	}
	if diff := cmp.Diff(&agentapi.DockerSetup{DiskSerial: DockerDiskSerial}, setups[0].Docker); diff != "" {
		t.Errorf("docker setup (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(&agentapi.GitIdentity{Name: "Ann", Email: "ann@example.com"}, setups[0].Git); diff != "" {
		t.Errorf("git identity (-want +got):\n%s", diff)
	}
	path := f.sb.Path(sandbox.DockerDiskFile)
	disks := inst.Config().Disks
	if len(disks) != 2 || disks[1] != (vm.Disk{Path: path, Format: "raw", Serial: DockerDiskSerial}) {
		t.Errorf("disks %+v", disks)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != size || !isExt4(t, path, dockerDiskLabel) {
		t.Errorf("docker disk: %d bytes, ext4 %v", fi.Size(), isExt4(t, path, dockerDiskLabel))
	}
	if err := f.client.Stop(t.Context()); err != nil {
		t.Fatal(err)
	}
}

func TestNoDockerNoDisk(t *testing.T) {
	f := start(t, true)
	inst := f.backend.Instances()[0]
	if s := inst.Setups(); len(s) != 1 || s[0].Docker != nil || s[0].Git != nil {
		t.Errorf("setup %+v", s)
	}
	if n := len(inst.Config().Disks); n != 1 {
		t.Errorf("%d disks, want the root disk only", n)
	}
	if _, err := os.Stat(f.sb.Path(sandbox.DockerDiskFile)); !os.IsNotExist(err) {
		t.Errorf("docker disk exists: %v", err)
	}
}

// TestEnsureDockerDisk: the disk is made once, sparse; a later start
// keeps its content and only grows it.
func TestEnsureDockerDisk(t *testing.T) {
	needMkfs(t)
	path := filepath.Join(t.TempDir(), "docker.img")
	created, err := ensureDockerDisk(t.Context(), path, 10<<30)
	if err != nil || !created {
		t.Fatalf("create: %v %v", created, err)
	}
	if alloc := allocated(t, path); alloc > 64<<20 {
		t.Errorf("a new 10 GiB docker disk uses %d MiB on the host; want it sparse", alloc>>20)
	}
	for _, size := range []int64{10 << 30, 5 << 30, 12 << 30} {
		created, err := ensureDockerDisk(t.Context(), path, size)
		if err != nil || created {
			t.Fatalf("size %d: created %v, %v", size, created, err)
		}
	}
	if fi, _ := os.Stat(path); fi.Size() != 12<<30 || !isExt4(t, path, dockerDiskLabel) {
		t.Errorf("after growing: %d bytes", fi.Size())
	}
	if m, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".tmp-*")); len(m) != 0 {
		t.Errorf("temp files left: %v", m)
	}
}

func allocated(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		t.Skip("no block counts on this system")
	}
	return st.Blocks * 512
}
