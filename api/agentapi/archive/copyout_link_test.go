package archive

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// TestCopyOutNeverThroughWorkspaceLink: `sbx cp SANDBOX:/out/. ./ws/dist`
// run by root, where ./ws is a writable workspace. The guest shares ws and
// made ws/dist a symbolic link to a root-only host folder (standing in for
// /root/.ssh or /etc/cron.d). Extract resolves the destination through
// that link: the guest's archive then writes files of its choosing, with
// names of its choosing, into the host folder, and sets that folder's
// mode (here 0777).
func TestCopyOutNeverThroughWorkspaceLink(t *testing.T) {
	base := t.TempDir()
	victim := filepath.Join(base, "root-only") // outside every workspace
	ws := filepath.Join(base, "ws")
	for _, d := range []string{victim, ws} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	// Planted by the guest in the shared workspace.
	if err := os.Symlink(victim, filepath.Join(ws, "dist")); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "./", Typeflag: tar.TypeDir, Mode: 0o777})
	data := []byte("ssh-ed25519 AAAA attacker\n")
	tw.WriteHeader(&tar.Header{Name: "./authorized_keys", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(data))})
	tw.Write(data)
	tw.Close()

	err := Extract(&buf, filepath.Join(ws, "dist"), Options{Name: TopName("/out/.")})
	t.Logf("Extract: %v", err)
	if _, err := os.Lstat(filepath.Join(victim, "authorized_keys")); err == nil {
		t.Errorf("the guest's file was written into %s, outside the workspace, through the workspace link", victim)
	}
	if fi, _ := os.Stat(victim); fi.Mode().Perm() != 0o700 {
		t.Errorf("the host folder behind the link was chmodded to %v", fi.Mode().Perm())
	}
}
