package archive

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// TestExtractRefusesDestinationLinks: a symbolic link anywhere in the
// destination, its last component or a folder on the way, absolute or
// relative to the current folder, is refused and nothing is written
// where it leads.
func TestExtractRefusesDestinationLinks(t *testing.T) {
	base := t.TempDir()
	victim := filepath.Join(base, "victim")
	ws := filepath.Join(base, "ws")
	must(t, os.Mkdir(victim, 0o700))
	must(t, os.Mkdir(filepath.Join(victim, "sub"), 0o700))
	must(t, os.Mkdir(ws, 0o755))
	must(t, os.Symlink(victim, filepath.Join(ws, "dist")))
	must(t, os.Symlink(filepath.Join(victim, "f"), filepath.Join(ws, "file")))
	t.Chdir(base)
	for _, c := range []struct{ dst, link, name string }{
		{filepath.Join(ws, "dist"), filepath.Join(ws, "dist"), "."},
		{filepath.Join(ws, "dist"), filepath.Join(ws, "dist"), "out"},
		{filepath.Join(ws, "dist", "sub"), filepath.Join(ws, "dist"), "."},
		{filepath.Join(ws, "dist", "new"), filepath.Join(ws, "dist"), "."},
		{filepath.Join(ws, "file"), filepath.Join(ws, "file"), "."},
		{"ws/dist", "ws/dist", "."},
		{"ws/dist/sub/", "ws/dist", "out"},
		{"./ws/dist/new", "ws/dist", "."},
	} {
		err := Extract(makeTar(t, []entry{{name: "./", typ: tar.TypeDir}, {name: "./f", typ: tar.TypeReg, body: "pwned"}}), c.dst, Options{Name: c.name})
		if !errors.Is(err, ErrDestinationLink) {
			t.Errorf("Extract to %s: %v, want ErrDestinationLink", c.dst, err)
			continue
		}
		if !strings.Contains(err.Error(), c.link+" is a symbolic link") {
			t.Errorf("Extract to %s: %q does not name the link %s", c.dst, err, c.link)
		}
	}
	for d, n := range map[string]int{victim: 1, filepath.Join(victim, "sub"): 0} {
		if ents, _ := os.ReadDir(d); len(ents) != n {
			t.Errorf("%s got entries: %v", d, ents)
		}
		if fi, _ := os.Stat(d); fi.Mode().Perm() != 0o700 {
			t.Errorf("%s chmodded to %v", d, fi.Mode().Perm())
		}
	}
	// Real folders, relative and absolute, still work.
	must(t, os.Mkdir(filepath.Join(ws, "real"), 0o755))
	for _, dst := range []string{"ws/real", filepath.Join(ws, "real"), "ws/real/new", "./ws/../ws/real/new2"} {
		if err := Extract(makeTar(t, []entry{{name: "./", typ: tar.TypeDir}, {name: "./f", typ: tar.TypeReg, body: "ok"}}), dst, Options{Name: "."}); err != nil {
			t.Errorf("Extract to %s: %v", dst, err)
		}
	}
	for _, p := range []string{"real/f", "real/new/f", "real/new2/f"} {
		if b, err := os.ReadFile(filepath.Join(ws, p)); err != nil || string(b) != "ok" {
			t.Errorf("%s: %q, %v", p, b, err)
		}
	}
	// A missing folder on the way is ErrNotExist; a file on the way is not a folder.
	if err := Extract(makeTar(t, []entry{{name: "f", typ: tar.TypeReg}}), "ws/nope/f", Options{}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing parent: %v", err)
	}
	if err := Extract(makeTar(t, []entry{{name: "f", typ: tar.TypeReg}}), "ws/real/f/g", Options{}); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("file as parent: %v", err)
	}
	// FollowDestLinks follows them (the guest's own links on copy-in).
	if err := Extract(makeTar(t, []entry{{name: "g", typ: tar.TypeReg, body: "x"}}), "ws/dist", Options{FollowDestLinks: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(victim, "g")); err != nil {
		t.Errorf("FollowDestLinks: %v", err)
	}
}

// TestExtractMergeKeepsFolderMode: merging a folder's contents ("/.")
// into an existing folder leaves that folder's mode and times alone, and
// still applies modes below it.
func TestExtractMergeKeepsFolderMode(t *testing.T) {
	dst := filepath.Join(t.TempDir(), "d")
	must(t, os.Mkdir(dst, 0o750))
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range []*tar.Header{
		{Name: "./", Typeflag: tar.TypeDir, Mode: 0o777},
		{Name: "./sub/", Typeflag: tar.TypeDir, Mode: 0o711},
	} {
		must(t, tw.WriteHeader(h))
	}
	tw.Close()
	must(t, Extract(&buf, dst, Options{Name: "."}))
	if fi, _ := os.Stat(dst); fi.Mode().Perm() != 0o750 {
		t.Errorf("existing folder: mode %v, want 0750", fi.Mode().Perm())
	}
	if fi, _ := os.Stat(filepath.Join(dst, "sub")); fi.Mode().Perm() != 0o711 {
		t.Errorf("sub: mode %v, want 0711", fi.Mode().Perm())
	}
}

// TestWriteKinds: Write archives folders, files and symlinks (as links,
// inside the tree and at the top) and skips FIFOs without opening them.
func TestWriteKinds(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src")
	must(t, os.MkdirAll(filepath.Join(src, "a", "b"), 0o755))
	must(t, os.WriteFile(filepath.Join(src, "a", "b", "f"), []byte("data"), 0o640))
	must(t, os.Symlink("/etc/passwd", filepath.Join(src, "a", "l")))
	must(t, os.Symlink("a", filepath.Join(src, "dirlink")))
	must(t, syscall.Mkfifo(filepath.Join(src, "fifo"), 0o644))
	for _, d := range []string{"", "a", "a/b"} {
		must(t, os.Chmod(filepath.Join(src, d), 0o755))
	}
	must(t, os.Chmod(filepath.Join(src, "a", "b", "f"), 0o640))
	list := func(p string) map[string]string {
		var buf bytes.Buffer
		must(t, Write(&buf, p))
		m := map[string]string{}
		tr := tar.NewReader(&buf)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				return m
			}
			must(t, err)
			b, _ := io.ReadAll(tr)
			m[h.Name] = string(h.Typeflag) + " " + h.FileInfo().Mode().Perm().String() + " " + h.Linkname + string(b)
		}
	}
	got := list(src)
	want := map[string]string{
		"src/":        "5 -rwxr-xr-x ",
		"src/a/":      "5 -rwxr-xr-x ",
		"src/a/b/":    "5 -rwxr-xr-x ",
		"src/a/b/f":   "0 -rw-r----- data",
		"src/a/l":     "2 -rwxrwxrwx /etc/passwd",
		"src/dirlink": "2 -rwxrwxrwx a",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %q, want %q", k, got[k], v)
		}
	}
	if len(got) != len(want) {
		t.Errorf("entries %v, want %v", slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(want)))
	}
	if got := list(src + "/."); got["./a/b/f"] != "0 -rw-r----- data" || got["."] == "" || len(got) != len(want) {
		t.Errorf("contents: %v", got)
	}
	if got := list(filepath.Join(src, "dirlink")); got["dirlink"] != "2 -rwxrwxrwx a" || len(got) != 1 {
		t.Errorf("top-level link: %v", got)
	}
	if got := list(filepath.Join(src, "a", "b", "f")); got["f"] != "0 -rw-r----- data" || len(got) != 1 {
		t.Errorf("top-level file: %v", got)
	}
}
