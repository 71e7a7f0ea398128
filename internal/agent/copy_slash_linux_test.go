package agent

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sbx-dev/sbx/api/agentapi"
	"github.com/sbx-dev/sbx/internal/agentclient"
)

// TestCopyTrailingSlashNamesFolder: a destination ending in "/" must be an
// existing folder, in both directions (POSIX, docker cp). A file there is
// not replaced, a missing one is not made as a file; an existing folder
// gets the copy inside it.
func TestCopyTrailingSlashNamesFolder(t *testing.T) {
	c := startAgent(t)
	host := t.TempDir()
	guest := t.TempDir() // stands in for the guest filesystem
	src := filepath.Join(host, "f")
	writeFile(t, src, "new")
	guestFile := filepath.Join(guest, "passwd")
	writeFile(t, guestFile, "keep")
	guestDir := filepath.Join(guest, "etc")
	if err := os.Mkdir(guestDir, 0o755); err != nil {
		t.Fatal(err)
	}
	hostFile := filepath.Join(host, "h")
	writeFile(t, hostFile, "keep")
	copyIn := func(src, dst string) error {
		s, err := c.OpenStream(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		return agentclient.CopyIn(t.Context(), s, src, dst)
	}
	copyOut := func(src, dst string) error {
		s, err := c.OpenStream(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		return agentclient.CopyOut(t.Context(), s, src, dst)
	}

	// Into the guest, onto a file written as a folder: refused, kept.
	err := copyIn(src, guestFile+"/")
	if ei, ok := errors.AsType[*agentapi.ErrorInfo](err); !ok || ei.Code != agentapi.CodeInvalid || !strings.Contains(err.Error(), "not a folder") {
		t.Errorf("copy-in to %s/: got %v, want invalid, not a folder", guestFile, err)
	}
	if b, _ := os.ReadFile(guestFile); string(b) != "keep" {
		t.Errorf("guest file replaced: %q", b)
	}
	// Into the guest, a missing folder: refused, nothing made.
	missing := filepath.Join(guest, "newdir")
	err = copyIn(src, missing+"/")
	if ei, ok := errors.AsType[*agentapi.ErrorInfo](err); !ok || ei.Code != agentapi.CodeNotFound || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("copy-in to %s/: got %v, want not-found, does not exist", missing, err)
	}
	if _, err := os.Lstat(missing); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("copy-in to a missing folder made %s: %v", missing, err)
	}
	// Into an existing guest folder: inside it.
	if err := copyIn(src, guestDir+"/"); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(guestDir, "f")); string(b) != "new" {
		t.Errorf("copy-in to %s/: %s/f = %q", guestDir, guestDir, b)
	}

	// Out to the host, onto a file written as a folder: refused, kept.
	err = copyOut(guestFile, hostFile+"/")
	if err == nil || !strings.Contains(err.Error(), "not a folder") {
		t.Errorf("copy-out to %s/: got %v, want not a folder", hostFile, err)
	}
	if b, _ := os.ReadFile(hostFile); string(b) != "keep" {
		t.Errorf("host file replaced: %q", b)
	}
	// Out to a missing host folder: refused, nothing made.
	newdir := filepath.Join(host, "newdir")
	err = copyOut(guestFile, newdir+"/")
	if !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("copy-out to %s/: got %v, want does not exist", newdir, err)
	}
	if _, err := os.Lstat(newdir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("copy-out to a missing folder made %s: %v", newdir, err)
	}
	// Out to an existing host folder, "/" and "/.": inside it.
	for _, d := range []string{host + "/", host + "/."} {
		if err := copyOut(guestFile, d); err != nil {
			t.Fatalf("copy-out to %s: %v", d, err)
		}
		if b, _ := os.ReadFile(filepath.Join(host, "passwd")); string(b) != "keep" {
			t.Errorf("copy-out to %s: passwd = %q", d, b)
		}
	}
	// Without the slash a file is still replaced, as before.
	if err := copyOut(guestFile, hostFile); err != nil {
		t.Fatal(err)
	}
}
