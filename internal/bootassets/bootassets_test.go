package bootassets

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/sbx-dev/sbx/internal/paths"
)

// fakeKO returns a minimal ELF64 relocatable file whose only content is a
// .modinfo section with the given fields.
func fakeKO(fields ...string) []byte {
	var modinfo []byte
	for _, f := range fields {
		modinfo = append(modinfo, f...)
		modinfo = append(modinfo, 0)
	}
	shstr := []byte("\x00.modinfo\x00.shstrtab\x00")
	const ehsize, shentsize = 64, 64
	modOff := ehsize
	strOff := modOff + len(modinfo)
	shOff := (strOff + len(shstr) + 7) &^ 7
	var b bytes.Buffer
	le := binary.LittleEndian
	b.Write([]byte{0x7f, 'E', 'L', 'F', 2, 1, 1, 0})
	b.Write(make([]byte, 8))
	binary.Write(&b, le, uint16(1))  // ET_REL
	binary.Write(&b, le, uint16(62)) // EM_X86_64
	binary.Write(&b, le, uint32(1))
	binary.Write(&b, le, uint64(0))     // entry
	binary.Write(&b, le, uint64(0))     // phoff
	binary.Write(&b, le, uint64(shOff)) // shoff
	binary.Write(&b, le, uint32(0))     // flags
	binary.Write(&b, le, uint16(ehsize))
	binary.Write(&b, le, uint16(0)) // phentsize
	binary.Write(&b, le, uint16(0)) // phnum
	binary.Write(&b, le, uint16(shentsize))
	binary.Write(&b, le, uint16(3)) // shnum
	binary.Write(&b, le, uint16(2)) // shstrndx
	b.Write(modinfo)
	b.Write(shstr)
	b.Write(make([]byte, shOff-b.Len()))
	sh := func(name, typ uint32, off, size int) {
		binary.Write(&b, le, name)
		binary.Write(&b, le, typ)
		binary.Write(&b, le, uint64(0)) // flags
		binary.Write(&b, le, uint64(0)) // addr
		binary.Write(&b, le, uint64(off))
		binary.Write(&b, le, uint64(size))
		binary.Write(&b, le, uint32(0))
		binary.Write(&b, le, uint32(0))
		binary.Write(&b, le, uint64(1))
		binary.Write(&b, le, uint64(0))
	}
	sh(0, 0, 0, 0)
	sh(1, 1, modOff, len(modinfo)) // .modinfo PROGBITS
	sh(10, 3, strOff, len(shstr))  // .shstrtab STRTAB
	return b.Bytes()
}

