package template

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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
	opts := SaveOptions{Source: "sandbox sb (shell)", From: Template{Versions: map[string]string{"node": "22"}}}
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
	src, err := FileSource(out)
	if err != nil || src != "file "+out+"@sha256:"+h.ID {
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
	var qcow bytes.Buffer
	for {
		th, err := tr.Next()
		if err != nil {
			break
		}
		if th.Name == savedImageName {
			qcow.ReadFrom(tr)
		}
	}
	q := filepath.Join(t.TempDir(), "q")
	os.WriteFile(q, qcow.Bytes(), 0o644)
	h.ID = strings.Repeat("0", 64)
	if err := writeSavedFile(out, h, q); err != nil {
		t.Fatal(err)
	}
}
