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

// The host side of `sbx cp` out: links the user made are followed (one
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
	dirs := paths.Dirs{Data: filepath.Join(base, "data"), Config: filepath.Join(base, "config"), Cache: filepath.Join(base, "cache"), Runtime: filepath.Join(base, "run")}
	st := sandbox.NewStore(dirs)
	sb, err := st.Create(sandbox.Config{ID: "0123456789ab", Name: "dev", Created: time.Now(), Workspaces: []sandbox.Workspace{{Path: ws}}})
	if err == nil {
		err = st.Commit(sb)
	}
	if err != nil {
		t.Fatal(err)
	}
	e := &env{dirs: dirs, store: st, log: slog.New(slog.DiscardHandler)}
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
		got, err := e.hostDest(dst)
		switch {
		case want == "" && (err == nil || !strings.Contains(err.Error(), "inside a workspace")):
			t.Errorf("hostDest(%s) = %q, %v; want a refusal", dst, got, err)
		case want != "" && (err != nil || got != want):
			t.Errorf("hostDest(%s) = %q, %v; want %q", dst, got, err, want)
		}
	}
}
