package template

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sbx-dev/sbx/internal/lease"
)

// fakeImage writes an image file and, when named, its manifest.
func fakeImage(t *testing.T, dir, id, name string, trackIt bool) string {
	t.Helper()
	img := filepath.Join(dir, id+".ext4")
	if err := os.WriteFile(img, []byte("ext4 "+id), 0o444); err != nil {
		t.Fatal(err)
	}
	if trackIt {
		if err := track(dir, id); err != nil {
			t.Fatal(err)
		}
	}
	if name != "" {
		b, _ := json.Marshal(manifest{Version: 1, Name: name, ID: id})
		if err := os.WriteFile(filepath.Join(dir, name+".json"), b, 0o444); err != nil {
			t.Fatal(err)
		}
	}
	return img
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

func TestCollectKeepsWhatIsUsed(t *testing.T) {
	cache := t.TempDir()
	dir := templatesDir(cache)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	named := fakeImage(t, dir, "aaaa", "shell", true)
	orphan := fakeImage(t, dir, "bbbb", "", true)
	untracked := fakeImage(t, dir, "cccc", "", false) // made before leases
	leasedImg := fakeImage(t, dir, "dddd", "", true)
	deadLease := fakeImage(t, dir, "eeee", "", true)

	disk := filepath.Join(t.TempDir(), "disk.qcow2")
	if err := os.WriteFile(disk, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Lease(cache, "dddd", disk); err != nil {
		t.Fatal(err)
	}
	gone := filepath.Join(t.TempDir(), "removed-sandbox", "disk.qcow2")
	if err := Lease(cache, "eeee", gone); err != nil {
		t.Fatal(err)
	}
	// An old lease whose disk is gone is dead; a fresh one (a create whose
	// disk is not at its final path yet) holds its image.
	past := time.Now().Add(-2 * lease.Grace)
	ents, _ := os.ReadDir(leasesDir(dir, "eeee"))
	for _, e := range ents {
		os.Chtimes(filepath.Join(leasesDir(dir, "eeee"), e.Name()), past, past)
	}
	creating := fakeImage(t, dir, "ffff", "", true)
	if err := Lease(cache, "ffff", filepath.Join(t.TempDir(), "not-yet", "disk.qcow2")); err != nil {
		t.Fatal(err)
	}

	if _, err := collect(dir); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]bool{named: true, orphan: false, untracked: true, leasedImg: true, deadLease: false, creating: true} {
		if exists(p) != want {
			t.Errorf("%s: exists %v, want %v", filepath.Base(p), exists(p), want)
		}
	}
	if exists(leasesDir(dir, "bbbb")) || exists(leasesDir(dir, "eeee")) {
		t.Error("leases of collected images remain")
	}

	// Remove refuses an image a live lease holds, in any SBX_HOME.
	b, _ := json.Marshal(manifest{Version: 1, Name: "mine", ID: "dddd"})
	if err := os.WriteFile(filepath.Join(dir, "mine.json"), b, 0o444); err != nil {
		t.Fatal(err)
	}
	if err := Remove(cache, "mine", nil); err == nil {
		t.Fatal("removed a template whose image a sandbox disk uses")
	}
	// Removing the sandbox removes its disk and releases its lease.
	os.Remove(disk)
	Release(cache, "dddd", disk)
	if err := Remove(cache, "mine", nil); err != nil {
		t.Fatal(err)
	}
	if exists(leasedImg) {
		t.Error("image stays after its last disk and manifest went")
	}
}
