package lease

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func age(t *testing.T, dir string) {
	past := time.Now().Add(-2 * Grace)
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if err := os.Chtimes(filepath.Join(dir, e.Name()), past, past); err != nil {
			t.Fatal(err)
		}
	}
}

// TestLive: a lease holds while its disk exists or while it is fresh; a
// dropped or old dead lease does not; pending leases expire.
func TestLive(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "leases")
	if Live(dir) {
		t.Fatal("no folder is live")
	}
	disk := filepath.Join(t.TempDir(), "disk.qcow2")
	if err := Write(dir, disk); err != nil {
		t.Fatal(err)
	}
	if !Live(dir) {
		t.Error("a fresh lease without its disk (a create in flight) is not live")
	}
	age(t, dir)
	if Live(dir) {
		t.Error("an old lease without its disk is live")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("dead lease not pruned: %v", ents)
	}
	os.WriteFile(disk, nil, 0o600)
	Write(dir, disk)
	age(t, dir)
	if !Live(dir) {
		t.Error("a lease whose disk exists is not live")
	}
	Drop(dir, disk)
	if Live(dir) {
		t.Error("a dropped lease is live")
	}
	if err := Pending(dir); err != nil {
		t.Fatal(err)
	}
	if !Live(dir) {
		t.Error("a fresh pending lease is not live")
	}
	age(t, dir)
	if Live(dir) {
		t.Error("an old pending lease is live")
	}
}
