package lifecycle

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sbx-dev/sbx/internal/paths"
	"github.com/sbx-dev/sbx/internal/sandbox"
)

// The host side of `sbx cp` out (Manager.CopyOut): links the user made are followed (one
// at a time), a link inside any sandbox's workspace (the guest may have
// made it) is refused, even when reached through a link of the user's.
func TestHostDest(t *testing.T) {
	base := t.TempDir()
	ws := filepath.Join(base, "ws")
	real := filepath.Join(base, "real")
	victim := filepath.Join(base, "victim")
	for _, d := range []string{ws, real, victim} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	m := storeManager(t, filepath.Join(base, "store"), ws)
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Symlink(real, filepath.Join(base, "mine")))                     // the user's own
	must(os.Symlink(victim, filepath.Join(ws, "dist")))                     // planted by the guest
	must(os.Symlink(filepath.Join(ws, "dist"), filepath.Join(base, "via"))) // the user's, to the guest's
	for dst, want := range map[string]string{
		filepath.Join(base, "mine", "out"): filepath.Join(real, "out"),
		filepath.Join(ws, "sub", "new"):    filepath.Join(ws, "sub", "new"),
		filepath.Join(ws, "dist"):          "",
		filepath.Join(ws, "dist", "x"):     "",
		filepath.Join(base, "via", "x"):    "",
	} {
		got, err := m.HostDest(dst)
		switch {
		case want == "" && (err == nil || !strings.Contains(err.Error(), "inside a workspace")):
			t.Errorf("hostDest(%s) = %q, %v; want a refusal", dst, got, err)
		case want != "" && (err != nil || got != want):
			t.Errorf("hostDest(%s) = %q, %v; want %q", dst, got, err, want)
		}
	}
}

// storeManager is a Manager of a store in dir holding one sandbox on
// the workspaces ws (none without them).
func storeManager(t *testing.T, dir string, ws ...string) *Manager {
	t.Helper()
	dirs := paths.Dirs{Data: filepath.Join(dir, "data"), Config: filepath.Join(dir, "config"), Cache: filepath.Join(dir, "cache"), Runtime: filepath.Join(dir, "run")}
	st := sandbox.NewStore(dirs)
	if len(ws) > 0 {
		var w []sandbox.Workspace
		for _, p := range ws {
			w = append(w, sandbox.Workspace{Path: p})
		}
		sb, err := st.Create(sandbox.Config{ID: "0123456789ab", Name: "dev", Created: time.Now(), Workspaces: w})
		if err == nil {
			err = st.Commit(sb)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	return &Manager{Dirs: dirs, Store: st, Log: slog.New(slog.DiscardHandler)}
}

// Found by the fourth outside review; fails on the code before its fix.
// hostDest knows only the workspaces of the store it runs with. `sbx` and
// `sudo sbx` keep separate stores, and a removed sandbox's workspace
// leaves no trace: a link the guest of the user's own sandbox planted in
// its workspace (proj/dist -> /etc/cron.d) was followed by `sudo sbx cp
// R:/out/job ~/proj/dist/`. As root, only root's links are followed.
func TestHostDestRefusesGuestLinkOfAnotherStore(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the refusal is of root following a user's link")
	}
	base := t.TempDir()
	ws := filepath.Join(base, "proj")
	victim := filepath.Join(base, "etc-cron.d")
	for _, d := range []string{ws, victim} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	storeManager(t, filepath.Join(base, "user"), ws) // the guest's sandbox, in the user's store
	link := filepath.Join(ws, "dist")
	if err := os.Symlink(victim, link); err != nil {
		t.Fatal(err)
	}
	// The guest's link is the workspace user's on the host.
	if err := os.Lchown(link, 1000, 1000); err != nil {
		t.Fatal(err)
	}
	m := storeManager(t, filepath.Join(base, "root")) // `sudo sbx cp`: root's store
	if got, err := m.HostDest(link + "/"); err == nil || strings.HasPrefix(got, victim) {
		t.Errorf("hostDest(%s/) = %q, %v: followed a link of uid 1000 as root", link, got, err)
	}
}

// Found by the fifth outside review; fails on the code before its fix.
// `sbx cp ws/dist/key box:/tmp/` as root sent /root/secret/key into the
// guest through the guest's link ws/dist -> /root/secret. The folders on
// the way to a source are resolved like a destination's; the source
// itself, a link, is copied as a link.
func TestHostSource(t *testing.T) {
	base := t.TempDir()
	ws := filepath.Join(base, "ws")
	real := filepath.Join(base, "real")
	secret := filepath.Join(base, "secret")
	for _, d := range []string{ws, real, secret} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	m := storeManager(t, filepath.Join(base, "store"), ws)
	for link, target := range map[string]string{filepath.Join(base, "mine"): real, filepath.Join(ws, "dist"): secret} {
		if err := os.Symlink(target, link); err != nil {
			t.Fatal(err)
		}
	}
	for src, want := range map[string]string{
		filepath.Join(base, "mine", "f"):   filepath.Join(real, "f"),
		filepath.Join(base, "mine") + "/.": real + "/.",
		filepath.Join(ws, "dist"):          filepath.Join(ws, "dist"), // the link itself
		filepath.Join(ws, "dist", "key"):   "",
		filepath.Join(ws, "dist") + "/.":   "",
	} {
		got, err := m.HostSource(src)
		switch {
		case want == "" && (err == nil || !strings.Contains(err.Error(), "inside a workspace")):
			t.Errorf("hostSource(%s) = %q, %v; want a refusal", src, got, err)
		case want != "" && (err != nil || got != want):
			t.Errorf("hostSource(%s) = %q, %v; want %q", src, got, err, want)
		}
	}
}
