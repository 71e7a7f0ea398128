package template

import (
	diskpkg "github.com/sbx-dev/sbx/internal/disk"

	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// needDiskTools skips unless qemu-img and e2fsprogs are here (they are in
// CI, which sets SBX_TEST_REQUIRE_VM=1).
func needDiskTools(t *testing.T) {
	t.Helper()
	var missing []string
	for _, p := range []string{"mkfs.ext4", "debugfs", "qemu-img", "e2fsck", "resize2fs", "dumpe2fs"} {
		if _, err := tool(p, ""); err != nil {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		if os.Getenv("SBX_TEST_REQUIRE_VM") == "1" {
			t.Fatalf("need %s (SBX_TEST_REQUIRE_VM=1)", strings.Join(missing, ", "))
		}
		t.Skipf("need %s", strings.Join(missing, ", "))
	}
}

// testDisk makes a sandbox-like disk: a qcow2 overlay, bigger than its
// backing ext4 image, which holds a small tree.
func testDisk(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	writeFile(t, filepath.Join(tree, "etc/passwd"), testPasswd)
	writeFile(t, filepath.Join(tree, "etc/group"), testGroup)
	writeFile(t, filepath.Join(tree, "opt/file"), "saved\n")
	base := filepath.Join(dir, "base.ext4")
	mkfs, _ := tool("mkfs.ext4", "")
	if out, err := exec.Command(mkfs, "-q", "-d", tree, base, "3G").CombinedOutput(); err != nil {
		t.Fatalf("mkfs: %v: %s", err, out)
	}
	disk := filepath.Join(dir, "disk.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", disk, "4G").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v: %s", err, out)
	}
	return disk
}

func TestSave(t *testing.T) {
	needDiskTools(t)
	ctx := context.Background()
	cache := t.TempDir()
	disk := testDisk(t)
	from := Template{Name: AgentsName, Agents: []string{"claude"}, Versions: map[string]string{"claude": "1.2.3"}, Docker: true, Packages: []string{"bash"}}
	opts := SaveOptions{Source: "sandbox sb (agents)", From: from}
	// The disk's header is the VMM user's to write: without the folder
	// of its backing image trusted, root does not follow it.
	if _, err := Save(ctx, cache, disk, "saved", opts); !errors.Is(err, diskpkg.ErrUntrusted) {
		t.Fatalf("save with an untrusted backing file: %v; want disk.ErrUntrusted", err)
	}
	opts.Backing = []string{filepath.Dir(disk)}
	tp, err := Save(ctx, cache, disk, "saved", opts)
	if err != nil {
		t.Fatal(err)
	}
	if tp.Source != opts.Source || !tp.Docker || tp.Versions["claude"] != "1.2.3" || len(tp.Agents) != 1 || len(tp.Packages) != 1 {
		t.Errorf("saved template %+v does not inherit from %+v", tp, from)
	}
	if got := debugfs(t, tp.Image, "cat /opt/file"); !strings.Contains(got, "saved") {
		t.Errorf("/opt/file in the saved image: %q", got)
	}
	if uid, _ := fileOwner(t, tp.Image); uid != os.Geteuid() {
		t.Errorf("saved image belongs to uid %d", uid)
	}
	// Shrunk: data plus headroom, well under the 3 GiB file system.
	if tp.SizeBytes > headroomBytes+256<<20 || tp.SizeBytes < headroomBytes {
		t.Errorf("saved image is %d MiB", tp.SizeBytes>>20)
	}
	if _, err := Save(ctx, cache, disk, DefaultName, opts); !errors.Is(err, ErrBuiltinName) {
		t.Errorf("save as a built-in name: %v", err)
	}
	refuse := errors.New("refused")
	opts.Replace = func(Template) error { return refuse }
	if _, err := Save(ctx, cache, disk, "saved", opts); !errors.Is(err, refuse) {
		t.Errorf("Replace was not asked: %v", err)
	}
}

func TestSaveFileRoundTrip(t *testing.T) {
	needDiskTools(t)
	ctx := context.Background()
	cache := t.TempDir()
	disk := testDisk(t)
	out := filepath.Join(t.TempDir(), "saved.sbx")
	opts := SaveOptions{Source: "sandbox sb (shell)", From: Template{Versions: map[string]string{"node": "22"}}, Backing: []string{filepath.Dir(disk)}}
	if err := SaveFile(ctx, cache, disk, "mine", out, opts); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(out)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("saved file: %d KiB", st.Size()>>10)
	if all, _ := List(cache); len(all) != 0 {
		t.Errorf("SaveFile added templates: %v", all)
	}
	h, err := readSavedHeader(out)
	if err != nil {
		t.Fatal(err)
	}
	if h.Name != "mine" || h.Source != opts.Source {
		t.Errorf("header %+v", h)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("saved file mode %v, want 0600 (it may hold the agent's logins)", st.Mode().Perm())
	}
	src, err := FileSource(cache, out)
	if err != nil || src != "file "+out+"@sha256:"+sha256File(t, out) {
		t.Errorf("FileSource = %q, %v", src, err)
	}
	tp, err := LoadFile(ctx, cache, out, ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if tp.Name != "mine" || tp.ID != h.ID || tp.Source != src || tp.Versions["node"] != "22" {
		t.Errorf("loaded %+v, header %+v", tp, h)
	}
	if got := debugfs(t, tp.Image, "cat /opt/file"); !strings.Contains(got, "saved") {
		t.Errorf("/opt/file in the loaded image: %q", got)
	}
	// Loading it again under another name shares the image.
	tp2, err := LoadFile(ctx, cache, out, ImportOptions{Name: "mine2"})
	if err != nil || tp2.ID != tp.ID {
		t.Errorf("second load: %+v %v", tp2, err)
	}

	// A damaged image is refused and leaves nothing.
	bad := filepath.Join(t.TempDir(), "bad.sbx")
	damage(t, out, bad)
	if _, err := LoadFile(ctx, cache, bad, ImportOptions{Name: "bad"}); err == nil || !strings.Contains(err.Error(), "damaged") {
		t.Errorf("damaged file: err = %v", err)
	}
	if _, err := Lookup(cache, "bad"); !errors.Is(err, ErrNotFound) {
		t.Errorf("damaged file left template bad: %v", err)
	}
}

// damage copies a saved-template file with a changed header id.
func damage(t *testing.T, in, out string) {
	t.Helper()
	h, err := readSavedHeader(in)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(in)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	var img bytes.Buffer
	for {
		th, err := tr.Next()
		if err != nil {
			break
		}
		if th.Name == savedImageName {
			img.ReadFrom(tr)
		}
	}
	q := filepath.Join(t.TempDir(), "q")
	os.WriteFile(q, img.Bytes(), 0o644)
	h.ID = strings.Repeat("0", 64)
	if err := writeSavedFile(out, h, q); err != nil {
		t.Fatal(err)
	}
}

func sha256File(t *testing.T, p string) string {
	t.Helper()
	sum, err := fileSHA256(p)
	if err != nil {
		t.Fatal(err)
	}
	return sum
}

// writeSaved writes a saved-template file with header h and image entry
// name holding body, as a hostile file would.
func writeSaved(t *testing.T, h savedHeader, entry string, body []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "x.sbx")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	hb, _ := json.Marshal(h)
	tw.WriteHeader(&tar.Header{Name: savedHeaderName, Mode: 0o644, Size: int64(len(hb)), Typeflag: tar.TypeReg})
	tw.Write(hb)
	tw.WriteHeader(&tar.Header{Name: entry, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg})
	tw.Write(body)
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

// A saved-template file is read by sbx alone: a disk image header that
// names a backing file (here a secret of the host) is never opened by a
// tool, and an image larger than its header says is cut off.
func TestLoadSavedHostile(t *testing.T) {
	ctx := context.Background()
	cache := t.TempDir()
	secretDir := t.TempDir()
	secret := filepath.Join(secretDir, "secret.txt")
	os.WriteFile(secret, []byte("host secret\n"), 0o600)
	const size = 1 << 20
	// What a conversion that followed the backing file would produce.
	leaked := append([]byte("host secret\n"), make([]byte, size-12)...)
	sum := sha256.Sum256(leaked)
	h := savedHeader{Format: savedFormat, Version: savedVersion, Name: "evil", ID: hex.EncodeToString(sum[:]), SizeBytes: size}

	if qemuImg, err := tool("qemu-img", ""); err == nil {
		qcow := filepath.Join(t.TempDir(), "evil.qcow2")
		if out, err := exec.Command(qemuImg, "create", "-q", "-f", "qcow2", "-b", secret, "-F", "raw", qcow, "1M").CombinedOutput(); err != nil {
			t.Fatalf("qemu-img create: %v: %s", err, out)
		}
		q, _ := os.ReadFile(qcow)
		for _, v := range []struct {
			version int
			entry   string
		}{{1, "image.qcow2"}, {savedVersion, savedImageName}} {
			h := h
			h.Version = v.version
			_, err := LoadFile(ctx, cache, writeSaved(t, h, v.entry, q), ImportOptions{})
			if err == nil {
				t.Fatalf("version %d with a qcow2 naming a backing file was loaded", v.version)
			}
			t.Logf("version %d: %v", v.version, err)
		}
	}

	// A gzip image larger than the header's size.
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(make([]byte, 4*size))
	zw.Close()
	_, err := LoadFile(ctx, cache, writeSaved(t, h, savedImageName, gz.Bytes()), ImportOptions{})
	if err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("oversized image: %v", err)
	}
	// An absurd size is refused before anything is written.
	h.SizeBytes = 1 << 50
	if _, err := LoadFile(ctx, cache, writeSaved(t, h, savedImageName, gz.Bytes()), ImportOptions{}); err == nil || !strings.Contains(err.Error(), "bad image size") {
		t.Errorf("absurd size: %v", err)
	}
	if all, _ := List(cache); len(all) != 0 {
		t.Errorf("hostile files became templates: %v", all)
	}
	entries, _ := os.ReadDir(templatesDir(cache))
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".ext4") || strings.HasPrefix(e.Name(), ".tmp-") {
			t.Errorf("left %s", e.Name())
		}
	}
}

