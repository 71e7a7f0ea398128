package jail

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Found by the third outside review; fails on the code before its fix.
// TestNestedShareLinkNotFollowed: workspaces may nest (a writable primary
// /home/u/proj and a second workspace below it). The guest writes the
// primary, so it can turn the second workspace's path into a relative
// symbolic link. At the next start bind() follows that link both as the
// mount source (on the host) and as the mount target (inside the jail
// root, through the first workspace's bind), so a host folder outside
// every workspace - here the user's home with its private key - is bound
// read-write into the jail, and the second 9p share then exports it to
// the guest.
func TestNestedShareLinkNotFollowed(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("a jail root needs root")
	}
	base := t.TempDir()
	os.Chmod(base, 0o755)
	root := filepath.Join(base, "root")
	home := filepath.Join(base, "home", "u") // the workspace user's home: not shared
	ws1 := filepath.Join(home, "proj")       // primary workspace
	ws2 := filepath.Join(ws1, "a", "b")      // second workspace, nested
	for _, d := range []string{root, filepath.Join(ws1, "a")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.Chmod(filepath.Join(base, "home"), 0o755)
	for _, d := range []string{home, ws1, filepath.Join(ws1, "a")} {
		os.Chown(d, 65534, 65534)
	}
	key := filepath.Join(home, "id_rsa")
	if err := os.WriteFile(key, []byte("PRIVATE-KEY\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	os.Chown(key, 65534, 65534)
	// What the guest leaves behind in the primary workspace: a/b is a
	// link that climbs to / and comes down to the home folder.
	up := strings.Repeat("../", strings.Count(filepath.Join(ws1, "a"), "/"))
	if err := os.Symlink(up+strings.TrimPrefix(home, "/"), ws2); err != nil {
		t.Fatal(err)
	}
	script := `cat "$1/id_rsa" 2>/dev/null && echo SAW-HOME; echo pwned > "$1/.bashrc" 2>/dev/null && echo WROTE-HOME; true`
	out, err := run(t, Spec{
		Argv: []string{"/bin/sh", "-c", script, "sh", ws2}, Env: []string{"PATH=/usr/bin:/bin"},
		Root: root, ReadWrite: []string{ws1, ws2}, Guarded: []string{ws1, ws2}, UID: 65534, GID: 65534,
	})
	if err != nil {
		t.Logf("jail: %v: %s", err, out)
	}
	if strings.Contains(out, "SAW-HOME") || strings.Contains(out, "PRIVATE-KEY") {
		t.Errorf("the jail read a file outside every workspace through the nested share:\n%s", out)
	}
	if b, err := os.ReadFile(filepath.Join(home, ".bashrc")); err == nil {
		t.Errorf("the jail wrote %s outside every workspace: %q", filepath.Join(home, ".bashrc"), b)
	}
}

// Found by the third outside review; fails on the code before its fix.
// TestNestedShareLinkMadeInsideNotFollowed: the link can be made from inside
// the jail while both shares are bound (what QEMU's 9p server does for the
// guest): the nested share's own path is a mount point (EBUSY), but its
// parent folder is not and can be renamed away and made again with the
// link in it. The next start then binds the home folder into the jail.
func TestNestedShareLinkMadeInsideNotFollowed(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("a jail root needs root")
	}
	base := t.TempDir()
	os.Chmod(base, 0o755)
	root := filepath.Join(base, "root")
	home := filepath.Join(base, "home", "u")
	ws1 := filepath.Join(home, "proj")
	ws2 := filepath.Join(ws1, "a", "b")
	for _, d := range []string{root, ws2} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.Chmod(filepath.Join(base, "home"), 0o755)
	for _, d := range []string{home, ws1, filepath.Join(ws1, "a"), ws2} {
		os.Chown(d, 65534, 65534)
	}
	key := filepath.Join(home, "id_rsa")
	if err := os.WriteFile(key, []byte("PRIVATE-KEY\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	os.Chown(key, 65534, 65534)
	up := strings.Repeat("../", strings.Count(filepath.Join(ws1, "a"), "/"))
	link := up + strings.TrimPrefix(home, "/")
	spec := func(script string) Spec {
		return Spec{Argv: []string{"/bin/sh", "-c", script, "sh", ws1, link}, Env: []string{"PATH=/usr/bin:/bin"},
			Root: root, ReadWrite: []string{ws1, ws2}, Guarded: []string{ws1, ws2}, UID: 65534, GID: 65534}
	}
	// First session: the guest (as the VMM uid) rearranges the primary share.
	out, err := run(t, spec(`cd "$1" && mv a a.old && mkdir a && ln -s "$2" a/b && echo planted`))
	if err != nil || !strings.Contains(out, "planted") {
		t.Fatalf("first session: %v: %s", err, out)
	}
	if fi, err := os.Lstat(ws2); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("the nested workspace is not a link on the host: %v %v", fi, err)
	}
	// Next start: the same spec.
	out, _ = run(t, spec(`cat "$1/a/b/id_rsa" 2>/dev/null; true`))
	if strings.Contains(out, "PRIVATE-KEY") {
		t.Errorf("second session read the user's home through the nested share: %q", out)
	}
}

// Found by the third outside review; fails on the code before its fix.
// A guarded path's mount point is made one component at a time without
// following a link: a parent the guest turned into a link to a host
// folder gets nothing made in that folder (root makes the mount points).
func TestGuardedMountPointMakesNothingThroughALink(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("a jail root needs root")
	}
	base := t.TempDir()
	os.Chmod(base, 0o755)
	root := filepath.Join(base, "root")
	victim := filepath.Join(base, "victim")
	ws1 := filepath.Join(base, "ws1")
	for _, d := range []string{root, victim, ws1} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// The host side of ws2 is a real folder; inside the jail its path
	// runs through ws1's bind, where a is a link to victim.
	ws2 := filepath.Join(ws1, "a", "b")
	if err := os.Symlink(victim, filepath.Join(ws1, "a")); err != nil {
		t.Fatal(err)
	}
	out, err := run(t, Spec{
		Argv: []string{"/bin/true"}, Env: []string{"PATH=/usr/bin:/bin"},
		Root: root, ReadWrite: []string{ws1, ws2}, Guarded: []string{ws1, ws2}, UID: 65534, GID: 65534,
	})
	if err == nil {
		t.Errorf("the jail started with a guarded path behind a link: %s", out)
	}
	if ents, _ := os.ReadDir(victim); len(ents) != 0 {
		t.Errorf("the jail made %v in the folder the link leads to", ents)
	}
}
