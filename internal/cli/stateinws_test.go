package cli

import (
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/sbx-dev/sbx/internal/paths"
	"github.com/sbx-dev/sbx/internal/sandbox"
)

// TestWorkspaceHoldingStateRefused: a workspace that holds sbx's own state,
// configuration or cache (`sbx run claude ~`, or root working in /root)
// hands the guest its sandbox's config.json (workspaces, uid/gid,
// protected paths), boot.json, policy.json, the proxy CA's private key
// and the file secret store, all of which root-run sbx trusts. Creation
// must refuse such a workspace.
func TestWorkspaceHoldingStateRefused(t *testing.T) {
	home := t.TempDir()
	dirs := paths.Dirs{
		Data:    filepath.Join(home, ".local", "share", "sbx"),
		Config:  filepath.Join(home, ".config", "sbx"),
		Cache:   filepath.Join(home, ".cache", "sbx"),
		Runtime: filepath.Join(home, "run"),
	}
	for _, d := range []string{dirs.Data, dirs.Config, dirs.Cache} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	e := &env{dirs: dirs, store: sandbox.NewStore(dirs), log: slog.New(slog.DiscardHandler)}
	for _, ws := range []string{home, filepath.Join(home, ".config")} {
		if tg, err := e.resolveTarget([]string{"shell", ws}); err == nil {
			t.Errorf("workspace %s accepted (%v), and it holds sbx's state/config/cache", ws, tg.workspaces)
		}
	}
}