// fakeModules writes a module tree: mods maps a relative path under kernel/
// to its depends list.
func fakeModules(t *testing.T, mods map[string]string, builtin ...string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "6.1.0-test")
	for rel, deps := range mods {
		p := filepath.Join(dir, "kernel", rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		name := strings.TrimSuffix(filepath.Base(rel), ".ko")
		if err := os.WriteFile(p, fakeKO("license=GPL", "depends="+deps, "name="+name), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var bl strings.Builder
	for _, b := range builtin {
		bl.WriteString("kernel/" + b + "\n")
	}
	if err := os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte(bl.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func rel(dir string, paths []string) []string {
	var out []string
	for _, p := range paths {
		r, _ := filepath.Rel(filepath.Join(dir, "kernel"), p)
		out = append(out, r)
	}
	return out
}

func TestModuleClosure(t *testing.T) {
	dir := fakeModules(t, map[string]string{
		"fs/ext4/ext4.ko":               "mbcache,jbd2,crc16",
		"fs/mbcache.ko":                 "",
		"fs/jbd2/jbd2.ko":               "",
		"lib/crc16.ko":                  "",
		"drivers/char/virtio-rng.ko":    "virtio_ring",
		"drivers/virtio/virtio_ring.ko": "",
		"fs/9p/9p.ko":                   "9pnet,netfs",
		"net/9p/9pnet.ko":               "",
		"fs/netfs/netfs.ko":             "",
	}, "virtio/virtio_mmio.ko", "crypto/crc32c_generic.ko")

	got, err := ModuleClosure(dir, []string{"virtio-mmio", "ext4", "virtio_rng", "9p", "crc32c_generic", "jbd2"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"fs/mbcache.ko", "fs/jbd2/jbd2.ko", "lib/crc16.ko", "fs/ext4/ext4.ko",
		"drivers/virtio/virtio_ring.ko", "drivers/char/virtio-rng.ko",
		"net/9p/9pnet.ko", "fs/netfs/netfs.ko", "fs/9p/9p.ko",
	}
	if diff := cmp.Diff(want, rel(dir, got)); diff != "" {
		t.Errorf("ModuleClosure (-want +got):\n%s", diff)
	}
}

func TestModuleClosureErrors(t *testing.T) {
	dir := fakeModules(t, map[string]string{
		"a.ko": "b",
		"b.ko": "a",
		"c.ko": "missing_dep",
	})
	if err := os.WriteFile(filepath.Join(dir, "kernel", "z.ko.zst"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		mods   []string
		is     error
		substr string
	}{
		{"unknown", []string{"nope"}, ErrModuleNotFound, "nope"},
		{"missing dep", []string{"c"}, ErrModuleNotFound, "needed by c"},
		{"compressed", []string{"z"}, ErrCompressedModule, "z.ko.zst"},
		{"cycle", []string{"a"}, nil, "cycle"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ModuleClosure(dir, tt.mods)
			if err == nil {
				t.Fatal("no error")
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("error %v is not %v", err, tt.is)
			}
			if !strings.Contains(err.Error(), tt.substr) {
				t.Errorf("error %q does not mention %q", err, tt.substr)
			}
		})
	}
}

// requireVM reports whether SBX_TEST_REQUIRE_VM=1: missing tools and
// assets then fail tests instead of skipping them.
func requireVM() bool { return os.Getenv("SBX_TEST_REQUIRE_VM") == "1" }

// skipOrFail skips the test, or fails it under SBX_TEST_REQUIRE_VM=1.
func skipOrFail(t *testing.T, format string, args ...any) {
	t.Helper()
	if requireVM() {
		t.Fatalf(format+" (SBX_TEST_REQUIRE_VM=1)", args...)
	}
	t.Skipf(format, args...)
}

// realKernel returns the Debian kernel in the sbx cache (paths.Resolve:
// SBX_CACHE_DIR or XDG_CACHE_HOME). When it is not there yet it skips, or,
// under SBX_TEST_REQUIRE_VM=1, fetches it with EnsureKernel (about ten
// seconds; locked, so VM tests filling the same cache in parallel are
// fine). It skips on hosts with no Debian kernel package, where sbx boots
// the host's own kernel.
func realKernel(t *testing.T) Kernel {
	t.Helper()
	dirs, err := paths.Resolve()
	if err != nil {
		skipOrFail(t, "resolve the sbx cache: %v", err)
	}
	if k, ok := newestCachedDebianKernel(filepath.Join(dirs.Cache, "kernel")); ok {
		return k
	}
	if !requireVM() {
		t.Skipf("no Debian kernel in %s (run sbx once to fetch it, or set SBX_TEST_REQUIRE_VM=1)", dirs.Cache)
	}
	if _, err := EnsureKernel(t.Context(), dirs.Cache, tWriter{t}); err != nil {
		t.Fatalf("fetch the kernel into %s: %v", dirs.Cache, err)
	}
	k, ok := newestCachedDebianKernel(filepath.Join(dirs.Cache, "kernel"))
	if !ok {
		t.Skip("this host has no Debian kernel package; sbx boots the host's kernel, which has no module tree to check")
	}
	return k
}

// tWriter logs progress lines to t.
type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func TestModuleClosureRealKernel(t *testing.T) {
	k := realKernel(t)
	got, err := ModuleClosure(k.ModulesDir, BootModules)
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, p := range got {
		pos[moduleName(filepath.Base(p))] = i
	}
	for _, m := range BootModules {
		if _, ok := pos[normModule(m)]; !ok {
			t.Errorf("%s not in closure %v", m, got)
		}
	}
	for _, p := range got {
		deps, err := moduleDepends(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range deps {
			if pos[normModule(d)] >= pos[moduleName(filepath.Base(p))] {
				t.Errorf("%s loads before its dependency %s", p, d)
			}
		}
	}
	t.Logf("%d modules for %s", len(got), k.Release)
	docker, err := extraModules(k.ModulesDir, DockerModules, got)
	if err != nil {
		t.Fatal(err)
	}
	if len(docker) == 0 {
		t.Error("no docker modules beyond the boot set")
	}
	t.Logf("%d more modules for docker", len(docker))
}

// cpioEntry is one entry read back from a newc archive.
type cpioEntry struct {
	Name         string
	Mode         uint32
	Major, Minor uint32
	Data         string
}

func readNewc(t *testing.T, b []byte) []cpioEntry {
	t.Helper()
	var out []cpioEntry
	off := 0
	align := func() { off = (off + 3) &^ 3 }
	for {
		if off+110 > len(b) || string(b[off:off+6]) != "070701" {
			t.Fatalf("bad cpio header at %d", off)
		}
		field := func(i int) uint32 {
			v, err := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
			if err != nil {
				t.Fatal(err)
			}
			return uint32(v)
		}
		mode, size, maj, min, nsize := field(1), field(6), field(9), field(10), field(11)
		name := string(b[off+110 : off+110+int(nsize)-1])
		off += 110 + int(nsize)
		align()
		data := string(b[off : off+int(size)])
		off += int(size)
		align()
		if name == "TRAILER!!!" {
			return out
		}
		out = append(out, cpioEntry{Name: name, Mode: mode, Major: maj, Minor: min, Data: data})
	}
}

func TestEnsureInitramfs(t *testing.T) {
	modDir := fakeModules(t, map[string]string{
		"fs/ext4/ext4.ko":            "jbd2",
		"fs/jbd2/jbd2.ko":            "",
		"drivers/char/virtio-rng.ko": "",
		"net/llc/llc.ko":             "",
		"net/bridge/bridge.ko":       "llc,jbd2",
		"net/bridge/br_netfilter.ko": "bridge",
		"drivers/net/veth.ko":        "",
	})
	saved, savedDocker := BootModules, DockerModules
	BootModules = []string{"ext4", "virtio_rng"}
	DockerModules = []string{"ext4", "br_netfilter", "veth"}
	t.Cleanup(func() { BootModules, DockerModules = saved, savedDocker })

	cache := t.TempDir()
	agent := filepath.Join(t.TempDir(), "agent")
	if err := os.WriteFile(agent, []byte("#!agent"), 0o755); err != nil {
		t.Fatal(err)
	}
	k := Kernel{Release: "6.1.0-test", ModulesDir: modDir}
	p, err := EnsureInitramfs(t.Context(), cache, k, agent)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Dir(p) != filepath.Join(cache, "initramfs") || !strings.HasSuffix(p, ".cpio") {
		t.Errorf("path %s not under the cache", p)
	}
	p2, err := EnsureInitramfs(t.Context(), cache, k, agent)
	if err != nil || p2 != p {
		t.Errorf("second call = %s, %v; want the same file", p2, err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	got := readNewc(t, b)
	ko := func(rel string) string {
		b, err := os.ReadFile(filepath.Join(modDir, "kernel", rel))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	want := []cpioEntry{
		{Name: "dev", Mode: 0o40755},
		{Name: "proc", Mode: 0o40755},
		{Name: "sys", Mode: 0o40755},
		{Name: "run", Mode: 0o40755},
		{Name: "tmp", Mode: 0o40755},
		{Name: "sysroot", Mode: 0o40755},
		{Name: "lib", Mode: 0o40755},
		{Name: "lib/modules", Mode: 0o40755},
		{Name: "lib/sbx", Mode: 0o40755},
		{Name: "dev/console", Mode: 0o20600, Major: 5, Minor: 1},
		{Name: "init", Mode: 0o100755, Data: "#!agent"},
		{Name: "lib/modules/jbd2.ko", Mode: 0o100644, Data: ko("fs/jbd2/jbd2.ko")},
		{Name: "lib/modules/ext4.ko", Mode: 0o100644, Data: ko("fs/ext4/ext4.ko")},
		{Name: "lib/modules/virtio-rng.ko", Mode: 0o100644, Data: ko("drivers/char/virtio-rng.ko")},
		{Name: "lib/sbx/modules.order", Mode: 0o100644, Data: "/lib/modules/jbd2.ko\n/lib/modules/ext4.ko\n/lib/modules/virtio-rng.ko\n"},
		{Name: "lib/modules/llc.ko", Mode: 0o100644, Data: ko("net/llc/llc.ko")},
		{Name: "lib/modules/bridge.ko", Mode: 0o100644, Data: ko("net/bridge/bridge.ko")},
		{Name: "lib/modules/br_netfilter.ko", Mode: 0o100644, Data: ko("net/bridge/br_netfilter.ko")},
		{Name: "lib/modules/veth.ko", Mode: 0o100644, Data: ko("drivers/net/veth.ko")},
		// The boot set's modules are left out, also as dependencies.
		{Name: "lib/sbx/docker-modules.order", Mode: 0o100644, Data: "/lib/modules/llc.ko\n/lib/modules/bridge.ko /lib/modules/llc.ko\n/lib/modules/br_netfilter.ko /lib/modules/bridge.ko\n/lib/modules/veth.ko\n"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("initramfs entries (-want +got):\n%s", diff)
	}

	// A changed input gives a new file.
	if err := os.WriteFile(agent, []byte("#!agent v2"), 0o755); err != nil {
		t.Fatal(err)
	}
	p3, err := EnsureInitramfs(t.Context(), cache, k, agent)
	if err != nil {
		t.Fatal(err)
	}
	if p3 == p {
		t.Error("changed agent binary gave the same initramfs")
	}
}

// TestEnsureInitramfsIndex: with a module tree sbx unpacked into the
// cache, a second call answers from the fingerprint index without walking
// the tree, and a changed agent binary still gives a new initramfs.
func TestEnsureInitramfsIndex(t *testing.T) {
	src := fakeModules(t, map[string]string{"fs/ext4/ext4.ko": "", "drivers/char/virtio-rng.ko": ""})
	saved, savedDocker := BootModules, DockerModules
	BootModules, DockerModules = []string{"ext4", "virtio_rng"}, nil
	t.Cleanup(func() { BootModules, DockerModules = saved, savedDocker })
	cache := t.TempDir()
	modDir := filepath.Join(cache, "kernel", "6.1.0-test", "lib", "modules", "6.1.0-test")
	os.MkdirAll(filepath.Dir(modDir), 0o755)
	if err := os.Rename(src, modDir); err != nil {
		t.Fatal(err)
	}
	agent := filepath.Join(t.TempDir(), "agent")
	os.WriteFile(agent, []byte("#!agent"), 0o755)
	kpath := filepath.Join(cache, "kernel", "6.1.0-test", "vmlinux")
	os.WriteFile(kpath, []byte("kernel"), 0o644)
	k := Kernel{Release: "6.1.0-test", ModulesDir: modDir, Path: kpath, Source: SourceDebianPackage + ":linux-image-test=1"}
	p, err := EnsureInitramfs(t.Context(), cache, k, agent)
	if err != nil {
		t.Fatal(err)
	}
	// Without the tree's modules, only the index can answer.
	// (A file deep in the tree: the tree's own folder keeps its
	// fingerprint; re-unpacking the whole tree changes it.)
	os.Remove(filepath.Join(modDir, "kernel", "fs", "ext4", "ext4.ko"))
	moduleIndexes.Delete(modDir)
	if p2, err := EnsureInitramfs(t.Context(), cache, k, agent); err != nil || p2 != p {
		t.Fatalf("second call = %s, %v; want %s from the index", p2, err, p)
	}
	os.WriteFile(agent, []byte("#!agent v2"), 0o755)
	if p3, err := EnsureInitramfs(t.Context(), cache, k, agent); err == nil && p3 == p {
		t.Error("a changed agent binary was answered from the index")
	}
}

func TestEnsureInitramfsCpioTool(t *testing.T) {
	cpioBin, err := exec.LookPath("cpio")
	if err != nil {
		skipOrFail(t, "cpio not installed")
	}
	agent := filepath.Join(t.TempDir(), "agent")
	if err := os.WriteFile(agent, []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	p, err := EnsureInitramfs(t.Context(), t.TempDir(), Kernel{Release: "x"}, agent)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.CommandContext(t.Context(), cpioBin, "-itv")
	cmd.Stdin = f
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -t: %v\n%s", err, out)
	}
	for _, want := range []string{"init", "dev/console", "lib/sbx/modules.order"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("cpio listing lacks %s:\n%s", want, out)
		}
	}
}

func TestExtractVmlinux(t *testing.T) {
	if _, err := exec.LookPath("xz"); err != nil {
		skipOrFail(t, "xz not installed")
	}
	dir := t.TempDir()
	// A synthetic "vmlinux": any ELF will do; use a fake module.
	elfData := fakeKO("license=GPL")
	cmd := exec.CommandContext(t.Context(), "xz", "-c", "--check=crc32")
	cmd.Stdin = bytes.NewReader(elfData)
	xzData, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	// setup code before the payload, trailing bytes after it (as in a bzImage).
	img := append(append(bytes.Repeat([]byte{0x90}, 4096), xzData...), make([]byte, 64)...)
	vmlinuz := filepath.Join(dir, "vmlinuz")
	if err := os.WriteFile(vmlinuz, img, 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "vmlinux")
	if err := ExtractVmlinux(t.Context(), vmlinuz, out); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, elfData) {
		t.Errorf("extracted %d bytes, want the %d-byte ELF", len(got), len(elfData))
	}

	noXZ := filepath.Join(dir, "plain")
	if err := os.WriteFile(noXZ, []byte("no payload here"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := ExtractVmlinux(t.Context(), noXZ, out); !errors.Is(err, ErrNoXZPayload) {
		t.Errorf("no payload: err = %v, want ErrNoXZPayload", err)
	}
}

func TestKernelRelease(t *testing.T) {
	dir := t.TempDir()
	// bzImage: "HdrS" at 0x202, kernel_version pointer at 0x20E (relative to 0x200).
	img := make([]byte, 0x1000)
	copy(img[0x202:], "HdrS")
	binary.LittleEndian.PutUint16(img[0x20E:], 0x300)
	copy(img[0x500:], "6.1.0-99-amd64 (debian-kernel@lists) #1 SMP\x00")
	p := filepath.Join(dir, "bz")
	if err := os.WriteFile(p, img, 0o644); err != nil {
		t.Fatal(err)
	}
	if r, err := KernelRelease(p); err != nil || r != "6.1.0-99-amd64" {
		t.Errorf("bzImage release = %q, %v", r, err)
	}
	elfLike := append(bytes.Repeat([]byte{0}, 3<<20), []byte("Linux version 6.9.1-custom (x@y) #1")...)
	p2 := filepath.Join(dir, "vmlinux")
	if err := os.WriteFile(p2, elfLike, 0o644); err != nil {
		t.Fatal(err)
	}
	if r, err := KernelRelease(p2); err != nil || r != "6.9.1-custom" {
		t.Errorf("vmlinux release = %q, %v", r, err)
	}
}

func TestUserKernel(t *testing.T) {
	dir := t.TempDir()
	vmlinux := filepath.Join(dir, "vmlinux")
	if err := os.WriteFile(vmlinux, fakeKO(), 0o644); err != nil {
		t.Fatal(err)
	}
	mods := filepath.Join(dir, "lib", "modules", "6.5.0-mine")
	if err := os.MkdirAll(mods, 0o755); err != nil {
		t.Fatal(err)
	}
	k, err := Options{KernelPath: vmlinux, ModulesDir: mods}.EnsureKernel(t.Context(), t.TempDir(), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := Kernel{Path: vmlinux, Release: "6.5.0-mine", ModulesDir: mods, Source: SourceUser}
	if diff := cmp.Diff(want, k); diff != "" {
		t.Errorf("user kernel (-want +got):\n%s", diff)
	}
	if _, err := (Options{KernelPath: filepath.Join(dir, "nope")}).EnsureKernel(t.Context(), t.TempDir(), nil); err == nil {
		t.Error("missing user kernel: no error")
	}
}

func TestCachedKernel(t *testing.T) {
	cache := t.TempDir()
	if _, err := CachedKernel(cache, Options{}); !errors.Is(err, ErrKernelNotCached) {
		t.Fatalf("empty cache: err = %v, want ErrKernelNotCached", err)
	}
	dir := filepath.Join(cache, "kernel", "6.1.0-9-amd64")
	if err := os.MkdirAll(filepath.Join(dir, "lib", "modules", "6.1.0-9-amd64"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "vmlinux"), fakeKO(), 0o644); err != nil {
		t.Fatal(err)
	}
	m := `{"version":1,"path":"vmlinux","release":"6.1.0-9-amd64","modulesDir":"lib/modules/6.1.0-9-amd64","source":"debian-package:linux-image-6.1.0-9-amd64=6.1.1-1"}`
	if err := os.WriteFile(filepath.Join(dir, "kernel.json"), []byte(m), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := CachedKernel(cache, Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := Kernel{
		Path:       filepath.Join(dir, "vmlinux"),
		Release:    "6.1.0-9-amd64",
		ModulesDir: filepath.Join(dir, "lib", "modules", "6.1.0-9-amd64"),
		Source:     "debian-package:linux-image-6.1.0-9-amd64=6.1.1-1",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("CachedKernel (-want +got):\n%s", diff)
	}
}

// signed appends a module signature of n bytes to mod, as sign-file does.
func signed(mod []byte, n int) []byte {
	out := append([]byte(nil), mod...)
	out = append(out, bytes.Repeat([]byte{0xAB}, n)...)
	info := make([]byte, 12)
	info[2] = 2 // PKEY_ID_PKCS7
	binary.BigEndian.PutUint32(info[8:], uint32(n))
	out = append(out, info...)
	return append(out, moduleSigMagic...)
}

func TestStripModuleSignature(t *testing.T) {
	mod := []byte("\x7fELF module body")
	for _, tc := range []struct {
		name string
		in   []byte
		want []byte
	}{
		{"signed", signed(mod, 40), mod},
		{"unsigned", mod, mod},
		{"signature longer than the file", append(append(append([]byte("x"), make([]byte, 8)...), 0, 0, 1, 0), moduleSigMagic...), nil},
		{"only the magic", []byte(moduleSigMagic), []byte(moduleSigMagic)},
	} {
		want := tc.want
		if want == nil {
			want = tc.in
		}
		if got := stripModuleSignature(tc.in); !bytes.Equal(got, want) {
			t.Errorf("%s: got %q, want %q", tc.name, got, want)
		}
	}
}

// TestInitramfsStripsSignatures: Debian's kernel gets its modules packed
// unsigned; another kernel's are packed as they are.
func TestInitramfsStripsSignatures(t *testing.T) {
	modDir := fakeModules(t, map[string]string{"drivers/char/virtio-rng.ko": "", "net/llc/llc.ko": ""})
	saved, savedDocker := BootModules, DockerModules
	BootModules, DockerModules = []string{"virtio_rng"}, []string{"llc"}
	t.Cleanup(func() { BootModules, DockerModules = saved, savedDocker })
	files := map[string][]byte{}
	for _, rel := range []string{"drivers/char/virtio-rng.ko", "net/llc/llc.ko"} {
		p := filepath.Join(modDir, "kernel", rel)
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		files["lib/modules/"+filepath.Base(rel)] = b
		if err := os.WriteFile(p, signed(b, 512), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	agent := filepath.Join(t.TempDir(), "agent")
	if err := os.WriteFile(agent, []byte("#!agent"), 0o755); err != nil {
		t.Fatal(err)
	}
	cache := t.TempDir()
	for _, tc := range []struct {
		source string
		strip  bool
	}{{"debian-package:linux-image-6.1.0-test=1", true}, {"user", false}, {"host", false}} {
		p, err := EnsureInitramfs(t.Context(), cache, Kernel{Release: "6.1.0-test", ModulesDir: modDir, Source: tc.source}, agent)
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, e := range readNewc(t, b) {
			unsigned, ok := files[e.Name]
			if !ok {
				continue
			}
			n++
			if stripped := e.Data == string(unsigned); stripped != tc.strip {
				t.Errorf("%s: %s stripped = %t, want %t", tc.source, e.Name, stripped, tc.strip)
			}
		}
		if n != 2 {
			t.Errorf("%s: %d modules in the initramfs, want 2", tc.source, n)
		}
	}
}
