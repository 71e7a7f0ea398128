package template

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// Found by the twelfth review: root building into a user's cache left
// the templates folder root's (0700), so the user's own sbx could not
// read the template it asked root to build. What root makes there goes
// to the cache's owner.
func TestRootBuildIntoUsersCache(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("root's builds only")
	}
	const nobody = 65534
	cache := t.TempDir()
	if err := os.Chown(cache, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(cache, "templates")
	unlock, err := lockDir(t.Context(), dir)
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "x.ext4")
	os.WriteFile(img, []byte("image"), 0o444)
	os.Symlink("/etc/shadow", filepath.Join(dir, "link"))
	unlock()
	for _, p := range []string{dir, img, filepath.Join(dir, ".lock")} {
		fi, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		if uid := fi.Sys().(*syscall.Stat_t).Uid; uid != nobody {
			t.Errorf("%s: uid %d, want the cache owner's", p, uid)
		}
	}
	if fi, _ := os.Stat("/etc/shadow"); fi != nil && fi.Sys().(*syscall.Stat_t).Uid != 0 {
		t.Fatal("a link was followed")
	}
}
