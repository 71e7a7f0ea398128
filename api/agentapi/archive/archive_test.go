package archive

import (
	"archive/tar"
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

type entry struct {
	name, body, link string
	typ              byte
}

func makeTar(t *testing.T, entries []entry) *bytes.Buffer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: 0o644, Size: int64(len(e.body)), Linkname: e.link}
		if e.typ == tar.TypeDir {
			h.Mode = 0o755
		}
		if e.typ != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if e.typ == tar.TypeReg {
			tw.Write([]byte(e.body))
		}
	}
	tw.Close()
	return &buf
}

func TestExtractRefusesEscapes(t *testing.T) {
	tests := []struct {
		name    string
		entries []entry
	}{
		{"symlink to dir outside then through it", []entry{
			{name: "t/", typ: tar.TypeDir},
			{name: "t/link", typ: tar.TypeSymlink, link: "OUTSIDE"},
			{name: "t/link/passwd", typ: tar.TypeReg, body: "pwned"},
		}},
		{"symlink to root then through it", []entry{
			{name: "t/", typ: tar.TypeDir},
			{name: "t/link", typ: tar.TypeSymlink, link: "/"},
			{name: "t/link/OUTSIDE_REL/passwd", typ: tar.TypeReg, body: "pwned"},
		}},
		{"relative symlink climbing out", []entry{
			{name: "t/", typ: tar.TypeDir},
			{name: "t/up", typ: tar.TypeSymlink, link: "../../.."},
			{name: "t/up/x", typ: tar.TypeReg, body: "pwned"},
		}},
		{"dotdot name", []entry{{name: "t/../../x", typ: tar.TypeReg, body: "pwned"}}},
		{"absolute name", []entry{{name: "/OUTSIDE/x", typ: tar.TypeReg, body: "pwned"}}},
		{"hard link to outside", []entry{
			{name: "t/", typ: tar.TypeDir},
			{name: "t/h", typ: tar.TypeLink, link: "../OUTSIDE/secret"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			outside := t.TempDir()
			if err := os.WriteFile(filepath.Join(outside, "secret"), []byte("s"), 0o600); err != nil {
				t.Fatal(err)
			}
			rel, _ := filepath.Rel("/", outside)
			for i := range tt.entries {
				e := &tt.entries[i]
				e.link = replace(e.link, "OUTSIDE_REL", rel)
				e.link = replace(e.link, "OUTSIDE", outside)
				e.name = replace(e.name, "OUTSIDE_REL", rel)
				e.name = replace(e.name, "OUTSIDE", outside)
			}
			dst := t.TempDir()
			err := Extract(makeTar(t, tt.entries), dst, Options{})
			if err == nil {
				t.Fatal("extract succeeded, want an error")
			}
			t.Logf("error: %v", err)
			ents, _ := os.ReadDir(outside)
			if len(ents) != 1 {
				t.Errorf("outside directory changed: %v", ents)
			}
			if _, err := os.Lstat(filepath.Join(outside, "passwd")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("file written outside")
			}
		})
	}
}

func replace(s, old, new string) string {
	return string(bytes.ReplaceAll([]byte(s), []byte(old), []byte(new)))
}

func TestExtractDockerSemantics(t *testing.T) {
	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, "d", "sub"), 0o755)
	os.WriteFile(filepath.Join(src, "d", "sub", "f"), []byte("x"), 0o600)
	os.WriteFile(filepath.Join(src, "file"), []byte("y"), 0o644)

	write := func(p string) *bytes.Buffer {
		var b bytes.Buffer
		if err := Write(&b, p); err != nil {
			t.Fatal(err)
		}
		return &b
	}
	dst := t.TempDir()
	// Existing dir: inside.
	if err := Extract(write(filepath.Join(src, "d")), dst, Options{}); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dst, "d", "sub", "f")); err != nil || string(b) != "x" {
		t.Errorf("dir into dir: %q %v", b, err)
	}
	// New name: created as it.
	if err := Extract(write(filepath.Join(src, "d")), filepath.Join(dst, "new"), Options{}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dst, "new", "sub", "f")); err != nil {
		t.Error(err)
	}
	// Contents ("dir/."): into an existing dir, merged.
	if err := Extract(write(filepath.Join(src, "d")+"/."), filepath.Join(dst, "new"), Options{}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dst, "new", "sub", "f")); err != nil {
		t.Error(err)
	}
	// File over existing file.
	if err := Extract(write(filepath.Join(src, "file")), filepath.Join(dst, "d", "sub", "f"), Options{}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dst, "d", "sub", "f")); string(b) != "y" {
		t.Errorf("file over file: %q", b)
	}
	// File mode preserved.
	if fi, _ := os.Stat(filepath.Join(dst, "new", "sub", "f")); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode = %v, want 0600", fi.Mode().Perm())
	}
	// Missing parent.
	if err := Extract(write(filepath.Join(src, "file")), filepath.Join(dst, "no", "such"), Options{}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing parent: got %v, want ErrNotExist", err)
	}
}

