// Package lease records which sandbox disks use a shared file in the
// cache (a template image, a snapshot), across every SBX_HOME sharing it.
// A lease folder holds one file per disk, named by a hash of the disk's
// path and holding that path, plus pending-* files for creates under way.
//
// A lease is live while its disk exists, or while it is younger than
// Grace: a create writes its lease before its disk reaches the path the
// lease names (the sandbox folder is published by a rename), and a
// pending lease covers the time between finding a shared file and
// writing the lease. Removing a sandbox drops its leases (Drop), so the
// grace never holds a file for a disk that is gone for good.
package lease

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sbx-dev/sbx/internal/safefile"
)

// Grace is how long a lease counts as live without its disk.
const Grace = 10 * time.Minute

func name(diskPath string) (string, string, error) {
	abs, err := filepath.Abs(diskPath)
	if err != nil {
		return "", "", err
	}
	sum := sha256.Sum256([]byte(abs))
	return abs, hex.EncodeToString(sum[:8]), nil
}

// Write records in folder dir that the disk at diskPath uses the file.
func Write(dir, diskPath string) error {
	abs, n, err := name(diskPath)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("lease: %w", err)
	}
	return safefile.Write(filepath.Join(dir, n), []byte(abs+"\n"), 0o600)
}

// Pending holds the file for Grace, until a create's own lease exists.
func Pending(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("lease: %w", err)
	}
	f, err := os.CreateTemp(dir, "pending-")
	if err != nil {
		return fmt.Errorf("lease: %w", err)
	}
	return f.Close()
}

// Drop removes the lease of the disk at diskPath from dir.
func Drop(dir, diskPath string) {
	if _, n, err := name(diskPath); err == nil {
		os.Remove(filepath.Join(dir, n))
	}
}

// Live reports whether a live lease is in dir. Dead leases are removed
// on the way; a lease that cannot be read or whose disk cannot be looked
// at counts as live (nothing is deleted on doubt).
func Live(dir string) bool {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	live := false
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		if info, err := e.Info(); err == nil && time.Since(info.ModTime()) < Grace {
			live = true
			continue
		}
		if strings.HasPrefix(e.Name(), "pending-") {
			os.Remove(p)
			continue
		}
		b, err := os.ReadFile(p)
		if err != nil {
			live = true
			continue
		}
		if _, err := os.Stat(strings.TrimSpace(string(b))); !errors.Is(err, fs.ErrNotExist) {
			live = true
			continue
		}
		os.Remove(p)
	}
	return live
}
