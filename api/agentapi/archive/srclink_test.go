package archive

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// Write never goes through a symbolic link on the way to its source (a
// guest-made ws/dist -> /root/secret), only copies one that is the
// source; FollowParents resolves them for a caller that means it.
func TestWriteSourceParentLink(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret")
	os.Mkdir(secret, 0o700)
	os.WriteFile(filepath.Join(secret, "key"), []byte("k"), 0o600)
	link := filepath.Join(dir, "dist")
	os.Symlink(secret, link)
	err := Write(io.Discard, filepath.Join(link, "key"))
	if !errors.Is(err, ErrDestinationLink) {
		t.Errorf("Write through a link: %v, want a refusal", err)
	}
	if err := Write(io.Discard, link); err != nil {
		t.Errorf("Write of the link itself: %v", err)
	}
	p, err := FollowParents(filepath.Join(link, "key"))
	if err != nil || p != filepath.Join(secret, "key") {
		t.Fatalf("FollowParents = %q, %v", p, err)
	}
	if err := Write(io.Discard, p); err != nil {
		t.Errorf("Write of the resolved path: %v", err)
	}
	if p, err := FollowParents(link + "/."); err != nil || p != secret+"/." {
		t.Errorf("FollowParents(dir/.) = %q, %v", p, err)
	}
}
