package archive

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestCopyInNeverFollowsSwappedFolder: `sbx cp ./ws/src SANDBOX:/tmp/`
// run by root on a folder of a writable workspace while the VM runs (cp
// starts it). The guest swaps ws/src/sub between a folder and a link to a
// root-only host folder (RENAME_EXCHANGE, over 9p it is a rename). Write
// lists sub as a folder, then reads it by path, through the link: the
// host's private file goes into the archive sent to the guest.
func TestCopyInNeverFollowsSwappedFolder(t *testing.T) {
	base := t.TempDir()
	secretDir := filepath.Join(base, "root-only")
	src := filepath.Join(base, "ws", "src")
	for _, d := range []string{secretDir, filepath.Join(src, "sub"), filepath.Join(base, "ws", "alt-parent")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(secretDir, "id_rsa"), []byte("HOST-PRIVATE-KEY"), 0o600); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(src, "sub", "id_rsa"), []byte("harmless"), 0o644)
	alt := filepath.Join(src, "alt")
	if err := os.Symlink(secretDir, alt); err != nil {
		t.Fatal(err)
	}
	var stop atomic.Bool
	done := make(chan struct{})
	go func() { // the guest
		defer close(done)
		for !stop.Load() {
			unix.Renameat2(unix.AT_FDCWD, filepath.Join(src, "sub"), unix.AT_FDCWD, alt, unix.RENAME_EXCHANGE)
		}
	}()
	defer func() { stop.Store(true); <-done }()
	deadline := time.Now().Add(5 * time.Second)
	for i := 0; time.Now().Before(deadline); i++ {
		var buf bytes.Buffer
		if err := Write(&buf, src); err != nil {
			continue
		}
		tr := tar.NewReader(&buf)
		for {
			h, err := tr.Next()
			if err != nil {
				break
			}
			b, _ := io.ReadAll(tr)
			if strings.Contains(string(b), "HOST-PRIVATE-KEY") {
				t.Fatalf("after %d copies: the archive sent to the guest holds the host's file as %s", i+1, h.Name)
			}
		}
	}
}