// The e2fsprogs tools that read a guest's file system run as nobody and
// reach the image only through the descriptor they are given.
func TestRunFSToolUnprivileged(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	dir := t.TempDir()
	os.Chmod(dir, 0o700)
	p := filepath.Join(dir, "img")
	os.WriteFile(p, []byte("image\n"), 0o600)
	os.Chown(p, fsToolUID, fsToolUID)
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out, err := runFSTool(context.Background(), f, "/bin/sh", "-c", "id -u; id -g; id -G; cat "+fsToolImage+"; cat "+p+" 2>/dev/null || echo no-path; ulimit -v")
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	lines := strings.Fields(string(out))
	want := []string{"65534", "65534", "65534", "image", "no-path", strconv.Itoa(fsToolMemory >> 10)}
	if strings.Join(lines, " ") != strings.Join(want, " ") {
		t.Errorf("tool saw %q, want %q", lines, want)
	}
}

func TestWriteSavedFileMode(t *testing.T) {
	img := filepath.Join(t.TempDir(), "img")
	os.WriteFile(img, []byte("x"), 0o644)
	out := filepath.Join(t.TempDir(), "out.sbx")
	os.WriteFile(out, nil, 0o644) // replaced, mode and all
	if err := writeSavedFile(out, savedHeader{Format: savedFormat, Version: savedVersion}, img); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(out); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v (%v), want 0600", st.Mode().Perm(), err)
	}
}

// compressImage and writeSparse round-trip, keeping zero blocks as holes.
func TestCompressRoundTrip(t *testing.T) {
	dir := t.TempDir()
	raw := filepath.Join(dir, "raw")
	data := make([]byte, 3*compressChunk+12345)
	for i := range 1 << 16 {
		data[compressChunk+i*7] = byte(i)
	}
	os.WriteFile(raw, data, 0o600)
	gz := filepath.Join(dir, "raw.gz")
	if err := compressImage(context.Background(), raw, gz); err != nil {
		t.Fatal(err)
	}
	in, _ := os.Open(gz)
	defer in.Close()
	zr, err := gzip.NewReader(in)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := os.Create(filepath.Join(dir, "back"))
	if err := writeSparse(context.Background(), out, zr, int64(len(data))); err != nil {
		t.Fatal(err)
	}
	out.Close()
	back, _ := os.ReadFile(out.Name())
	if !bytes.Equal(back, data) {
		t.Fatal("round trip changed the image")
	}
	var st syscall.Stat_t
	syscall.Stat(out.Name(), &st)
	if st.Blocks*512 >= int64(len(data)) {
		t.Errorf("not sparse: %d bytes allocated for %d", st.Blocks*512, len(data))
	}
}
