package template

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

// layersImage stacks layers (lowest first) into an image.
func layersImage(t *testing.T, layers ...[]tentry) v1.Image {
	t.Helper()
	var ls []v1.Layer
	for _, l := range layers {
		ls = append(ls, testLayer(t, l))
	}
	img, err := mutate.AppendLayers(empty.Image, ls...)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// extractLayers extracts img as importImage does.
func extractLayers(t *testing.T, img v1.Image) (string, error) {
	t.Helper()
	dir := t.TempDir()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	return dir, flattenLayers(context.Background(), layers, dir, extractOptions{Owners: os.Geteuid() == 0})
}

func readTree(t *testing.T, dir, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		return "<" + err.Error() + ">"
	}
	return string(b)
}

// A hard link whose target an upper layer deleted or replaced keeps the
// content the target had when the link was made, as with docker (layers
// applied in order: the link holds the old inode).
func TestExtractHardLinkToRemovedTarget(t *testing.T) {
	img := layersImage(t,
		[]tentry{
			{name: "a", body: "old a\n", mode: 0o4755},
			{name: "b", typ: tar.TypeLink, link: "a"},
			{name: "c", typ: tar.TypeLink, link: "a"},
			{name: "d", body: "old d\n"},
		},
		[]tentry{
			{name: "e", typ: tar.TypeLink, link: "d"}, // made while d held "old d"
			{name: "chain", typ: tar.TypeLink, link: "e"},
		},
		[]tentry{
			{name: ".wh.a"},
			{name: "d", body: "new d\n"},
		},
	)
	dir, err := extractLayers(t, img)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"b": "old a\n", "c": "old a\n", "d": "new d\n", "e": "old d\n", "chain": "old d\n"} {
		if got := readTree(t, dir, name); got != want {
			t.Errorf("/%s = %q, want %q", name, got, want)
		}
	}
	if _, err := os.Lstat(filepath.Join(dir, "a")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("/a survived its whiteout: %v", err)
	}
	b, _ := os.Stat(filepath.Join(dir, "b"))
	c, _ := os.Stat(filepath.Join(dir, "c"))
	if b == nil || c == nil || !os.SameFile(b, c) {
		t.Error("b and c are not one inode any more")
	}
	if b != nil && b.Mode() != 0o755|os.ModeSetuid {
		t.Errorf("b mode %v, want the target's setuid 0755", b.Mode())
	}

	// A link to a name that never existed is still an error.
	img = layersImage(t, []tentry{{name: "x", typ: tar.TypeLink, link: "nowhere"}})
	if _, err := extractLayers(t, img); err == nil {
		t.Error("a link to nothing was accepted")
	}
}

// An entry of a lower layer below a name that an upper layer made a
// symbolic link is shadowed, even when mutate.Extract lets it through
// (an absolute name): it is neither written through the link nor an
// error when the link is absolute.
func TestExtractShadowedBySymlink(t *testing.T) {
	img := layersImage(t,
		[]tentry{
			{name: "usr/", typ: tar.TypeDir},
			{name: "usr/lib/", typ: tar.TypeDir},
			{name: "lib/", typ: tar.TypeDir},
			{name: "/lib/old.so", body: "old\n"},
			{name: "var/", typ: tar.TypeDir},
			{name: "var/run/", typ: tar.TypeDir},
			{name: "/var/run/pid", body: "1\n"},
		},
		[]tentry{
			{name: "lib", typ: tar.TypeSymlink, link: "usr/lib"},
			{name: "var/run", typ: tar.TypeSymlink, link: "/run"},
		},
	)
	dir, err := extractLayers(t, img)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(dir, "usr/lib/old.so")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a lower layer's /lib/old.so was written through the upper layer's link: %v", err)
	}
	for name, want := range map[string]string{"lib": "usr/lib", "var/run": "/run"} {
		if l, err := os.Readlink(filepath.Join(dir, name)); err != nil || l != want {
			t.Errorf("/%s -> %q (%v), want %q", name, l, err, want)
		}
	}
}

