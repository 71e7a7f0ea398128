package archive

import (
	"archive/tar"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// hostileCases are archives a hostile guest could send on copy-out. In
// their names and link targets HOME stands for the absolute path of the
// destination's parent (the user's home, say), HOME_REL for it without
// the leading slash, and TREE for the top-level entry's name.
var hostileCases = []struct {
	name    string
	entries []entry
}{
	{"link to .. then through it", []entry{
		{name: "TREE/", typ: tar.TypeDir},
		{name: "TREE/l", typ: tar.TypeSymlink, link: ".."},
		{name: "TREE/l/victim", typ: tar.TypeReg, body: "pwned"},
	}},
	{"link to ../.. then through it", []entry{
		{name: "TREE/", typ: tar.TypeDir},
		{name: "TREE/l", typ: tar.TypeSymlink, link: "../.."},
		{name: "TREE/l/victim", typ: tar.TypeReg, body: "pwned"},
	}},
	{"link to / then through it", []entry{
		{name: "TREE/", typ: tar.TypeDir},
		{name: "TREE/l", typ: tar.TypeSymlink, link: "/"},
		{name: "TREE/l/HOME_REL/victim", typ: tar.TypeReg, body: "pwned"},
	}},
	{"link to sibling outside then through it", []entry{
		{name: "TREE/", typ: tar.TypeDir},
		{name: "TREE/l", typ: tar.TypeSymlink, link: "HOME/sibling"},
		{name: "TREE/l/new", typ: tar.TypeReg, body: "pwned"},
	}},
	{"relative link to sibling then through it", []entry{
		{name: "TREE/", typ: tar.TypeDir},
		{name: "TREE/l", typ: tar.TypeSymlink, link: "../sibling"},
		{name: "TREE/l/new", typ: tar.TypeReg, body: "pwned"},
	}},
	{"link to dir outside then mkdir through it", []entry{
		{name: "TREE/", typ: tar.TypeDir},
		{name: "TREE/l", typ: tar.TypeSymlink, link: "HOME"},
		{name: "TREE/l/newdir/", typ: tar.TypeDir},
	}},
	{"dotdot name", []entry{
		{name: "TREE/", typ: tar.TypeDir},
		{name: "TREE/../victim", typ: tar.TypeReg, body: "pwned"},
	}},
	{"dotdot top", []entry{{name: "../victim", typ: tar.TypeReg, body: "pwned"}}},
	{"absolute name", []entry{{name: "HOME/victim", typ: tar.TypeReg, body: "pwned"}}},
	{"absolute name after a good top", []entry{
		{name: "TREE/", typ: tar.TypeDir},
		{name: "HOME/victim", typ: tar.TypeReg, body: "pwned"},
	}},
	{"second top-level entry", []entry{
		{name: "TREE/", typ: tar.TypeDir},
		{name: "victim", typ: tar.TypeReg, body: "pwned"},
	}},
	{"hard link to outside by dotdot", []entry{
		{name: "TREE/", typ: tar.TypeDir},
		{name: "TREE/h", typ: tar.TypeLink, link: "TREE/../victim"},
	}},
	{"hard link to outside by absolute name", []entry{
		{name: "TREE/", typ: tar.TypeDir},
		{name: "TREE/h", typ: tar.TypeLink, link: "HOME/victim"},
	}},
	{"hard link to another top-level name", []entry{
		{name: "TREE/", typ: tar.TypeDir},
		{name: "TREE/h", typ: tar.TypeLink, link: "victim"},
	}},
	{"hard link as the top-level entry", []entry{
		{name: "TREE", typ: tar.TypeLink, link: "victim"},
	}},
	{"hard link through a symlink", []entry{
		{name: "TREE/", typ: tar.TypeDir},
		{name: "TREE/l", typ: tar.TypeSymlink, link: "HOME"},
		{name: "TREE/h", typ: tar.TypeLink, link: "TREE/l/victim"},
	}},
	{"hard link through a relative symlink", []entry{
		{name: "TREE/", typ: tar.TypeDir},
		{name: "TREE/l", typ: tar.TypeSymlink, link: ".."},
		{name: "TREE/h", typ: tar.TypeLink, link: "TREE/l/victim"},
	}},
	{"chmod through a symlink", []entry{
		{name: "TREE/", typ: tar.TypeDir},
		{name: "TREE/l", typ: tar.TypeSymlink, link: "HOME"},
		{name: "TREE/l/priv/", typ: tar.TypeDir},
	}},
	{"chmod through a relative symlink", []entry{
		{name: "TREE/", typ: tar.TypeDir},
		{name: "TREE/l", typ: tar.TypeSymlink, link: ".."},
		{name: "TREE/l/priv/", typ: tar.TypeDir},
	}},
	{"top-level symlink to outside then entries under it", []entry{
		{name: "TREE", typ: tar.TypeSymlink, link: "HOME"},
		{name: "TREE/victim", typ: tar.TypeReg, body: "pwned"},
		{name: "TREE/priv/", typ: tar.TypeDir},
	}},
	{"top-level symlink then a dir entry for it", []entry{
		{name: "TREE", typ: tar.TypeSymlink, link: "HOME/priv"},
		{name: "TREE/", typ: tar.TypeDir},
	}},
	{"contents: link to .. then through it", []entry{
		{name: "./", typ: tar.TypeDir},
		{name: "./l", typ: tar.TypeSymlink, link: ".."},
		{name: "./l/victim", typ: tar.TypeReg, body: "pwned"},
	}},
	{"contents: chmod through a symlink", []entry{
		{name: "./", typ: tar.TypeDir},
		{name: "./l", typ: tar.TypeSymlink, link: ".."},
		{name: "./l/priv/", typ: tar.TypeDir},
	}},
}

// snapshot records every path under dir with its mode and, for regular
// files, contents; symlinks are not followed.
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	m := map[string]string{}
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		v := fi.Mode().String()
		if fi.Mode().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			v += " " + string(b)
		}
		m[p] = v
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestExtractHostileArchives(t *testing.T) {
	for _, tc := range hostileCases {
		for _, mode := range []string{"new destination", "existing folder"} {
			t.Run(tc.name+"/"+mode, func(t *testing.T) {
				home := t.TempDir()
				must(t, os.WriteFile(filepath.Join(home, "victim"), []byte("orig"), 0o600))
				must(t, os.Mkdir(filepath.Join(home, "priv"), 0o700))
				must(t, os.WriteFile(filepath.Join(home, "priv", "key"), []byte("k"), 0o600))
				must(t, os.Mkdir(filepath.Join(home, "sibling"), 0o755))
				must(t, os.WriteFile(filepath.Join(home, "sibling", "f"), []byte("s"), 0o644))
				dst := filepath.Join(home, "new")
				tree := filepath.Join(home, "new")
				if mode == "existing folder" {
					dst = filepath.Join(home, "existing")
					must(t, os.Mkdir(dst, 0o755))
					must(t, os.WriteFile(filepath.Join(dst, "keep"), []byte("keep"), 0o644))
					tree = filepath.Join(dst, "src")
				}
				var entries []entry
				contents := false
				for _, e := range tc.entries {
					r := strings.NewReplacer("HOME_REL", strings.TrimPrefix(home, "/"), "HOME", home, "TREE", "src")
					e.name, e.link = r.Replace(e.name), r.Replace(e.link)
					contents = contents || strings.HasPrefix(e.name, "./")
					entries = append(entries, e)
				}
				if contents && mode == "existing folder" {
					tree = dst
				}
				before := snapshot(t, home)
				err := Extract(makeTar(t, entries), dst, Options{})
				t.Logf("error: %v", err)
				after := snapshot(t, home)
				// Nothing outside the copied tree may change.
				for _, p := range slices.Sorted(maps.Keys(after)) {
					if p == tree || strings.HasPrefix(p, tree+"/") {
						continue
					}
					if before[p] != after[p] {
						t.Errorf("outside the copied tree %s: %s changed from %q to %q", tree, p, before[p], after[p])
					}
				}
				for p := range before {
					if _, ok := after[p]; !ok && p != tree && !strings.HasPrefix(p, tree+"/") {
						t.Errorf("outside the copied tree %s: %s was removed", tree, p)
					}
				}
				if err == nil {
					// Whatever was made is confined; links may exist but nothing
					// reaches through them. Require the error all the same: each
					// case tries to escape.
					t.Errorf("extract succeeded, want an error")
				}
			})
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestExtractKeepsSymlinks checks that confinement does not stop symlinks
// from being copied as symlinks, whatever they point to.
func TestExtractKeepsSymlinks(t *testing.T) {
	for _, mode := range []string{"new destination", "existing folder"} {
		t.Run(mode, func(t *testing.T) {
			home := t.TempDir()
			dst, tree := filepath.Join(home, "new"), filepath.Join(home, "new")
			if mode == "existing folder" {
				dst, tree = home, filepath.Join(home, "src")
			}
			err := Extract(makeTar(t, []entry{
				{name: "src/", typ: tar.TypeDir},
				{name: "src/up", typ: tar.TypeSymlink, link: ".."},
				{name: "src/abs", typ: tar.TypeSymlink, link: "/etc/passwd"},
				{name: "src/d/", typ: tar.TypeDir},
				{name: "src/d/f", typ: tar.TypeReg, body: "x"},
				{name: "src/h", typ: tar.TypeLink, link: "src/d/f"},
			}), dst, Options{})
			must(t, err)
			for name, want := range map[string]string{"up": "..", "abs": "/etc/passwd"} {
				if got, err := os.Readlink(filepath.Join(tree, name)); err != nil || got != want {
					t.Errorf("%s -> %q, %v; want -> %q", name, got, err, want)
				}
			}
			if b, err := os.ReadFile(filepath.Join(tree, "h")); err != nil || string(b) != "x" {
				t.Errorf("hard link: %q, %v", b, err)
			}
		})
	}
}

// TestExtractTopLevelSymlink checks that a symlink as the whole archive is
// created as the destination (docker cp of a symlink) and not followed.
func TestExtractTopLevelSymlink(t *testing.T) {
	home := t.TempDir()
	must(t, os.Mkdir(filepath.Join(home, "priv"), 0o700))
	must(t, Extract(makeTar(t, []entry{{name: "l", typ: tar.TypeSymlink, link: filepath.Join(home, "priv")}}), filepath.Join(home, "new"), Options{}))
	if got, err := os.Readlink(filepath.Join(home, "new")); err != nil || got != filepath.Join(home, "priv") {
		t.Errorf("new -> %q, %v", got, err)
	}
	// Extracting a directory of that name into the folder holding the link
	// replaces the link, never follows it. (Naming the link itself as the
	// destination is refused: see TestExtractRefusesDestinationLinks.)
	must(t, Extract(makeTar(t, []entry{{name: "new/", typ: tar.TypeDir}, {name: "new/f", typ: tar.TypeReg, body: "x"}}), home, Options{}))
	if fi, err := os.Lstat(filepath.Join(home, "new")); err != nil || !fi.IsDir() {
		t.Errorf("new is %v, %v; want a directory", fi.Mode(), err)
	}
	if fi, _ := os.Stat(filepath.Join(home, "priv")); fi.Mode().Perm() != 0o700 {
		t.Errorf("priv mode changed to %v", fi.Mode().Perm())
	}
	if ents, _ := os.ReadDir(filepath.Join(home, "priv")); len(ents) != 0 {
		t.Errorf("priv got entries: %v", ents)
	}
}
