package lifecycle

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sbx-dev/sbx/api/controlapi"
	"github.com/sbx-dev/sbx/internal/sandbox"
	"github.com/sbx-dev/sbx/internal/supervisor"
)

// Found by the twelfth outside review; fails on the code before its fix.
// `sbx cp box:/etc/hostname /tmp/h/` with /tmp/h a file overwrote it, and
// with /tmp/newdir missing made a file named /tmp/newdir: filepath.Abs
// dropped the "/". A destination ending in "/" must be an existing
// folder; nothing is written otherwise, before the guest is asked.
func TestCopyOutTrailingSlashNamesFolder(t *testing.T) {
	base := t.TempDir()
	ws := filepath.Join(base, "ws")
	must12(t, os.Mkdir(ws, 0o755))
	m := storeManager(t, filepath.Join(base, "store"), ws)
	sb, err := m.Get("dev")
	must12(t, err)
	file := filepath.Join(base, "h")
	must12(t, os.WriteFile(file, []byte("keep"), 0o644))
	missing := filepath.Join(base, "newdir")

	for _, c := range []struct {
		dst, want string
		code      Code
	}{
		{file + "/", file + "/: not a folder", Invalid},
		{file + "/.", file + "/.: not a folder", Invalid},
		{missing + "/", "the destination folder " + missing + "/ does not exist", NotFound},
	} {
		err := m.CopyOut(t.Context(), sb, "/etc/hostname", c.dst)
		le, ok := AsError(err)
		if !ok || le.Code != c.code || le.Field != "destination" || le.Error() != c.want || le.Hint == "" {
			t.Errorf("CopyOut to %s: %v (%+v); want %s %q on destination, with a hint", c.dst, err, le, c.code, c.want)
		}
	}
	if b, _ := os.ReadFile(file); string(b) != "keep" {
		t.Errorf("%s = %q, want it kept", file, b)
	}
	if _, err := os.Lstat(missing); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s was made: %v", missing, err)
	}
	// HostDest keeps the "/" for the extraction to check again; a folder
	// written with it passes (and reaches the guest: not running here).
	for dst, want := range map[string]string{
		base + "/":        base + "/",
		base + "/.":       base + "/",
		missing + "/":     missing + "/",
		file:              file,
		filepath.Dir("/"): "/",
	} {
		if got, err := m.HostDest(dst); err != nil || got != want {
			t.Errorf("HostDest(%s) = %q, %v; want %q", dst, got, err, want)
		}
	}
	err = m.CopyOut(t.Context(), sb, "/etc/hostname", base+"/")
	if le, ok := AsError(err); !ok || le.Field != "state" {
		t.Errorf("CopyOut to an existing folder/: %v; want the not-running refusal", err)
	}
}

// Found by the twelfth outside review; fails on the code before its fix.
// A damaged ports.json (not JSON, a port out of range, a port 0) made
// `sbx ports` say only "cannot read the ports of box" and a start run
// without the published ports, silently. Both now name the file, what is
// wrong with it and how to recover; the start is refused; the file is
// left as it is.
func TestDamagedPortsFile(t *testing.T) {
	for what, content := range map[string]string{
		"not JSON":     "[garbage\n",
		"out of range": `{"version":1,"ports":[{"hostIP":"127.0.0.1","hostPort":70000,"sandboxPort":80}]}`,
		"port 0":       `{"version":1,"ports":[{"hostIP":"127.0.0.1","hostPort":8080,"sandboxPort":0}]}`,
		"bad address":  `{"version":1,"ports":[{"hostIP":"localhost","hostPort":8080,"sandboxPort":80}]}`,
	} {
		t.Run(what, func(t *testing.T) {
			base := t.TempDir()
			ws := filepath.Join(base, "ws")
			must12(t, os.Mkdir(ws, 0o755))
			m := storeManager(t, filepath.Join(base, "store"), ws)
			sb, err := m.Get("dev")
			must12(t, err)
			path := sb.Path(sandbox.PortsFile)
			must12(t, os.WriteFile(path, []byte(content), 0o600))
			check := func(op string, err error) {
				t.Helper()
				le, ok := AsError(err)
				if !ok || le.Code != Invalid || le.Field != "ports" ||
					!strings.Contains(le.Error(), "damaged") || !strings.Contains(le.Error(), path) ||
					!strings.Contains(le.Hint, "delete "+path) || !strings.Contains(le.Hint, "sbx ports dev --publish") {
					t.Errorf("%s: %v (%+v); want Invalid on ports naming %s, with the way to recover", op, err, le, path)
				}
			}
			_, err = m.Ports(t.Context(), sb, PortsRequest{})
			check("ports", err)
			_, err = m.Ports(t.Context(), sb, PortsRequest{Publish: []sandbox.Port{{HostIP: "127.0.0.1", HostPort: 9000, SandboxPort: 90}}})
			check("ports --publish", err)
			m.Launch = func(context.Context, *sandbox.Store, *sandbox.Sandbox, supervisor.Boot, func(controlapi.Status)) error {
				t.Error("a start with a damaged ports.json launched the sandbox")
				return nil
			}
			err = m.Start(t.Context(), sb, StartRequest{Prepare: func(context.Context, *sandbox.Sandbox) (supervisor.Boot, error) {
				return supervisor.Boot{}, nil
			}})
			check("start", err)
			if b, _ := os.ReadFile(path); string(b) != content {
				t.Errorf("ports.json changed to %q", b)
			}
			// Recovered as the hint says.
			must12(t, os.Remove(path))
			if _, err := m.Ports(t.Context(), sb, PortsRequest{}); err != nil {
				t.Errorf("ports after deleting the file: %v", err)
			}
		})
	}
}

// Found by the twelfth outside review; fails on the code before its fix.
// A damaged state.json made exec, run and stop advise `sbx rm -f NAME`,
// which deletes the disk; the file is advisory (a missing one reads as
// stopped), so the hint is to delete it, rm only as a last resort.
func TestDamagedStateFileHint(t *testing.T) {
	base := t.TempDir()
	ws := filepath.Join(base, "ws")
	must12(t, os.Mkdir(ws, 0o755))
	m := storeManager(t, filepath.Join(base, "store"), ws)
	sb, err := m.Get("dev")
	must12(t, err)
	path := sb.Path(sandbox.StateFile)
	must12(t, os.WriteFile(path, []byte("{garbage"), 0o600))
	err = m.Stop(t.Context(), sb)
	le, ok := AsError(err)
	if !ok {
		t.Fatalf("stop: %v, want a lifecycle error", err)
	}
	del := strings.Index(le.Hint, "delete "+path)
	rm := strings.Index(le.Hint, "sbx rm -f dev")
	if !strings.Contains(le.Error(), path) || del < 0 || (rm >= 0 && rm < del) || !strings.Contains(le.Hint, "last resort") {
		t.Errorf("stop: %q, hint %q; want the path, delete it first, rm only as a last resort", le.Error(), le.Hint)
	}
	// The advice works: the sandbox, disk and all, reads as stopped.
	must12(t, os.Remove(path))
	if err := m.Stop(t.Context(), sb); err != nil {
		t.Errorf("stop after deleting the state file: %v", err)
	}
}

func must12(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
