package agent

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestRenumberAndLookup(t *testing.T) {
	etc := t.TempDir()
	passwd := "root:x:0:0:root:/root:/bin/bash\nagent:x:1000:1000::/home/agent:/bin/bash\n"
	group := "root:x:0:\nsudo:x:27:agent\nagent:x:1000:\n"
	os.WriteFile(filepath.Join(etc, "passwd"), []byte(passwd), 0o644)
	os.WriteFile(filepath.Join(etc, "group"), []byte(group), 0o644)

	a, err := lookupAccount(etc, "agent")
	if err != nil {
		t.Fatal(err)
	}
	want := account{Name: "agent", UID: 1000, GID: 1000, Home: "/home/agent", Shell: "/bin/bash", Groups: []uint32{1000, 27}}
	if diff := cmp.Diff(want, a); diff != "" {
		t.Errorf("lookup (-want +got):\n%s", diff)
	}
	oldUID, oldGID, changed, err := renumberUser(etc, "agent", 501, 20)
	if err != nil || !changed || oldUID != 1000 || oldGID != 1000 {
		t.Fatalf("renumber: %d %d %v %v", oldUID, oldGID, changed, err)
	}
	a, _ = lookupAccount(etc, "501")
	want = account{Name: "agent", UID: 501, GID: 20, Home: "/home/agent", Shell: "/bin/bash", Groups: []uint32{20, 27}}
	if diff := cmp.Diff(want, a); diff != "" {
		t.Errorf("after renumber (-want +got):\n%s", diff)
	}
	g, _ := os.ReadFile(filepath.Join(etc, "group"))
	if string(g) != "root:x:0:\nsudo:x:27:agent\nagent:x:20:\n" {
		t.Errorf("group file = %q", g)
	}
	if _, _, changed, _ := renumberUser(etc, "agent", 501, 20); changed {
		t.Error("second renumber changed something")
	}
	if _, err := lookupAccount(etc, "nobody-here"); err == nil {
		t.Error("lookup of unknown user succeeded")
	}
}

func TestExt4Geometry(t *testing.T) {
	sb := make([]byte, 1024)
	sb[0x38], sb[0x39] = 0x53, 0xEF
	sb[0x4] = 0x00
	sb[0x5] = 0x01 // 256 blocks
	sb[0x18] = 2   // 4096-byte blocks
	blocks, bs, err := ext4Geometry(sb)
	if err != nil || blocks != 256 || bs != 4096 {
		t.Errorf("got %d %d %v", blocks, bs, err)
	}
	if _, _, err := ext4Geometry(make([]byte, 1024)); err == nil {
		t.Error("accepted a non-ext4 superblock")
	}
}

func TestCmdlineParam(t *testing.T) {
	cl := "console=ttyS0 sbx.root=/dev/vda sbx.rootfstype=ext4 panic=-1\n"
	if v, ok := cmdlineParam(cl, "sbx.root"); !ok || v != "/dev/vda" {
		t.Errorf("sbx.root = %q %v", v, ok)
	}
	if _, ok := cmdlineParam(cl, "sbx.none"); ok {
		t.Error("found a missing parameter")
	}
}
