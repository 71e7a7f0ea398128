package jail

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestMain(m *testing.M) {
	if IsHelper(os.Args) {
		os.Exit(Main())
	}
	os.Exit(m.Run())
}

func run(t *testing.T, spec Spec) (string, error) {
	t.Helper()
	cmd, err := Command(spec)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	return out.String(), err
}

// No file made in the jail carries a set-id bit, by any call the shell's
// tools make; the same script outside the jail does make them (control).
func TestNoSetIDFiles(t *testing.T) {
	dir := t.TempDir()
	script := `cd "$1"; : > f; chmod u+s f; chmod g+s f; chmod 6755 f; install -m 4755 /dev/null g; mkdir -m 4755 d; mknod p p; chmod 4755 p; mknod c c 0 0; mknod b b 0 0; mkdir e && echo mkdir-ok
for x in f g p; do [ -e $x ] && stat -c '%n %a' $x; done; true`
	spec := Spec{Argv: []string{"/bin/sh", "-c", script, "sh", dir}, Env: []string{"PATH=/usr/bin:/bin"}}
	out, err := run(t, spec)
	if err != nil || !strings.Contains(out, "mkdir-ok") {
		t.Fatalf("%v: %s", err, out)
	}
	if _, err := os.Stat(filepath.Join(dir, "d")); err == nil {
		t.Error("a set-uid folder was made")
	}
	// Devices: since Linux 5.8 anyone may make a 0:0 character device.
	for _, name := range []string{"c", "b"} {
		if fi, err := os.Lstat(filepath.Join(dir, name)); err == nil {
			t.Errorf("a device was made in the jail's folder: %s %v", name, fi.Mode())
		}
	}
	for _, name := range []string{"f", "g", "p"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			continue
		}
		if fi.Mode()&(os.ModeSetuid|os.ModeSetgid) != 0 {
			t.Errorf("%s has mode %v in the jail's folder", name, fi.Mode())
		}
	}
	// Control: outside the jail the same calls succeed, so the test can fail.
	ctl := t.TempDir()
	if err := os.WriteFile(filepath.Join(ctl, "f"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(ctl, "f"), 0o4755|os.ModeSetuid); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(filepath.Join(ctl, "f")); fi.Mode()&os.ModeSetuid == 0 {
		t.Skip("this file system drops set-uid bits by itself; the test cannot tell")
	}
}

// A jail with a root sees only the system folders and what it was given,
// as the uid it was given.
func TestRootJail(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("a jail root needs root")
	}
	base := t.TempDir()
	root := filepath.Join(base, "root")
	rw := filepath.Join(base, "rw")
	ro := filepath.Join(base, "ro.txt")
	for _, d := range []string{root, rw} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chown(rw, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ro, []byte("given\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	script := `id -u; id -G; cat "$2"; echo w > "$1/new" && echo wrote; { echo x > "$2"; } 2>/dev/null || echo ro-refused
ls /proc | grep -c '^[0-9]'; for p in /etc/passwd /root /home ` + base + `/root; do [ -e $p ] && echo "sees $p"; done; true`
	out, err := run(t, Spec{
		Argv: []string{"/bin/sh", "-c", script, "sh", rw, ro}, Env: []string{"PATH=/usr/bin:/bin"},
		Root: root, ReadOnly: []string{ro}, ReadWrite: []string{rw}, UID: 65534, GID: 65534,
	})
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	want := []string{"65534", "65534", "given", "wrote", "ro-refused"}
	if len(lines) < 6 || strings.Join(lines[:5], ",") != strings.Join(want, ",") {
		t.Fatalf("jail output:\n%s\nwant first lines %v", out, want)
	}
	// The shell, the subshell of the pipe: only the jail's own processes.
	if lines[5] == "" || len(lines[5]) > 1 {
		t.Errorf("the jail sees %s processes", lines[5])
	}
	for _, l := range lines[6:] {
		t.Errorf("the jail %s", l)
	}
	if b, _ := os.ReadFile(filepath.Join(rw, "new")); string(b) != "w\n" {
		t.Errorf("write through the jail: %q", b)
	}
	if ents, _ := os.ReadDir(root); len(ents) != 0 {
		t.Errorf("the jail root on the host is not empty: %v", ents)
	}
	// Root is never kept.
	if _, err := run(t, Spec{Argv: []string{"/bin/true"}, Root: root, UID: 0, GID: 0}); err == nil {
		t.Error("a jail as uid 0 ran")
	}
}