// /etc/passwd and /etc/group are read only as regular files, through
// links resolved inside the tree, and at most maxUserFile bytes.
func TestCheckAgentUserHostileFiles(t *testing.T) {
	setup := map[string]func(t *testing.T, dir string){
		"fifo": func(t *testing.T, dir string) {
			if err := syscall.Mkfifo(filepath.Join(dir, "etc/passwd"), 0o644); err != nil {
				t.Fatal(err)
			}
		},
		"link to fifo": func(t *testing.T, dir string) {
			os.MkdirAll(filepath.Join(dir, "dev"), 0o755)
			if err := syscall.Mkfifo(filepath.Join(dir, "dev/fifo"), 0o644); err != nil {
				t.Fatal(err)
			}
			os.Symlink("../dev/fifo", filepath.Join(dir, "etc/passwd"))
		},
		"link to zero": func(t *testing.T, dir string) {
			if os.Geteuid() != 0 {
				t.Skip("needs root for mknod")
			}
			os.MkdirAll(filepath.Join(dir, "dev"), 0o755)
			if err := syscall.Mknod(filepath.Join(dir, "dev/zero"), syscall.S_IFCHR|0o666, 1<<8|5); err != nil {
				t.Fatal(err)
			}
			os.Symlink("../dev/zero", filepath.Join(dir, "etc/passwd"))
		},
		"huge": func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, "etc/passwd"), testPasswd+strings.Repeat("#\n", maxUserFile))
		},
		"host file": func(t *testing.T, dir string) {
			// An absolute link means the tree's own /etc/shadow, not the
			// host's; the tree has none.
			os.Symlink("/etc/shadow", filepath.Join(dir, "etc/passwd"))
		},
	}
	for name, fn := range setup {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			writeFile(t, filepath.Join(dir, "etc/group"), testGroup)
			fn(t, dir)
			done := make(chan error, 1)
			go func() { done <- checkAgentUser(dir) }()
			select {
			case err := <-done:
				if _, ok := errors.AsType[*MissingUserError](err); !ok {
					t.Fatalf("err = %v, want a MissingUserError", err)
				}
				t.Logf("%v", err)
			case <-time.After(10 * time.Second):
				t.Fatal("checkAgentUser hangs")
			}
		})
	}
	// Links inside the tree are followed, absolute ones from its root.
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "usr/share/base/passwd"), testPasswd)
	writeFile(t, filepath.Join(dir, "etc/group.real"), testGroup)
	os.Symlink("/usr/share/base/passwd", filepath.Join(dir, "etc/passwd"))
	os.Symlink("../../../etc/group.real", filepath.Join(dir, "etc/group"))
	if err := checkAgentUser(dir); err != nil {
		t.Errorf("symlinked passwd and group: %v", err)
	}
}

func TestHasDockerd(t *testing.T) {
	for name, tc := range map[string]struct {
		files []string
		links map[string]string
		want  bool
	}{
		"debian docker.io": {files: []string{"usr/sbin/dockerd"}, want: true},
		"docker packages":  {files: []string{"usr/bin/dockerd"}, want: true},
		"none":             {files: []string{"usr/bin/bash"}},
		"usr out of tree":  {links: map[string]string{"usr": "OUTSIDE"}},
	} {
		t.Run(name, func(t *testing.T) {
			outside := t.TempDir()
			writeFile(t, filepath.Join(outside, "bin/dockerd"), "")
			writeFile(t, filepath.Join(outside, "sbin/dockerd"), "")
			dir := t.TempDir()
			for _, f := range tc.files {
				writeFile(t, filepath.Join(dir, f), "")
			}
			for l, target := range tc.links {
				os.Symlink(strings.ReplaceAll(target, "OUTSIDE", outside), filepath.Join(dir, l))
			}
			if got := hasDockerd(dir); got != tc.want {
				t.Errorf("hasDockerd = %v, want %v", got, tc.want)
			}
		})
	}
}

// What an import writes is capped: file bodies, decompressed tarballs
// and the files of an OCI archive.
func TestDiskBudget(t *testing.T) {
	b, err := newBudget(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if b.limit > maxImportBytes || b.limit > b.free-keepFreeBytes && b.limit != 0 {
		t.Errorf("budget %d of %d free", b.limit, b.free)
	}
	small := func() *diskBudget { return &diskBudget{dir: "/x", free: 3 << 30, limit: 1 << 20} }

	big := layerTar(t, []tentry{{name: "big", body: strings.Repeat("x", 2<<20)}})
	dir := t.TempDir()
	err = extractTar(bytes.NewReader(big), dir, extractOptions{Budget: small()})
	if !errors.Is(err, ErrNoSpace) {
		t.Fatalf("extract over budget: %v", err)
	}
	if _, serr := os.Stat(filepath.Join(dir, "big")); serr == nil {
		t.Error("the file over budget was written")
	}
	t.Logf("%v", err)

	// Many empty entries cost too.
	var many []tentry
	for i := range 3000 {
		many = append(many, tentry{name: "f" + strings.Repeat("0", 3) + string(rune('a'+i%26)) + string(rune('a'+i/26%26)) + string(rune('a'+i/676))})
	}
	if err := extractTar(bytes.NewReader(layerTar(t, many)), t.TempDir(), extractOptions{Budget: small()}); !errors.Is(err, ErrNoSpace) {
		t.Errorf("3000 empty files: %v", err)
	}

	// A gzip bomb: 1 KiB that unpacks to 16 MiB.
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(make([]byte, 16<<20))
	zw.Close()
	bomb := filepath.Join(t.TempDir(), "bomb.tar.gz")
	os.WriteFile(bomb, gz.Bytes(), 0o644)
	tmp := t.TempDir()
	if _, _, err := unpackImageFile(bomb, kindGzip, tmp, small()); !errors.Is(err, ErrNoSpace) {
		t.Errorf("gzip bomb: %v", err)
	}
	if st, err := os.Stat(filepath.Join(tmp, "image.tar")); err == nil && st.Size() > 1<<20 {
		t.Errorf("gzip bomb wrote %d bytes", st.Size())
	}

	// An OCI archive with a big blob.
	if err := unpackLayout(bytes.NewReader(big), t.TempDir(), small()); !errors.Is(err, ErrNoSpace) {
		t.Errorf("OCI archive over budget: %v", err)
	}
}