// Set-id bits never survive an extraction unless asked for.
func TestExtractDropsSetID(t *testing.T) {
	mk := func() *bytes.Buffer {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for _, h := range []*tar.Header{
			{Name: "d/", Typeflag: tar.TypeDir, Mode: 0o2775 | 0o1000},
			{Name: "d/suid", Typeflag: tar.TypeReg, Mode: 0o4755},
			{Name: "d/sgid", Typeflag: tar.TypeReg, Mode: 0o2755},
		} {
			if err := tw.WriteHeader(h); err != nil {
				t.Fatal(err)
			}
		}
		tw.Close()
		return &buf
	}
	for _, keep := range []bool{false, true} {
		dst := t.TempDir()
		if err := Extract(mk(), dst, Options{KeepSetID: keep}); err != nil {
			t.Fatal(err)
		}
		for name, want := range map[string]os.FileMode{
			"d":      os.ModeDir | os.ModeSticky | 0o775,
			"d/suid": 0o755,
			"d/sgid": 0o755,
		} {
			if keep {
				switch name {
				case "d":
					want |= os.ModeSetgid
				case "d/suid":
					want |= os.ModeSetuid
				case "d/sgid":
					want |= os.ModeSetgid
				}
			}
			fi, err := os.Lstat(filepath.Join(dst, name))
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode() != want {
				t.Errorf("KeepSetID=%v: %s mode %v, want %v", keep, name, fi.Mode(), want)
			}
		}
	}
}

// Inside an existing folder the copy takes the name the user asked for,
// not the one the archive carries.
func TestExtractName(t *testing.T) {
	dst := t.TempDir()
	if err := Extract(makeTar(t, []entry{{name: ".bashrc", body: "evil", typ: tar.TypeReg}}), dst, Options{Name: "notes.txt"}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(dst, ".bashrc")); err == nil {
		t.Error("the archive's name .bashrc was used")
	}
	if b, err := os.ReadFile(filepath.Join(dst, "notes.txt")); err != nil || string(b) != "evil" {
		t.Errorf("notes.txt: %q, %v", b, err)
	}
	// A directory archive named .ssh lands under the asked-for name too.
	if err := Extract(makeTar(t, []entry{{name: ".ssh", typ: tar.TypeDir}, {name: ".ssh/authorized_keys", body: "k", typ: tar.TypeReg}}), dst, Options{Name: "out"}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(dst, ".ssh")); err == nil {
		t.Error("the archive's name .ssh was used")
	}
	if _, err := os.Stat(filepath.Join(dst, "out", "authorized_keys")); err != nil {
		t.Error(err)
	}
	for _, c := range []struct{ src, want string }{
		{"/tmp/x", "x"}, {"/tmp/x/", "x"}, {"/tmp/d/.", "."}, {"rel/y", "y"},
	} {
		if got := TopName(c.src); got != c.want {
			t.Errorf("TopName(%q) = %q, want %q", c.src, got, c.want)
		}
	}
	if err := Extract(makeTar(t, []entry{{name: "a", typ: tar.TypeReg}}), dst, Options{Name: ".."}); err == nil {
		t.Error("Name .. accepted")
	}
}

