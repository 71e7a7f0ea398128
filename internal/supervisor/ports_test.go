package supervisor

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

// Found by the twelfth outside review; fails on the code before its fix.
// A start with a damaged ports.json published nothing and said so only in
// the supervisor log ("read published ports"), without the file or the
// way back. It now leaves a note for the starting command naming both,
// and leaves the file as it is.
func TestRestoreDamagedPortsFile(t *testing.T) {
	dir := t.TempDir()
	dirs := paths.Dirs{Data: filepath.Join(dir, "data"), Config: filepath.Join(dir, "config"), Cache: filepath.Join(dir, "cache"), Runtime: filepath.Join(dir, "run")}
	store := sandbox.NewStore(dirs)
	sb, err := store.Create(sandbox.Config{ID: "0123456789ab", Name: "dev", Created: time.Now()})
	if err == nil {
		err = store.Commit(sb)
	}
	if err != nil {
		t.Fatal(err)
	}
	path := sb.Path(sandbox.PortsFile)
	const damaged = "[garbage\n"
	if err := os.WriteFile(path, []byte(damaged), 0o600); err != nil {
		t.Fatal(err)
	}
	s := &Supervisor{store: store, sb: sb, log: slog.New(slog.DiscardHandler)}
	s.ports = newPublisher(s)
	s.ports.restore(t.Context())
	if got := s.ports.list(); len(got) != 0 {
		t.Errorf("published %v from a damaged file", got)
	}
	notes := s.status().Notes
	if len(notes) != 1 || !strings.Contains(notes[0], path) || !strings.Contains(notes[0], "sbx ports dev --publish") {
		t.Errorf("notes = %q; want one naming %s and how to publish again", notes, path)
	}
	if b, _ := os.ReadFile(path); string(b) != damaged {
		t.Errorf("ports.json changed to %q", b)
	}
}
