package cli

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

// Found by the fourth outside review; fails on the code before its fix. hostDest knows only the workspaces of the store
// it runs with. `sbx` and `sudo sbx` keep separate stores (protected
// sandboxes need sudo), and a removed sandbox's workspace leaves no trace:
// a link the guest of the user's own sandbox planted in its workspace
// (proj/dist -> /etc/cron.d) is followed by `sudo sbx cp R:/out/job
// ~/proj/dist/`, and root writes the other guest's file where the link
// leads.
func TestHostDestRefusesGuestLinkOfAnotherStore(t *testing.T) {
	base := t.TempDir()
	ws := filepath.Join(base, "proj")
	victim := filepath.Join(base, "etc-cron.d")
	for _, d := range []string{ws, victim} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mk := func(name string) paths.Dirs {
		d := filepath.Join(base, name)
		return paths.Dirs{Data: filepath.Join(d, "data"), Config: filepath.Join(d, "config"), Cache: filepath.Join(d, "cache"), Runtime: filepath.Join(d, "run")}
	}
	// The user's store: sandbox N on proj, whose guest planted the link.
	userStore := sandbox.NewStore(mk("user"))
	sb, err := userStore.Create(sandbox.Config{ID: "0123456789ab", Name: "mine", Created: time.Now(), Workspaces: []sandbox.Workspace{{Path: ws}}})
	if err == nil {
		err = userStore.Commit(sb)
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, filepath.Join(ws, "dist")); err != nil {
		t.Fatal(err)
	}
	// The guest's link is the workspace user's on the host.
	if os.Geteuid() == 0 {
		if err := os.Lchown(filepath.Join(ws, "dist"), 1000, 1000); err != nil {
			t.Fatal(err)
		}
	} else {
		t.Skip("the refusal is of root following a user's link")
	}
	// `sudo sbx cp`: root's store, which has other sandboxes only.
	rootDirs := mk("root")
	e := &env{dirs: rootDirs, store: sandbox.NewStore(rootDirs), log: slog.New(slog.DiscardHandler)}
	dst := filepath.Join(ws, "dist")
	got, err := e.hostDest(dst + "/")
	if err == nil && strings.HasPrefix(got, victim) {
		t.Errorf("hostDest(%s/) = %q: followed a link the guest of a sandbox of another store made in its workspace", dst, got)
	}
}