// Found by the tenth outside review: an entry cut short (a client gone
// mid-copy) had already removed the file it replaced.
func TestExtractCutShortKeepsOriginal(t *testing.T) {
	dst := filepath.Join(t.TempDir(), "keep.txt")
	os.WriteFile(dst, []byte("precious\n"), 0o644)
	full := makeTar(t, []entry{{name: "keep.txt", body: string(bytes.Repeat([]byte("y"), 100000)), typ: tar.TypeReg}})
	cut := bytes.NewReader(full.Bytes()[:512+30000])
	if err := Extract(cut, dst, Options{}); err == nil {
		t.Fatal("a cut-short archive extracted")
	}
	if b, _ := os.ReadFile(dst); string(b) != "precious\n" {
		t.Errorf("the original now holds %d bytes", len(b))
	}
	ents, _ := os.ReadDir(filepath.Dir(dst))
	if len(ents) != 1 {
		t.Errorf("left behind: %v", ents)
	}
	// A whole one replaces it.
	if err := Extract(makeTar(t, []entry{{name: "keep.txt", body: "new\n", typ: tar.TypeReg}}), dst, Options{}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(dst); string(b) != "new\n" {
		t.Errorf("replaced: %q", b)
	}
}

// Found by the tenth outside review: copying a folder's contents into an
// existing folder let a hard link entry name a file already there (its
// .git/config), which the copy's own file then shared.
func TestExtractLinksOnlyToItsOwnFiles(t *testing.T) {
	dst := t.TempDir()
	os.MkdirAll(filepath.Join(dst, ".git"), 0o755)
	cfg := filepath.Join(dst, ".git", "config")
	os.WriteFile(cfg, []byte("[core]\n"), 0o644)
	evil := makeTar(t, []entry{{name: ".", typ: tar.TypeDir}, {name: "./out.txt", link: "./.git/config", typ: tar.TypeLink}})
	if err := Extract(evil, filepath.Join(dst, "."), Options{}); !errors.Is(err, ErrUnsafeEntry) {
		t.Errorf("a link to a file the copy did not write: %v", err)
	}
	if fi, err := os.Stat(cfg); err != nil || fi.Sys().(*syscall.Stat_t).Nlink != 1 {
		t.Errorf(".git/config gained a link: %v", err)
	}
	// Links between the copy's own files still work.
	ok := makeTar(t, []entry{{name: "d", typ: tar.TypeDir}, {name: "d/a", body: "x", typ: tar.TypeReg}, {name: "d/b", link: "d/a", typ: tar.TypeLink}})
	out := filepath.Join(t.TempDir(), "d")
	if err := Extract(ok, out, Options{}); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(out, "b")); err != nil || fi.Sys().(*syscall.Stat_t).Nlink != 2 {
		t.Errorf("own link: %v", err)
	}
}

// Found by the tenth outside review: an empty archive into a folder was
// reported done, and a FIFO came out as an empty archive.
func TestEmptyAndSpecial(t *testing.T) {
	dst := t.TempDir()
	var empty bytes.Buffer
	tar.NewWriter(&empty).Close()
	if err := Extract(&empty, dst, Options{}); err == nil {
		t.Error("an empty archive into a folder extracted")
	}
	fifo := filepath.Join(t.TempDir(), "fifo")
	syscall.Mkfifo(fifo, 0o644)
	var out bytes.Buffer
	if err := Write(&out, fifo); !errors.Is(err, ErrNotCopyable) {
		t.Errorf("a FIFO: %v", err)
	}
}
